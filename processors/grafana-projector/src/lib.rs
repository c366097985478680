//! grafana-projector: every sensor reading, republished to `<sensor>-grafana` without its
//! timestamp field and with the Kafka record timestamp set to the sensor's collection time.
//!
//! Grafana's Kafka datasource plots a point at its record timestamp and ignores time fields
//! in the payload, so this is what makes each point appear when it was measured rather than
//! when it arrived. Sensor topics come from the catalog (role `sensor`), so a sensor added
//! there is projected without code changes.
//!
//! Kafka timestamps are milliseconds: the sensor's microseconds are truncated.
//! A reading whose payload is not one i32 has no number to plot: it is skipped and counted
//! (`switchyard_processor_events_total{event="skipped_no_value"}`), not dead-lettered, since
//! it is valid data for other consumers.

use switchyard_pipeline::{Context, ProcessError, Processor, Record, Topology};
use switchyard_schemas::records::{GrafanaReading, SensorReading};
use switchyard_schemas::{Catalog, Role};

pub const NAME: &str = "grafana-projector";

pub struct GrafanaProjector {
    sensor_topics: Vec<String>,
}

impl GrafanaProjector {
    pub fn new(catalog: &Catalog) -> Self {
        GrafanaProjector {
            sensor_topics: catalog
                .topics_with_role(Role::Sensor)
                .map(|t| t.name.clone())
                .collect(),
        }
    }
}

impl Processor for GrafanaProjector {
    fn topology(&self) -> Topology {
        Topology::new(NAME)
            .inputs::<SensorReading>(self.sensor_topics.clone())
            .outputs::<GrafanaReading>(self.sensor_topics.iter().map(|t| Catalog::grafana_topic(t)))
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let reading: SensorReading = record.value()?;
        let Some(value) = reading.value else {
            ctx.count("skipped_no_value");
            return Ok(());
        };
        let projected = GrafanaReading {
            modem_id: reading.modem_id.clone(),
            device_id: reading.device_id,
            value,
        };
        let sensor_time_ms = reading.timestamp.div_euclid(1000);
        ctx.send(
            &Catalog::grafana_topic(record.topic),
            &reading.modem_id,
            &projected,
            Some(sensor_time_ms),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_pipeline::{FailureKind, TestDriver};

    fn reading(sensor: &str, value: Option<i32>, t_us: i64) -> SensorReading {
        SensorReading {
            modem_id: "356938035643809".into(),
            device_id: 3,
            sensor: sensor.into(),
            timestamp: t_us,
            value,
            data: value
                .map(|v| v.to_be_bytes().to_vec())
                .unwrap_or_else(|| vec![1, 2]),
            received_at: t_us + 2_500_000,
            sequence: None,
        }
    }

    fn driver() -> TestDriver<GrafanaProjector> {
        TestDriver::new(GrafanaProjector::new(
            &Catalog::embedded().expect("catalog"),
        ))
        .expect("valid topology")
    }

    #[test]
    fn each_sensor_goes_to_its_grafana_topic_at_sensor_time() {
        let mut d = driver();
        // Arrival (record timestamp 9_999_999) differs from the sensor time on purpose.
        d.pipe(
            "temp",
            "356938035643809",
            &reading("temp", Some(21), 1_685_620_800_123_456),
            9_999_999,
        )
        .expect("ok");
        d.pipe(
            "imu",
            "356938035643809",
            &reading("imu", Some(-4), 1_685_620_801_000_000),
            9_999_999,
        )
        .expect("ok");
        let temp = d.read_output::<GrafanaReading>("temp-grafana");
        assert_eq!(temp.len(), 1);
        assert_eq!(
            temp[0].timestamp_ms,
            Some(1_685_620_800_123),
            "record time = sensor time (ms)"
        );
        assert_eq!(temp[0].key.as_deref(), Some("356938035643809"));
        assert_eq!(
            temp[0].value,
            GrafanaReading {
                modem_id: "356938035643809".into(),
                device_id: 3,
                value: 21
            }
        );
        let imu = d.read_output::<GrafanaReading>("imu-grafana");
        assert_eq!(imu.len(), 1);
        assert_eq!(imu[0].value.value, -4);
        assert!(d.read_output::<GrafanaReading>("gyro-grafana").is_empty());
    }

    #[test]
    fn every_catalog_sensor_is_projected() {
        let catalog = Catalog::embedded().expect("catalog");
        let topology = GrafanaProjector::new(&catalog).topology();
        for sensor in catalog.topics_with_role(Role::Sensor) {
            assert!(topology.input_topics().contains(&sensor.name));
            assert!(topology
                .output_topics()
                .contains(&format!("{}-grafana", sensor.name)));
        }
    }

    #[test]
    fn readings_without_a_number_are_skipped_and_counted() {
        let mut d = driver();
        d.pipe("gyro", "m", &reading("gyro", None, 1_000), 1)
            .expect("ok");
        assert!(d.read_output::<GrafanaReading>("gyro-grafana").is_empty());
        assert_eq!(d.count("skipped_no_value"), 1);
        assert!(d.dead_letters().is_empty());
    }

    #[test]
    fn pre_epoch_sensor_times_round_down() {
        let mut d = driver();
        d.pipe("imu", "m", &reading("imu", Some(1), -1), 1)
            .expect("ok");
        assert_eq!(
            d.read_output::<GrafanaReading>("imu-grafana")[0].timestamp_ms,
            Some(-1)
        );
    }

    #[test]
    fn undecodable_readings_are_dead_lettered() {
        let mut d = driver();
        d.pipe_raw("temp", Some(b"m"), Some(&[0, 0, 0, 0, 1, 0xff]), 1)
            .expect("continues");
        let dead = d.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].kind, FailureKind::Undecodable);
    }
}
