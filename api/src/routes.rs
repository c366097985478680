//! The HTTP surface: handlers, their OpenAPI description (generated from these functions by
//! utoipa, served at `/openapi.json`), bearer-token auth, errors as JSON.

use std::collections::HashSet;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use switchyard_schemas::records::now_us;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use switchyard_protocol::json::format_request_id;
use switchyard_schemas::records::{CarrierSwitchRequest, RequestState, SwitchRequestState};
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::view::{CarrierName, ModemView, RequestHistory, RequestView};
use crate::{readings, AppState, REQUEST_TOPIC};

/// Largest request body accepted (a switch body is a few dozen bytes).
pub const MAX_BODY_BYTES: usize = 4096;

const PAGE: &str = include_str!("page.html");

pub(crate) type Shared = Arc<AppState>;

/// An error, as every endpoint reports it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: `unauthorized`, `unknown_modem`, `unknown_request`, `unknown_carrier`,
    /// `malformed_body`, `body_too_large`, `request_pending`, `broker_unavailable`,
    /// `not_ready`.
    pub error: String,
    /// What was wrong, for a person.
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// A switch request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SwitchBody {
    /// `verizon`, `t-mobile`, `at&t` or `disconnect`.
    #[schema(example = "verizon")]
    pub carrier: String,
}

/// A switch request accepted: produced to `downstream-request`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub request_id: String,
    pub modem_id: String,
    pub carrier: CarrierName,
    /// Where to poll its lifecycle (also in the `Location` header).
    pub location: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthBody {
    /// `ok` once the carrier-state table has been read to its end.
    pub status: String,
    pub modems: usize,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard switch API",
        description = "Every modem's SIM carrier and switch requests. All endpoints but /health need `Authorization: Bearer TOKEN`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The documented routes: those behind the token, the open one, and their OpenAPI document.
fn documented() -> (Router<Shared>, Router<Shared>, utoipa::openapi::OpenApi) {
    let (protected, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_modems))
        .routes(routes!(get_modem))
        .routes(routes!(switch_carrier))
        .routes(routes!(get_request))
        .routes(routes!(modem_requests))
        .routes(routes!(events))
        .routes(routes!(readings::routes::modem_readings))
        .routes(routes!(readings::routes::modem_readings_events))
        .split_for_parts();
    let (public, public_doc) = OpenApiRouter::new()
        .routes(routes!(health))
        .split_for_parts();
    doc.merge(public_doc);
    (protected, public, doc)
}

/// The application: documented routes, the OpenAPI document, the page, auth and limits.
pub fn router(state: Shared) -> Router {
    let (protected, public, doc) = documented();
    let doc = Arc::new(doc);
    let protected = protected
        .route(
            "/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth));
    protected
        .merge(public)
        .route("/", get(page))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if same(token.trim().as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            state.metrics.unauthorized.inc();
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer TOKEN)",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

fn not_ready(state: &AppState) -> Result<(), ApiError> {
    if state.ready.is_ready() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "still reading the carrier-state table; try again shortly",
        ))
    }
}

/// The view, for reading.
fn read_table(
    state: &AppState,
) -> Result<std::sync::RwLockReadGuard<'_, crate::view::Table>, ApiError> {
    state.table.read().map_err(|_| table_poisoned())
}

fn table_poisoned() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the view is unavailable",
    )
}

/// Health: ready once the carrier-state table has been read to its end. No token needed.
#[utoipa::path(get, path = "/health", security(()), responses(
    (status = 200, description = "Ready", body = HealthBody),
    (status = 503, description = "Still reading carrier-state", body = HealthBody),
))]
async fn health(State(state): State<Shared>) -> (StatusCode, Json<HealthBody>) {
    let modems = state.table.read().map(|t| t.len()).unwrap_or(0);
    let (status, text) = if state.ready.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    (
        status,
        Json(HealthBody {
            status: text.into(),
            modems,
        }),
    )
}

/// Every known modem: current carrier, last status, last seen, pending request.
#[utoipa::path(get, path = "/modems", responses(
    (status = 200, description = "Every modem, by id", body = Vec<ModemView>),
    (status = 401, description = "Missing or wrong token", body = ErrorBody),
    (status = 503, description = "Not ready yet", body = ErrorBody),
))]
async fn list_modems(State(state): State<Shared>) -> Result<Json<Vec<ModemView>>, ApiError> {
    not_ready(&state)?;
    let table = read_table(&state)?;
    Ok(Json(table.modems()))
}

/// One modem, with its recent requests.
#[utoipa::path(get, path = "/modems/{id}", params(("id" = String, Path, description = "Modem id")), responses(
    (status = 200, description = "The modem", body = ModemView),
    (status = 401, description = "Missing or wrong token", body = ErrorBody),
    (status = 404, description = "Unknown modem", body = ErrorBody),
))]
async fn get_modem(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<ModemView>, ApiError> {
    not_ready(&state)?;
    let table = read_table(&state)?;
    table.modem(&id).map(Json).ok_or_else(|| unknown_modem(&id))
}

/// A modem's switch history: its requests, newest first, each with every state change and
/// its time.
#[utoipa::path(get, path = "/modems/{id}/requests", params(("id" = String, Path, description = "Modem id")), responses(
    (status = 200, description = "The modem's requests, newest first", body = Vec<RequestHistory>),
    (status = 401, description = "Missing or wrong token", body = ErrorBody),
    (status = 404, description = "Unknown modem", body = ErrorBody),
))]
async fn modem_requests(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Vec<RequestHistory>>, ApiError> {
    not_ready(&state)?;
    let table = read_table(&state)?;
    table
        .history(&id)
        .map(Json)
        .ok_or_else(|| unknown_modem(&id))
}

pub(crate) fn unknown_modem(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_modem",
        format!("no modem {id:?} in the carrier-state table"),
    )
}

/// One request's lifecycle: requested, sent, acked / nacked / timed out.
#[utoipa::path(get, path = "/requests/{id}", params(("id" = String, Path, description = "Request id (16 hex digits)")), responses(
    (status = 200, description = "The request", body = RequestView),
    (status = 401, description = "Missing or wrong token", body = ErrorBody),
    (status = 404, description = "Unknown request", body = ErrorBody),
))]
async fn get_request(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    let table = read_table(&state)?;
    table.request(&id).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_request",
            format!("no request {id:?}"),
        )
    })
}

/// A modem's place in [`AppState::switching`], given up when the request is done.
struct InFlight<'a>(&'a Mutex<HashSet<String>>, String);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(&self.1);
        }
    }
}

fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format_request_id(h.finish())
}

/// Ask a modem's SIM to switch carrier. The request is on `downstream-request` (keyed by
/// modem id) when this answers 202. A modem with a request in flight refuses another (409).
#[utoipa::path(post, path = "/modems/{id}/carrier", params(("id" = String, Path, description = "Modem id")),
    request_body = SwitchBody,
    responses(
        (status = 202, description = "Accepted; poll the Location", body = Accepted,
         headers(("Location" = String, description = "/requests/{request_id}"))),
        (status = 400, description = "Unknown carrier or malformed body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "Unknown modem", body = ErrorBody),
        (status = 409, description = "A request for this modem is still pending", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Broker unavailable; nothing was written", body = ErrorBody),
    ))]
async fn switch_carrier(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Result<Json<SwitchBody>, JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<Accepted>), ApiError> {
    let refuse = |e: ApiError| {
        state.metrics.switches.with_label_values(&[e.error]).inc();
        e
    };
    let Json(body) = body.map_err(|rejection| {
        refuse(if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_body",
                format!(
                    "expected JSON like {{\"carrier\": \"verizon\"}}: {}",
                    rejection.body_text()
                ),
            )
        })
    })?;
    let carrier = CarrierName::parse(&body.carrier).ok_or_else(|| {
        refuse(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_carrier",
            format!(
                "unknown carrier {:?}; one of: {}",
                body.carrier,
                CarrierName::ALL.map(CarrierName::as_str).join(", ")
            ),
        ))
    })?;
    not_ready(&state).map_err(refuse)?;

    let _guard = {
        let mut set = state.switching.lock().map_err(|_| table_poisoned())?;
        let table = read_table(&state)?;
        let modem = table.modem(&id).ok_or_else(|| refuse(unknown_modem(&id)))?;
        if let Some(p) = modem.pending.as_ref() {
            return Err(refuse(ApiError::new(
                StatusCode::CONFLICT,
                "request_pending",
                format!(
                    "request {} for modem {id} is still {:?}; wait for it to finish",
                    p.request_id, p.state
                ),
            )));
        }
        if !set.insert(id.clone()) {
            return Err(refuse(ApiError::new(
                StatusCode::CONFLICT,
                "request_pending",
                format!("another request for modem {id} is being made right now"),
            )));
        }
        InFlight(&state.switching, id.clone())
    };

    let requested_at = now_us();
    let request = CarrierSwitchRequest {
        request_id: new_request_id(),
        modem_id: id.clone(),
        carrier: carrier.into(),
        requested_at,
        deadline: requested_at + state.deadline.as_micros() as i64,
        requested_by: Some("switch-api".into()),
    };
    let (schema_id, codec) = &state.request_codec;
    let payload = codec.encode(*schema_id, &request).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot encode the request: {e}"),
        )
    })?;
    let record = FutureRecord::to(REQUEST_TOPIC)
        .key(&id)
        .payload(&payload)
        .timestamp(requested_at / 1000);
    if let Err((e, _)) = state
        .producer
        .send(record, Timeout::After(state.produce_timeout))
        .await
    {
        warn!(modem = %id, error = %e, "switch request not written");
        return Err(refuse(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            format!("the broker did not take the request ({e}); nothing was written, try again"),
        )));
    }
    state
        .metrics
        .switches
        .with_label_values(&["accepted"])
        .inc();
    info!(modem = %id, request = %request.request_id, carrier = carrier.as_str(), "switch requested");
    let view = state.table.write().ok().and_then(|mut t| {
        t.accepted(
            &id,
            SwitchRequestState {
                request_id: request.request_id.clone(),
                carrier: request.carrier,
                state: RequestState::Requested,
                requested_at,
                deadline: request.deadline,
                sent_at: None,
                attempts: 0,
                completed_at: None,
                result_carrier: None,
                reason: None,
            },
        )
    });
    if let Some(view) = view {
        let _ = state.changes.send(view);
    }
    let location = format!("/requests/{}", request.request_id);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    Ok((
        StatusCode::ACCEPTED,
        headers,
        Json(Accepted {
            request_id: request.request_id,
            modem_id: id,
            carrier,
            location,
        }),
    ))
}

/// Server-sent events: `snapshot` (every modem, at connect and after falling behind), then
/// `modem` (one modem's new view) on every change.
#[utoipa::path(get, path = "/events", responses(
    (status = 200, description = "text/event-stream of `snapshot` and `modem` events", content_type = "text/event-stream", body = String),
    (status = 401, description = "Missing or wrong token", body = ErrorBody),
))]
async fn events(State(state): State<Shared>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.changes.subscribe();
    let snapshot = |state: &AppState| {
        let modems = state.table.read().map(|t| t.modems()).unwrap_or_default();
        Event::default()
            .event("snapshot")
            .json_data(modems)
            .unwrap_or_default()
    };
    let first = snapshot(&state);
    let stream = futures::stream::unfold(
        (Some(first), receiver, state),
        move |(pending, mut receiver, state)| async move {
            if let Some(event) = pending {
                return Some((Ok(event), (None, receiver, state)));
            }
            let event = match receiver.recv().await {
                Ok(view) => Event::default()
                    .event("modem")
                    .json_data(view)
                    .unwrap_or_default(),
                // Fell behind: start over from the whole table.
                Err(RecvError::Lagged(_)) => snapshot(&state),
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), (None, receiver, state)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The operators' page: static HTML and JS; the data comes from the API with the token.
async fn page(State(state): State<Shared>) -> Html<String> {
    let grafana = state
        .grafana_url
        .as_deref()
        .map(|u| serde_json::to_string(u).unwrap_or_else(|_| "null".into()))
        .unwrap_or_else(|| "null".into());
    Html(PAGE.replace("__GRAFANA_URL__", &grafana))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_is_exact() {
        assert!(same(b"abcdef", b"abcdef"));
        assert!(!same(b"abcdef", b"abcdeg"));
        assert!(!same(b"abc", b"abcdef"));
    }

    #[test]
    fn request_ids_are_16_hex_digits_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_openapi_document_describes_every_route() {
        let (_, _, doc) = documented();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for p in [
            "/modems",
            "/modems/{id}",
            "/modems/{id}/carrier",
            "/requests/{id}",
            "/modems/{id}/requests",
            "/events",
            "/modems/{id}/readings",
            "/modems/{id}/readings/events",
            "/health",
        ] {
            assert!(paths.iter().any(|x| *x == p), "{p} missing from {paths:?}");
        }
    }
}
