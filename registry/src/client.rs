//! A small client for the registry API: what `switchyard topics apply` and `tail` need.
//! (Serdes use `schema_registry_converter`, which caches ids.)

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

#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
}

impl RegistryClient {
    pub fn new(base_url: &str) -> Self {
        RegistryClient {
            base: base_url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
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

    /// The latest live version of a subject.
    /// [`RegistryClient::register`], waiting (with backoff, logged) while the registry is
    /// unreachable; an answer from the registry, such as an incompatible schema, is final.
    pub async fn register_retrying(&self, subject: &str, schema: &str) -> Result<i32, ClientError> {
        let mut delay = std::time::Duration::from_millis(250);
        loop {
            match self.register(subject, schema).await {
                Err(e) if e.error_code().is_none() => {
                    tracing::warn!(error = %e, retry_in = ?delay, "schema registry unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(10));
                }
                other => return other,
            }
        }
    }

    pub async fn latest(&self, subject: &str) -> Result<RegisteredSchema, ClientError> {
        let url = format!("{}/subjects/{}/versions/latest", self.base, encode(subject));
        self.send(self.http.get(url)).await
    }

    /// The schema text for an id.
    pub async fn schema_by_id(&self, id: i32) -> Result<String, ClientError> {
        #[derive(Deserialize)]
        struct Schema {
            schema: String,
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        Ok(self.send::<Schema>(self.http.get(url)).await?.schema)
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
