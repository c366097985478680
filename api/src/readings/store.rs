//! The recent readings and anomalies of every modem, as the page charts them: per modem and
//! sensor, points in sensor-time order within a window, bounded in count.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One reading: the record timestamp (the sensor's time, in ms) and the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Point {
    /// Sensor time, milliseconds since the epoch (the projected record's timestamp).
    pub t: i64,
    pub value: i32,
}

/// An anomaly, drawn as a marker on its sensor's chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnomalyMark {
    /// Sensor time of the reading it is about, milliseconds since the epoch.
    pub t: i64,
    pub sensor: String,
    /// `spike`, `stuck` or `silent`.
    pub kind: String,
    pub value: Option<i32>,
    pub detail: String,
}

/// One sensor's points, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Series {
    pub sensor: String,
    /// The projected topic the points were read from.
    pub topic: String,
    pub points: Vec<Point>,
}

/// What the page charts for one modem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModemReadings {
    pub modem_id: String,
    /// How far back points are kept.
    pub window_secs: u64,
    pub series: Vec<Series>,
    pub anomalies: Vec<AnomalyMark>,
}

/// A change one modem's charts must show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReadingEvent {
    Reading {
        modem_id: String,
        sensor: String,
        topic: String,
        #[serde(flatten)]
        point: Point,
    },
    Anomaly {
        modem_id: String,
        #[serde(flatten)]
        mark: AnomalyMark,
    },
}

impl ReadingEvent {
    pub fn modem_id(&self) -> &str {
        match self {
            ReadingEvent::Reading { modem_id, .. } | ReadingEvent::Anomaly { modem_id, .. } => {
                modem_id
            }
        }
    }
}

#[derive(Debug, Default)]
struct ModemSeries {
    /// Sensor nickname -> (projected topic, points in time order).
    sensors: BTreeMap<String, (String, VecDeque<Point>)>,
    anomalies: VecDeque<AnomalyMark>,
}

/// Every modem's recent points; the follower writes, the handlers read.
#[derive(Debug)]
pub struct Readings {
    window_ms: i64,
    max_points: usize,
    modems: HashMap<String, ModemSeries>,
    /// Points held, all series together.
    held: usize,
}

impl Readings {
    pub fn new(window_secs: u64, max_points: usize) -> Self {
        Readings {
            window_ms: i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            max_points: max_points.max(1),
            modems: HashMap::new(),
            held: 0,
        }
    }

    pub fn window_secs(&self) -> u64 {
        u64::try_from(self.window_ms / 1000).unwrap_or(0)
    }

    /// Add a reading in sensor-time order; points older than the window before the newest,
    /// and the oldest past `max_points`, are let go.
    pub fn add_point(&mut self, modem: &str, sensor: &str, topic: &str, point: Point) {
        let series = self.modems.entry(modem.to_string()).or_default();
        let (_, points) = series
            .sensors
            .entry(sensor.to_string())
            .or_insert_with(|| (topic.to_string(), VecDeque::new()));
        match points.back() {
            Some(last) if last.t > point.t => {
                let at = points.partition_point(|p| p.t <= point.t);
                points.insert(at, point);
            }
            _ => points.push_back(point),
        }
        self.held += 1;
        let newest = points.back().map_or(point.t, |p| p.t);
        while points.len() > self.max_points
            || points
                .front()
                .is_some_and(|p| p.t < newest.saturating_sub(self.window_ms))
        {
            points.pop_front();
            self.held -= 1;
        }
    }

    pub fn add_anomaly(&mut self, modem: &str, mark: AnomalyMark) {
        let series = self.modems.entry(modem.to_string()).or_default();
        series.anomalies.push_back(mark);
        while series.anomalies.len() > self.max_points {
            series.anomalies.pop_front();
        }
    }

    /// A modem's charts; empty series when nothing of it was read.
    pub fn modem(&self, modem: &str) -> ModemReadings {
        let found = self.modems.get(modem);
        ModemReadings {
            modem_id: modem.to_string(),
            window_secs: self.window_secs(),
            series: found
                .map(|m| {
                    m.sensors
                        .iter()
                        .map(|(sensor, (topic, points))| Series {
                            sensor: sensor.clone(),
                            topic: topic.clone(),
                            points: points.iter().copied().collect(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            anomalies: found
                .map(|m| m.anomalies.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// Forget every modem's points and markers.
    pub fn clear(&mut self) {
        self.modems.clear();
        self.held = 0;
    }

    /// Points held, all modems together (a gauge).
    pub fn points(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(r: &ModemReadings, sensor: &str) -> Vec<i64> {
        r.series
            .iter()
            .find(|s| s.sensor == sensor)
            .map(|s| s.points.iter().map(|p| p.t).collect())
            .unwrap_or_default()
    }

    #[test]
    fn points_stay_in_sensor_time_order_per_modem_and_sensor() {
        let mut r = Readings::new(600, 100);
        for t in [1_000, 3_000, 2_000, 4_000, 500] {
            r.add_point("m1", "imu", "imu-grafana", Point { t, value: 1 });
        }
        r.add_point("m2", "imu", "imu-grafana", Point { t: 2_500, value: 9 });
        r.add_point("m1", "temp", "temp-grafana", Point { t: 7, value: 21 });
        let m1 = r.modem("m1");
        assert_eq!(times(&m1, "imu"), vec![500, 1_000, 2_000, 3_000, 4_000]);
        assert_eq!(times(&m1, "temp"), vec![7]);
        assert_eq!(times(&r.modem("m2"), "imu"), vec![2_500]);
        assert!(r.modem("unknown").series.is_empty());
        assert_eq!(r.points(), 7);
    }

    #[test]
    fn the_window_and_the_point_bound_let_old_points_go() {
        let mut r = Readings::new(10, 1_000);
        for s in 0..30 {
            r.add_point(
                "m",
                "imu",
                "imu-grafana",
                Point {
                    t: s * 1_000,
                    value: 0,
                },
            );
        }
        assert_eq!(
            times(&r.modem("m"), "imu"),
            (19..30).map(|s| s * 1_000).collect::<Vec<_>>()
        );
        let mut r = Readings::new(600, 5);
        for s in 0..30 {
            r.add_point("m", "imu", "imu-grafana", Point { t: s, value: 0 });
        }
        assert_eq!(times(&r.modem("m"), "imu"), vec![25, 26, 27, 28, 29]);
        assert_eq!(r.points(), 5);
    }

    #[test]
    fn events_serialise_flat_for_the_page() {
        let event = ReadingEvent::Reading {
            modem_id: "m".into(),
            sensor: "imu".into(),
            topic: "imu-grafana".into(),
            point: Point { t: 5, value: -3 },
        };
        assert_eq!(
            serde_json::to_value(&event).expect("json"),
            serde_json::json!({"type": "reading", "modem_id": "m", "sensor": "imu",
                "topic": "imu-grafana", "t": 5, "value": -3})
        );
    }
}
