//! Any bytes as a Confluent-framed Avro record of any catalog topic, decoded the ways the
//! services decode them (into the typed record, and as a generic value): an error or a
//! value, never a panic or a runaway allocation.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use switchyard_schemas::records::{CarrierState, CarrierSwitchRequest, SensorReading};
use switchyard_schemas::wire::{split_frame, SchemaCodec};
use switchyard_schemas::Catalog;

fn codecs() -> &'static [Arc<SchemaCodec>] {
    static CODECS: OnceLock<Vec<Arc<SchemaCodec>>> = OnceLock::new();
    CODECS.get_or_init(|| {
        let catalog = Catalog::embedded().expect("catalog");
        catalog
            .topics
            .iter()
            .filter_map(|t| catalog.value_schema(&t.name))
            .map(|text| SchemaCodec::parse(text).expect("schema"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let codecs = codecs();
    let codec = &codecs[usize::from(pick) % codecs.len()];
    if let Ok((_, body)) = split_frame(payload) {
        let _ = codec.read_value(body);
        let _ = codec.decode::<SensorReading>(body);
        let _ = codec.decode::<CarrierSwitchRequest>(body);
        let _ = codec.decode::<CarrierState>(body);
    }
});
