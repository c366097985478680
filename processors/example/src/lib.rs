//! The example processor, the one to copy: for every sensor reading it bumps a per-modem,
//! per-sensor count in a state store and publishes the new count to `reading-counts`.
//!
//! Everything a processor needs is here: a topology (inputs, output, store) and `process`.
//! Its output type, `ReadingCount`, is generated from `schemas/avro/reading-count.avsc`
//! (every `.avsc` there becomes a type in `switchyard_schemas::records`).
//! The framework does the rest: consumer group, registry, commits, dead letters, restoring
//! the store after a restart, metrics. See docs/pipeline.md.

use switchyard_pipeline::{Context, ProcessError, Processor, Record, Topology};
use switchyard_schemas::records::{ReadingCount, SensorReading};
use switchyard_schemas::{Catalog, Role};

/// The processor's name: its consumer group, and the prefix of its dead-letter and changelog topics.
pub const NAME: &str = "reading-counter";
pub const OUTPUT: &str = "reading-counts";
const STORE: &str = "counts";

pub struct ReadingCounter {
    sensor_topics: Vec<String>,
}

impl ReadingCounter {
    /// Reads every sensor topic the catalog names.
    pub fn new(catalog: &Catalog) -> Self {
        ReadingCounter {
            sensor_topics: catalog
                .topics_with_role(Role::Sensor)
                .map(|t| t.name.clone())
                .collect(),
        }
    }
}

impl Processor for ReadingCounter {
    fn topology(&self) -> Topology {
        Topology::new(NAME)
            .inputs::<SensorReading>(self.sensor_topics.clone())
            .output::<ReadingCount>(OUTPUT)
            .store::<i64>(STORE)
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let reading: SensorReading = record.value()?;
        let key = format!("{}/{}", reading.modem_id, reading.sensor);
        let counts = ctx.store(STORE)?;
        let count = counts.get::<i64>(&key)?.unwrap_or(0) + 1;
        counts.put(&key, &count)?;
        let out = ReadingCount {
            modem_id: reading.modem_id.clone(),
            sensor: reading.sensor,
            count,
            last_sensor_time: reading.timestamp,
        };
        ctx.send(
            OUTPUT,
            &reading.modem_id,
            &out,
            Some(reading.timestamp / 1000),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_pipeline::{FailureKind, TestDriver};

    fn reading(modem: &str, sensor: &str, t: i64) -> SensorReading {
        SensorReading {
            modem_id: modem.into(),
            device_id: 1,
            sensor: sensor.into(),
            timestamp: t,
            value: Some(1),
            data: vec![0, 0, 0, 1],
            received_at: t,
            sequence: None,
        }
    }

    fn driver() -> TestDriver<ReadingCounter> {
        let catalog = Catalog::embedded().expect("catalog");
        TestDriver::new(ReadingCounter::new(&catalog)).expect("valid topology")
    }

    #[test]
    fn counts_each_modem_and_sensor_separately() {
        let mut d = driver();
        d.pipe("imu", "a", &reading("a", "imu", 1_000_000), 1_000)
            .expect("ok");
        d.pipe("imu", "a", &reading("a", "imu", 2_000_000), 2_000)
            .expect("ok");
        d.pipe("temp", "a", &reading("a", "temp", 3_000_000), 3_000)
            .expect("ok");
        d.pipe("imu", "b", &reading("b", "imu", 4_000_000), 4_000)
            .expect("ok");
        let out: Vec<(Option<String>, i64, i64)> = d
            .read_output::<ReadingCount>(OUTPUT)
            .into_iter()
            .map(|r| (r.key, r.value.count, r.timestamp_ms.unwrap_or_default()))
            .collect();
        assert_eq!(
            out,
            vec![
                (Some("a".into()), 1, 1_000),
                (Some("a".into()), 2, 2_000),
                (Some("a".into()), 1, 3_000),
                (Some("b".into()), 1, 4_000)
            ]
        );
    }

    #[test]
    fn counting_resumes_after_a_restart() {
        let mut d = driver();
        for t in 0..3 {
            d.pipe("gyro", "a", &reading("a", "gyro", t), t)
                .expect("ok");
        }
        let catalog = Catalog::embedded().expect("catalog");
        let mut d = d.restart(ReadingCounter::new(&catalog)).expect("restart");
        d.pipe("gyro", "a", &reading("a", "gyro", 9), 9)
            .expect("ok");
        let last = d
            .read_output::<ReadingCount>(OUTPUT)
            .pop()
            .map(|r| r.value.count);
        assert_eq!(last, Some(4));
    }

    #[test]
    fn garbage_is_dead_lettered() {
        let mut d = driver();
        d.pipe_raw("imu", Some(b"a"), Some(b"garbage"), 1)
            .expect("continues");
        let dead = d.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].kind, FailureKind::Undecodable);
    }
}
