//! The OpenAPI 3.1 document of the master API, and Swagger UI served from
//! the binary.
//!
//! 1. [`document`] writes the document by hand (`serde_json::json!`): every
//!    route of the API, its bodies, responses and error statuses, with the
//!    two spellings of the base (`{prefix}` and `{prefix}/v1`) as `servers`.
//! 2. [`docs_config`] / [`docs_service`] mount Swagger UI (vendored into the
//!    binary by `utoipa-swagger-ui`; no network) at `{mount}/docs/`, with
//!    `{mount}/docs` redirecting there. The UI loads `{mount}/openapi.json`,
//!    which the API serves from [`document`]. Its online validator badge is
//!    off, so the page loads nothing from outside.

use std::sync::Arc;

use actix_web::dev::HttpServiceFactory;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};
use utoipa_swagger_ui::Config;

/// What an instance URL starts with (the rest is the tunnel grammar, which
/// JSON Schema cannot express: a URL that matches may still be a 400).
const URL_SCHEME: &str = "^(server|client)://";

/// `/tcping`'s `target`, as `tcping::parse_target` accepts it.
const TCPING_TARGET: &str = "^(\\[[^\\]]+\\]|[^:\\[][^:]*):\
0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";

/// The OpenAPI version of [`document`].
pub const OPENAPI_VERSION: &str = "3.1.0";

/// The document for an API whose routes live under `prefix` (e.g. `/api`)
/// and `{prefix}/v1`.
pub fn document(prefix: &str) -> Value {
    let base = prefix.trim_end_matches('/');
    let root = if base.is_empty() { "/" } else { base };
    json!({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Drover master API",
            "summary": "NodePass-compatible master API of Drover",
            "description": DESCRIPTION,
            "version": env!("CARGO_PKG_VERSION"),
            "license": { "name": env!("CARGO_PKG_LICENSE"), "identifier": env!("CARGO_PKG_LICENSE") },
        },
        "servers": [
            { "url": root, "description": "the API base (NodePass's seed spelling)" },
            { "url": format!("{base}/v1"), "description": "the same routes under /v1 (what NodePass v1.14 and NodePassDash use)" },
        ],
        "security": [ { "ApiKeyAuth": [] } ],
        "tags": [
            { "name": "instances", "description": "Tunnel instances (one worker process each)" },
            { "name": "events", "description": "Server-sent events" },
            { "name": "master", "description": "The master itself" },
            { "name": "gateway", "description": "Gateway client bindings (Drover)" },
            { "name": "operations", "description": "Health, metrics and documentation" },
        ],
        "paths": paths(),
        "components": components(),
    })
}

const DESCRIPTION: &str = "Drover keeps NodePass's master API (v1.14), so dashboards such as \
NodePassDash and existing scripts work unchanged, and adds tenants, worker state, logs, \
gateway bindings, metrics and health.\n\n\
* Every route is served under both server URLs.\n\
* Authenticate with the `X-API-Key` header (32 hex chars, logged once at first start; \
the `url` of the `********` instance). `/openapi.json`, `/docs` and `/healthz` are public.\n\
* Responses are bare JSON (no envelope) with `Content-Type: application/json`; every \
error is `{\"error\": \"<message>\"}` with its status. A method a path does not list \
answers 405, an unknown path 404.\n\
* Every response carries CORS headers; `OPTIONS` on any route answers 200 before auth.\n\
* Request bodies over 64 KiB answer 413. A 2xx on a change means it is on disk.";

/// `$ref` to a component schema.
fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_body(schema: Value, description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn request(name: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema(name) } } })
}

/// An operation's `responses`: the success ones, then each error status as a
/// `$ref` to the shared `components.responses` entry.
fn responses(ok: &[(&str, Value)], errors: &[u16]) -> Value {
    let mut out = Map::new();
    for (status, response) in ok {
        out.insert((*status).to_owned(), response.clone());
    }
    for status in errors {
        let name = error_response_name(*status);
        out.insert(
            status.to_string(),
            json!({ "$ref": format!("#/components/responses/{name}") }),
        );
    }
    Value::Object(out)
}

/// Error statuses the API answers, with the component that documents each.
const ERRORS: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "Invalid request: bad JSON, URL, parameter or field; the message names it \
         (e.g. `Invalid request body`, `Invalid URL scheme`, `Invalid action: x`, \
         `Instance alias exceeds maximum length 256`, `Target address required`)",
    ),
    (
        401,
        "Unauthorized",
        "`Unauthorized: API key required` or `Unauthorized: Invalid API key`",
    ),
    (
        403,
        "Forbidden",
        "`Forbidden: API Key`: the `********` record cannot be replaced or deleted",
    ),
    (404, "NotFound", "`Instance not found` (or no such binding)"),
    (
        405,
        "MethodNotAllowed",
        "`Method not allowed`: answered for any method this path does not list",
    ),
    (
        409,
        "Conflict",
        "`Instance port conflict: <addr>` (the port is used by another instance or \
         process) or `Instance URL conflict` (PUT with an unchanged URL)",
    ),
    (413, "PayloadTooLarge", "The request body exceeds 64 KiB"),
    (
        500,
        "InternalError",
        "The change could not be written to the store",
    ),
    (503, "Unavailable", "The store is not writable"),
];

fn error_response_name(status: u16) -> &'static str {
    ERRORS
        .iter()
        .find(|(s, ..)| *s == status)
        .map(|(_, name, _)| *name)
        .expect("every documented error status has a component")
}

fn op(tag: &str, id: &str, summary: &str, description: &str, responses: Value) -> Value {
    json!({
        "tags": [tag],
        "operationId": id,
        "summary": summary,
        "description": description,
        "responses": responses,
    })
}

/// An operation with a JSON request body.
fn op_with_body(
    tag: &str,
    id: &str,
    summary: &str,
    description: &str,
    body: &str,
    responses: Value,
) -> Value {
    let mut operation = op(tag, id, summary, description, responses);
    operation["requestBody"] = request(body);
    operation
}

/// An operation whose JSON body may be left out (an empty body changes nothing).
fn op_with_optional_body(
    tag: &str,
    id: &str,
    summary: &str,
    description: &str,
    body: &str,
    responses: Value,
) -> Value {
    let mut operation = op_with_body(tag, id, summary, description, body, responses);
    operation["requestBody"]["required"] = json!(false);
    operation
}

/// `response` with OpenAPI links to `operations`, each taking `param` from
/// `expression` (so clients and fuzzers know where an id goes next).
fn with_links(mut response: Value, operations: &[&str], param: &str, expression: &str) -> Value {
    let mut links = Map::new();
    for id in operations {
        links.insert(
            (*id).to_owned(),
            json!({ "operationId": id, "parameters": { param: expression } }),
        );
    }
    response["links"] = Value::Object(links);
    response
}

fn public(mut operation: Value) -> Value {
    operation["security"] = json!([]);
    operation
}

fn paths() -> Value {
    let instance = || json_body(schema("Instance"), "The instance");
    let id_param = json!({
        "name": "id", "in": "path", "required": true,
        "description": "Instance id (8 lowercase hex chars; `********` is the API-key record)",
        "schema": { "type": "string" },
    });
    json!({
        "/instances": {
            "get": op("instances", "listInstances", "List instances",
                "Every instance, including the `********` record whose `url` is the API key \
                 and `config` the master id.",
                responses(&[("200", json_body(json!({ "type": "array", "items": schema("Instance") }), "All instances"))],
                    &[401, 405])),
            "post": op_with_body("instances", "createInstance", "Create an instance",
                "Validates the URL (scheme, host, port, targets, every parameter), binds its \
                 listeners, stores it and starts it. `restart` defaults to true. SSE: `create`.",
                "CreateInstance",
                responses(&[("201", with_links(json_body(schema("Instance"), "The new instance"),
                        &["getInstance", "patchInstance", "replaceInstanceUrl", "deleteInstance", "instanceLogs"],
                        "id", "$response.body#/id"))],
                    &[400, 401, 405, 409, 413, 500])),
        },
        "/instances/{id}": {
            "parameters": [id_param],
            "get": op("instances", "getInstance", "Get an instance", "One instance.",
                responses(&[("200", instance())], &[401, 404, 405])),
            "patch": op_with_optional_body("instances", "patchInstance", "Change or control an instance",
                "Sets `alias`, `restart` and `meta` (`peer` replaced whole, `tags` replaced; at \
                 most 16384 bytes of JSON), then runs `action` (`start`, `stop`, `restart`, \
                 `reset` counters). All or nothing: a 400 or 409 (a port a start needs is \
                 taken) changes nothing. Changes emit SSE `update`. On `********`, \
                 `{\"action\":\"restart\"}` regenerates the API key.",
                "PatchInstance",
                responses(&[("200", instance())], &[400, 401, 404, 405, 409, 413, 500])),
            "put": op_with_body("instances", "replaceInstanceUrl", "Replace an instance's URL",
                "Replaces `url` (and `type`, `config`) and runs the instance on it, stopped \
                 or not; the listeners of addresses that stay are kept. Alias, restart, meta \
                 and counters are kept. 409 if the URL is unchanged or a new port is taken; \
                 a refused PUT changes nothing.",
                "PutInstance",
                responses(&[("200", instance())], &[400, 401, 403, 404, 405, 409, 413, 500])),
            "delete": op("instances", "deleteInstance", "Delete an instance",
                "Stops and removes the instance. SSE: `delete`.",
                responses(&[("204", json!({ "description": "Deleted" }))], &[401, 403, 404, 405, 500])),
        },
        "/instances/********": {
            "get": op("master", "getKeyRecord", "Get the API-key record",
                "The pseudo-instance `********`: `type` and `status` empty, `url` the API key, \
                 `config` the master id, `alias` the master alias.",
                responses(&[("200", instance())], &[401, 405])),
            "patch": op_with_optional_body("master", "regenerateApiKey", "Regenerate the API key",
                "`{\"action\":\"restart\"}` makes a new key; the response's `url` is the new \
                 key. Every SSE stream then gets `shutdown` and closes, so clients reconnect \
                 with the new key. Other bodies change nothing and answer 200.",
                "RegenerateKey",
                responses(&[("200", json_body(schema("Instance"), "The record, `url` = the new key"))],
                    &[400, 401, 405, 413, 500])),
            "put": op("master", "putKeyRecord", "Not allowed on the API-key record",
                "Always 403.", responses(&[], &[401, 403, 405])),
            "delete": op("master", "deleteKeyRecord", "Not allowed on the API-key record",
                "Always 403.", responses(&[], &[401, 403, 405])),
        },
        "/instances/{id}/logs": {
            "parameters": [id_param],
            "get": {
                "tags": ["instances"],
                "operationId": "instanceLogs",
                "summary": "Recent log lines of an instance (Drover)",
                "description": "The worker's last log lines, oldest first, as they were sent \
                    on SSE `log`.",
                "parameters": [{
                    "name": "tail", "in": "query", "required": false,
                    "description": "How many lines (default 100, capped by the buffer)",
                    "schema": { "type": "integer", "minimum": 0, "maximum": usize::MAX },
                }],
                "responses": responses(&[("200", json_body(schema("InstanceLogs"), "The lines"))],
                    &[400, 401, 404, 405]),
            },
        },
        "/events": {
            "get": {
                "tags": ["events"],
                "operationId": "events",
                "summary": "Instance events (SSE)",
                "description": EVENTS_DESCRIPTION,
                "parameters": [{
                    "name": "Last-Event-ID", "in": "header", "required": false,
                    "description": "Resume after this event id (from the bounded replay buffer)",
                    "schema": { "type": "string", "pattern": "^[0-9]+$" },
                }],
                "responses": responses(&[("200", json!({
                    "description": "An endless `text/event-stream`; each event's `data` is an `Event`",
                    "headers": {
                        "Cache-Control": { "schema": { "type": "string", "const": "no-cache" } },
                    },
                    "content": { "text/event-stream": {
                        "schema": schema("SseEvent"),
                        "example": EVENTS_EXAMPLE,
                    } },
                }))], &[401, 405]),
            },
        },
        "/info": {
            "get": op("master", "getInfo", "Master and host information",
                "NodePass's fields (`ver` is the NodePass API level implemented), plus \
                 `drover` (Drover's version) and `isolation`.",
                responses(&[("200", json_body(schema("Info"), "Master information"))], &[401, 405])),
            "post": op_with_body("master", "setMasterAlias", "Set the master alias",
                "Sets (or, when `alias` is missing, clears) the master alias.",
                "InfoUpdate",
                responses(&[("200", json_body(schema("Info"), "Master information"))],
                    &[400, 401, 405, 413, 500])),
        },
        "/tcping": {
            "get": {
                "tags": ["master"],
                "operationId": "tcping",
                "summary": "Test a TCP connection from the master",
                "description": "Connects to `target` (5 s timeout, bounded concurrency). A failed \
                    connection is still 200, with `connected: false` and `error`.",
                "parameters": [{
                    "name": "target", "in": "query", "required": true,
                    "description": "`host:port` or `[v6]:port`, port 1-65535",
                    "schema": { "type": "string", "pattern": TCPING_TARGET },
                }],
                "responses": responses(&[("200", json_body(schema("TcpingResult"), "The result"))],
                    &[400, 401, 405]),
            },
        },
        "/clients/{client}": {
            "parameters": [{
                "name": "client", "in": "path", "required": true,
                "description": "Client identity as the gateway sees it (`X-Client-Id`, forwarded \
                    or PROXY address, or peer IP)",
                "schema": { "type": "string", "minLength": 1, "maxLength": 256 },
            }],
            "get": op("gateway", "getBinding", "Get a client's binding",
                "Which instance the gateway routes this client to.",
                responses(&[("200", json_body(schema("Binding"), "The binding"))], &[400, 401, 404, 405])),
            "put": op_with_body("gateway", "putBinding", "Bind a client to an instance",
                "The instance must have an entrance (`worker.entry`).",
                "BindingUpdate",
                responses(&[("200", with_links(json_body(schema("Binding"), "The binding"),
                        &["getBinding", "deleteBinding"], "client", "$request.path.client"))],
                    &[400, 401, 404, 405, 409, 413, 500])),
            "delete": op("gateway", "deleteBinding", "Unbind a client", "Removes the binding.",
                responses(&[("204", json!({ "description": "Removed" }))], &[400, 401, 404, 405, 500])),
        },
        "/clients": {
            "get": {
                "tags": ["gateway"],
                "operationId": "listBindings",
                "summary": "List client bindings",
                "description": "A page of bindings in client order; `next` is the `after` of \
                    the next page, null on the last one.",
                "parameters": [
                    { "name": "after", "in": "query", "required": false,
                      "description": "Start after this client id", "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "required": false,
                      "description": "Page size (default 100, clamped to 1..=1000)",
                      "schema": { "type": "integer", "minimum": 0, "maximum": usize::MAX } },
                ],
                "responses": responses(&[("200", json_body(schema("BindingPage"), "The page"))],
                    &[400, 401, 405]),
            },
        },
        "/metrics": {
            "get": op("operations", "metrics", "Prometheus metrics (Drover)",
                "Prometheus text exposition format.",
                responses(&[("200", json!({
                    "description": "Metrics",
                    "content": { "application/openmetrics-text": { "schema": { "type": "string" } } },
                }))], &[401, 405])),
        },
        "/healthz": {
            "get": public(op("operations", "healthz", "Health (Drover)",
                "200 when the store is writable.",
                responses(&[("200", json_body(schema("Health"), "Healthy"))], &[405, 503]))),
        },
        "/openapi.json": {
            "get": public(op("operations", "openapi", "This document", "OpenAPI 3.1.",
                responses(&[("200", json_body(json!({ "type": "object" }), "The OpenAPI document"))], &[405]))),
        },
        "/docs": {
            "get": public(op("operations", "docsRedirect", "Swagger UI (redirect)",
                "Redirects to `docs/`.",
                responses(&[("302", json!({
                    "description": "To the Swagger UI page",
                    "headers": { "Location": { "schema": { "type": "string" } } },
                }))], &[]))),
        },
        "/docs/": {
            "get": public(op("operations", "docs", "Swagger UI",
                "This documentation as a page, served from the binary (works offline).",
                responses(&[("200", json!({
                    "description": "The page",
                    "content": { "text/html": { "schema": { "type": "string" } } },
                }))], &[]))),
        },
    })
}

const EVENTS_DESCRIPTION: &str = "Server-sent events, NodePass's format plus ids. The stream \
starts with `retry: 3000`, then one `initial` event per instance (the `********` record \
first), then `create`, `update`, `delete` and `log` events as they happen. Every event is \
`event: instance` with an increasing `id:` and one line of JSON `data` (`Event`). Events \
are under 64 KiB (long log lines are cut and end with `…`). A `: keepalive` comment is sent \
after 15 s of silence.\n\n\
With `Last-Event-ID` the stream resumes: the missed events are replayed if the buffer still \
holds them all, otherwise a fresh `initial` burst is sent. A client too slow to keep up is \
resynchronised with a fresh `initial` burst, or sent `shutdown` and closed. The server ends \
a stream only after a `shutdown` event (`instance: null`): on API-key regeneration and \
master stop; reconnect then.";

const EVENTS_EXAMPLE: &str = "retry: 3000\n\nid: 41\nevent: instance\ndata: \
{\"type\":\"initial\",\"time\":\"2026-11-24T10:00:00.123+00:00\",\"instance\":{\"id\":\"********\",\
\"alias\":\"\",\"type\":\"\",\"status\":\"\",\"url\":\"0123456789abcdef0123456789abcdef\",\
\"config\":\"0123456789abcdef\",\"restart\":false,\"meta\":{\"peer\":{\"sid\":\"\",\"type\":\"\",\
\"alias\":\"\"},\"tags\":{}},\"mode\":0,\"ping\":0,\"pool\":0,\"tcps\":0,\"udps\":0,\"tcprx\":0,\
\"tcptx\":0,\"udprx\":0,\"udptx\":0,\"tenant\":\"\",\"worker\":null},\"logs\":\"\"}\n\n";

fn components() -> Value {
    let mut errors = Map::new();
    for (_, name, description) in ERRORS {
        errors.insert((*name).to_owned(), json_body(schema("Error"), description));
    }
    json!({
        "securitySchemes": {
            "ApiKeyAuth": {
                "type": "apiKey", "in": "header", "name": "X-API-Key",
                "description": "The master's API key (32 hex chars)",
            },
        },
        "responses": errors,
        "schemas": schemas(),
    })
}

/// Every component schema (one `json!` each: the macro recurses per token).
fn schemas() -> Value {
    let counter =
        |description: &str| json!({ "type": "integer", "minimum": 0, "description": description });
    let field = |description: &str| json!({ "type": "string", "maxLength": 256, "description": description });
    let optional_field = |description: &str| json!({ "type": ["string", "null"], "maxLength": 256, "description": description });
    let entries = [
        (
            "Error",
            json!({
                "type": "object",
                "required": ["error"],
                "properties": { "error": { "type": "string" } },
                "example": { "error": "Instance not found" },
            }),
        ),
        (
            "Peer",
            json!({
                "type": "object",
                "description": "Opaque to the master (NodePassDash's service binding)",
                "required": ["sid", "type", "alias"],
                "properties": { "sid": field("Service id"), "type": field("Peer type"), "alias": field("Peer alias") },
            }),
        ),
        (
            "Meta",
            json!({
                "type": "object",
                "required": ["peer", "tags"],
                "properties": {
                    "peer": schema("Peer"),
                    "tags": { "type": "object", "additionalProperties": { "type": "string", "maxLength": 256 } },
                },
            }),
        ),
        (
            "Instance",
            json!({
                "type": "object",
                "description": "Every key is always present, in this order.",
                "required": ["id", "alias", "type", "status", "url", "config", "restart", "meta",
                    "mode", "ping", "pool", "tcps", "udps", "tcprx", "tcptx", "udprx", "udptx",
                    "tenant", "worker"],
                "properties": {
                    "id": { "type": "string", "description": "8 lowercase hex chars, or `********` for the API-key record" },
                    "alias": { "type": "string", "maxLength": 256 },
                    "type": { "type": "string", "enum": ["server", "client", ""], "description": "URL scheme; empty for `********`" },
                    "status": { "type": "string", "enum": ["running", "stopped", "error", ""],
                        "description": "NodePass's status (a parked instance is `running`); empty for `********`. `worker.state` has the detail." },
                    "url": { "type": "string", "description": "The instance URL (master defaults filled in); the API key for `********`" },
                    "config": { "type": "string", "description": "The URL with every default spelled out; the master id for `********`" },
                    "restart": { "type": "boolean", "description": "Start with the master" },
                    "meta": schema("Meta"),
                    "mode": { "type": "integer", "minimum": 0, "description": "Server 1 reverse / 2 forward; client 1 single-end / 2 dual-end; 0 until known" },
                    "ping": counter("Control round trip (ms)"),
                    "pool": counter("Idle pool connections"),
                    "tcps": counter("Active TCP sessions"),
                    "udps": counter("Active UDP sessions"),
                    "tcprx": counter("TCP bytes received, cumulative since the last reset"),
                    "tcptx": counter("TCP bytes sent, cumulative since the last reset"),
                    "udprx": counter("UDP bytes received, cumulative since the last reset"),
                    "udptx": counter("UDP bytes sent, cumulative since the last reset"),
                    "tenant": { "type": "string", "description": "Owner of the worker processes (Drover); empty for `********`" },
                    "worker": {
                        "type": ["object", "null"],
                        "description": "The worker process (Drover); null only for `********`",
                        "required": ["state", "pid", "entry", "restarts", "since", "last_exit"],
                        "properties": {
                            "state": { "type": "string", "enum": ["parked", "starting", "ready", "stopping", "backoff", "failed"] },
                            "pid": { "type": ["integer", "null"], "minimum": 1 },
                            "entry": { "type": ["string", "null"], "description": "Loopback entrance `127.0.0.1:port`, if the instance has an entrance" },
                            "restarts": { "type": "integer", "minimum": 0 },
                            "since": { "type": "string", "format": "date-time", "description": "When the current state began" },
                            "last_exit": { "type": ["string", "null"], "description": "How the last worker process ended (`exit 1`, `signal 9 (SIGKILL)`)" },
                        },
                    },
                },
            }),
        ),
        (
            "CreateInstance",
            json!({
                "type": "object",
                "required": ["url"],
                "description": "Optional fields may be `null`, which is the same as leaving them out.",
                "properties": {
                    "url": { "type": "string", "pattern": URL_SCHEME,
                        "description": "`server://[KEY@]HOST:PORT/TARGET[,TARGET…]?params` or `client://…`" },
                    "alias": { "type": ["string", "null"], "maxLength": 256 },
                    "restart": { "type": ["boolean", "null"], "default": true },
                    "tenant": { "type": ["string", "null"], "pattern": "^[a-z0-9_-]{1,32}$", "default": "default" },
                },
                "example": { "url": "server://:10101/127.0.0.1:8080" },
            }),
        ),
        (
            "PatchInstance",
            json!({
                "type": "object",
                "description": "Every field optional; an empty body changes nothing. A field that \
                    is `null` is the same as one left out.",
                "properties": {
                    "alias": { "type": ["string", "null"], "maxLength": 256 },
                    "action": { "type": ["string", "null"], "enum": ["start", "stop", "restart", "reset", null] },
                    "restart": { "type": ["boolean", "null"] },
                    "meta": {
                        "type": ["object", "null"],
                        "description": "The instance's meta once applied may take at most 16384 bytes of JSON",
                        "properties": {
                            "peer": {
                                "type": ["object", "null"],
                                "description": "Replaces the whole peer (a missing or null field is empty)",
                                "properties": {
                                    "sid": optional_field("Service id"),
                                    "type": optional_field("Peer type"),
                                    "alias": optional_field("Peer alias"),
                                },
                            },
                            "tags": {
                                "type": ["object", "null"],
                                "description": "Replaces all tags",
                                "additionalProperties": { "type": "string", "maxLength": 256 },
                            },
                        },
                    },
                },
                "example": { "action": "restart" },
            }),
        ),
        (
            "PutInstance",
            json!({
                "type": "object",
                "required": ["url"],
                "properties": { "url": { "type": "string", "pattern": URL_SCHEME } },
            }),
        ),
        (
            "RegenerateKey",
            json!({
                "type": "object",
                "description": "Only `{\"action\":\"restart\"}` changes anything; other actions and \
                    fields are accepted and ignored.",
                "properties": { "action": { "type": ["string", "null"], "enum": ["start", "stop", "restart", "reset", null] } },
                "example": { "action": "restart" },
            }),
        ),
        (
            "InstanceLogs",
            json!({
                "type": "object",
                "required": ["id", "logs"],
                "properties": {
                    "id": { "type": "string" },
                    "logs": { "type": "array", "items": { "type": "string" } },
                },
            }),
        ),
        (
            "Event",
            json!({
                "type": "object",
                "description": "The `data` of every SSE event (keys always present, in this order)",
                "required": ["type", "time", "instance", "logs"],
                "properties": {
                    "type": { "type": "string", "enum": ["initial", "create", "update", "delete", "log", "shutdown"] },
                    "time": { "type": "string", "format": "date-time", "example": "2026-11-24T10:00:00.123+00:00" },
                    "instance": { "oneOf": [schema("Instance"), { "type": "null" }], "description": "null only for `shutdown`" },
                    "logs": { "type": "string", "description": "The log line for `log`, else empty" },
                },
            }),
        ),
        (
            "SseEvent",
            json!({
                "type": "object",
                "description": "One event of the stream as a client parses it (`retry: 3000` \
                    opens the stream); `data` is one line of JSON, an `Event`",
                "required": ["event", "data"],
                "properties": {
                    "event": { "type": "string", "const": "instance" },
                    "id": { "type": "string", "pattern": "^[0-9]+$" },
                    "retry": { "type": "integer", "minimum": 0 },
                    "data": { "type": "string", "contentMediaType": "application/json",
                        "contentSchema": schema("Event") },
                },
            }),
        ),
        (
            "BindingPage",
            json!({
                "type": "object",
                "required": ["clients", "next"],
                "properties": {
                    "clients": { "type": "array", "items": schema("Binding") },
                    "next": { "type": ["string", "null"] },
                },
            }),
        ),
        (
            "Info",
            json!({
                "type": "object",
                "required": ["os", "arch", "cpu", "mem_total", "mem_used", "swap_total", "swap_used",
                    "netrx", "nettx", "diskr", "diskw", "sysup", "ver", "name", "uptime", "log", "tls",
                    "crt", "key", "alias", "mid", "drover"],
                "properties": {
                    "os": { "type": "string", "example": "linux" },
                    "arch": { "type": "string", "example": "amd64" },
                    "cpu": { "type": "integer", "minimum": -1, "maximum": 100, "description": "CPU use in percent (-1 if unknown)" },
                    "mem_total": counter("Bytes"),
                    "mem_used": counter("Bytes"),
                    "swap_total": counter("Bytes"),
                    "swap_used": counter("Bytes"),
                    "netrx": counter("Bytes received by the host's physical interfaces"),
                    "nettx": counter("Bytes sent by the host's physical interfaces"),
                    "diskr": counter("Bytes read from disks"),
                    "diskw": counter("Bytes written to disks"),
                    "sysup": counter("Host uptime (s)"),
                    "ver": { "type": "string", "description": "NodePass API level implemented", "example": "v1.14.0" },
                    "name": { "type": "string", "description": "Host part of the master URL" },
                    "uptime": counter("Master uptime (s)"),
                    "log": { "type": "string", "example": "info" },
                    "tls": { "type": "string", "enum": ["0", "1", "2"], "description": "Master TLS mode (a string)" },
                    "crt": { "type": "string" },
                    "key": { "type": "string" },
                    "alias": { "type": "string", "maxLength": 256 },
                    "mid": { "type": "string", "description": "Master id (16 hex chars)" },
                    "drover": { "type": "string", "description": "Drover's version" },
                    "isolation": {
                        "type": "object",
                        "description": "How workers are isolated (Drover; may be omitted)",
                        "additionalProperties": true,
                    },
                },
            }),
        ),
        (
            "InfoUpdate",
            json!({
                "type": "object",
                "properties": { "alias": { "type": ["string", "null"], "maxLength": 256,
                    "description": "Missing or null clears the alias" } },
            }),
        ),
        (
            "TcpingResult",
            json!({
                "type": "object",
                "required": ["target", "connected", "latency", "error"],
                "properties": {
                    "target": { "type": "string" },
                    "connected": { "type": "boolean" },
                    "latency": { "type": "integer", "minimum": 0, "description": "Connect time (ms), 0 when not connected" },
                    "error": { "type": ["string", "null"] },
                },
                "example": { "target": "example.com:80", "connected": true, "latency": 45, "error": null },
            }),
        ),
        (
            "Binding",
            json!({
                "type": "object",
                "required": ["client", "instance"],
                "properties": {
                    "client": { "type": "string" },
                    "instance": { "type": "string", "description": "Instance id" },
                },
            }),
        ),
        (
            "BindingUpdate",
            json!({
                "type": "object",
                "required": ["instance"],
                "properties": { "instance": { "type": "string", "minLength": 1, "description": "Instance id" } },
            }),
        ),
        (
            "Health",
            json!({
                "type": "object",
                "required": ["status"],
                "properties": { "status": { "type": "string", "const": "ok" } },
            }),
        ),
    ];
    Value::Object(
        entries
            .into_iter()
            .map(|(name, schema)| (name.to_owned(), schema))
            .collect(),
    )
}

/// Mounts Swagger UI at `{mount}/docs/` (and the redirect from
/// `{mount}/docs`); for `App::configure` / `ServiceConfig::configure`.
/// `mount` is where the routes are (e.g. `/api` or `/api/v1`), relative to
/// the enclosing scope if any.
pub fn docs_config(mount: &str) -> impl FnOnce(&mut web::ServiceConfig) + use<> {
    let service = docs_service(mount);
    move |cfg: &mut web::ServiceConfig| {
        cfg.service(service);
    }
}

/// The same as [`docs_config`], as one service.
pub fn docs_service(mount: &str) -> impl HttpServiceFactory + use<> {
    let base = mount.trim_end_matches('/');
    (
        web::resource(format!("{base}/docs"))
            .route(web::get().to(redirect_to_slash))
            .default_service(web::to(get_only)),
        web::resource(format!("{base}/docs/{{file:.*}}"))
            .route(web::get().to(swagger_file))
            .default_service(web::to(get_only)),
    )
}

async fn get_only() -> HttpResponse {
    super::method_not_allowed("GET")
}

/// `…/docs` → `…/docs/`, so the page's relative asset paths resolve.
async fn redirect_to_slash(req: HttpRequest) -> HttpResponse {
    let mut location = format!("{}/", req.path());
    if !req.query_string().is_empty() {
        location.push('?');
        location.push_str(req.query_string());
    }
    HttpResponse::Found()
        .insert_header((header::LOCATION, location))
        .finish()
}

async fn swagger_file(req: HttpRequest, file: web::Path<String>) -> HttpResponse {
    // The document sits beside `docs/` wherever this is mounted.
    let path = req.path();
    let base = path.rfind("/docs/").map_or("", |at| &path[..at]);
    let config = Config::new([format!("{base}/openapi.json")])
        .validator_url("none")
        .display_request_duration(true);
    match utoipa_swagger_ui::serve(&file, Arc::new(config)) {
        Ok(Some(file)) => {
            let mut response = HttpResponse::Ok();
            if file.gzpipped {
                response.insert_header((header::CONTENT_ENCODING, "gzip"));
            }
            response
                .content_type(file.content_type)
                .body(file.bytes.into_owned())
        }
        Ok(None) => HttpResponse::NotFound()
            .content_type("application/json")
            .body("{\"error\":\"Not found\"}\n"),
        Err(e) => {
            tracing::error!(cause = %e, "swagger ui");
            HttpResponse::InternalServerError()
                .content_type("application/json")
                .body("{\"error\":\"Swagger UI unavailable\"}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::App;
    use actix_web::http::StatusCode;
    use actix_web::test as atest;

    use super::*;

    /// The official OAS 3.1 schema (2022-10-07, as shipped in PyPI's
    /// `openapi-spec-validator`; Apache-2.0, OpenAPI Initiative).
    const OAS_31_SCHEMA: &str = include_str!("../../tests/data/oas-3.1-schema.json");

    /// DESIGN §5's route table: path (relative to the server URL), methods.
    const ROUTES: &[(&str, &[&str])] = &[
        ("/instances", &["get", "post"]),
        ("/instances/{id}", &["get", "patch", "put", "delete"]),
        ("/instances/********", &["patch", "put", "delete"]),
        ("/instances/{id}/logs", &["get"]),
        ("/events", &["get"]),
        ("/info", &["get", "post"]),
        ("/tcping", &["get"]),
        ("/clients/{client}", &["get", "put", "delete"]),
        ("/clients", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/docs", &["get"]),
        ("/healthz", &["get"]),
    ];

    const PUBLIC: &[&str] = &["/openapi.json", "/docs", "/docs/", "/healthz"];

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                if method != "parameters" {
                    out.push((path.clone(), method.clone(), operation.clone()));
                }
            }
        }
        out
    }

    /// The document validates against the official OAS 3.1 JSON Schema,
    /// and each component schema against the JSON Schema 2020-12 meta-schema.
    #[test]
    fn document_is_valid_openapi_3_1() {
        let oas: Value = serde_json::from_str(OAS_31_SCHEMA).expect("schema JSON");
        let validator = jsonschema::validator_for(&oas).expect("OAS schema compiles");
        let doc = document("/api");
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert!(
            !validator.is_valid(&json!({ "openapi": "3.1.0", "paths": {} })),
            "the validator rejects a document without info"
        );
        for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
            if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
                panic!("schema {name}: {e}");
            }
        }
    }

    /// Every route and method of DESIGN §5 is documented, under both
    /// spellings of the prefix, with unique operation ids.
    #[test]
    fn every_route_is_documented() {
        let doc = document("/api/");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["info"]["license"]["identifier"], "Apache-2.0");
        assert_eq!(doc["servers"][0]["url"], "/api");
        assert_eq!(doc["servers"][1]["url"], "/api/v1");
        for (path, methods) in ROUTES {
            for method in *methods {
                assert!(
                    doc["paths"][path][method].is_object(),
                    "{method} {path} is missing"
                );
            }
        }
        let mut ids: Vec<String> = operations(&doc)
            .iter()
            .map(|(_, _, op)| op["operationId"].as_str().expect("operationId").to_owned())
            .collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids are unique");
    }

    /// Public routes say `security: []`; every other operation uses the
    /// global `X-API-Key` scheme and documents 401.
    #[test]
    fn security_is_global_except_public_routes() {
        let doc = document("/api");
        assert_eq!(doc["security"], json!([{ "ApiKeyAuth": [] }]));
        let scheme = &doc["components"]["securitySchemes"]["ApiKeyAuth"];
        assert_eq!(
            (&scheme["type"], &scheme["in"], &scheme["name"]),
            (&json!("apiKey"), &json!("header"), &json!("X-API-Key"))
        );
        for (path, method, op) in operations(&doc) {
            if PUBLIC.contains(&path.as_str()) {
                assert_eq!(op["security"], json!([]), "{method} {path}");
                assert!(op["responses"]["401"].is_null(), "{method} {path}");
            } else {
                assert!(op["security"].is_null(), "{method} {path}");
                assert!(op["responses"]["401"].is_object(), "{method} {path}");
            }
        }
    }

    /// Every error status is answered with the `Error` schema, and the ones
    /// DESIGN lists all occur.
    #[test]
    fn errors_use_the_error_schema() {
        let doc = document("/api");
        let mut seen = Vec::new();
        for (path, method, op) in operations(&doc) {
            for (status, response) in op["responses"].as_object().expect("responses") {
                let code: u16 = status.parse().expect("numeric status");
                if code < 400 {
                    continue;
                }
                seen.push(code);
                let target = response["$ref"].as_str().expect("error responses are refs");
                let name = target.rsplit('/').next().expect("name");
                let resolved = &doc["components"]["responses"][name];
                assert_eq!(
                    resolved["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{method} {path} {status}"
                );
            }
        }
        for code in [400, 401, 403, 404, 405, 409, 413, 500] {
            assert!(seen.contains(&code), "{code} documented somewhere");
        }
    }

    /// `Instance` lists every key `InstanceView` serialises, all required;
    /// nullable ones use 3.1's `type: [.., "null"]`.
    #[test]
    fn instance_schema_matches_the_view() {
        let doc = document("/api");
        let schema = &doc["components"]["schemas"]["Instance"];
        let view = crate::model::InstanceView::key_record(&crate::model::MasterRecord {
            v: 1,
            api_key: "k".into(),
            master_id: "m".into(),
            alias: String::new(),
        });
        let json = serde_json::to_value(&view).expect("view");
        let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .expect("required")
            .iter()
            .map(|k| k.as_str().expect("key"))
            .collect();
        for key in &keys {
            assert!(required.contains(&key.as_str()), "{key} not required");
            assert!(
                schema["properties"][key.as_str()].is_object(),
                "{key} undocumented"
            );
        }
        assert_eq!(required.len(), keys.len());
        let worker = &schema["properties"]["worker"];
        assert_eq!(worker["type"], json!(["object", "null"]));
        for key in ["state", "pid", "entry", "restarts", "since", "last_exit"] {
            assert!(worker["properties"][key].is_object(), "worker.{key}");
        }
        assert_eq!(
            worker["properties"]["pid"]["type"],
            json!(["integer", "null"])
        );
        // A full view (worker present) validates against the schema too.
        let mut full = json.clone();
        full["worker"] = json!({ "state": "ready", "pid": 7, "entry": null, "restarts": 0,
            "since": "2026-11-24T10:00:00.000+00:00", "last_exit": null });
        let mut standalone = schema.clone();
        standalone["$defs"] = doc["components"]["schemas"].clone();
        let text = serde_json::to_string(&standalone)
            .expect("schema")
            .replace("#/components/schemas/", "#/$defs/");
        let standalone: Value = serde_json::from_str(&text).expect("schema");
        let validator = jsonschema::validator_for(&standalone).expect("compiles");
        for instance in [&json, &full] {
            assert!(validator.is_valid(instance), "{instance}");
        }
    }

    /// Validates `value` against the component schema `name` (its `$ref`s resolved).
    fn conforms(doc: &Value, name: &str, value: &Value) -> bool {
        let mut standalone = doc["components"]["schemas"][name].clone();
        standalone["$defs"] = doc["components"]["schemas"].clone();
        let text = serde_json::to_string(&standalone)
            .expect("schema")
            .replace("#/components/schemas/", "#/$defs/");
        let standalone: Value = serde_json::from_str(&text).expect("schema");
        jsonschema::validator_for(&standalone)
            .expect("compiles")
            .is_valid(value)
    }

    /// `/metrics` is documented with the media type it is served with (the
    /// fuzzer found `text/plain` documented).
    #[test]
    fn metrics_media_type_is_the_served_one() {
        let doc = document("/api");
        let content = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
        let served = crate::metrics::CONTENT_TYPE
            .split(';')
            .next()
            .expect("type");
        assert!(content[served].is_object(), "{content}");
        assert_eq!(content.as_object().expect("content").len(), 1);
    }

    /// For SSE the schema describes one event as a client parses it
    /// (`event`, `id`, `data`), as schemathesis reads OpenAPI 3.1; the
    /// example's event conforms and its `data` is an `Event`.
    #[test]
    fn sse_schema_describes_one_event() {
        let doc = document("/api");
        let media =
            &doc["paths"]["/events"]["get"]["responses"]["200"]["content"]["text/event-stream"];
        assert_eq!(media["schema"]["$ref"], "#/components/schemas/SseEvent");
        let data = EVENTS_EXAMPLE
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("data line");
        let event = json!({ "event": "instance", "id": "41", "data": data });
        assert!(conforms(&doc, "SseEvent", &event));
        assert!(conforms(
            &doc,
            "Event",
            &serde_json::from_str(data).expect("JSON")
        ));
        for bad in [
            json!({ "event": "message", "data": data }),
            json!({ "event": "instance", "id": "x1", "data": data }),
            json!({ "event": "instance" }),
            json!(data),
        ] {
            assert!(!conforms(&doc, "SseEvent", &bad), "{bad}");
        }
    }

    /// The documented `target` pattern of `/tcping` accepts exactly what the
    /// handler accepts (a mismatch is a fuzzer failure either way).
    #[test]
    fn tcping_pattern_matches_the_parser() {
        let doc = document("/api");
        let params = &doc["paths"]["/tcping"]["get"]["parameters"];
        let schema = &params[0]["schema"];
        assert_eq!(schema["pattern"], TCPING_TARGET);
        let validator = jsonschema::validator_for(schema).expect("compiles");
        for target in [
            "a:1",
            "a:80",
            "example.com:443",
            "1.2.3.4:65535",
            "[::1]:22",
            "[fe80::1%eth0]:9",
            "x:00080",
            "]a:5",
            "h h:7",
            "a\nb:8",
            "\u{0}:9",
            "a:0",
            "a:65536",
            "a:",
            ":80",
            "a",
            "",
            "a:b",
            "::1:80",
            "[::1]",
            "[]:80",
            "[::1]x:80",
            "a:80 ",
            "a:+80",
            "a:99999999",
            "a:80\n",
            "[a]]:1",
            "[a:1",
        ] {
            let parsed = crate::tcping::parse_target(target).is_ok();
            assert_eq!(
                validator.is_valid(&json!(target)),
                parsed,
                "{target:?}: the parser says {parsed}"
            );
        }
    }

    /// Bodies that may be empty say so; optional fields document `null`
    /// (the handlers take it as "left out").
    #[test]
    fn optional_bodies_and_null_fields_are_documented() {
        let doc = document("/api");
        for (path, method) in [
            ("/instances/{id}", "patch"),
            ("/instances/********", "patch"),
        ] {
            assert_eq!(doc["paths"][path][method]["requestBody"]["required"], false);
        }
        assert_eq!(
            doc["paths"]["/instances"]["post"]["requestBody"]["required"],
            true
        );
        let null_ok = [
            (
                "CreateInstance",
                json!({ "url": "server://:1/a:2", "alias": null, "restart": null, "tenant": null }),
            ),
            (
                "PatchInstance",
                json!({ "alias": null, "action": null, "restart": null, "meta": null }),
            ),
            (
                "PatchInstance",
                json!({ "meta": { "peer": null, "tags": null } }),
            ),
            (
                "PatchInstance",
                json!({ "meta": { "peer": { "sid": null } } }),
            ),
            ("InfoUpdate", json!({ "alias": null })),
            ("RegenerateKey", json!({ "action": null })),
        ];
        for (name, body) in null_ok {
            assert!(conforms(&doc, name, &body), "{name} {body}");
        }
        let refused = [
            ("CreateInstance", json!({ "url": null })),
            ("CreateInstance", json!({ "url": "http://x:1/a:2" })),
            (
                "CreateInstance",
                json!({ "url": "server://:1/a:2", "tenant": "Big" }),
            ),
            ("PatchInstance", json!({ "meta": [null, null] })),
            (
                "PatchInstance",
                json!({ "meta": { "tags": { "k": null } } }),
            ),
            ("PutInstance", json!({ "url": null })),
            ("BindingUpdate", json!({ "instance": "" })),
        ];
        for (name, body) in refused {
            assert!(!conforms(&doc, name, &body), "{name} {body}");
        }
    }

    /// If Python's `openapi-spec-validator` is installed, it accepts the
    /// document too (skipped otherwise).
    #[test]
    fn python_openapi_spec_validator_agrees() {
        let probe = std::process::Command::new("python3")
            .args(["-c", "import openapi_spec_validator"])
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            eprintln!("skipped: python3 -m openapi_spec_validator not available");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("openapi.json");
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&document("/api")).expect("JSON"),
        )
        .expect("write");
        let out = std::process::Command::new("python3")
            .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
            .arg(&path)
            .output()
            .expect("run validator");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `/docs` redirects to `/docs/`; the page and every asset it names load
    /// from the binary, nothing points off-site, and the initializer loads
    /// `openapi.json` beside `docs/`, also when mounted inside a scope.
    #[actix_web::test]
    async fn swagger_ui_is_served_offline() {
        let app = atest::init_service(
            App::new()
                .configure(docs_config("/api/v1"))
                .service(docs_service("/api"))
                .service(web::scope("/admin").configure(docs_config(""))),
        )
        .await;
        for (mount, spec) in [
            ("/api", "/api/openapi.json"),
            ("/api/v1", "/api/v1/openapi.json"),
            ("/admin", "/admin/openapi.json"),
        ] {
            let req = atest::TestRequest::get()
                .uri(&format!("{mount}/docs"))
                .to_request();
            let res = atest::call_service(&app, req).await;
            assert_eq!(res.status(), StatusCode::FOUND);
            assert_eq!(
                res.headers().get(header::LOCATION).expect("location"),
                &format!("{mount}/docs/")
            );

            let req = atest::TestRequest::get()
                .uri(&format!("{mount}/docs/"))
                .to_request();
            let res = atest::call_service(&app, req).await;
            assert_eq!(res.status(), StatusCode::OK);
            let html = String::from_utf8(atest::read_body(res).await.to_vec()).expect("html");
            let mut assets: Vec<String> = Vec::new();
            for attr in ["href=\"", "src=\""] {
                for piece in html.split(attr).skip(1) {
                    assets.push(piece.split('"').next().expect("value").to_owned());
                }
            }
            assert!(assets.len() >= 5, "{assets:?}");
            for asset in &assets {
                assert!(!asset.contains("//"), "off-site asset {asset}");
                let uri = format!("{mount}/docs/{}", asset.trim_start_matches("./"));
                let res =
                    atest::call_service(&app, atest::TestRequest::get().uri(&uri).to_request())
                        .await;
                assert_eq!(res.status(), StatusCode::OK, "{uri}");
                assert!(!atest::read_body(res).await.is_empty(), "{uri}");
            }

            let uri = format!("{mount}/docs/swagger-initializer.js");
            let res =
                atest::call_service(&app, atest::TestRequest::get().uri(&uri).to_request()).await;
            let js = String::from_utf8(atest::read_body(res).await.to_vec()).expect("js");
            assert!(js.contains(&format!("\"url\": \"{spec}\"")), "{js}");
            assert!(js.contains("\"validatorUrl\": \"none\""), "{js}");
            assert!(!js.contains("http"), "{js}");
        }
        let req = atest::TestRequest::post().uri("/api/docs/").to_request();
        let res = atest::call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            atest::read_body(res).await,
            "{\"error\":\"Method not allowed\"}\n"
        );
        let req = atest::TestRequest::get()
            .uri("/api/docs/nope.js")
            .to_request();
        assert_eq!(
            atest::call_service(&app, req).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}
