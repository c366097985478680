//! The Confluent wire format (`0x00 | schema id u32 BE | Avro binary`) and the checks that
//! bind a Rust type to a topic's schema.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, RecordSchema, Schema};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_schemas::records::TopicRecord;

/// Split a Confluent-framed payload into schema id and Avro body.
pub fn split_frame(payload: &[u8]) -> Result<(i32, &[u8]), String> {
    match payload {
        [0, a, b, c, d, body @ ..] => Ok((i32::from_be_bytes([*a, *b, *c, *d]), body)),
        [magic, ..] if payload.len() >= 5 => Err(format!(
            "unknown magic byte {magic:#04x} (Confluent framing starts with 0x00)"
        )),
        _ => Err(format!(
            "{} bytes is too short for the Confluent wire format",
            payload.len()
        )),
    }
}

/// Encode `value` with `schema` and frame it with `id`.
pub fn encode<T: Serialize>(id: i32, schema: &Schema, value: &T) -> Result<Vec<u8>, String> {
    let avro = apache_avro::to_value(value)
        .and_then(|v| v.resolve(schema))
        .map_err(|e| format!("value does not fit the schema: {e}"))?;
    let body = GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(avro))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a framed payload whose writer schema is known locally (the test driver's path).
pub fn decode_with(schemas: &HashMap<i32, Arc<Schema>>, payload: &[u8]) -> Result<Value, String> {
    let (id, mut body) = split_frame(payload)?;
    let schema = schemas
        .get(&id)
        .ok_or_else(|| format!("unknown schema id {id}"))?;
    read_datum(schema, None, &mut body)
}

/// Read one Avro datum written with `writer`, resolved to `reader` when given.
pub fn read_datum(
    writer: &Schema,
    reader: Option<&Schema>,
    body: &mut &[u8],
) -> Result<Value, String> {
    let datum = match reader {
        Some(reader) => GenericDatumReader::builder(writer)
            .reader_schema(reader)
            .build(),
        None => GenericDatumReader::builder(writer).build(),
    };
    datum
        .and_then(|d| d.read_value(body))
        .map_err(|e| e.to_string())
}

/// Whether `T` can be read from values of `schema`: decodes a value made of each field's
/// neutral element (0, "", null, first enum symbol, empty array) as `T`. A type that needs a
/// field the schema lacks, or a field of another type, fails here, at start-up.
pub fn check_readable<T: TopicRecord>(schema: &Schema) -> Result<(), String> {
    let names = named_schemas(schema);
    let zero = zero_value(schema, &names)?;
    apache_avro::from_value::<T>(&zero)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{} cannot be read from this schema: {e}",
                std::any::type_name::<T>()
            )
        })
}

/// Decode a value as `T` (used by typed test-driver reads).
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    apache_avro::from_value(value).map_err(|e| e.to_string())
}

fn named_schemas(schema: &Schema) -> HashMap<Name, Schema> {
    let mut names = HashMap::new();
    collect_names(schema, &mut names);
    names
}

fn collect_names(schema: &Schema, names: &mut HashMap<Name, Schema>) {
    match schema {
        Schema::Record(RecordSchema { name, fields, .. }) => {
            names.insert(name.clone(), schema.clone());
            for f in fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.clone(), schema.clone());
        }
        Schema::Fixed(f) => {
            names.insert(f.name.clone(), schema.clone());
        }
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        _ => {}
    }
}

fn zero_value(schema: &Schema, names: &HashMap<Name, Schema>) -> Result<Value, String> {
    Ok(match schema {
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(false),
        Schema::Int => Value::Int(0),
        Schema::Long => Value::Long(0),
        Schema::Float => Value::Float(0.0),
        Schema::Double => Value::Double(0.0),
        Schema::Bytes => Value::Bytes(Vec::new()),
        Schema::String => Value::String(String::new()),
        Schema::TimestampMicros | Schema::TimestampMillis => Value::Long(0),
        Schema::Date => Value::Int(0),
        Schema::Array(_) => Value::Array(Vec::new()),
        Schema::Map(_) => Value::Map(HashMap::new()),
        Schema::Enum(e) => Value::Enum(0, e.symbols.first().cloned().unwrap_or_default()),
        Schema::Fixed(f) => Value::Fixed(f.size, vec![0; f.size]),
        Schema::Union(union) => {
            let first = union.variants().first().ok_or("empty union")?;
            Value::Union(0, Box::new(zero_value(first, names)?))
        }
        Schema::Record(r) => Value::Record(
            r.fields
                .iter()
                .map(|f| Ok((f.name.clone(), zero_value(&f.schema, names)?)))
                .collect::<Result<_, String>>()?,
        ),
        Schema::Ref { name } => {
            let target = names
                .get(name)
                .ok_or_else(|| format!("unknown named type {name}"))?;
            zero_value(target, names)?
        }
        other => {
            return Err(format!(
                "schema type {other:?} is not supported by the pipeline"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::records::{CarrierState, GrafanaReading, SensorReading};
    use switchyard_schemas::Catalog;

    fn schema_of(topic: &str) -> Schema {
        let catalog = Catalog::embedded().expect("catalog");
        Schema::parse_str(catalog.value_schema(topic).expect("avro topic")).expect("schema")
    }

    #[test]
    fn matching_types_are_readable_and_mismatched_ones_are_not() {
        assert_eq!(check_readable::<SensorReading>(&schema_of("imu")), Ok(()));
        assert_eq!(
            check_readable::<GrafanaReading>(&schema_of("imu-grafana")),
            Ok(())
        );
        assert_eq!(
            check_readable::<CarrierState>(&schema_of("carrier-state")),
            Ok(())
        );
        // GrafanaReading needs `value: int`, which a SensorReading carries as a nullable union.
        let err = check_readable::<GrafanaReading>(&schema_of("imu")).expect_err("mismatch");
        assert!(err.contains("GrafanaReading"), "{err}");
        let err =
            check_readable::<SensorReading>(&schema_of("carrier-state")).expect_err("mismatch");
        assert!(err.contains("SensorReading"), "{err}");
    }

    #[test]
    fn frames_round_trip_and_bad_frames_are_named() {
        let schema = schema_of("imu-grafana");
        let value = GrafanaReading {
            modem_id: "1".into(),
            device_id: 2,
            value: 3,
        };
        let bytes = encode(7, &schema, &value).expect("encode");
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
        let schemas = HashMap::from([(7, Arc::new(schema))]);
        let decoded = decode_with(&schemas, &bytes).expect("decode");
        assert_eq!(from_value::<GrafanaReading>(&decoded), Ok(value));
        assert!(split_frame(&[1, 0, 0, 0, 1, 2])
            .expect_err("magic")
            .contains("magic"));
        assert!(split_frame(&[0, 1])
            .expect_err("short")
            .contains("too short"));
        assert!(decode_with(&schemas, &[0, 0, 0, 0, 9])
            .expect_err("id")
            .contains("unknown schema id 9"));
    }
}
