//! The Confluent wire format: `0x00 | schema id (u32 big-endian) | Avro binary`.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

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

/// Decode a value as `T` (used by typed test-driver reads).
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    apache_avro::from_value(value).map_err(|e| e.to_string())
}

/// A schema fixed for the life of the process, with its Avro reader and writer built once
/// (building them resolves every named type, which is too slow to repeat per record).
///
/// The schema is leaked to give the reader and writer a `'static` borrow: a process holds
/// one codec per topic schema and per writer schema id it meets, a small, bounded set.
pub struct SchemaCodec {
    schema: &'static Schema,
    reader: GenericDatumReader<'static>,
    writer: GenericDatumWriter<'static>,
}

impl std::fmt::Debug for SchemaCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaCodec")
            .field("schema", &self.schema.name())
            .finish()
    }
}

impl SchemaCodec {
    pub fn new(schema: Schema) -> Result<Arc<SchemaCodec>, String> {
        let schema: &'static Schema = Box::leak(Box::new(schema));
        let reader = GenericDatumReader::builder(schema)
            .build()
            .map_err(|e| e.to_string())?;
        let writer = GenericDatumWriter::builder(schema)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(SchemaCodec {
            schema,
            reader,
            writer,
        }))
    }

    pub fn parse(text: &str) -> Result<Arc<SchemaCodec>, String> {
        SchemaCodec::new(Schema::parse_str(text).map_err(|e| e.to_string())?)
    }

    pub fn schema(&self) -> &'static Schema {
        self.schema
    }

    /// Whether `other` is the same schema in every detail (names, aliases, defaults,
    /// logical types, field order), so bodies of either read as the other directly.
    pub fn same_schema(&self, other: &SchemaCodec) -> bool {
        match (
            serde_json::to_string(self.schema),
            serde_json::to_string(other.schema),
        ) {
            (Ok(mine), Ok(theirs)) => mine == theirs,
            _ => false,
        }
    }

    /// Serialize `value` straight into a Confluent frame with schema id `id`.
    pub fn encode<T: Serialize>(&self, id: i32, value: &T) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(64);
        out.push(0);
        out.extend_from_slice(&id.to_be_bytes());
        self.writer
            .write_ser(&mut out, value)
            .map_err(|e| format!("value does not fit the schema: {e}"))?;
        Ok(out)
    }

    /// Write a generic value (already of this schema) into a Confluent frame with id `id`.
    pub fn encode_value(&self, id: i32, value: Value) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(64);
        out.push(0);
        out.extend_from_slice(&id.to_be_bytes());
        let body = self
            .writer
            .write_value_to_vec(value)
            .map_err(|e| format!("value does not fit the schema: {e}"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Deserialize an Avro body written with this schema straight into `T`.
    pub fn decode<T: DeserializeOwned>(&self, mut body: &[u8]) -> Result<T, String> {
        self.reader.read_deser(&mut body).map_err(|e| e.to_string())
    }

    /// Read an Avro body written with this schema as a generic value.
    pub fn read_value(&self, mut body: &[u8]) -> Result<Value, String> {
        self.reader.read_value(&mut body).map_err(|e| e.to_string())
    }
}

/// Reads bodies written with one schema as another (schema resolution), built once.
pub struct ResolvingReader {
    reader: GenericDatumReader<'static>,
}

impl ResolvingReader {
    pub fn new(writer: &SchemaCodec, reader: &SchemaCodec) -> Result<ResolvingReader, String> {
        let reader = GenericDatumReader::builder(writer.schema())
            .reader_schema(reader.schema())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ResolvingReader { reader })
    }

    pub fn read_value(&self, mut body: &[u8]) -> Result<Value, String> {
        self.reader.read_value(&mut body).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod alias_tests {
    use super::*;

    /// The registry accepts renaming a type with its old name as an alias (as Confluent
    /// does), so a processor reading with the renamed schema must read the old records.
    #[test]
    fn records_of_a_type_renamed_with_an_alias_are_read_with_the_new_name() {
        let old = SchemaCodec::parse(
            r#"{"type":"record","name":"Reading","namespace":"io.s","fields":[{"name":"value","type":"int"}]}"#,
        )
        .expect("old");
        let new = SchemaCodec::parse(
            r#"{"type":"record","name":"Reading2","namespace":"io.s","aliases":["Reading"],"fields":[{"name":"value","type":"int"}]}"#,
        )
        .expect("new");
        #[derive(serde::Serialize)]
        struct Reading {
            value: i32,
        }
        let framed = old.encode(1, &Reading { value: 5 }).expect("encode");
        let (_, body) = split_frame(&framed).expect("frame");
        let read = ResolvingReader::new(&old, &new)
            .expect("resolvable")
            .read_value(body)
            .expect("read");
        assert_eq!(read, Value::Record(vec![("value".into(), Value::Int(5))]));
    }
}
