//! `GET /modems/{id}/readings` and its live feed, `GET /modems/{id}/readings/events`.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::store::ModemReadings;
use crate::routes::{ApiError, ErrorBody, Shared};
use crate::AppState;

fn snapshot(state: &AppState, modem: &str) -> Result<ModemReadings, ApiError> {
    state.readings.want();
    let readings = state
        .readings
        .store
        .read()
        .map_err(|_| ApiError::internal("the readings are unavailable"))?
        .modem(modem);
    let known = readings.series.iter().any(|s| !s.points.is_empty())
        || state.table.read().is_ok_and(|t| t.modem(modem).is_some());
    if known {
        Ok(readings)
    } else {
        Err(crate::routes::unknown_modem(modem))
    }
}

/// A modem's recent readings, one series per sensor, from the projected `<sensor>-grafana`
/// topics as Grafana reads them (latest schema; a point's time is the record timestamp,
/// which is the sensor's time), and its anomalies.
#[utoipa::path(get, path = "/modems/{id}/readings", params(("id" = String, Path, description = "Modem id")), responses(
    (status = 200, description = "The modem's series and anomaly markers", body = ModemReadings),
    (status = 401, description = "Missing or wrong token", body = ErrorBody),
    (status = 404, description = "Unknown modem", body = ErrorBody),
))]
pub async fn modem_readings(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<ModemReadings>, ApiError> {
    snapshot(&state, &id).map(Json)
}

/// Server-sent events for one modem's charts: `snapshot` (as `GET /modems/{id}/readings`,
/// at connect and after falling behind), then `reading` and `anomaly` as they arrive.
#[utoipa::path(get, path = "/modems/{id}/readings/events", params(("id" = String, Path, description = "Modem id")), responses(
    (status = 200, description = "text/event-stream of `snapshot`, `reading` and `anomaly` events", content_type = "text/event-stream", body = String),
    (status = 401, description = "Missing or wrong token", body = ErrorBody),
    (status = 404, description = "Unknown modem", body = ErrorBody),
))]
pub async fn modem_readings_events(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let receiver = state.readings.events.subscribe();
    let first = snapshot_event(&state, &id)?;
    let stream = futures::stream::unfold(
        (Some(first), receiver, state, id),
        |(pending, mut receiver, state, id)| async move {
            if let Some(event) = pending {
                return Some((Ok(event), (None, receiver, state, id)));
            }
            let event = loop {
                match receiver.recv().await {
                    Ok(e) if e.modem_id() == id => {
                        let name = match e {
                            super::store::ReadingEvent::Reading { .. } => "reading",
                            super::store::ReadingEvent::Anomaly { .. } => "anomaly",
                        };
                        break Event::default()
                            .event(name)
                            .json_data(e)
                            .unwrap_or_default();
                    }
                    Ok(_) => continue,
                    // Fell behind: start over from the whole picture.
                    Err(RecvError::Lagged(_)) => match snapshot_event(&state, &id) {
                        Ok(e) => break e,
                        Err(_) => return None,
                    },
                    Err(RecvError::Closed) => return None,
                }
            };
            Some((Ok(event), (None, receiver, state, id)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn snapshot_event(state: &AppState, modem: &str) -> Result<Event, ApiError> {
    Ok(Event::default()
        .event("snapshot")
        .json_data(snapshot(state, modem)?)
        .unwrap_or_default())
}
