//! Calls of Confluent's Schema Registry API, with the registry's errors kept as they are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::CONTENT_TYPE;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("schema registry at {url} is unreachable: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("schema registry answered {status}: {message} (error code {error_code})")]
    Api {
        status: u16,
        error_code: u32,
        message: String,
    },
    #[error("schema registry sent an unreadable answer: {0}")]
    Body(reqwest::Error),
}

impl ClientError {
    /// The registry's error code, when the registry answered with one.
    pub fn error_code(&self) -> Option<u32> {
        match self {
            ClientError::Api { error_code, .. } => Some(*error_code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredSchema {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema: String,
}

/// A registry at one URL. Clones share the HTTP client and the id cache.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    /// Schema text by id: an id never changes its schema, so it is asked for once.
    by_id: Arc<Mutex<HashMap<i32, Arc<str>>>>,
}

/// Longest wait between two tries while the registry is unreachable.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);
/// How long a request may take to connect, and in all.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

impl RegistryClient {
    /// A client of the registry at `base_url`. Each request gives up after
    /// [`REQUEST_TIMEOUT`] (connecting after [`CONNECT_TIMEOUT`]): a registry that accepts
    /// connections and never answers is unreachable too, not a hang.
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "HTTP client with timeouts unavailable; using the default");
                reqwest::Client::new()
            });
        RegistryClient {
            base: base_url.trim_end_matches('/').to_string(),
            http,
            by_id: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Run `call` until the registry answers: while it is unreachable, tell
    /// `on_unreachable`, wait (doubling from 250 ms up to 10 s) and log; an answer from the
    /// registry, even an error, is returned. Dropping the future stops the retries.
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        mut on_unreachable: impl FnMut(&ClientError),
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut delay = Duration::from_millis(250);
        loop {
            match call().await {
                Err(e) if e.error_code().is_none() => {
                    tracing::warn!(error = %e, what, retry_in = ?delay, "schema registry unreachable; retrying");
                    on_unreachable(&e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                other => return other,
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = request
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return response.json::<T>().await.map_err(ClientError::Body);
        }
        #[derive(Deserialize)]
        struct ErrorBody {
            error_code: u32,
            message: String,
        }
        let body = response.text().await.unwrap_or_default();
        let (error_code, message) = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => (e.error_code, e.message),
            Err(_) => (u32::from(status.as_u16()), body),
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            error_code,
            message,
        })
    }

    /// Register a schema under a subject; returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<i32, ClientError> {
        #[derive(Deserialize)]
        struct Id {
            id: i32,
        }
        let url = format!("{}/subjects/{}/versions", self.base, encode(subject));
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(json!({"schema": schema}).to_string());
        Ok(self.send::<Id>(request).await?.id)
    }

    /// [`RegistryClient::register`], waiting while the registry is unreachable.
    pub async fn register_retrying(&self, subject: &str, schema: &str) -> Result<i32, ClientError> {
        self.retrying(subject, |_| {}, || self.register(subject, schema))
            .await
    }

    /// The latest live version of a subject.
    pub async fn latest(&self, subject: &str) -> Result<RegisteredSchema, ClientError> {
        let url = format!("{}/subjects/{}/versions/latest", self.base, encode(subject));
        self.send(self.http.get(url)).await
    }

    /// The schema text for an id; asked of the registry once per id.
    pub async fn schema_by_id(&self, id: i32) -> Result<Arc<str>, ClientError> {
        if let Some(text) = self.by_id.lock().ok().and_then(|c| c.get(&id).cloned()) {
            return Ok(text);
        }
        #[derive(Deserialize)]
        struct Schema {
            schema: String,
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        let text: Arc<str> = self.send::<Schema>(self.http.get(url)).await?.schema.into();
        if let Ok(mut cache) = self.by_id.lock() {
            cache.insert(id, Arc::clone(&text));
        }
        Ok(text)
    }

    /// [`RegistryClient::schema_by_id`], waiting while the registry is unreachable and
    /// telling `on_unreachable` each time it is found so.
    pub async fn schema_by_id_retrying(
        &self,
        id: i32,
        on_unreachable: impl FnMut(&ClientError),
    ) -> Result<Arc<str>, ClientError> {
        self.retrying("schema by id", on_unreachable, || self.schema_by_id(id))
            .await
    }

    /// Subjects with a live version.
    pub async fn subjects(&self) -> Result<Vec<String>, ClientError> {
        self.send(self.http.get(format!("{}/subjects", self.base)))
            .await
    }
}

/// Percent-encode a subject for a URL path segment.
fn encode(subject: &str) -> String {
    subject
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
