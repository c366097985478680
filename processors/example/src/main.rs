//! `reading-counter`: the example processor, on Kafka.
switchyard_pipeline::processor_main!(
    "Counts readings per modem and sensor (the example Switchyard processor)",
    |catalog| Ok(reading_counter::ReadingCounter::new(catalog))
);
