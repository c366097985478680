//! Reader aliases on named types, as the Avro specification resolves them: "rewrite the
//! writer's schema using aliases from the reader's schema". Java Avro's
//! `SchemaCompatibility` (what Confluent runs) takes a writer's record, enum or fixed as
//! the reader's when the writer's full name is one of the reader type's aliases; apache-avro
//! 0.22 compares names only. So before apache-avro checks a pair, every named type of the
//! writer whose full name the reader lists as an alias is renamed to the reader's type.
//!
//! Names are resolved as the specification says: a name with a dot is full; otherwise it is
//! in the namespace of its definition (`namespace`), or of the nearest enclosing named type.
//! Aliases without a dot are in the namespace of the type that declares them.

use std::collections::HashMap;

use apache_avro::Schema;
use serde_json::Value;

/// Names that are never a named type: primitives, and the keywords of complex types
/// (the value of `type` in `{"type": "record", ...}`).
const NOT_TYPE_NAMES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string", "record", "error",
    "enum", "fixed", "array", "map",
];

/// `name` in namespace `ns` as a full name.
fn full_name(name: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

/// The namespace of a full name (`None` for the null namespace).
fn namespace_of(full: &str) -> Option<&str> {
    full.rsplit_once('.').map(|(ns, _)| ns)
}

fn is_named_definition(object: &serde_json::Map<String, Value>) -> bool {
    matches!(
        object.get("type").and_then(Value::as_str),
        Some("record" | "error" | "enum" | "fixed")
    ) && object.get("name").is_some_and(Value::is_string)
}

/// The full name a named definition declares, given the enclosing namespace.
fn defined_name(object: &serde_json::Map<String, Value>, enclosing: Option<&str>) -> String {
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ns = object
        .get("namespace")
        .and_then(Value::as_str)
        .or(enclosing);
    full_name(name, ns)
}

/// Every alias of the reader's named types, as a full name, with the type it names.
fn reader_aliases(schema: &Value, enclosing: Option<&str>, out: &mut HashMap<String, String>) {
    match schema {
        Value::Array(branches) => {
            for b in branches {
                reader_aliases(b, enclosing, out);
            }
        }
        Value::Object(object) => {
            let mut ns = enclosing.map(str::to_string);
            if is_named_definition(object) {
                let full = defined_name(object, enclosing);
                ns = namespace_of(&full).map(str::to_string);
                for alias in object
                    .get("aliases")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    out.insert(full_name(alias, ns.as_deref()), full.clone());
                }
            }
            for (key, child) in object {
                if matches!(key.as_str(), "type" | "items" | "values" | "fields") {
                    reader_aliases(child, ns.as_deref(), out);
                }
            }
        }
        _ => {}
    }
}

/// Write every name in `schema` (definitions and references) as a full name, renamed by
/// `renames` where it has an entry.
fn rename(schema: &mut Value, enclosing: Option<&str>, renames: &HashMap<String, String>) {
    match schema {
        Value::String(name) if !NOT_TYPE_NAMES.contains(&name.as_str()) => {
            let full = full_name(name, enclosing);
            *name = renames.get(&full).cloned().unwrap_or(full);
        }
        Value::Array(branches) => {
            for b in branches {
                rename(b, enclosing, renames);
            }
        }
        Value::Object(object) => {
            let mut ns = enclosing.map(str::to_string);
            if is_named_definition(object) {
                let full = defined_name(object, enclosing);
                // Nested names resolve in the namespace the writer gave them.
                ns = namespace_of(&full).map(str::to_string);
                let new = renames.get(&full).cloned().unwrap_or(full);
                object.insert("name".into(), Value::String(new));
                object.remove("namespace");
            }
            for (key, child) in object.iter_mut() {
                match key.as_str() {
                    // A field's name is not a type name; its type is.
                    "fields" => {
                        for field in child.as_array_mut().into_iter().flatten() {
                            if let Some(t) = field.get_mut("type") {
                                rename(t, ns.as_deref(), renames);
                            }
                        }
                    }
                    "type" | "items" | "values" => rename(child, ns.as_deref(), renames),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// `writer` with its named types renamed to the reader's where the reader lists the
/// writer's name as an alias; the writer itself when nothing needs renaming.
pub fn apply_reader_aliases(writer: &Schema, reader: &Schema) -> Result<Schema, String> {
    let reader_json = serde_json::to_value(reader).map_err(|e| e.to_string())?;
    let mut renames = HashMap::new();
    reader_aliases(&reader_json, None, &mut renames);
    if renames.is_empty() {
        return Ok(writer.clone());
    }
    let mut writer_json = serde_json::to_value(writer).map_err(|e| e.to_string())?;
    rename(&mut writer_json, None, &renames);
    Schema::parse(&writer_json).map_err(|e| format!("writer schema with reader aliases: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Schema {
        Schema::parse_str(text).expect("test schema")
    }

    #[test]
    fn a_writer_type_the_reader_names_as_an_alias_takes_the_readers_name() {
        let writer = parse(
            r#"{"type":"record","name":"Reading","namespace":"io.s","fields":[
                {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A"]}},
                {"name":"again","type":"Kind"}]}"#,
        );
        let reader = parse(
            r#"{"type":"record","name":"Reading2","namespace":"io.s","aliases":["Reading"],"fields":[
                {"name":"kind","type":{"type":"enum","name":"Kind2","aliases":["io.s.Kind"],"symbols":["A"]}},
                {"name":"again","type":"Kind2"}]}"#,
        );
        let renamed = serde_json::to_value(apply_reader_aliases(&writer, &reader).expect("ok"))
            .expect("json");
        assert_eq!(renamed["name"], "Reading2");
        assert_eq!(renamed["namespace"], "io.s");
        assert_eq!(renamed["fields"][0]["type"]["name"], "Kind2");
        assert_eq!(
            renamed["fields"][1]["type"], "io.s.Kind2",
            "references follow"
        );
    }

    #[test]
    fn a_relative_alias_is_in_the_readers_namespace_not_the_writers() {
        let writer = parse(r#"{"type":"fixed","name":"Id","namespace":"other","size":4}"#);
        let reader =
            parse(r#"{"type":"fixed","name":"Id2","namespace":"io.s","aliases":["Id"],"size":4}"#);
        let same = apply_reader_aliases(&writer, &reader).expect("ok");
        assert_eq!(
            serde_json::to_value(same).expect("json")["namespace"],
            "other",
            "io.s.Id is the alias; other.Id is not renamed"
        );
    }
}
