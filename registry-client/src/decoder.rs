//! Reading Confluent-framed Avro records into Rust types, whatever version of the topic's
//! schema wrote them: records written with the reader's own schema are decoded directly,
//! others are resolved to it (the writer schema fetched from the registry once per id).

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use switchyard_schemas::wire::{from_value, split_frame, ResolvingReader, SchemaCodec};

use crate::RegistryClient;

pub struct RecordDecoder {
    registry: RegistryClient,
    reader_id: i32,
    reader: Arc<SchemaCodec>,
    resolvers: HashMap<i32, ResolvingReader>,
}

impl RecordDecoder {
    /// `reader` is the schema the caller's type follows, registered under `reader_id`.
    pub fn new(registry: RegistryClient, reader_id: i32, reader: Arc<SchemaCodec>) -> Self {
        RecordDecoder {
            registry,
            reader_id,
            reader,
            resolvers: HashMap::new(),
        }
    }

    /// Decode one record value; the error says what was wrong with it.
    pub async fn decode<T: DeserializeOwned>(
        &mut self,
        payload: Option<&[u8]>,
    ) -> Result<T, String> {
        let (writer, body) = split_frame(payload.ok_or("empty record")?)?;
        if writer == self.reader_id {
            return self.reader.decode(body);
        }
        let resolver = match self.resolvers.entry(writer) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let text = self
                    .registry
                    .schema_by_id(writer)
                    .await
                    .map_err(|e| format!("writer schema {writer}: {e}"))?;
                let writer_codec = SchemaCodec::parse(&text)?;
                v.insert(ResolvingReader::new(&writer_codec, &self.reader)?)
            }
        };
        let value = resolver.read_value(body)?;
        from_value(&value)
    }
}
