//! The registry's `/metrics`: every request counted by method, route and status, and how long
//! it took, so Prometheus sees a registry that refuses or slows down (its clients, every
//! service, block on it at start-up and on each new writer schema).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct ApiMetrics {
    registry: Registry,
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl ApiMetrics {
    pub fn new() -> Result<ApiMetrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_registry_requests_total",
                "REST requests answered, by method, route and status code",
            ),
            &["method", "route", "status"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_registry_request_seconds",
                "time to answer a REST request, by method and route",
            )
            .buckets(vec![0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0]),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(ApiMetrics {
            registry,
            requests,
            seconds,
        })
    }

    /// The Prometheus text of every metric.
    pub fn render(&self) -> Response {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            switchyard_telemetry::render(&self.registry),
        )
            .into_response()
    }
}

/// Middleware: count and time each request under its route pattern (never the raw path,
/// whose subjects and ids would make a series each).
pub async fn track(State(metrics): State<ApiMetrics>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .seconds
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[&method, &route, response.status().as_str()])
        .inc();
    response
}
