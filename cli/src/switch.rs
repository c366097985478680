//! `switchyard modems` and `switchyard switch`: the switch API from the command line.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::{emit, Failure};

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The switch API.
    #[arg(
        long,
        env = "SWITCHYARD_API_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub api_url: String,
    /// Bearer token (`make up` prints it and keeps it in .run/api-token).
    #[arg(long, env = "SWITCHYARD_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// Modem id.
    pub modem: String,
    /// verizon, t-mobile, at&t or disconnect.
    pub carrier: String,
    /// Wait until the SIM answers or the request ends otherwise; exit 1 unless acked.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait with --wait.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(args: &ApiArgs) -> Result<Api, Failure> {
        let token = args.token.clone().ok_or_else(|| {
            Failure::BadInput("no API token: set SWITCHYARD_API_TOKEN or pass --token".into())
        })?;
        Ok(Api {
            base: args.api_url.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        })
    }

    /// Call the API; its JSON errors become a one-line failure (bad input for 4xx).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("the switch API at {} is unreachable", self.base))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message = value["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| status.to_string());
        match status.as_u16() {
            401 => Err(Failure::Other(anyhow::anyhow!(
                "the API refused the token: {message}"
            ))),
            400..=499 => Err(Failure::BadInput(message)),
            _ => Err(Failure::Other(anyhow::anyhow!(
                "the API answered {status}: {message}"
            ))),
        }
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub async fn modems(args: &ApiArgs) -> Result<(), Failure> {
    let api = Api::new(args)?;
    let modems = api.call(reqwest::Method::GET, "/modems", None).await?;
    emit(format!(
        "{:<18} {:<11} {:<12} {:<25} LATEST REQUEST",
        "MODEM", "CARRIER", "STATUS", "LAST SEEN"
    ));
    for m in modems.as_array().map(Vec::as_slice).unwrap_or_default() {
        let latest = m["requests"]
            .as_array()
            .and_then(|r| r.last())
            .map(|r| {
                format!(
                    "{} {} → {}",
                    text(&r["request_id"]),
                    text(&r["state"]),
                    text(&r["carrier"])
                )
            })
            .unwrap_or_else(|| "-".into());
        emit(format!(
            "{:<18} {:<11} {:<12} {:<25} {latest}",
            text(&m["modem_id"]),
            text(&m["carrier"]),
            text(&m["last_status"]),
            text(&m["last_seen"]),
        ));
    }
    Ok(())
}

pub async fn switch(api_args: &ApiArgs, args: SwitchArgs) -> Result<(), Failure> {
    let api = Api::new(api_args)?;
    let accepted = api
        .call(
            reqwest::Method::POST,
            &format!("/modems/{}/carrier", args.modem),
            Some(json!({ "carrier": args.carrier })),
        )
        .await?;
    let request_id = text(&accepted["request_id"]).to_string();
    emit(format!(
        "request {request_id}: {} for modem {} requested",
        text(&accepted["carrier"]),
        args.modem
    ));
    if !args.wait {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last = String::new();
    loop {
        let r = api
            .call(
                reqwest::Method::GET,
                &format!("/requests/{request_id}"),
                None,
            )
            .await?;
        let state = text(&r["state"]).to_string();
        if state != last {
            emit(format!("request {request_id}: {state}"));
            last = state.clone();
        }
        match state.as_str() {
            "requested" | "sent" => {}
            "acked" => {
                emit(format!(
                    "modem {} is on {}",
                    args.modem,
                    text(&r["result_carrier"])
                ));
                return Ok(());
            }
            other => {
                let reason = r["reason"]
                    .as_str()
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                return Err(Failure::Other(anyhow::anyhow!(
                    "the switch ended {other}{reason}"
                )));
            }
        }
        if Instant::now() > deadline {
            return Err(Failure::Other(anyhow::anyhow!(
                "gave up waiting after {} s; the request is still {state}",
                args.timeout_secs
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
