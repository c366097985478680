//! The Confluent wire format (re-exported from `switchyard_schemas::wire`) and the checks
//! that bind a Rust type to a topic's schema.

pub use switchyard_schemas::wire::{decode_with, encode, from_value, read_datum, split_frame};

use std::collections::HashMap;

use apache_avro::schema::{Name, RecordSchema, Schema};
use apache_avro::types::Value;
use switchyard_schemas::records::TopicRecord;

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
    use std::sync::Arc;
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
