//! anomaly-detector: per device (modem + sensor), flags readings far outside the recent
//! range, sensors stuck on one value, and sensors gone silent, and publishes each finding to
//! `anomalies`. The statistics and rules are in [`detector`]; their state is changelogged,
//! so a restart keeps what each device has learned.

pub mod detector;

use std::collections::HashMap;
use std::time::Duration;

use clap::Args;
use switchyard_pipeline::{Context, ProcessError, Processor, Record, Timer, TimerKind, Topology};
use switchyard_schemas::records::{Anomaly, AnomalyKind, LastSeen, SensorReading};
use switchyard_schemas::{Catalog, Role};

use crate::detector::{DeviceStats, Finding, Observe, Rules};

pub const NAME: &str = "anomaly-detector";
pub const OUTPUT: &str = switchyard_schemas::topics::ANOMALIES;
const STATS: &str = "stats";
/// Per device: when it last sent something, for the silence timer (small values, cheap to scan).
const LAST_SEEN: &str = "last-seen";
const SILENCE: &str = "silence";

#[derive(Debug, Clone, Args)]
pub struct DetectorConfig {
    /// Spike threshold in standard deviations.
    #[arg(long, env = "SWITCHYARD_SPIKE_THRESHOLD", default_value_t = 6.0)]
    pub spike_threshold: f64,
    /// Per-sensor thresholds overriding --spike-threshold, e.g. temp=8,imu=5.
    #[arg(long, env = "SWITCHYARD_SENSOR_THRESHOLDS", value_delimiter = ',', value_parser = parse_sensor_threshold)]
    pub sensor_threshold: Vec<(String, f64)>,
    /// EWMA smoothing factor (0 < alpha <= 1): larger follows changes faster.
    #[arg(long, env = "SWITCHYARD_EWMA_ALPHA", default_value_t = 0.02)]
    pub alpha: f64,
    /// Smallest standard deviation used (in the sensor's units).
    #[arg(long, env = "SWITCHYARD_MIN_STD", default_value_t = 1.0)]
    pub min_std: f64,
    /// Readings a device must send before anything is flagged.
    #[arg(long, env = "SWITCHYARD_WARMUP_READINGS", default_value_t = 30)]
    pub warmup: u64,
    /// Identical readings in a row that make a sensor stuck.
    #[arg(long, env = "SWITCHYARD_STUCK_READINGS", default_value_t = 60)]
    pub stuck_readings: u64,
    /// Seconds without a reading that make a sensor silent.
    #[arg(long, env = "SWITCHYARD_SILENCE_SECS", default_value_t = 300)]
    pub silence_secs: u64,
    /// How often silence is checked (milliseconds).
    #[arg(long, env = "SWITCHYARD_SILENCE_CHECK_MS", default_value_t = 10_000)]
    pub silence_check_ms: u64,
}

fn parse_sensor_threshold(s: &str) -> Result<(String, f64), String> {
    let (sensor, k) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SENSOR=THRESHOLD"))?;
    let k: f64 = k
        .parse()
        .map_err(|_| format!("{s:?}: {k:?} is not a number"))?;
    if !k.is_finite() || k <= 0.0 {
        return Err(format!("{s:?}: the threshold must be positive"));
    }
    Ok((sensor.trim().to_string(), k))
}

impl Default for DetectorConfig {
    fn default() -> Self {
        let r = Rules::default();
        DetectorConfig {
            spike_threshold: r.threshold,
            sensor_threshold: Vec::new(),
            alpha: r.alpha,
            min_std: r.min_std,
            warmup: r.warmup.unsigned_abs(),
            stuck_readings: r.stuck_readings.unsigned_abs(),
            silence_secs: 300,
            silence_check_ms: 10_000,
        }
    }
}

pub struct AnomalyDetector {
    sensor_topics: Vec<String>,
    rules: HashMap<String, Rules>,
    default_rules: Rules,
    silence_us: i64,
    silence_check: Duration,
}

impl AnomalyDetector {
    pub fn new(catalog: &Catalog, config: &DetectorConfig) -> Self {
        let default_rules = Rules {
            alpha: config.alpha.clamp(f64::MIN_POSITIVE, 1.0),
            threshold: config.spike_threshold,
            min_std: config.min_std,
            warmup: i64::try_from(config.warmup).unwrap_or(i64::MAX),
            stuck_readings: i64::try_from(config.stuck_readings)
                .unwrap_or(i64::MAX)
                .max(2),
        };
        let rules = config
            .sensor_threshold
            .iter()
            .map(|(sensor, k)| {
                (
                    sensor.clone(),
                    Rules {
                        threshold: *k,
                        ..default_rules
                    },
                )
            })
            .collect();
        AnomalyDetector {
            sensor_topics: catalog
                .topics_with_role(Role::Sensor)
                .map(|t| t.name.clone())
                .collect(),
            rules,
            default_rules,
            silence_us: i64::try_from(config.silence_secs.saturating_mul(1_000_000))
                .unwrap_or(i64::MAX),
            silence_check: Duration::from_millis(config.silence_check_ms.max(1)),
        }
    }

    fn rules_for(&self, sensor: &str) -> &Rules {
        self.rules.get(sensor).unwrap_or(&self.default_rules)
    }
}

/// The store key of a device: modem, sensor and device id.
fn device_key(r: &SensorReading) -> String {
    format!("{}/{}/{}", r.modem_id, r.sensor, r.device_id)
}

impl Processor for AnomalyDetector {
    fn topology(&self) -> Topology {
        Topology::new(NAME)
            .inputs::<SensorReading>(self.sensor_topics.clone())
            .output::<Anomaly>(OUTPUT)
            .store::<DeviceStats>(STATS)
            .store::<LastSeen>(LAST_SEEN)
            .timer(SILENCE, TimerKind::WallClock, self.silence_check)
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let reading: SensorReading = record.value()?;
        let key = device_key(&reading);
        let Some(value) = reading.value else {
            ctx.count("skipped_no_value");
            return Ok(());
        };
        // A reading not newer than the device's latest is one seen before (redelivered after
        // a crash: at least once), or one overtaken on the way: observing it would count it
        // twice, or out of order.
        let latest: Option<LastSeen> = ctx.store(LAST_SEEN)?.get(&key)?;
        if latest.is_some_and(|l| reading.timestamp <= l.sensor_time) {
            ctx.count("skipped_not_newer");
            return Ok(());
        }
        let rules = *self.rules_for(&reading.sensor);
        let mut stats: DeviceStats = ctx.store(STATS)?.get(&key)?.unwrap_or_default();
        let findings = stats.observe(i64::from(value), &rules);
        ctx.store(STATS)?.put(&key, &stats)?;
        let last = LastSeen {
            received_at: reading.received_at,
            sensor_time: reading.timestamp,
            silent_reported: false,
        };
        ctx.store(LAST_SEEN)?.put(&key, &last)?;
        let detected_at = ctx.wall_clock_ms().saturating_mul(1000);
        for finding in findings {
            let anomaly = match finding {
                Finding::Spike { low, high, score } => Anomaly {
                    modem_id: reading.modem_id.clone(),
                    device_id: reading.device_id,
                    sensor: reading.sensor.clone(),
                    kind: AnomalyKind::Spike,
                    value: Some(value),
                    expected_low: Some(low),
                    expected_high: Some(high),
                    score: Some(score),
                    sensor_time: reading.timestamp,
                    detected_at,
                    detail: format!(
                        "{value} is {score:.1} standard deviations from the recent mean {:.1}",
                        stats.mean
                    ),
                },
                Finding::Stuck { run } => Anomaly {
                    modem_id: reading.modem_id.clone(),
                    device_id: reading.device_id,
                    sensor: reading.sensor.clone(),
                    kind: AnomalyKind::Stuck,
                    value: Some(value),
                    expected_low: None,
                    expected_high: None,
                    score: None,
                    sensor_time: reading.timestamp,
                    detected_at,
                    detail: format!("the last {run} readings were all {value}"),
                },
            };
            ctx.send(
                OUTPUT,
                &reading.modem_id,
                &anomaly,
                Some(reading.timestamp.div_euclid(1000)),
            )?;
        }
        Ok(())
    }

    fn punctuate(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if timer.name != SILENCE {
            return Ok(());
        }
        let now_us = timer.time_ms.saturating_mul(1000);
        let silent: Vec<(String, LastSeen)> = ctx
            .store(LAST_SEEN)?
            .entries::<LastSeen>()?
            .into_iter()
            .filter(|(_, seen)| {
                !seen.silent_reported && now_us.saturating_sub(seen.received_at) > self.silence_us
            })
            .collect();
        for (key, mut seen) in silent {
            let mut parts = key.splitn(3, '/');
            let (Some(modem), Some(sensor), Some(device)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let quiet_secs = now_us.saturating_sub(seen.received_at) / 1_000_000;
            let anomaly = Anomaly {
                modem_id: modem.to_string(),
                device_id: device.parse().unwrap_or_default(),
                sensor: sensor.to_string(),
                kind: AnomalyKind::Silent,
                value: None,
                expected_low: None,
                expected_high: None,
                score: None,
                sensor_time: seen.sensor_time,
                detected_at: now_us,
                detail: format!("no reading for {quiet_secs} s"),
            };
            ctx.send(OUTPUT, modem, &anomaly, Some(timer.time_ms))?;
            seen.silent_reported = true;
            ctx.store(LAST_SEEN)?.put(&key, &seen)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::Noise;
    use switchyard_pipeline::TestDriver;

    const MODEM: &str = "356938035643809";

    fn driver(config: &DetectorConfig) -> TestDriver<AnomalyDetector> {
        let catalog = Catalog::embedded().expect("catalog");
        TestDriver::new(AnomalyDetector::new(&catalog, config)).expect("valid topology")
    }

    fn reading(sensor: &str, value: i32, received_at: i64) -> SensorReading {
        SensorReading {
            modem_id: MODEM.into(),
            device_id: 3,
            sensor: sensor.into(),
            timestamp: received_at - 500,
            value: Some(value),
            data: value.to_be_bytes().to_vec(),
            received_at,
            sequence: None,
        }
    }

    #[test]
    fn injected_spikes_stuck_runs_and_silences_are_all_reported() {
        let config = DetectorConfig {
            silence_secs: 60,
            silence_check_ms: 5_000,
            ..DetectorConfig::default()
        };
        let mut d = driver(&config);
        let mut noise = Noise::new(11);
        let mut t = d.wall_clock_ms() * 1000;
        let spikes = [400, 900, 1500];
        let mut frozen = 0;
        for i in 0..2_000 {
            let mut x = noise.gaussian(20.0, 2.0).round() as i32;
            if spikes.contains(&i) {
                x += 40;
            }
            if (1_100..1_200).contains(&i) {
                if i == 1_100 {
                    frozen = x;
                }
                x = frozen;
            }
            d.pipe("temp", MODEM, &reading("temp", x, t), t / 1000)
                .expect("ok");
            t += 1000;
        }
        // A silence: no readings while two minutes of wall clock pass.
        d.advance_wall_clock(Duration::from_secs(120)).expect("ok");
        let found = d.read_output::<Anomaly>(OUTPUT);
        let kinds = |k: AnomalyKind| found.iter().filter(|a| a.value.kind == k).count();
        assert_eq!(kinds(AnomalyKind::Spike), spikes.len(), "{found:#?}");
        assert_eq!(kinds(AnomalyKind::Stuck), 1);
        assert_eq!(
            kinds(AnomalyKind::Silent),
            1,
            "reported once, not at every check"
        );
        let spike = found
            .iter()
            .find(|a| a.value.kind == AnomalyKind::Spike)
            .expect("spike");
        assert!(spike.value.score.is_some_and(|s| s > 6.0));
        assert!(spike.value.expected_low.is_some() && spike.value.expected_high.is_some());
        assert_eq!(spike.key.as_deref(), Some(MODEM));
        // Data resumes: silence can be reported again later, but not before it recurs.
        d.pipe(
            "temp",
            MODEM,
            &reading("temp", 20, d.wall_clock_ms() * 1000),
            1,
        )
        .expect("ok");
        d.advance_wall_clock(Duration::from_secs(30)).expect("ok");
        assert!(d.read_output::<Anomaly>(OUTPUT).is_empty());
    }

    /// Issue 26: at least once, a crash makes the inputs after the last commit come again,
    /// and the detector observed each twice: its statistics drifted from an uninterrupted
    /// run's, and a redelivered spike could be reported again.
    #[test]
    fn readings_delivered_again_change_neither_statistics_nor_alarms() {
        let config = DetectorConfig::default();
        let series: Vec<SensorReading> = (0..300)
            .map(|i: i64| {
                let x = if i == 200 { 900 } else { 20 + (i % 5) as i32 };
                reading("temp", x, 1_700_000_000_000_000 + i * 1_000_000)
            })
            .collect();
        let run = |redeliver: bool| {
            let mut d = driver(&config);
            for (i, r) in series.iter().enumerate() {
                d.pipe("temp", MODEM, r, r.received_at / 1000).expect("ok");
                if redeliver && i == 250 {
                    // A crash after 250: everything since 150 comes again.
                    for again in &series[150..=250] {
                        d.pipe("temp", MODEM, again, again.received_at / 1000)
                            .expect("ok");
                    }
                }
            }
            let anomalies: Vec<(AnomalyKind, i64)> = d
                .read_output::<Anomaly>(OUTPUT)
                .into_iter()
                .map(|a| (a.value.kind, a.value.sensor_time))
                .collect();
            let key = device_key(&series[0]);
            let stats: Option<DeviceStats> = d
                .store(d.partition_for(MODEM), STATS)
                .and_then(|s| s.get(&key).ok().flatten());
            (
                anomalies,
                format!("{stats:?}"),
                d.count("skipped_not_newer"),
            )
        };
        let (alarms, stats, skipped) = run(false);
        assert_eq!(skipped, 0);
        assert_eq!(alarms.len(), 1, "the one spike: {alarms:?}");
        let (alarms_again, stats_again, skipped_again) = run(true);
        assert_eq!(skipped_again, 101);
        assert_eq!(alarms_again, alarms);
        assert_eq!(stats_again, stats);
    }

    #[test]
    fn thresholds_are_configurable_per_sensor() {
        let config = DetectorConfig {
            sensor_threshold: vec![("gyro".into(), 100.0)],
            ..DetectorConfig::default()
        };
        let mut d = driver(&config);
        for (sensor, topic) in [("gyro", "gyro"), ("imu", "imu")] {
            for i in 0..100 {
                d.pipe(
                    topic,
                    MODEM,
                    &reading(sensor, 10 + (i % 3), i64::from(i) * 1000),
                    1,
                )
                .expect("ok");
            }
            d.pipe(topic, MODEM, &reading(sensor, 60, 200_000), 1)
                .expect("ok");
        }
        let found = d.read_output::<Anomaly>(OUTPUT);
        let sensors: Vec<&str> = found.iter().map(|a| a.value.sensor.as_str()).collect();
        assert_eq!(
            sensors,
            vec!["imu"],
            "a jump of 50 is ordinary for gyro (threshold 100σ), a spike for imu"
        );
    }

    #[test]
    fn thresholds_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_sensor_threshold("temp=8"), Ok(("temp".into(), 8.0)));
        assert!(parse_sensor_threshold("temp").is_err());
        assert!(parse_sensor_threshold("temp=x").is_err());
        assert!(parse_sensor_threshold("temp=-1").is_err());
    }
}
