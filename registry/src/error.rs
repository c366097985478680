//! Errors in Confluent's shape: an HTTP status and a body `{"error_code": N, "message": "…"}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::CONTENT_TYPE;

/// An error the REST API returns, with Confluent's status and error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (error code {error_code})")]
pub struct ApiError {
    pub status: StatusCode,
    pub error_code: u32,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, error_code: u32, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error_code,
            message: message.into(),
        }
    }

    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }
    pub fn version_not_found(subject: &str, version: i32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found for subject '{subject}'."),
        )
    }
    pub fn schema_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, 40403, "Schema not found")
    }
    pub fn schema_id_not_found(id: i32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {id} not found"),
        )
    }
    pub fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40404,
            format!(
                "Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
            ),
        )
    }
    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }
    pub fn version_soft_deleted(subject: &str, version: i32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40406,
            format!("Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"),
        )
    }
    pub fn version_not_soft_deleted(subject: &str, version: i32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40407,
            format!("Subject '{subject}' Version {version} was not deleted first before being permanently deleted"),
        )
    }
    pub fn subject_compatibility_not_configured(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }
    pub fn incompatible(messages: &[String]) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject; details: {}",
                messages.join("; ")
            ),
        )
    }
    pub fn invalid_schema(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {detail}"),
        )
    }
    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!(
                "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }
    pub fn invalid_compatibility_level(level: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive; got '{level}'"
            ),
        )
    }
    pub fn bad_request(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 400, format!("{detail}"))
    }
    pub fn store(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            format!("Error in the backend data store: {detail}"),
        )
    }
    pub fn timeout(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50002,
            format!("Operation timed out: {detail}"),
        )
    }
    pub fn not_found_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found")
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            405,
            "HTTP 405 Method Not Allowed",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.error_code, "message": self.message}).to_string();
        (self.status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
    }
}
