//! Embed every `avro/*.avsc` file: adding a schema is adding a file.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // The manifest dir of this build, read when the script runs: a build script binary is
    // shared by copies of the workspace in one target dir (the scaffold test builds one), so
    // a path compiled into it with env! could name another copy.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dir = Path::new(&manifest_dir).join("avro");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".avsc"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut code = String::from("/// Every schema file in `schemas/avro/`, by file name.\npub const SCHEMA_FILES: &[(&str, &str)] = &[\n");
    for f in &files {
        let path = dir.join(f);
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(
            code,
            "    ({f:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    code.push_str("];\n");
    let out =
        Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("schema_files.rs");
    if let Err(e) = std::fs::write(&out, code) {
        panic!("cannot write {}: {e}", out.display());
    }
}
