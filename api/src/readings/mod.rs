//! Live readings for the page: every modem's recent points from the projected topics (read
//! as Grafana reads them, [`follow`]), kept in a bounded [`store`], served as JSON and as
//! server-sent events ([`routes`]).

pub mod follow;
pub mod routes;
pub mod store;

use std::sync::RwLock;

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
    /// Records read back from each projected partition's end at start.
    #[arg(
        long = "readings-lookback-records",
        env = "SWITCHYARD_READINGS_LOOKBACK_RECORDS",
        default_value_t = 20_000
    )]
    pub lookback_records: i64,
    /// fetch.wait.max.ms of the readings consumer.
    #[arg(
        long = "readings-fetch-wait-ms",
        env = "SWITCHYARD_READINGS_FETCH_WAIT_MS",
        default_value_t = 500
    )]
    pub fetch_wait_ms: u64,
}

/// The store, the live feed and their metrics; the follower is the only writer.
pub struct Hub {
    pub store: RwLock<Readings>,
    pub events: broadcast::Sender<ReadingEvent>,
    pub undecodable: IntCounter,
    pub points: IntGauge,
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
        })
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
