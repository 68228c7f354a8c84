//! `/clients`: gateway bindings (Drover). `GET /clients?after=&limit=`,
//! `GET|PUT|DELETE /clients/{client}` with `{"instance":"<id>"}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{ApiError, State, json, parse_body, read_body};
use crate::gateway::bindings::MAX_CLIENT;

#[derive(Serialize)]
struct Binding<'a> {
    client: &'a str,
    instance: &'a str,
}

fn check_client(client: &str) -> Result<(), ApiError> {
    if client.is_empty() || client.len() > MAX_CLIENT {
        return Err(ApiError::BadRequest(format!(
            "Client id must be 1..={MAX_CLIENT} bytes"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /clients`: a page of bindings in client order (`limit` ≤ 1000, default 100).
pub async fn list(state: State, q: web::Query<PageQuery>) -> HttpResponse {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let page = state.gateway.bindings.page(q.after.as_deref(), limit);
    let items: Vec<Binding<'_>> = page
        .iter()
        .map(|(c, i)| Binding {
            client: c,
            instance: i,
        })
        .collect();
    let next = (page.len() == limit)
        .then(|| page.last().map(|(c, _)| c.clone()))
        .flatten();
    json(
        StatusCode::OK,
        &serde_json::json!({ "clients": items, "next": next }),
    )
}

/// `GET /clients/{client}`.
pub async fn get(state: State, client: web::Path<String>) -> Result<HttpResponse, ApiError> {
    check_client(&client)?;
    let instance = state
        .gateway
        .bindings
        .lookup(&client)
        .ok_or_else(|| ApiError::NotFound("Client not bound".into()))?;
    Ok(json(
        StatusCode::OK,
        &Binding {
            client: &client,
            instance: &instance,
        },
    ))
}

#[derive(Deserialize)]
struct PutBody {
    instance: Option<String>,
}

/// `PUT /clients/{client}` `{instance}`: binds (or rebinds) a client.
pub async fn put(
    state: State,
    client: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    check_client(&client)?;
    let body: PutBody = parse_body(&read_body(payload).await?)?;
    let instance = body
        .instance
        .filter(|i| !i.is_empty())
        .ok_or_else(|| ApiError::BadRequest("Invalid request body: instance is required".into()))?;
    let Some(inst) = state.sup.get(&instance) else {
        return Err(ApiError::NotFound("Instance not found".into()));
    };
    if !inst.lock().may_have_entrance() {
        return Err(ApiError::Conflict(
            "Instance has no entrance (exit-only tunnel end): gateway clients cannot be bound to it".into(),
        ));
    }
    state
        .gateway
        .bindings
        .bind(&client, &instance)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tracing::info!(client = %client, instance, "client bound");
    if let Some(inst) = state.sup.get(&instance) {
        state
            .hub
            .publish(crate::sse::EventKind::Update, Some(&inst.view()), "");
    }
    Ok(json(
        StatusCode::OK,
        &Binding {
            client: &client,
            instance: &instance,
        },
    ))
}

/// `DELETE /clients/{client}` → 204 (404 when not bound).
pub async fn delete(state: State, client: web::Path<String>) -> Result<HttpResponse, ApiError> {
    check_client(&client)?;
    let existed = state
        .gateway
        .bindings
        .unbind(&client)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if !existed {
        return Err(ApiError::NotFound("Client not bound".into()));
    }
    tracing::info!(client = %client, "client unbound");
    Ok(HttpResponse::NoContent().finish())
}
