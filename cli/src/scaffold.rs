//! `switchyard new processor NAME --input TOPIC... --output TOPIC`: a new processor crate
//! that builds and whose tests pass, with everything around it: the output's schema, the
//! catalog entries (output and dead-letter topic), the workspace member, and the regenerated
//! `docs/topics.md`. The processor counts records per key and input topic, a starting point
//! to replace.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use switchyard_schemas::records::RECORD_TYPES;
use switchyard_schemas::Catalog;

use crate::Failure;

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
    if taken.contains(&record) {
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
        inputs.push((topic.clone(), *rust_type, example(&schema), t.partitions));
    }
    let partitions = inputs.iter().map(|i| i.3).max().unwrap_or(3);
    if inputs.iter().any(|i| i.3 != partitions) {
        return bad(
            "the inputs have different partition counts (see docs/pipeline.md, co-partitioning)"
                .into(),
        );
    }

    let files = render(args, &inputs);
    std::fs::create_dir_all(crate_dir.join("src")).context("creating the crate")?;
    for (path, text) in &files {
        std::fs::write(repo.join(path), text).with_context(|| format!("writing {path}"))?;
    }
    append_catalog(repo, args, &dlq, partitions)?;
    add_workspace_member(repo, &args.name)?;
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

/// A minimal value of an Avro schema, as the JSON serde reads into the matching record type.
fn example(schema: &Value) -> Value {
    match schema {
        Value::String(t) => match t.as_str() {
            "string" => json!(""),
            "boolean" => json!(false),
            "int" | "long" | "float" | "double" => json!(0),
            "bytes" => json!([]),
            _ => Value::Null,
        },
        Value::Array(branches) => branches.first().map(example).unwrap_or(Value::Null),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("record") => Value::Object(
                o.get("fields")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|f| {
                        Some((
                            f.get("name")?.as_str()?.to_string(),
                            example(f.get("type")?),
                        ))
                    })
                    .collect(),
            ),
            Some("enum") => o
                .get("symbols")
                .and_then(|s| s.get(0))
                .cloned()
                .unwrap_or(Value::Null),
            Some("array") => json!([]),
            Some("map") => json!({}),
            Some("fixed") => json!(vec![
                0;
                o.get("size").and_then(Value::as_u64).unwrap_or(0)
                    as usize
            ]),
            Some(other) => example(&Value::String(other.to_string())),
            None => o.get("type").map(example).unwrap_or(Value::Null),
        },
        _ => Value::Null,
    }
}

fn render(args: &ProcessorArgs, inputs: &[(String, &str, Value, i32)]) -> Vec<(String, String)> {
    let name = &args.name;
    let krate = name.replace('-', "_");
    let ty = pascal(name);
    let out = &args.output;
    let record = pascal(out);
    let types: Vec<&str> = {
        let mut t: Vec<&str> = inputs.iter().map(|i| i.1).collect();
        t.push(&record);
        t.sort_unstable();
        t.dedup();
        t
    };
    let topology_inputs: String = inputs
        .iter()
        .map(|(topic, t, _, _)| format!("\n            .input::<{t}>(\"{topic}\")"))
        .collect();
    let arms: String = inputs
        .iter()
        .map(|(topic, t, _, _)| {
            format!("            \"{topic}\" => {{\n                let _value: {t} = record.value()?;\n            }}\n")
        })
        .collect();
    let (first_topic, first_type, first_example, _) = &inputs[0];
    let example_json = serde_json::to_string(first_example).unwrap_or_default();
    let schema = serde_json::to_string_pretty(&json!({
        "type": "record",
        "name": record,
        "namespace": "io.switchyard",
        "doc": format!("{name}'s output: records counted per key and input topic (scaffolded; change it with the processor)."),
        "fields": [
            {"name": "key", "type": "string", "doc": "The input record's key."},
            {"name": "input_topic", "type": "string"},
            {"name": "count", "type": "long", "doc": "Records with this key seen on this topic so far."}
        ]
    }))
    .unwrap_or_default();
    let cargo = format!(
        r#"[package]
name = "{name}"
description = "{name}: a Switchyard processor (scaffolded by `switchyard new processor`)."
version.workspace = true
edition.workspace = true
license.workspace = true

[dependencies]
switchyard-pipeline.workspace = true
switchyard-schemas.workspace = true

[dev-dependencies]
serde_json.workspace = true
"#
    );
    let main = format!(
        r#"//! `{name}`: run the processor on Kafka.
switchyard_pipeline::processor_main!("{name}: counts records per key and input topic", |_catalog| {{
    Ok({krate}::{ty})
}});
"#
    );
    let lib = format!(
        r##"//! `{name}`: reads {inputs_list}, writes `{out}`. Scaffolded by `switchyard new processor`:
//! it counts records per key and input topic; replace `process` with what it should do
//! (docs/pipeline.md), and `schemas/avro/{out}.avsc` with what it writes: `{record}` is
//! generated from that file when `switchyard-schemas` builds.

use switchyard_pipeline::{{Context, ProcessError, Processor, Record, Topology}};
use switchyard_schemas::records::{{{types}}};

pub const NAME: &str = "{name}";
pub const OUTPUT: &str = "{out}";
const COUNTS: &str = "counts";

pub struct {ty};

impl Processor for {ty} {{
    fn topology(&self) -> Topology {{
        Topology::new(NAME){topology_inputs}
            .output::<{record}>(OUTPUT)
            .store::<i64>(COUNTS)
    }}

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {{
        // Decoding checks the value against its topic's schema; an undecodable record is
        // dead-lettered to `{name}-dlq`.
        match record.topic {{
{arms}            other => return Err(ProcessError::failed(format!("unexpected input topic {{other}}"))),
        }}
        let key = String::from_utf8_lossy(record.key.unwrap_or_default()).into_owned();
        let counted = format!("{{}}/{{key}}", record.topic);
        let count = ctx.store(COUNTS)?.get::<i64>(&counted)?.unwrap_or(0) + 1;
        ctx.store(COUNTS)?.put(&counted, &count)?;
        let out = {record} {{
            key: key.clone(),
            input_topic: record.topic.to_string(),
            count,
        }};
        ctx.send(OUTPUT, &key, &out, record.timestamp_ms)
    }}
}}

#[cfg(test)]
mod tests {{
    use super::*;
    use switchyard_pipeline::{{FailureKind, TestDriver}};

    fn example() -> {first_type} {{
        serde_json::from_str(r#"{example_json}"#).expect("an example {first_type}")
    }}

    #[test]
    fn counts_records_per_key_and_input_topic() {{
        let mut d = TestDriver::new({ty}).expect("valid topology");
        d.pipe("{first_topic}", "a", &example(), 1_000).expect("ok");
        d.pipe("{first_topic}", "a", &example(), 2_000).expect("ok");
        d.pipe("{first_topic}", "b", &example(), 3_000).expect("ok");
        let out: Vec<(String, i64)> = d
            .read_output::<{record}>(OUTPUT)
            .into_iter()
            .map(|r| (r.value.key, r.value.count))
            .collect();
        assert_eq!(out, [("a".into(), 1), ("a".into(), 2), ("b".into(), 1)]);
    }}

    #[test]
    fn an_undecodable_record_is_dead_lettered() {{
        let mut d = TestDriver::new({ty}).expect("valid topology");
        d.pipe_raw("{first_topic}", Some(b"a"), Some(b"not avro"), 1).expect("continues");
        assert_eq!(d.dead_letters()[0].kind, FailureKind::Undecodable);
        assert!(d.read_output::<{record}>(OUTPUT).is_empty());
    }}
}}
"##,
        inputs_list = inputs
            .iter()
            .map(|i| format!("`{}`", i.0))
            .collect::<Vec<_>>()
            .join(", "),
        types = types.join(", "),
    );
    vec![
        (format!("processors/{name}/Cargo.toml"), cargo),
        (format!("processors/{name}/src/main.rs"), main),
        (format!("processors/{name}/src/lib.rs"), lib),
        (format!("schemas/avro/{out}.avsc"), schema + "\n"),
    ]
}

fn append_catalog(
    repo: &Path,
    args: &ProcessorArgs,
    dlq: &str,
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
value_schema = "{out}.avsc"
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
