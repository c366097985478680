//! Helpers the system tests share.

use std::net::SocketAddr;

use serde_json::Value;

/// One call to the switch API with `token`; returns the status and the JSON body (Null when
/// the body is not JSON).
pub fn api_call(
    api: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = client
            .request(method, format!("http://{api}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            request = request
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let response = request.send().await.expect("API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}
