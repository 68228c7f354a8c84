//! `/instances` handlers, with NodePass's semantics (reference §1.6) and
//! Drover's stricter validation: a request is checked whole before any part
//! of it is applied, and every 2xx is on disk.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::{ApiError, State, json, object, parse_body, read_body};
use crate::model::{InstanceView, KEY_RECORD_ID, MAX_FIELD, Peer, default_tenant};
use crate::sse::EventKind;
use crate::supervisor::{Action, NewInstance, RecordEdit};

/// `GET /instances`: the `********` record first, then every instance.
pub async fn list(state: State) -> HttpResponse {
    let mut all = vec![key_view(&state)];
    all.extend(state.sup.list());
    json(StatusCode::OK, &all)
}

fn key_view(state: &State) -> InstanceView {
    InstanceView::key_record(&state.master.read().expect("master lock"))
}

#[derive(Deserialize)]
struct CreateBody {
    url: Option<String>,
    alias: Option<String>,
    restart: Option<bool>,
    tenant: Option<String>,
}

/// `POST /instances` `{url, alias?, restart?, tenant?}` → 201.
pub async fn create(state: State, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let body: CreateBody = parse_body(&read_body(payload).await?)?;
    let url = body
        .url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::BadRequest("Invalid request body: url is required".into()))?;
    let view = state
        .sup
        .create(NewInstance {
            url,
            alias: body.alias.unwrap_or_default(),
            restart: body.restart.unwrap_or(true),
            tenant: body.tenant.unwrap_or_else(default_tenant),
        })
        .await?;
    Ok(json(StatusCode::CREATED, &view))
}

/// `GET /instances/{id}`.
pub async fn get(state: State, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    if id.as_str() == KEY_RECORD_ID {
        return Ok(json(StatusCode::OK, &key_view(&state)));
    }
    let inst = state.sup.get(&id).ok_or_else(not_found)?;
    Ok(json(StatusCode::OK, &inst.view()))
}

fn not_found() -> ApiError {
    ApiError::NotFound("Instance not found".into())
}

/// `{prefix}/instances/` with no id.
pub async fn missing_id() -> Result<HttpResponse, ApiError> {
    Err(ApiError::BadRequest("Instance ID is required".into()))
}

#[derive(Deserialize)]
struct PeerBody {
    sid: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    alias: Option<String>,
}

#[derive(Deserialize)]
struct MetaBody {
    #[serde(default, deserialize_with = "object")]
    peer: Option<PeerBody>,
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct PatchBody {
    alias: Option<String>,
    action: Option<String>,
    restart: Option<bool>,
    #[serde(default, deserialize_with = "object")]
    meta: Option<MetaBody>,
}

fn check_len(what: &str, s: &str) -> Result<(), ApiError> {
    if s.len() > MAX_FIELD {
        return Err(ApiError::BadRequest(format!(
            "{what} exceeds maximum length {MAX_FIELD}"
        )));
    }
    Ok(())
}

/// Validates a PATCH body whole, before anything is applied.
fn validate(body: &PatchBody) -> Result<Option<Action>, ApiError> {
    if let Some(a) = &body.alias {
        check_len("Instance alias", a)?;
    }
    if let Some(meta) = &body.meta {
        if let Some(p) = &meta.peer {
            check_len("Meta peer.sid", p.sid.as_deref().unwrap_or(""))?;
            check_len("Meta peer.type", p.kind.as_deref().unwrap_or(""))?;
            check_len("Meta peer.alias", p.alias.as_deref().unwrap_or(""))?;
        }
        if let Some(tags) = &meta.tags {
            for (k, v) in tags {
                check_len("Meta tag key", k)?;
                check_len("Meta tag value", v)?;
            }
        }
    }
    body.action
        .as_deref()
        .map(|a| match a {
            "start" => Ok(Action::Start),
            "stop" => Ok(Action::Stop),
            "restart" => Ok(Action::Restart),
            "reset" => Ok(Action::Reset),
            other => {
                let shown: String = other.chars().take(64).collect();
                Err(ApiError::BadRequest(format!("Invalid action: {shown}")))
            }
        })
        .transpose()
}

/// `PATCH /instances/{id}`: alias, restart flag and meta (replace
/// semantics), then the action; all or nothing (see `Supervisor::patch`).
/// On `********`, `restart` regenerates the key.
pub async fn patch(
    state: State,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(payload).await?;
    let empty = raw.iter().all(u8::is_ascii_whitespace);
    let body: PatchBody = if empty {
        PatchBody {
            alias: None,
            action: None,
            restart: None,
            meta: None,
        }
    } else {
        parse_body(&raw)?
    };
    let action = validate(&body)?;
    if id.as_str() == KEY_RECORD_ID {
        return patch_key(&state, action).await;
    }
    state.sup.get(&id).ok_or_else(not_found)?;
    let PatchBody {
        alias,
        restart,
        meta,
        ..
    } = body;
    let (peer, tags) = meta.map_or((None, None), |m| (m.peer, m.tags));
    let edit = RecordEdit {
        alias,
        restart,
        peer: peer.map(|p| Peer {
            sid: p.sid.unwrap_or_default(),
            kind: p.kind.unwrap_or_default(),
            alias: p.alias.unwrap_or_default(),
        }),
        tags,
    };
    let view = state.sup.patch(&id, &edit, action).await?;
    Ok(json(StatusCode::OK, &view))
}

/// `PATCH /instances/********` `{"action":"restart"}`: a new API key, on
/// disk before the answer; every SSE stream gets `shutdown` and closes.
async fn patch_key(state: &State, action: Option<Action>) -> Result<HttpResponse, ApiError> {
    if action != Some(Action::Restart) {
        return Ok(json(StatusCode::OK, &key_view(state)));
    }
    let mut record = state.master.read().expect("master lock").clone();
    record.api_key = hex::encode(rand::random::<[u8; 16]>());
    state
        .store
        .put_master(&record)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    *state.master.write().expect("master lock") = record.clone();
    tracing::info!("API key regenerated; all event streams closed");
    let view = InstanceView::key_record(&record);
    state.hub.publish(EventKind::Update, Some(&view), "");
    state.hub.shutdown_all();
    Ok(json(StatusCode::OK, &view))
}

#[derive(Deserialize)]
struct PutBody {
    url: Option<String>,
}

/// `PUT /instances/{id}` `{url}`: 409 when unchanged; 403 on `********`.
pub async fn put(
    state: State,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if id.as_str() == KEY_RECORD_ID {
        return Err(ApiError::Forbidden("Forbidden: API Key"));
    }
    let body: PutBody = parse_body(&read_body(payload).await?)?;
    let url = body
        .url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::BadRequest("Invalid request body: url is required".into()))?;
    state.sup.get(&id).ok_or_else(not_found)?;
    let view = state.sup.set_url(&id, &url).await?;
    Ok(json(StatusCode::OK, &view))
}

/// `DELETE /instances/{id}` → 204; 403 on `********`.
pub async fn delete(state: State, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    if id.as_str() == KEY_RECORD_ID {
        return Err(ApiError::Forbidden("Forbidden: API Key"));
    }
    state.sup.delete(&id).await?;
    state.gateway.bindings.forget_instance(&id);
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
pub struct LogsQuery {
    tail: Option<usize>,
}

/// `GET /instances/{id}/logs?tail=N` (Drover): recent worker log lines.
pub async fn logs(
    state: State,
    id: web::Path<String>,
    q: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let tail = q
        .tail
        .unwrap_or(100)
        .min(crate::supervisor::instance::LOG_RING);
    let lines = state.sup.logs(&id, tail)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id.as_str(), "logs": lines }),
    ))
}
