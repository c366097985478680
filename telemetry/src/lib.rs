//! Service plumbing shared by Switchyard's binaries: logging set-up, the `/metrics` +
//! `/health` endpoint, and the shutdown signal.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

/// The variable that chooses the log format: `json` for one JSON object per line (what log
/// shippers read), anything else or unset for text.
pub const LOG_FORMAT_ENV: &str = "SWITCHYARD_LOG_FORMAT";

/// Install the global subscriber: `tracing` to stderr, filtered by `RUST_LOG` (else
/// `default_filter`); text with colours only on a terminal so log files stay plain, or one
/// JSON object per line with `SWITCHYARD_LOG_FORMAT=json`.
pub fn init_tracing(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json_logs(std::env::var(LOG_FORMAT_ENV).ok().as_deref()) {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn json_logs(format: Option<&str>) -> bool {
    format.is_some_and(|f| f.trim().eq_ignore_ascii_case("json"))
}

/// Whether a service is ready to do its work; `/health` answers 200 when it is, and 503
/// with the reason (`starting` unless told) when it is not.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<HealthState>);

#[derive(Debug, Default)]
struct HealthState {
    ready: AtomicBool,
    reason: std::sync::Mutex<Option<String>>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        if ready {
            self.set_reason(None);
        }
        self.0.ready.store(ready, Ordering::Relaxed);
    }

    /// Not ready, for `reason` (what `/health` says, e.g. "restoring device-sessions: 40%").
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.0.ready.store(false, Ordering::Relaxed);
        self.set_reason(Some(reason.into()));
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Relaxed)
    }

    /// Why it is not ready ("starting" when no reason was given).
    pub fn reason(&self) -> String {
        self.0
            .reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "starting".to_string())
    }

    fn set_reason(&self, reason: Option<String>) {
        if let Ok(mut r) = self.0.reason.lock() {
            *r = reason;
        }
    }
}

/// Render a registry in Prometheus' text format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut buffer) {
        return format!("# error encoding metrics: {e}\n");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// Routes for `/metrics` and `/health`, to serve alone or merge into a service's router.
pub fn router(registry: Registry, health: Health) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = render(&registry);
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route(
            "/health",
            get(move || {
                let (ready, reason) = (health.is_ready(), health.reason());
                async move {
                    if ready {
                        (StatusCode::OK, "ok\n".to_string()).into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
                    }
                }
            }),
        )
}

/// Serve `/metrics` and `/health` on `addr` in the background; returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Health,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(registry, health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
