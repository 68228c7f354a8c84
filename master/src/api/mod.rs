//! The REST API (actix-web), NodePass-compatible.
//!
//! 1. Every response gets the CORS headers; `OPTIONS` answers 200 before auth.
//! 2. `X-API-Key` is required (constant-time compare) except on
//!    `/openapi.json`, `/docs`, `/healthz`.
//! 3. Routes are served at `{prefix}/…` and `{prefix}/v1/…`; unknown paths
//!    are a JSON 404, wrong methods a JSON 405 with `Allow`, a query string
//!    that does not parse a JSON 400.

pub mod clients;
pub mod error;
pub mod events;
pub mod info;
pub mod instances;
pub mod openapi;

use std::sync::{Arc, RwLock};
use std::time::Instant;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::QueryPayloadError;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::model::MasterRecord;
use crate::sse::Hub;
use crate::store::Store;
use crate::supervisor::Supervisor;
use crate::sysinfo::Sampler;
pub use error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// What every handler can reach.
pub struct AppState {
    pub sup: Arc<Supervisor>,
    pub hub: Arc<Hub>,
    pub store: Store,
    pub master: RwLock<MasterRecord>,
    pub cfg: Config,
    pub sampler: Arc<Sampler>,
    pub started: Instant,
    pub gateway: Arc<crate::gateway::Gateway>,
}

pub type State = web::Data<AppState>;

/// A JSON response the way NodePass writes it (compact, trailing newline).
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> HttpResponse {
    let mut text =
        serde_json::to_vec(body).unwrap_or_else(|_| b"{\"error\":\"encoding failed\"}".to_vec());
    text.push(b'\n');
    HttpResponse::build(status)
        .content_type("application/json")
        .body(text)
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
pub async fn read_body(mut payload: web::Payload) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("Invalid request body: {e}")))?;
        if buf.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::TooLarge(MAX_BODY));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Parses a JSON body into `T`, naming what is wrong. The body must be a
/// JSON object: serde's derived structs would also take an array of their
/// fields in order (`[null]` for `{"alias": null}`), which no client means.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let bad = |e: serde_json::Error| {
        if e.is_syntax() || e.is_eof() {
            ApiError::BadRequest("Invalid request body".into())
        } else {
            ApiError::BadRequest(format!("Invalid request body: {e}"))
        }
    };
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(bad)?;
    T::deserialize(serde_json::Value::Object(fields)).map_err(bad)
}

/// `#[serde(default, deserialize_with = "object")]` for a field holding a
/// struct: only a JSON object (or `null`) is accepted, for the reason given
/// at [`parse_body`].
pub fn object<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let Some(fields) = Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)? else {
        return Ok(None);
    };
    T::deserialize(serde_json::Value::Object(fields))
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn add_cors(headers: &mut header::HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, PATCH, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Content-Type, Authorization, X-API-Key, Cache-Control, Last-Event-ID",
        ),
    );
}

/// Paths (after the prefix and optional `/v1`) that need no key.
fn is_public(rest: &str) -> bool {
    rest == "/openapi.json" || rest == "/healthz" || rest == "/docs" || rest.starts_with("/docs/")
}

/// CORS on everything, OPTIONS before auth, then the API key.
pub async fn gate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, actix_web::Error> {
    let state = req.app_data::<State>().cloned();
    let early = |req: ServiceRequest, resp: HttpResponse| {
        let mut res = req.into_response(resp);
        add_cors(res.headers_mut());
        Ok(res.map_into_right_body())
    };
    if req.method() == actix_web::http::Method::OPTIONS {
        return early(req, HttpResponse::Ok().finish());
    }
    let Some(state) = state else {
        return early(
            req,
            ApiError::Internal("no state".into()).error_response_json(),
        );
    };
    let prefix = state.cfg.prefix.as_str();
    let path = req.path();
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let rest = rest
        .strip_prefix("/v1")
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .unwrap_or(rest);
    if !is_public(rest) {
        let given = req
            .headers()
            .get("X-API-Key")
            .map(|v| v.as_bytes().to_vec());
        let expected = state.master.read().expect("master lock").api_key.clone();
        match given {
            None => {
                return early(
                    req,
                    ApiError::Unauthorized("Unauthorized: API key required").error_response_json(),
                );
            }
            Some(k) if !bool::from(k.as_slice().ct_eq(expected.as_bytes())) => {
                return early(
                    req,
                    ApiError::Unauthorized("Unauthorized: Invalid API key").error_response_json(),
                );
            }
            Some(_) => {}
        }
    }
    let mut res = next.call(req).await?;
    add_cors(res.headers_mut());
    Ok(res.map_into_left_body())
}

impl ApiError {
    fn error_response_json(&self) -> HttpResponse {
        actix_web::ResponseError::error_response(self)
    }
}

async fn not_found() -> HttpResponse {
    ApiError::NotFound("Not found".into()).error_response_json()
}

/// The 405 of a route, whose `Allow` lists the methods it has (RFC 9110
/// §15.5.6 requires it).
pub fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut res = ApiError::MethodNotAllowed.error_response_json();
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

/// A query string that does not deserialise is a 400 like any other bad
/// input (actix would answer it in plain text).
fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let why = match &err {
        QueryPayloadError::Deserialize(e) => e.to_string(),
        other => other.to_string(),
    };
    ApiError::BadRequest(format!("Invalid query: {why}")).into()
}

/// The routes of one spelling (`{prefix}` or `{prefix}/v1`).
fn routes(cfg: &mut web::ServiceConfig) {
    let r = |path: &str, allow: &'static str| {
        web::resource(path.to_string())
            .default_service(web::to(move || async move { method_not_allowed(allow) }))
    };
    cfg.service(
        r("/instances", "GET, POST")
            .route(web::get().to(instances::list))
            .route(web::post().to(instances::create)),
    )
    .service(r("/instances/{id}/logs", "GET").route(web::get().to(instances::logs)))
    .service(
        r("/instances/{id}", "GET, PATCH, PUT, DELETE")
            .route(web::get().to(instances::get))
            .route(web::patch().to(instances::patch))
            .route(web::put().to(instances::put))
            .route(web::delete().to(instances::delete)),
    )
    .service(r("/instances/", "").route(web::to(instances::missing_id)))
    .service(r("/events", "GET").route(web::get().to(events::events)))
    .service(
        r("/info", "GET, POST")
            .route(web::get().to(info::get))
            .route(web::post().to(info::set_alias)),
    )
    .service(r("/tcping", "GET").route(web::get().to(info::tcping)))
    .service(r("/metrics", "GET").route(web::get().to(info::metrics)))
    .service(r("/clients", "GET").route(web::get().to(clients::list)))
    .service(
        r("/clients/{client}", "GET, PUT, DELETE")
            .route(web::get().to(clients::get))
            .route(web::put().to(clients::put))
            .route(web::delete().to(clients::delete)),
    )
    .service(r("/healthz", "GET").route(web::get().to(info::healthz)))
    .service(r("/openapi.json", "GET").route(web::get().to(info::openapi)));
}

/// Builds the app for `state`.
pub fn configure(state: State) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let prefix = state.cfg.prefix.clone();
        let v1 = format!("{prefix}/v1");
        cfg.app_data(state)
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .configure(openapi::docs_config(&v1))
            .configure(openapi::docs_config(&prefix))
            .service(
                web::scope(&v1)
                    .configure(routes)
                    .default_service(web::to(not_found)),
            )
            .service(
                web::scope(&prefix)
                    .configure(routes)
                    .default_service(web::to(not_found)),
            )
            .default_service(web::to(not_found));
    }
}
