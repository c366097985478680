//! Live readings for the page: every modem's recent points from the projected topics (read
//! as Grafana reads them, [`follow`]), kept in a bounded [`store`], served as JSON and as
//! server-sent events ([`routes`]).

pub mod follow;
pub mod routes;
pub mod store;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use switchyard_schemas::records::now_us;

use clap::Args;
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::broadcast;

use store::{ReadingEvent, Readings};

#[derive(Debug, Clone, Args)]
pub struct ReadingsConfig {
    /// How far back the page's charts reach, in seconds of sensor time.
    #[arg(
        long = "readings-window-secs",
        env = "SWITCHYARD_READINGS_WINDOW_SECS",
        default_value_t = 600
    )]
    pub window_secs: u64,
    /// Points kept per modem and sensor (and anomaly markers per modem).
    #[arg(
        long = "readings-max-points",
        env = "SWITCHYARD_READINGS_MAX_POINTS",
        default_value_t = 1200
    )]
    pub max_points: usize,
    /// fetch.wait.max.ms of the readings consumer.
    #[arg(
        long = "readings-fetch-wait-ms",
        env = "SWITCHYARD_READINGS_FETCH_WAIT_MS",
        default_value_t = 500
    )]
    pub fetch_wait_ms: u64,
    /// Stop following the projected topics this long after the last chart was looked at.
    #[arg(
        long = "readings-idle-stop-secs",
        env = "SWITCHYARD_READINGS_IDLE_STOP_SECS",
        default_value_t = 60
    )]
    pub idle_stop_secs: u64,
}

/// The store, the live feed and their metrics; the follower is the only writer.
pub struct Hub {
    pub store: RwLock<Readings>,
    pub events: broadcast::Sender<ReadingEvent>,
    pub undecodable: IntCounter,
    pub points: IntGauge,
    /// When a chart was last asked for (µs), and a wake-up for the follower.
    last_wanted_us: AtomicI64,
    wanted: tokio::sync::Notify,
}

impl Hub {
    pub fn new(config: &ReadingsConfig, registry: &Registry) -> Result<Hub, prometheus::Error> {
        let undecodable = IntCounter::new(
            "undecodable_readings_total",
            "Projected readings or anomalies the page could not decode (skipped).",
        )?;
        let points = IntGauge::new("chart_points", "Readings held for the page's charts.")?;
        registry.register(Box::new(undecodable.clone()))?;
        registry.register(Box::new(points.clone()))?;
        Ok(Hub {
            store: RwLock::new(Readings::new(config.window_secs, config.max_points)),
            events: broadcast::channel(4096).0,
            undecodable,
            points,
            last_wanted_us: AtomicI64::new(i64::MIN),
            wanted: tokio::sync::Notify::new(),
        })
    }

    /// Someone looks at a chart: follow the projected topics (again).
    pub fn want(&self) {
        self.last_wanted_us.store(now_us(), Ordering::Relaxed);
        self.wanted.notify_one();
    }

    /// Whether a chart was asked for within `idle`, or an event stream is open.
    pub fn still_wanted(&self, idle: Duration) -> bool {
        let idle_us = i64::try_from(idle.as_micros()).unwrap_or(i64::MAX);
        self.events.receiver_count() > 0
            || now_us().saturating_sub(self.last_wanted_us.load(Ordering::Relaxed)) < idle_us
    }

    /// Return once someone looks at a chart.
    pub async fn until_wanted(&self, idle: Duration) {
        while !self.still_wanted(idle) {
            self.wanted.notified().await;
        }
    }

    /// Forget every point (the follower stopped; it reads them back when it starts).
    pub fn clear(&self) {
        if let Ok(mut store) = self.store.write() {
            store.clear();
        }
        self.points.set(0);
    }

    /// Keep `event` (unless its sensor time is before `oldest_ms`) and tell the listeners.
    pub fn add(&self, event: ReadingEvent, oldest_ms: i64) {
        let Ok(mut store) = self.store.write() else {
            return;
        };
        match &event {
            ReadingEvent::Reading {
                modem_id,
                sensor,
                topic,
                point,
            } => {
                if point.t < oldest_ms {
                    return;
                }
                store.add_point(modem_id, sensor, topic, *point);
                self.points.set(store.points() as i64);
            }
            ReadingEvent::Anomaly { modem_id, mark } => {
                if mark.t < oldest_ms {
                    return;
                }
                store.add_anomaly(modem_id, mark.clone());
            }
        }
        drop(store);
        let _ = self.events.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topics_are_wanted_only_after_a_look_and_while_a_stream_is_open() {
        let config = ReadingsConfig {
            window_secs: 600,
            max_points: 10,
            fetch_wait_ms: 500,
            idle_stop_secs: 60,
        };
        let hub = Hub::new(&config, &Registry::new()).expect("hub");
        let minute = Duration::from_secs(60);
        assert!(!hub.still_wanted(minute), "nobody looked yet: no consumer");
        hub.want();
        assert!(hub.still_wanted(minute));
        assert!(
            !hub.still_wanted(Duration::ZERO),
            "a look long enough ago stops it"
        );
        let _stream = hub.events.subscribe();
        assert!(
            hub.still_wanted(Duration::ZERO),
            "an open event stream keeps it"
        );
    }
}
