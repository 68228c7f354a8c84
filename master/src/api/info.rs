//! `/info`, `/tcping`, `/healthz` and `/openapi.json`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{ApiError, State, json, parse_body, read_body};
use crate::model::MAX_FIELD;

/// The NodePass API level this master implements (NodePassDash needs ≥ 1.10).
pub const NODEPASS_API: &str = "v1.14.0";

/// `/info`, keys in NodePass's (alphabetical) order plus Drover's own.
#[derive(Serialize)]
struct Info {
    alias: String,
    arch: &'static str,
    cpu: i64,
    crt: String,
    diskr: u64,
    diskw: u64,
    drover: &'static str,
    /// Drover: tenant isolation (`enabled`, `cgroups`, `reason` when off).
    isolation: serde_json::Value,
    key: String,
    log: String,
    mem_total: u64,
    mem_used: u64,
    mid: String,
    name: String,
    netrx: u64,
    nettx: u64,
    os: &'static str,
    swap_total: u64,
    swap_used: u64,
    sysup: u64,
    tls: String,
    uptime: u64,
    ver: &'static str,
}

fn arch() -> &'static str {
    // Go's names, as NodePass reports them.
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn info(state: &State) -> Info {
    let sys = state.sampler.snapshot();
    let master = state.master.read().expect("master lock").clone();
    let cfg = &state.cfg;
    Info {
        alias: master.alias,
        arch: arch(),
        cpu: sys.cpu,
        crt: cfg.crt.clone().unwrap_or_default(),
        diskr: sys.diskr,
        diskw: sys.diskw,
        drover: env!("CARGO_PKG_VERSION"),
        isolation: state.sup.shared().isolation.status(),
        key: cfg.key.clone().unwrap_or_default(),
        log: cfg.log_text.clone(),
        mem_total: sys.mem_total,
        mem_used: sys.mem_used,
        mid: master.master_id,
        name: cfg.host.clone(),
        netrx: sys.netrx,
        nettx: sys.nettx,
        os: std::env::consts::OS,
        swap_total: sys.swap_total,
        swap_used: sys.swap_used,
        sysup: sys.sysup,
        tls: cfg.tls.to_string(),
        uptime: state.started.elapsed().as_secs(),
        ver: NODEPASS_API,
    }
}

/// `GET /info`.
pub async fn get(state: State) -> HttpResponse {
    json(StatusCode::OK, &info(&state))
}

#[derive(Deserialize)]
struct AliasBody {
    alias: Option<String>,
}

/// `POST /info` `{alias}`: sets (or, when missing, clears) the master alias.
pub async fn set_alias(state: State, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let body: AliasBody = parse_body(&read_body(payload).await?)?;
    let alias = body.alias.unwrap_or_default();
    if alias.len() > MAX_FIELD {
        return Err(ApiError::BadRequest(format!(
            "Master alias exceeds maximum length {MAX_FIELD}"
        )));
    }
    let mut record = state.master.read().expect("master lock").clone();
    record.alias = alias;
    state
        .store
        .put_master(&record)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    *state.master.write().expect("master lock") = record;
    Ok(json(StatusCode::OK, &info(&state)))
}

#[derive(Deserialize)]
pub struct TcpingQuery {
    target: Option<String>,
}

/// `GET /tcping?target=host:port`.
pub async fn tcping(q: web::Query<TcpingQuery>) -> Result<HttpResponse, ApiError> {
    let target = q.target.clone().unwrap_or_default();
    let res = crate::tcping::probe(&target)
        .await
        .map_err(ApiError::BadRequest)?;
    Ok(json(StatusCode::OK, &res))
}

/// `GET /healthz`: 200 when the store takes a write.
pub async fn healthz(state: State) -> HttpResponse {
    match state.store.flush().await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": format!("store not writable: {e}") }),
        ),
    }
}

/// `GET /openapi.json`.
pub async fn openapi(state: State) -> HttpResponse {
    json(StatusCode::OK, &super::openapi::document(&state.cfg.prefix))
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
pub async fn metrics(state: State) -> HttpResponse {
    let text = state
        .sup
        .shared()
        .metrics
        .render(&state.sup.list(), state.hub.subscribers());
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(text)
}
