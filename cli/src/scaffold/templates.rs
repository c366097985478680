//! What `switchyard new processor` writes: the crate's files (and, for a counting
//! processor, the output's schema), from one of two templates.

use serde_json::{json, Value};

use super::{pascal, ProcessorArgs};

/// One input topic of the new processor.
pub(super) struct Input {
    pub topic: String,
    /// Its values' type in `switchyard_schemas::records`.
    pub rust_type: &'static str,
    /// A minimal value of its schema, as JSON, for the generated tests.
    pub example: Value,
    pub partitions: i32,
}

/// The files to write, by path relative to the repository.
pub(super) fn render(args: &ProcessorArgs, inputs: &[Input]) -> Vec<(String, String)> {
    if args.pass_through {
        pass_through(args, inputs)
    } else {
        counting(args, inputs)
    }
}

/// `Cargo.toml` and the five-line `main.rs`, the same for both templates.
fn crate_files(args: &ProcessorArgs, what_it_does: &str) -> (String, String) {
    let name = &args.name;
    let krate = name.replace('-', "_");
    let ty = pascal(name);
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
switchyard_pipeline::processor_main!("{name}: {what_it_does}", |_catalog| {{
    Ok({krate}::{ty})
}});
"#
    );
    (cargo, main)
}

/// The pass-through processor: the output carries the inputs' own record type, and every
/// record is forwarded unchanged, ready to be filtered or changed.
fn pass_through(args: &ProcessorArgs, inputs: &[Input]) -> Vec<(String, String)> {
    let name = &args.name;
    let ty = pascal(name);
    let out = &args.output;
    let (cargo, main) = crate_files(args, "forwards records");
    let record = inputs[0].rust_type;
    let first_topic = &inputs[0].topic;
    let topics = inputs
        .iter()
        .map(|i| format!("{:?}", i.topic))
        .collect::<Vec<_>>()
        .join(", ");
    let inputs_list = inputs_list(inputs);
    let behaviour = format!(
        r##"    #[test]
    fn forwards_every_record_unchanged() {{
        let mut d = TestDriver::new({ty}).expect("valid topology");
        d.pipe("{first_topic}", "a", &example(), 1_000).expect("ok");
        d.pipe("{first_topic}", "b", &example(), 2_000).expect("ok");
        let out: Vec<(Option<String>, Option<i64>)> = d
            .read_output::<{record}>(OUTPUT)
            .into_iter()
            .map(|r| {{
                assert_eq!(r.value, example());
                (r.key, r.timestamp_ms)
            }})
            .collect();
        assert_eq!(out, [(Some("a".into()), Some(1_000)), (Some("b".into()), Some(2_000))]);
    }}

"##
    );
    let tests = test_module(&ty, &inputs[0], record, &behaviour);
    let lib = format!(
        r##"//! `{name}`: reads {inputs_list}, writes `{out}`, all of them `{record}`. Scaffolded by
//! `switchyard new processor --pass-through`: it forwards every record unchanged, keeping
//! its key and timestamp; filter or change records in `process` (docs/pipeline.md).

use switchyard_pipeline::{{Context, ProcessError, Processor, Record, Topology}};
use switchyard_schemas::records::{record};

pub const NAME: &str = "{name}";
pub const OUTPUT: &str = "{out}";

pub struct {ty};

impl Processor for {ty} {{
    fn topology(&self) -> Topology {{
        Topology::new(NAME)
            .inputs::<{record}>([{topics}])
            .output::<{record}>(OUTPUT)
    }}

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {{
        // Decoding checks the value against its topic's schema; an undecodable record is
        // dead-lettered to `{name}-dlq`.
        let value: {record} = record.value()?;
        let key = String::from_utf8_lossy(record.key.unwrap_or_default()).into_owned();
        ctx.send(OUTPUT, &key, &value, record.timestamp_ms)
    }}
}}

{tests}"##
    );
    vec![
        (format!("processors/{name}/Cargo.toml"), cargo),
        (format!("processors/{name}/src/main.rs"), main),
        (format!("processors/{name}/src/lib.rs"), lib),
    ]
}

/// A minimal value of an Avro schema, as the JSON serde reads into the matching record type.
pub(super) fn example(schema: &Value) -> Value {
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

/// The counting processor: a new output schema, a store, a count per key and input topic.
fn counting(args: &ProcessorArgs, inputs: &[Input]) -> Vec<(String, String)> {
    let name = &args.name;
    let ty = pascal(name);
    let out = &args.output;
    let record = pascal(out);
    let types: Vec<&str> = {
        let mut t: Vec<&str> = inputs.iter().map(|i| i.rust_type).collect();
        t.push(&record);
        t.sort_unstable();
        t.dedup();
        t
    };
    let topology_inputs: String = inputs
        .iter()
        .map(
            |Input {
                 topic,
                 rust_type: t,
                 ..
             }| format!("\n            .input::<{t}>(\"{topic}\")"),
        )
        .collect();
    let arms: String = inputs
        .iter()
        .map(|Input { topic, rust_type: t, .. }| {
            format!("            \"{topic}\" => {{\n                let _value: {t} = record.value()?;\n            }}\n")
        })
        .collect();
    let first_topic = &inputs[0].topic;
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
    let (cargo, main) = crate_files(args, "counts records per key and input topic");
    let behaviour = format!(
        r##"    #[test]
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

"##
    );
    let tests = test_module(&ty, &inputs[0], &record, &behaviour);
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

{tests}"##,
        inputs_list = inputs_list(inputs),
        types = types.join(", "),
    );
    vec![
        (format!("processors/{name}/Cargo.toml"), cargo),
        (format!("processors/{name}/src/main.rs"), main),
        (format!("processors/{name}/src/lib.rs"), lib),
        (format!("schemas/avro/{out}.avsc"), schema + "\n"),
    ]
}

/// The input topics as the generated docs name them: `imu`, `iot-status`.
fn inputs_list(inputs: &[Input]) -> String {
    inputs
        .iter()
        .map(|i| format!("`{}`", i.topic))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The generated crate's test module: an example value of the first input, the template's
/// own test (`behaviour`), and the dead-letter test both templates share.
fn test_module(ty: &str, first: &Input, output_type: &str, behaviour: &str) -> String {
    let (first_topic, first_type) = (&first.topic, first.rust_type);
    let example_json = serde_json::to_string(&first.example).unwrap_or_default();
    format!(
        r##"#[cfg(test)]
mod tests {{
    use super::*;
    use switchyard_pipeline::{{FailureKind, TestDriver}};

    fn example() -> {first_type} {{
        serde_json::from_str(r#"{example_json}"#).expect("an example {first_type}")
    }}

{behaviour}
    #[test]
    fn an_undecodable_record_is_dead_lettered() {{
        let mut d = TestDriver::new({ty}).expect("valid topology");
        d.pipe_raw("{first_topic}", Some(b"a"), Some(b"not avro"), 1).expect("continues");
        assert_eq!(d.dead_letters()[0].kind, FailureKind::Undecodable);
        assert!(d.read_output::<{output_type}>(OUTPUT).is_empty());
    }}
}}
"##
    )
}
