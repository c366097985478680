//! `switchyard topics grafana`: the Grafana dashboard, generated from the catalog, so a
//! sensor added to the catalog gets its panel and no panel names a topic that does not exist.
//! grafana/dashboards/switchyard.json is this output; a test keeps them equal.

use serde_json::{json, Value};
use switchyard_schemas::{topics, Catalog, GRAFANA_SUFFIX};

/// The datasource every panel uses (grafana/provisioning/datasources/kafka.yaml).
pub const DATASOURCE_UID: &str = "switchyard-kafka";
pub const DATASOURCE_TYPE: &str = "hamedkarbasi93-kafka-datasource";

fn datasource() -> Value {
    json!({ "type": DATASOURCE_TYPE, "uid": DATASOURCE_UID })
}

/// A query of the Kafka datasource: Avro through the registry, time = the record's timestamp.
fn query(topic: &str, last_n: u32) -> Value {
    json!({
        "refId": "A",
        "datasource": datasource(),
        "topicName": topic,
        "partition": "all",
        "autoOffsetReset": "lastN",
        "lastN": last_n,
        "timestampMode": "message",
        "messageFormat": "avro",
        "avroSchemaSource": "schemaRegistry",
        "keyFormat": "string",
        "withStreaming": true
    })
}

fn panel(id: u32, title: &str, kind: &str, topic: &str, grid: (u32, u32, u32, u32)) -> Value {
    let (x, y, w, h) = grid;
    json!({
        "id": id,
        "type": kind,
        "title": title,
        "datasource": datasource(),
        "gridPos": { "x": x, "y": y, "w": w, "h": h },
        "targets": [query(topic, if kind == "timeseries" { 1000 } else { 50 })],
        "options": {},
        "fieldConfig": { "defaults": {}, "overrides": [] }
    })
}

pub fn dashboard(catalog: &Catalog) -> Value {
    let mut panels = Vec::new();
    let mut id = 1;
    let mut y = 0;
    // One time series per sensor, from its projected topic (no timestamp field; the record
    // time is the sensor's time).
    for (i, d) in catalog.sensors.device.iter().enumerate() {
        let topic = format!("{}{GRAFANA_SUFFIX}", d.nickname);
        let x = (i as u32 % 2) * 12;
        panels.push(panel(
            id,
            &format!("{} (device {})", d.nickname, d.device_id),
            "timeseries",
            &topic,
            (x, y, 12, 8),
        ));
        id += 1;
        if i % 2 == 1 {
            y += 8;
        }
    }
    if catalog.sensors.device.len() % 2 == 1 {
        y += 8;
    }
    for (title, topic, w) in [
        ("Anomalies", topics::ANOMALIES, 24),
        (
            "Carrier state (every modem's SIM)",
            topics::CARRIER_STATE,
            12,
        ),
        ("Switch requests", topics::DOWNSTREAM_REQUEST, 12),
        ("Downlink delivery", topics::DOWNLINK_DELIVERY, 12),
        ("SIM answers (ACK / NACK)", topics::CARRIER_SWITCH_ACK, 12),
    ] {
        let x = if w == 24 || panels.len() % 2 == 1 {
            0
        } else {
            12
        };
        panels.push(panel(id, title, "table", topic, (x, y, w, 8)));
        id += 1;
        if w == 24 || x == 12 {
            y += 8;
        }
    }
    json!({
        "uid": "switchyard",
        "title": "Switchyard",
        "tags": ["switchyard"],
        "timezone": "utc",
        "refresh": "5s",
        "time": { "from": "now-15m", "to": "now" },
        "schemaVersion": 39,
        "editable": true,
        "panels": panels
    })
}

pub fn render(catalog: &Catalog) -> String {
    serde_json::to_string_pretty(&dashboard(catalog)).unwrap_or_default()
}
