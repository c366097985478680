//! `switchyard new processor NAME --input TOPIC... --output TOPIC`: a new processor crate
//! that builds and whose tests pass, with everything around it: the output's schema, the
//! catalog entries (output and dead-letter topic), the workspace member, and the regenerated
//! `docs/topics.md`. The processor counts records per key and input topic, a starting point
//! to replace; with `--pass-through` it writes the inputs' own record type instead and
//! forwards every record (no new schema), ready to filter or change.

mod templates;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;
use switchyard_schemas::records::RECORD_TYPES;
use switchyard_schemas::Catalog;

use crate::Failure;
use templates::Input;

#[derive(Subcommand)]
pub enum NewCommand {
    /// A processor crate under processors/NAME, its output topic and schema, its
    /// dead-letter topic, wired into the workspace and the catalog.
    Processor(ProcessorArgs),
}

#[derive(Args)]
pub struct ProcessorArgs {
    /// The processor's name (lowercase letters, digits and dashes): its crate, binary,
    /// consumer group and dead-letter topic (`NAME-dlq`).
    name: String,
    /// A catalog topic it reads (repeat for several; they must have as many partitions).
    #[arg(long = "input", required = true)]
    inputs: Vec<String>,
    /// The new topic it writes (its schema is created as `schemas/avro/OUTPUT.avsc`).
    #[arg(long)]
    output: String,
    /// Write the inputs' own record type to the output (no new schema) and forward every
    /// record unchanged: a filter or a transformation to fill in. The inputs must share one
    /// schema.
    #[arg(long)]
    pass_through: bool,
    /// The repository to add it to.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
}

pub fn run(command: NewCommand) -> Result<(), Failure> {
    match command {
        NewCommand::Processor(args) => new_processor(&args),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

fn pascal(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn new_processor(args: &ProcessorArgs) -> Result<(), Failure> {
    let bad = |m: String| Err(Failure::BadInput(m));
    let repo = &args.repo;
    let schemas_dir = repo.join("schemas");
    if !schemas_dir.join("topics.toml").is_file() || !repo.join("Cargo.toml").is_file() {
        return bad(format!(
            "{} is not a Switchyard repository (no schemas/topics.toml or Cargo.toml); use --repo",
            repo.display()
        ));
    }
    for name in [&args.name, &args.output] {
        if !valid_name(name) {
            return bad(format!(
                "{name:?}: use lowercase letters, digits and dashes, starting with a letter"
            ));
        }
    }
    let catalog = Catalog::from_dir(&schemas_dir).context("reading the catalog")?;
    let crate_dir = repo.join("processors").join(&args.name);
    if crate_dir.exists() {
        return bad(format!("{} exists already", crate_dir.display()));
    }
    let dlq = format!("{}-dlq", args.name);
    for topic in [&args.output, &dlq] {
        if catalog.topic(topic).is_some() {
            return bad(format!("topic {topic} is in the catalog already"));
        }
    }
    // The output's record type is generated into `switchyard_schemas::records` beside every
    // other schema's types, so its name must be new there.
    let record = pascal(&args.output);
    let mut taken = Vec::new();
    for (file, text) in switchyard_schemas::SCHEMA_FILES {
        let schema: Value =
            serde_json::from_str(text).with_context(|| format!("{file} is not JSON"))?;
        named_types(&schema, &mut taken);
    }
    if !args.pass_through && taken.contains(&record) {
        return bad(format!(
            "output {:?} would be Avro type {record}, which a catalog schema defines already; \
             choose another output name",
            args.output
        ));
    }
    // Each input: its Rust record type and an example value of its schema.
    let mut inputs = Vec::new();
    for topic in &args.inputs {
        let Some(t) = catalog.topic(topic) else {
            return bad(format!("no topic {topic} in schemas/topics.toml"));
        };
        let file = catalog.schema_file(topic).unwrap_or_default();
        let Some((_, rust_type)) = RECORD_TYPES.iter().find(|(f, _)| *f == file) else {
            return bad(format!(
                "{topic}'s values ({file:?}) have no record type in switchyard_schemas::records; \
                 inputs can be: {}",
                RECORD_TYPES
                    .iter()
                    .map(|(f, _)| *f)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let schema: Value = serde_json::from_str(catalog.value_schema(topic).unwrap_or("null"))
            .with_context(|| format!("{file} is not JSON"))?;
        inputs.push(Input {
            topic: topic.clone(),
            rust_type,
            example: templates::example(&schema),
            partitions: t.partitions,
        });
    }
    let partitions = inputs.iter().map(|i| i.partitions).max().unwrap_or(3);
    if inputs.iter().any(|i| i.partitions != partitions) {
        return bad(
            "the inputs have different partition counts (see docs/pipeline.md, co-partitioning)"
                .into(),
        );
    }

    // What the output carries: a new schema, or with --pass-through the inputs' one.
    let output_schema = if args.pass_through {
        let first = inputs[0].rust_type;
        if let Some(other) = inputs.iter().find(|i| i.rust_type != first) {
            return bad(format!(
                "--pass-through needs inputs of one record type: {} is {first}, {} is {}",
                inputs[0].topic, other.topic, other.rust_type
            ));
        }
        catalog
            .schema_file(&inputs[0].topic)
            .unwrap_or_default()
            .to_string()
    } else {
        format!("{}.avsc", args.output)
    };

    let files = templates::render(args, &inputs);
    std::fs::create_dir_all(crate_dir.join("src")).context("creating the crate")?;
    for (path, text) in &files {
        std::fs::write(repo.join(path), text).with_context(|| format!("writing {path}"))?;
    }
    append_catalog(repo, args, &dlq, &output_schema, partitions)?;
    add_workspace_member(repo, &args.name)?;
    add_to_docker_deployment(repo, &args.name)?;
    let catalog = Catalog::from_dir(&schemas_dir).context("the extended catalog is invalid")?;
    std::fs::write(
        repo.join("docs/topics.md"),
        crate::topics_doc::render(&catalog),
    )
    .context("writing docs/topics.md")?;

    // Formatted as `cargo fmt` would, so that `make lint` passes with the new crate.
    let sources: Vec<PathBuf> = files
        .iter()
        .filter(|(p, _)| p.ends_with(".rs"))
        .map(|(p, _)| repo.join(p))
        .collect();
    let formatted = std::process::Command::new("rustfmt")
        .args(["--edition", "2021"])
        .args(&sources)
        .status();
    if !formatted.is_ok_and(|s| s.success()) {
        eprintln!("note: rustfmt did not run; run `cargo fmt` before `make lint`");
    }
    for (path, _) in &files {
        crate::emit(format!("created {path}"));
    }
    crate::emit(format!(
        "catalog: {} and {dlq} added to schemas/topics.toml; docs/topics.md regenerated",
        args.output
    ));
    crate::emit(format!(
        "workspace: processors/{} added to Cargo.toml\nnext: cargo test -p {}   (then edit processors/{}/src/lib.rs)",
        args.name, args.name, args.name
    ));
    Ok(())
}

/// The short names of the record, enum and fixed types a schema defines, nested ones too.
fn named_types(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Array(branches) => branches.iter().for_each(|b| named_types(b, out)),
        Value::Object(o) => {
            if let (Some("record" | "enum" | "fixed"), Some(name)) = (
                o.get("type").and_then(Value::as_str),
                o.get("name").and_then(Value::as_str),
            ) {
                out.push(name.rsplit('.').next().unwrap_or(name).to_owned());
            }
            for key in ["type", "items", "values"] {
                if let Some(inner) = o.get(key) {
                    named_types(inner, out);
                }
            }
            if let Some(Value::Array(fields)) = o.get("fields") {
                fields.iter().for_each(|f| named_types(f, out));
            }
        }
        _ => {}
    }
}

fn append_catalog(
    repo: &Path,
    args: &ProcessorArgs,
    dlq: &str,
    output_schema: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let path = repo.join("schemas/topics.toml");
    let mut text = std::fs::read_to_string(&path).context("reading schemas/topics.toml")?;
    let name = &args.name;
    text.push_str(&format!(
        r#"
# --- {name} (scaffolded by `switchyard new processor`) --------------------------------

[[topic]]
name = "{out}"
role = "table"
key = "the input's key"
value_schema = "{output_schema}"
partitions = {partitions}
cleanup_policy = "delete"
retention_ms = 604800000
producers = ["{name}"]
consumers = ["operators"]
description = "What {name} writes."

[[topic]]
name = "{dlq}"
role = "dead-letter"
key = "original"
value_format = "raw"
partitions = 1
cleanup_policy = "delete"
retention_ms = 2592000000
producers = ["{name}"]
consumers = ["operators"]
description = "Records {name} could not handle, as they were, with headers saying why."
"#,
        out = args.output,
    ));
    std::fs::write(&path, text).context("writing schemas/topics.toml")
}

fn add_workspace_member(repo: &Path, name: &str) -> anyhow::Result<()> {
    let path = repo.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).context("reading Cargo.toml")?;
    let start = text
        .find("members = [")
        .context("Cargo.toml has no workspace members")?;
    let end = start
        + text[start..]
            .find(']')
            .context("Cargo.toml's members list is not closed")?;
    let updated = format!(
        "{}    \"processors/{name}\",\n{}",
        &text[..end],
        &text[end..]
    );
    std::fs::write(&path, updated).context("writing Cargo.toml")
}

/// The Docker deployment runs it too: a service in `compose.yml` (the processors' common
/// settings, its binary as the command) and a scrape target for Prometheus. The image needs
/// no edit: it holds every binary of the workspace.
fn add_to_docker_deployment(repo: &Path, name: &str) -> anyhow::Result<()> {
    let path = repo.join("compose.yml");
    let text = std::fs::read_to_string(&path).context("reading compose.yml")?;
    let anchor = "\n  api:\n";
    let at = text
        .find(anchor)
        .context("compose.yml has no `api:` service to add the processor before")?;
    let service = format!("\n  {name}:\n    <<: *processor\n    command: [\"{name}\"]\n");
    let updated = format!("{}{service}{}", &text[..at], &text[at..]);
    std::fs::write(&path, updated).context("writing compose.yml")?;

    let path = repo.join("monitoring/prometheus-compose.yml");
    let text =
        std::fs::read_to_string(&path).context("reading monitoring/prometheus-compose.yml")?;
    let job = text
        .find("job_name: switchyard-processors")
        .context("prometheus-compose.yml has no switchyard-processors job")?;
    let targets = job
        + text[job..]
            .find("targets: [")
            .context("the switchyard-processors job has no targets list")?;
    let close = targets
        + text[targets..]
            .find(']')
            .context("the targets list is not closed")?;
    let updated = format!("{}, \"{name}:9100\"{}", &text[..close], &text[close..]);
    std::fs::write(&path, updated).context("writing monitoring/prometheus-compose.yml")
}
