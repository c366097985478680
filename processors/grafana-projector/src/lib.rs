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
//!
//! Device clocks are not trusted blindly: a reading whose sensor time is older than its
//! projected topic's retention (the broker would delete it at once) or further ahead of the
//! wall clock than `--max-future-skew-secs` (it would pin its segment against retention) is
//! dead-lettered to `grafana-projector-dlq` with reason `invalid` and a `clock_skew` detail
//! naming both times, counted in `switchyard_dead_letters_total{reason="invalid"}` and
//! alerted on; the reading stays on its raw topic, untouched.

use std::collections::HashMap;

use clap::Args;
use switchyard_pipeline::{Context, ProcessError, Processor, Record, Topology};
use switchyard_schemas::records::{GrafanaReading, SensorReading};
use switchyard_schemas::{Catalog, Role};

pub const NAME: &str = "grafana-projector";

#[derive(Debug, Clone, Args)]
pub struct ProjectorConfig {
    /// Readings stamped further ahead of the wall clock than this are not projected
    /// (dead-lettered as clock skew).
    #[arg(long, env = "SWITCHYARD_MAX_FUTURE_SKEW_SECS", default_value_t = 300)]
    pub max_future_skew_secs: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            max_future_skew_secs: 300,
        }
    }
}

pub struct GrafanaProjector {
    sensor_topics: Vec<String>,
    /// Where each sensor topic's readings go, by sensor topic (named once, not per record).
    projections: HashMap<String, Projection>,
    max_future_skew_ms: i64,
}

/// A sensor topic's projected topic and its retention (ms; none: kept forever).
struct Projection {
    topic: String,
    retention_ms: Option<i64>,
}

impl GrafanaProjector {
    pub fn new(catalog: &Catalog) -> Self {
        Self::with_config(catalog, &ProjectorConfig::default())
    }

    pub fn with_config(catalog: &Catalog, config: &ProjectorConfig) -> Self {
        let sensor_topics: Vec<String> = catalog
            .topics_with_role(Role::Sensor)
            .map(|t| t.name.clone())
            .collect();
        let projections = sensor_topics
            .iter()
            .map(|t| {
                let topic = Catalog::grafana_topic(t);
                let retention_ms = catalog.topic(&topic).and_then(|p| p.retention_ms);
                (
                    t.clone(),
                    Projection {
                        topic,
                        retention_ms,
                    },
                )
            })
            .collect();
        GrafanaProjector {
            sensor_topics,
            projections,
            max_future_skew_ms: i64::try_from(config.max_future_skew_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        }
    }

    /// Why a sensor time cannot be projected now, if it cannot.
    fn clock_skew(
        &self,
        projection: &Projection,
        sensor_time_ms: i64,
        now_ms: i64,
    ) -> Option<String> {
        if sensor_time_ms > now_ms.saturating_add(self.max_future_skew_ms) {
            return Some(format!(
                "clock_skew: sensor time {sensor_time_ms} ms is {} s ahead of the wall clock {now_ms} ms (limit {} s)",
                (sensor_time_ms - now_ms) / 1000,
                self.max_future_skew_ms / 1000
            ));
        }
        let retention = projection.retention_ms?;
        (sensor_time_ms < now_ms.saturating_sub(retention)).then(|| {
            format!(
                "clock_skew: sensor time {sensor_time_ms} ms is {} s before the wall clock {now_ms} ms, older than {}'s retention ({} s)",
                (now_ms - sensor_time_ms) / 1000,
                projection.topic,
                retention / 1000
            )
        })
    }
}

impl Processor for GrafanaProjector {
    fn topology(&self) -> Topology {
        Topology::new(NAME)
            .inputs::<SensorReading>(self.sensor_topics.clone())
            .outputs::<GrafanaReading>(self.sensor_topics.iter().map(|t| Catalog::grafana_topic(t)))
            // A projected reading carries its time as its record time: order and a rare
            // duplicate do not matter to Grafana.
            .outputs_stand_alone()
            // The live view waits on it: each reading goes out at once (batches still form
            // while a request is with the broker).
            .linger(std::time::Duration::ZERO)
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let reading: SensorReading = record.value()?;
        let Some(value) = reading.value else {
            ctx.count("skipped_no_value");
            return Ok(());
        };
        let projection = self.projections.get(record.topic).ok_or_else(|| {
            ProcessError::failed(format!("{} is not a sensor topic", record.topic))
        })?;
        let sensor_time_ms = reading.timestamp.div_euclid(1000);
        if let Some(reason) = self.clock_skew(projection, sensor_time_ms, ctx.wall_clock_ms()) {
            return Err(ProcessError::invalid(reason));
        }
        let projected = GrafanaReading {
            modem_id: reading.modem_id,
            device_id: reading.device_id,
            value,
        };
        ctx.send(
            &projection.topic,
            &projected.modem_id,
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

    /// The driver's wall clock, in µs: readings are stamped near it.
    const NOW_US: i64 = 1_700_000_000_000_000;

    #[test]
    fn each_sensor_goes_to_its_grafana_topic_at_sensor_time() {
        let mut d = driver();
        assert_eq!(d.wall_clock_ms() * 1000, NOW_US);
        // Arrival (record timestamp 9_999_999) differs from the sensor time on purpose.
        d.pipe(
            "temp",
            "356938035643809",
            &reading("temp", Some(21), NOW_US - 3_600_123_456),
            9_999_999,
        )
        .expect("ok");
        d.pipe(
            "imu",
            "356938035643809",
            &reading("imu", Some(-4), NOW_US - 1_000_000),
            9_999_999,
        )
        .expect("ok");
        let temp = d.read_output::<GrafanaReading>("temp-grafana");
        assert_eq!(temp.len(), 1);
        assert_eq!(
            temp[0].timestamp_ms,
            Some((NOW_US - 3_600_123_456).div_euclid(1000)),
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
    fn sensor_microseconds_round_down_to_milliseconds() {
        let mut d = driver();
        d.pipe("imu", "m", &reading("imu", Some(1), NOW_US - 1), 1)
            .expect("ok");
        assert_eq!(
            d.read_output::<GrafanaReading>("imu-grafana")[0].timestamp_ms,
            Some(NOW_US / 1000 - 1)
        );
    }

    #[test]
    fn readings_from_a_wrong_clock_are_dead_lettered_not_projected() {
        let mut d = driver();
        let week_us = 7 * 24 * 3_600 * 1_000_000i64;
        // 2023-06-01 against a wall clock in November 2023: older than the 7-day retention.
        d.pipe(
            "imu",
            "m",
            &reading("imu", Some(1), 1_685_577_600_000_000),
            1,
        )
        .expect("continues");
        // An hour ahead: past the 5-minute limit.
        d.pipe(
            "imu",
            "m",
            &reading("imu", Some(2), NOW_US + 3_600_000_000),
            2,
        )
        .expect("continues");
        // Just inside both bounds: projected.
        d.pipe(
            "imu",
            "m",
            &reading("imu", Some(3), NOW_US - week_us + 60_000_000),
            3,
        )
        .expect("ok");
        d.pipe(
            "imu",
            "m",
            &reading("imu", Some(4), NOW_US + 240_000_000),
            4,
        )
        .expect("ok");
        let projected: Vec<i32> = d
            .read_output::<GrafanaReading>("imu-grafana")
            .iter()
            .map(|r| r.value.value)
            .collect();
        assert_eq!(projected, [3, 4]);
        let dead = d.dead_letters();
        assert_eq!(dead.len(), 2);
        assert!(
            dead.iter().all(|d| d.kind == FailureKind::Invalid),
            "{dead:?}"
        );
        let reasons: Vec<String> = dead.iter().map(|d| format!("{d:?}")).collect();
        assert!(
            reasons[0].contains("older than imu-grafana's retention"),
            "{}",
            reasons[0]
        );
        assert!(
            reasons[1].contains("ahead of the wall clock"),
            "{}",
            reasons[1]
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
