//! The Confluent Schema Registry REST API (the subset Switchyard's clients, Confluent's
//! clients and Grafana's Kafka datasource use), with Confluent's status and error codes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::compat::{self, Level};
use crate::error::ApiError;
use crate::metrics::{track, ApiMetrics};
use crate::state::{self, normalize};
use crate::store::{live_schemas, SchemaStore};
use crate::CONTENT_TYPE;

type Store = State<Arc<SchemaStore>>;
type Params = Query<HashMap<String, String>>;
type ApiResult = Result<Response, ApiError>;

/// The registry's HTTP routes, and `/metrics` counting and timing each of them.
pub fn router(store: Arc<SchemaStore>, metrics: ApiMetrics) -> Router {
    let exposition = metrics.clone();
    Router::new()
        .route("/", get(|| async { reply(json!({})) }))
        .route("/health", get(health))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas/types", get(|| async { reply(json!(["AVRO"])) }))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_compatibility_all),
        )
        .fallback(|| async { ApiError::not_found_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(store)
        .route_layer(axum::middleware::from_fn_with_state(metrics, track))
        .route(
            "/metrics",
            get(move || {
                let exposition = exposition.clone();
                async move { exposition.render() }
            }),
        )
}

fn reply(value: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], value.to_string()).into_response()
}

/// Query flags the way clients send them: `true`, `True`, `1`.
fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1"))
}

/// A request naming a schema: `{"schema": "...", "schemaType"?: "AVRO", "references"?: []}`.
#[derive(Deserialize)]
struct SchemaRequest {
    schema: Option<String>,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default, rename = "ruleSet")]
    rule_set: Option<Value>,
}

fn schema_from_body(body: &Bytes) -> Result<String, ApiError> {
    let req: SchemaRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    if let Some(t) = &req.schema_type {
        if !t.eq_ignore_ascii_case("AVRO") {
            return Err(ApiError::invalid_schema(format!(
                "schema type {t} is not supported; this registry stores AVRO schemas"
            )));
        }
    }
    if req.references.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::invalid_schema(
            "schema references are not supported by this registry",
        ));
    }
    if req.metadata.as_ref().is_some_and(|m| !m.is_null())
        || req.rule_set.as_ref().is_some_and(|r| !r.is_null())
    {
        return Err(ApiError::invalid_schema(
            "schema metadata and rule sets are not supported by this registry",
        ));
    }
    req.schema
        .ok_or_else(|| ApiError::invalid_schema("the request has no \"schema\""))
}

/// `latest`, `-1` or a version number 1..=2^31-1.
enum VersionSpec {
    Latest,
    Number(i32),
}

fn parse_version(raw: &str) -> Result<VersionSpec, ApiError> {
    match raw {
        "latest" | "-1" => Ok(VersionSpec::Latest),
        other => match other.parse::<i32>() {
            Ok(n) if n >= 1 => Ok(VersionSpec::Number(n)),
            _ => Err(ApiError::invalid_version(raw)),
        },
    }
}

/// Resolve a version of a subject to (version, id), honouring soft deletes.
fn resolve(
    state: &state::State,
    subject: &str,
    spec: &VersionSpec,
    deleted: bool,
) -> Result<(i32, i32), ApiError> {
    let versions = state
        .versions(subject)
        .filter(|vs| deleted || vs.values().any(|e| !e.deleted))
        .ok_or_else(|| ApiError::subject_not_found(subject))?;
    match spec {
        VersionSpec::Latest => versions
            .iter()
            .rev()
            .find(|(_, e)| deleted || !e.deleted)
            .map(|(v, e)| (*v, e.id))
            .ok_or_else(|| ApiError::subject_not_found(subject)),
        VersionSpec::Number(n) => match versions.get(n) {
            Some(e) if deleted || !e.deleted => Ok((*n, e.id)),
            _ => Err(ApiError::version_not_found(subject, *n)),
        },
    }
}

/// A schema's text as the whole response body (the `/schema` endpoints).
fn raw_schema(state: &state::State, id: i32) -> ApiResult {
    let schema = state
        .schema(id)
        .ok_or_else(|| ApiError::schema_id_not_found(id))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], schema.text.clone()).into_response())
}

fn registered(
    state: &state::State,
    subject: &str,
    version: i32,
    id: i32,
) -> Result<Value, ApiError> {
    let schema = state
        .schema(id)
        .ok_or_else(|| ApiError::schema_id_not_found(id))?;
    Ok(json!({"subject": subject, "version": version, "id": id, "schema": schema.text}))
}

async fn health(State(store): Store) -> ApiResult {
    store.catch_up().await?;
    Ok(reply(json!({"status": "ok"})))
}

async fn list_subjects(State(store): Store, Query(params): Params) -> ApiResult {
    let deleted_only = flag(&params, "deleted_only");
    let deleted = flag(&params, "deleted") || deleted_only;
    let prefix = params
        .get("subjectPrefix")
        .or_else(|| params.get("subject"))
        .cloned()
        .unwrap_or_default();
    let st = store.read();
    let live = st.subjects(false);
    let subjects: Vec<String> = st
        .subjects(deleted)
        .into_iter()
        .filter(|s| s.starts_with(&prefix))
        .filter(|s| !deleted_only || !live.contains(s))
        .collect();
    Ok(reply(json!(subjects)))
}

async fn list_versions(
    State(store): Store,
    Path(subject): Path<String>,
    Query(params): Params,
) -> ApiResult {
    let deleted = flag(&params, "deleted");
    let st = store.read();
    let versions: Vec<i32> = st
        .versions(&subject)
        .map(|vs| {
            vs.iter()
                .filter(|(_, e)| deleted || !e.deleted)
                .map(|(v, _)| *v)
                .collect()
        })
        .unwrap_or_default();
    if versions.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    Ok(reply(json!(versions)))
}

async fn register(State(store): Store, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let text = schema_from_body(&body)?;
    let (id, version) = store.register(&subject, &text).await?;
    // Confluent answers a registration with the id alone.
    let _ = version;
    Ok(reply(json!({"id": id})))
}

async fn lookup(
    State(store): Store,
    Path(subject): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> ApiResult {
    let text = schema_from_body(&body)?;
    let (_, normalized) = normalize(&text)?;
    let deleted = flag(&params, "deleted");
    let st = store.read();
    if !st.subjects(deleted).contains(&subject) {
        return Err(ApiError::subject_not_found(&subject));
    }
    let (version, id) = st
        .find(&subject, &normalized, deleted)
        .ok_or_else(ApiError::schema_not_found)?;
    Ok(reply(registered(&st, &subject, version, id)?))
}

async fn get_version(
    State(store): Store,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult {
    let spec = parse_version(&version)?;
    let st = store.read();
    let (version, id) = resolve(&st, &subject, &spec, flag(&params, "deleted"))?;
    Ok(reply(registered(&st, &subject, version, id)?))
}

async fn get_version_schema(
    State(store): Store,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult {
    let spec = parse_version(&version)?;
    let st = store.read();
    let (_, id) = resolve(&st, &subject, &spec, flag(&params, "deleted"))?;
    raw_schema(&st, id)
}

async fn referenced_by(
    State(store): Store,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let spec = parse_version(&version)?;
    resolve(&store.read(), &subject, &spec, false)?;
    // References are not supported, so no schema refers to another.
    Ok(reply(json!([])))
}

async fn delete_version(
    State(store): Store,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult {
    let spec = parse_version(&version)?;
    let permanent = flag(&params, "permanent");
    let number = {
        let st = store.read();
        match spec {
            VersionSpec::Number(n) => n,
            VersionSpec::Latest => resolve(&st, &subject, &spec, permanent)?.0,
        }
    };
    let deleted = store.delete_version(&subject, number, permanent).await?;
    Ok(reply(json!(deleted)))
}

async fn delete_subject(
    State(store): Store,
    Path(subject): Path<String>,
    Query(params): Params,
) -> ApiResult {
    let versions = store
        .delete_subject(&subject, flag(&params, "permanent"))
        .await?;
    Ok(reply(json!(versions)))
}

async fn schema_by_id(State(store): Store, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let st = store.read();
    let schema = st
        .schema(id)
        .ok_or_else(|| ApiError::schema_id_not_found(id))?;
    Ok(reply(json!({"schema": schema.text})))
}

async fn raw_schema_by_id(State(store): Store, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    raw_schema(&store.read(), id)
}

async fn subjects_by_id(
    State(store): Store,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult {
    let id = parse_id(&id)?;
    let st = store.read();
    if st.schema(id).is_none() {
        return Err(ApiError::schema_id_not_found(id));
    }
    let mut subjects: Vec<String> = st
        .usages(id, flag(&params, "deleted"))
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    Ok(reply(json!(subjects)))
}

async fn versions_by_id(
    State(store): Store,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult {
    let id = parse_id(&id)?;
    let st = store.read();
    if st.schema(id).is_none() {
        return Err(ApiError::schema_id_not_found(id));
    }
    let pairs: Vec<Value> = st
        .usages(id, flag(&params, "deleted"))
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(reply(json!(pairs)))
}

fn parse_id(raw: &str) -> Result<i32, ApiError> {
    raw.parse::<i32>()
        .map_err(|_| ApiError::bad_request(format!("schema id '{raw}' is not a number")))
}

#[derive(Deserialize)]
struct ConfigRequest {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

fn level_from_body(body: &Bytes) -> Result<Level, ApiError> {
    let req: ConfigRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let raw = req
        .compatibility
        .or(req.compatibility_level)
        .ok_or_else(|| ApiError::invalid_compatibility_level(""))?;
    raw.parse::<Level>()
        .map_err(|_| ApiError::invalid_compatibility_level(&raw))
}

async fn get_global_config(State(store): Store) -> ApiResult {
    let level = store.read().global_level().unwrap_or(store.default_level());
    Ok(reply(json!({"compatibilityLevel": level.as_str()})))
}

async fn put_global_config(State(store): Store, body: Bytes) -> ApiResult {
    let level = level_from_body(&body)?;
    store.set_level(None, level).await?;
    Ok(reply(json!({"compatibility": level.as_str()})))
}

async fn delete_global_config(State(store): Store) -> ApiResult {
    let previous = store.delete_level(None).await?;
    Ok(reply(json!({"compatibilityLevel": previous.as_str()})))
}

async fn get_subject_config(
    State(store): Store,
    Path(subject): Path<String>,
    Query(params): Params,
) -> ApiResult {
    let st = store.read();
    let level = match st.subject_level(&subject) {
        Some(level) => level,
        None if flag(&params, "defaultToGlobal") => {
            st.global_level().unwrap_or(store.default_level())
        }
        None => return Err(ApiError::subject_compatibility_not_configured(&subject)),
    };
    Ok(reply(json!({"compatibilityLevel": level.as_str()})))
}

async fn put_subject_config(
    State(store): Store,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let level = level_from_body(&body)?;
    store.set_level(Some(&subject), level).await?;
    Ok(reply(json!({"compatibility": level.as_str()})))
}

async fn delete_subject_config(State(store): Store, Path(subject): Path<String>) -> ApiResult {
    let previous = store.delete_level(Some(&subject)).await?;
    Ok(reply(json!({"compatibilityLevel": previous.as_str()})))
}

fn compatibility_reply(result: Result<(), Vec<String>>, verbose: bool) -> Response {
    let mut body = json!({"is_compatible": result.is_ok()});
    if verbose {
        body["messages"] = json!(result.err().unwrap_or_default());
    }
    reply(body)
}

async fn check_compatibility(
    State(store): Store,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
    body: Bytes,
) -> ApiResult {
    let spec = parse_version(&version)?;
    let text = schema_from_body(&body)?;
    let (schema, _) = normalize(&text)?;
    let st = store.read();
    let (version, id) = resolve(&st, &subject, &spec, false)?;
    let old = st
        .schema(id)
        .ok_or_else(|| ApiError::schema_id_not_found(id))?;
    let (old, _) = normalize(&old.text)?;
    // Against one named version, the level's direction applies to that version alone.
    let level = match store.effective_level(&st, &subject) {
        Level::BackwardTransitive => Level::Backward,
        Level::ForwardTransitive => Level::Forward,
        Level::FullTransitive => Level::Full,
        other => other,
    };
    let result = compat::check(level, &schema, &[(version, old)]);
    Ok(compatibility_reply(result, flag(&params, "verbose")))
}

async fn check_compatibility_all(
    State(store): Store,
    Path(subject): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> ApiResult {
    let text = schema_from_body(&body)?;
    let (schema, _) = normalize(&text)?;
    let st = store.read();
    let previous = live_schemas(&st, &subject);
    let result = compat::check(store.effective_level(&st, &subject), &schema, &previous);
    Ok(compatibility_reply(result, flag(&params, "verbose")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn versions_parse_like_confluents() {
        assert!(matches!(parse_version("latest"), Ok(VersionSpec::Latest)));
        assert!(matches!(parse_version("-1"), Ok(VersionSpec::Latest)));
        assert!(matches!(parse_version("3"), Ok(VersionSpec::Number(3))));
        for bad in ["0", "-2", "abc", "99999999999"] {
            let err = parse_version(bad).err().expect("invalid");
            assert_eq!(err.error_code, 42202, "{bad}");
            assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }

    #[test]
    fn schema_requests_refuse_what_is_not_supported() {
        let code = |body: &str| {
            schema_from_body(&Bytes::from(body.to_string()))
                .err()
                .map(|e| e.error_code)
        };
        assert_eq!(code(r#"{"schema":"\"int\""}"#), None);
        assert_eq!(
            code(r#"{"schema":"\"int\"","schemaType":"AVRO","references":[]}"#),
            None
        );
        assert_eq!(
            code(r#"{"schema":"x","schemaType":"PROTOBUF"}"#),
            Some(42201)
        );
        assert_eq!(
            code(r#"{"schema":"x","references":[{"name":"a","subject":"b","version":1}]}"#),
            Some(42201)
        );
        assert_eq!(code(r#"{"nothing":1}"#), Some(42201));
        assert_eq!(code("{not json"), Some(400));
    }

    #[test]
    fn flags_accept_python_style_booleans() {
        let params: HashMap<String, String> = [("deleted".to_string(), "True".to_string())].into();
        assert!(flag(&params, "deleted"));
        let params: HashMap<String, String> = [("deleted".to_string(), "False".to_string())].into();
        assert!(!flag(&params, "deleted"));
    }
}
