//! `carrier-state`: run the carrier state store on Kafka.
switchyard_pipeline::processor_main!(
    "The store of every modem's SIM carrier and its switch requests",
    |config, _| Ok(carrier_state::CarrierStateProcessor::new(config))
);
