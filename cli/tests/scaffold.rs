//! `switchyard new processor` on a scratch copy of this repository: the crate it makes
//! builds, is formatted, passes clippy and its own tests, and the catalog, workspace and
//! topic docs are updated.
//!
//! The copy builds in its own target directory, `target/scaffold-check` (kept between runs,
//! so only the first pays for the dependencies). Sharing the workspace's own target dir would
//! be cheaper but is wrong: cargo hashes path crates by their path inside the workspace, so
//! the copy's crates would overwrite this workspace's artifacts (seen: the schemas crate's
//! generated file then named the deleted copy's files, and the doc-tests failed).

use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard_schemas::Catalog;
use switchyard_testkit::workspace_binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The repository's tracked files, copied into `to`.
fn copy_repo(to: &Path) {
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .expect("git runs");
    assert!(listed.status.success(), "git ls-files: {listed:?}");
    for path in listed.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = std::str::from_utf8(path).expect("utf-8 path");
        let from = repo().join(path);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let dest = to.join(path);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&from, &dest).expect("copy");
    }
}

fn cargo(dir: &Path, args: &[&str]) -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target"))
        .join("scaffold-check");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("cargo runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo {args:?} failed:\n{text}");
    text
}

/// `switchyard new processor NAME ARGS --repo DIR`.
fn new_processor(dir: &Path, name: &str, args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("switchyard").expect("built"))
        .args(["new", "processor", name])
        .args(args)
        .arg("--repo")
        .arg(dir)
        .output()
        .expect("switchyard runs")
}

#[test]
fn a_scaffolded_processor_builds_and_its_tests_pass() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path();
    copy_repo(dir);
    let out = new_processor(
        dir,
        "door-count",
        &[
            "--input",
            "imu",
            "--input",
            "iot-status",
            "--output",
            "door-counts",
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The crate, with a main.rs of at most five lines.
    let main =
        std::fs::read_to_string(dir.join("processors/door-count/src/main.rs")).expect("main.rs");
    assert!(main.lines().count() <= 5, "{main}");
    // The output's type is generated from its schema, not written out in the crate.
    let lib =
        std::fs::read_to_string(dir.join("processors/door-count/src/lib.rs")).expect("lib.rs");
    assert!(!lib.contains("struct DoorCounts"), "{lib}");
    assert!(
        lib.contains("switchyard_schemas::records::{DoorCounts"),
        "{lib}"
    );
    // The catalog has the output and dead-letter topics, with the output's schema.
    let catalog = Catalog::from_dir(&dir.join("schemas")).expect("a valid catalog");
    assert_eq!(catalog.schema_file("door-counts"), Some("door-counts.avsc"));
    assert!(catalog.topic("door-count-dlq").is_some());
    let docs = std::fs::read_to_string(dir.join("docs/topics.md")).expect("topics.md");
    assert!(docs.contains("door-counts") && docs.contains("door-count-dlq"));
    let workspace = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
    assert!(workspace.contains("\"processors/door-count\""));
    // The Docker deployment runs it and Prometheus scrapes it there.
    let compose = std::fs::read_to_string(dir.join("compose.yml")).expect("compose.yml");
    assert!(
        compose.contains("  door-count:\n    <<: *processor\n    command: [\"door-count\"]\n"),
        "{compose}"
    );
    let scrape = std::fs::read_to_string(dir.join("monitoring/prometheus-compose.yml"))
        .expect("prometheus-compose.yml");
    assert!(scrape.contains(", \"door-count:9100\"]"), "{scrape}");

    // It builds, is formatted and lint-clean, and its tests pass.
    cargo(dir, &["fmt", "-p", "door-count", "--check"]);
    cargo(
        dir,
        &[
            "clippy",
            "-p",
            "door-count",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    );
    let tested = cargo(dir, &["test", "-p", "door-count"]);
    assert!(tested.contains("test result: ok. 2 passed"), "{tested}");

    // `make up` runs it without an edit: stack.sh finds it under processors/.
    let status = Command::new("bash")
        .arg(dir.join("scripts/stack.sh"))
        .arg("status")
        .env("SWITCHYARD_RUN_DIR", dir.join(".run"))
        .output()
        .expect("stack.sh runs");
    let listed = String::from_utf8_lossy(&status.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("door-count ") && l.contains(":9110/metrics")),
        "{listed}"
    );

    // Names already taken are refused with a clear message, and nothing is written.
    let again = new_processor(
        dir,
        "door-count",
        &["--input", "imu", "--output", "door-counts"],
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    // An output whose type name a catalog schema already defines (the Carrier enum) too.
    let clash = new_processor(
        dir,
        "carrier-echo",
        &["--input", "imu", "--output", "carrier"],
    );
    assert_eq!(clash.status.code(), Some(2));
    let said = String::from_utf8_lossy(&clash.stderr);
    assert!(said.contains("Avro type Carrier"), "{said}");
    assert!(!dir.join("processors/carrier-echo").exists());

    // A pass-through processor: the output carries the input's record type, no new schema,
    // and the scaffold alone is a working processor (nothing written by hand).
    let copy = new_processor(
        dir,
        "imu-copy",
        &["--input", "imu", "--output", "imu-copy", "--pass-through"],
    );
    assert!(copy.status.success(), "{copy:?}");
    assert!(!dir.join("schemas/avro/imu-copy.avsc").exists());
    let catalog = Catalog::from_dir(&dir.join("schemas")).expect("a valid catalog");
    assert_eq!(catalog.schema_file("imu-copy"), Some("sensor-reading.avsc"));
    cargo(
        dir,
        &[
            "clippy",
            "-p",
            "imu-copy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    );
    let tested = cargo(dir, &["test", "-p", "imu-copy"]);
    assert!(tested.contains("test result: ok. 2 passed"), "{tested}");
    // Inputs of different record types cannot be passed through as one.
    let mixed = new_processor(
        dir,
        "mixed",
        &[
            "--input",
            "imu",
            "--input",
            "iot-status",
            "--output",
            "mixed-out",
            "--pass-through",
        ],
    );
    assert_eq!(mixed.status.code(), Some(2));
    let said = String::from_utf8_lossy(&mixed.stderr);
    assert!(said.contains("one record type"), "{said}");
}
