//! The master's REST API from a real HTTP client (reqwest), and checks of
//! what it answers.
//!
//! 1. [`Api`] is a base URL (`http://ADDR{prefix}[/v1]`) and an optional
//!    `X-API-Key`; [`Api::call`] sends any method with any body and returns a
//!    [`Resp`] (status, headers, raw body). Helpers like [`Api::create`]
//!    assert the expected status and return the JSON.
//! 2. [`Resp`] checks: exact error bodies (`{"error":"…"}` + newline), CORS
//!    headers, JSON content type.
//! 3. Instance JSON checks: every key with its JSON type ([`assert_instance_shape`]),
//!    NodePass's key order ([`top_level_keys`]), counters, worker pid.

use std::net::SocketAddr;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// NodePass's top-level instance keys in order, then Drover's.
pub const INSTANCE_KEYS: [&str; 19] = [
    "id", "alias", "type", "status", "url", "config", "restart", "meta", "mode", "ping", "pool",
    "tcps", "udps", "tcprx", "tcptx", "udprx", "udptx", "tenant", "worker",
];

/// The id of the API-key pseudo-instance.
pub const KEY_ID: &str = "********";

/// One spelling of the API with or without a key.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// An answer: status, headers, raw body.
#[derive(Debug)]
pub struct Resp {
    /// `METHOD path`, for messages.
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// The HTTP client tests talk to a master with: no proxy, [`DEADLINE`]
/// per request (rustls' ring provider installed for HTTPS).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(crate::DEADLINE)
        .build()
        .expect("building the HTTP client")
}

impl Api {
    pub fn new(http: reqwest::Client, base: String, key: Option<String>) -> Api {
        Api { http, base, key }
    }

    /// The same API with `suffix` appended to the base (`"/v1"`).
    pub fn under(mut self, suffix: &str) -> Api {
        self.base.push_str(suffix);
        self
    }

    /// The same API sending `key`.
    pub fn with_key(mut self, key: &str) -> Api {
        self.key = Some(key.to_string());
        self
    }

    /// The same API sending no key.
    pub fn without_key(mut self) -> Api {
        self.key = None;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method base+path` with `body` (sent as `application/json`).
    pub async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Resp {
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {url}");
        let mut req = self.http.request(method, &url);
        if let Some(key) = &self.key {
            req = req.header("X-API-Key", key);
        }
        if let Some(body) = body {
            req = req.header("Content-Type", "application/json").body(body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"))
            .to_vec();
        Resp {
            what,
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn options(&self, path: &str) -> Resp {
        self.call(Method::OPTIONS, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::POST, path, Some(body.to_string().into_bytes()))
            .await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::PATCH, path, Some(body.to_string().into_bytes()))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::PUT, path, Some(body.to_string().into_bytes()))
            .await
    }

    /// `POST /instances` with `body`; asserts 201 and returns the instance.
    pub async fn create(&self, body: Value) -> Value {
        self.post("/instances", &body).await.ok_json(201)
    }

    /// `POST /instances {"url": url}`; asserts 201 and returns the instance.
    pub async fn create_url(&self, url: &str) -> Value {
        self.create(serde_json::json!({ "url": url })).await
    }

    /// `GET /instances/{id}`; asserts 200.
    pub async fn instance(&self, id: &str) -> Value {
        self.get(&format!("/instances/{id}")).await.ok_json(200)
    }

    /// `GET /instances`; asserts 200 and an array.
    pub async fn list(&self) -> Vec<Value> {
        match self.get("/instances").await.ok_json(200) {
            Value::Array(items) => items,
            other => panic!("GET /instances is not an array: {other}"),
        }
    }

    /// `PATCH /instances/{id}` with `body`; asserts 200.
    pub async fn patch_instance(&self, id: &str, body: Value) -> Value {
        self.patch(&format!("/instances/{id}"), &body)
            .await
            .ok_json(200)
    }

    /// `GET /instances/{id}/logs?tail=N` lines; asserts 200.
    pub async fn logs(&self, id: &str, tail: usize) -> Vec<String> {
        let v = self
            .get(&format!("/instances/{id}/logs?tail={tail}"))
            .await
            .ok_json(200);
        v["logs"]
            .as_array()
            .unwrap_or_else(|| panic!("logs of {id}: no `logs` array in {v}"))
            .iter()
            .map(|l| l.as_str().expect("log lines are strings").to_string())
            .collect()
    }

    /// Whether instance `id` has logged a line containing `needle` (as a probe).
    pub async fn logged(&self, id: &str, needle: &str) -> bool {
        self.logs(id, 1000).await.iter().any(|l| l.contains(needle))
    }
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The methods of the `Allow` header, sorted (panics if there is none).
    pub fn allow(&self) -> Vec<String> {
        let mut allow: Vec<String> = self
            .header("allow")
            .unwrap_or_else(|| panic!("{}: no Allow header", self.what))
            .split(',')
            .map(|m| m.trim().to_string())
            .collect();
        allow.sort();
        allow
    }

    /// The body as JSON (panics naming the request otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {:?}", self.what, self.text()))
    }

    /// Asserts `status` (showing the body otherwise).
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "{}: status (body {:?})",
            self.what,
            self.text()
        );
        self
    }

    /// Asserts `status`, a JSON content type and the CORS headers; returns the JSON.
    pub fn ok_json(&self, status: u16) -> Value {
        self.expect(status).assert_cors().assert_json_type();
        self.json()
    }

    /// Asserts the three CORS headers NodePassDash's browser side needs.
    pub fn assert_cors(&self) -> &Self {
        assert_eq!(
            self.header("access-control-allow-origin").as_deref(),
            Some("*"),
            "{}: Access-Control-Allow-Origin",
            self.what
        );
        let methods = self
            .header("access-control-allow-methods")
            .unwrap_or_default();
        for m in ["GET", "PATCH", "POST", "PUT", "DELETE", "OPTIONS"] {
            assert!(
                methods.split(',').any(|x| x.trim() == m),
                "{}: Access-Control-Allow-Methods {methods:?} lacks {m}",
                self.what
            );
        }
        let headers = self
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        for h in [
            "content-type",
            "authorization",
            "x-api-key",
            "cache-control",
        ] {
            assert!(
                headers.split(',').any(|x| x.trim() == h),
                "{}: Access-Control-Allow-Headers {headers:?} lacks {h}",
                self.what
            );
        }
        self
    }

    /// Asserts `Content-Type: application/json`.
    pub fn assert_json_type(&self) -> &Self {
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "{}: Content-Type {ct:?}",
            self.what
        );
        self
    }

    /// Asserts an error answer: `status`, body exactly `{"error":"<message>"}`
    /// plus a newline (NodePass writes JSON with Go's encoder), JSON content
    /// type, CORS headers.
    pub fn assert_error(&self, status: u16, message: &str) {
        self.expect(status).assert_cors().assert_json_type();
        let want = format!("{}\n", serde_json::json!({ "error": message }));
        assert_eq!(self.text(), want, "{}: error body", self.what);
    }

    /// Like [`Resp::assert_error`] for a message that starts with `prefix`;
    /// returns the message.
    pub fn assert_error_prefix(&self, status: u16, prefix: &str) -> String {
        self.expect(status).assert_cors().assert_json_type();
        let v = self.json();
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("{}: error body is not an object: {v}", self.what));
        assert_eq!(
            obj.keys().collect::<Vec<_>>(),
            ["error"],
            "{}: error body {v}",
            self.what
        );
        let msg = obj["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: `error` is not a string: {v}", self.what))
            .to_string();
        assert!(
            msg.starts_with(prefix),
            "{}: error {msg:?} does not start with {prefix:?}",
            self.what
        );
        assert!(
            self.body.ends_with(b"}\n"),
            "{}: error body does not end with a newline",
            self.what
        );
        msg
    }
}

/// The keys of the outermost JSON object in `raw`, in the order written
/// (serde_json's `Value` sorts them).
pub fn top_level_keys(raw: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    let mut current = String::new();
    let mut expect_key = false;
    let mut reading_key = false;
    for c in raw.chars() {
        if in_str {
            if esc {
                esc = false;
                if reading_key {
                    current.push(c);
                }
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
                if reading_key {
                    keys.push(std::mem::take(&mut current));
                    reading_key = false;
                }
            } else if reading_key {
                current.push(c);
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                reading_key = depth == 1 && expect_key;
                expect_key = false;
            }
            '{' | '[' => {
                depth += 1;
                expect_key = depth == 1 && c == '{';
            }
            '}' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect_key = true,
            _ => {}
        }
    }
    keys
}

/// Asserts that `v` is an instance with every key and the JSON type each must
/// have (NodePassDash decodes into typed structs: integers are integers).
pub fn assert_instance_shape(v: &Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("instance is not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want: Vec<&str> = INSTANCE_KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "instance keys of {v}");
    for k in ["id", "alias", "type", "status", "url", "config", "tenant"] {
        assert!(v[k].is_string(), "`{k}` is not a string in {v}");
    }
    assert!(v["restart"].is_boolean(), "`restart` is not a bool in {v}");
    for k in [
        "mode", "ping", "pool", "tcps", "udps", "tcprx", "tcptx", "udprx", "udptx",
    ] {
        assert!(v[k].is_u64(), "`{k}` is not a non-negative integer in {v}");
    }
    let meta = &v["meta"];
    for k in ["sid", "type", "alias"] {
        assert!(meta["peer"][k].is_string(), "`meta.peer.{k}` in {v}");
    }
    assert!(
        meta["tags"].is_object(),
        "`meta.tags` is not an object in {v}"
    );
    if v["id"] == KEY_ID {
        assert!(
            v["worker"].is_null(),
            "`worker` of {KEY_ID} is not null: {v}"
        );
        return;
    }
    let w = &v["worker"];
    assert!(w["state"].is_string(), "`worker.state` in {v}");
    assert!(
        w["pid"].is_u64() || w["pid"].is_null(),
        "`worker.pid` in {v}"
    );
    assert!(
        w["entry"].is_string() || w["entry"].is_null(),
        "`worker.entry` in {v}"
    );
    assert!(w["restarts"].is_u64(), "`worker.restarts` in {v}");
    assert!(w["since"].is_string(), "`worker.since` in {v}");
    assert!(
        w["last_exit"].is_string() || w["last_exit"].is_null(),
        "`worker.last_exit` in {v}"
    );
}

/// The stored fields of every instance (everything but live state), sorted
/// by id: what must be the same after a master restart.
pub fn stored_fields(list: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = list
        .iter()
        .map(|v| {
            serde_json::json!({
                "id": v["id"], "alias": v["alias"], "type": v["type"], "url": v["url"],
                "config": v["config"], "restart": v["restart"], "meta": v["meta"],
                "tenant": v["tenant"],
            })
        })
        .collect();
    out.sort_by_key(|v| v["id"].as_str().unwrap_or_default().to_string());
    out
}

/// `[tcprx, tcptx, udprx, udptx]` of an instance.
pub fn counters(v: &Value) -> [u64; 4] {
    ["tcprx", "tcptx", "udprx", "udptx"]
        .map(|k| v[k].as_u64().unwrap_or_else(|| panic!("`{k}` in {v}")))
}

/// `worker.pid` of an instance.
pub fn worker_pid(v: &Value) -> Option<u32> {
    v["worker"]["pid"].as_u64().map(|p| p as u32)
}

/// `worker.state` of an instance.
pub fn worker_state(v: &Value) -> String {
    v["worker"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The `id` of an instance.
pub fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

/// A reverse-mode tunnel made of two API instances: users connect to
/// `entrance` (at the server instance), the client instance dials `backend`.
#[derive(Debug, Clone)]
pub struct ReversePair {
    pub server_id: String,
    pub client_id: String,
    pub tunnel: SocketAddr,
    pub entrance: SocketAddr,
}

impl ReversePair {
    /// Creates `server://T/E?mode=1` then `client://T/backend?mode=2`
    /// (fresh ports), with aliases `srv`/`cli` and `extra` fields merged into
    /// both POST bodies, and waits until both ends log `tunnel up`.
    pub async fn create(api: &Api, backend: SocketAddr, extra: Value) -> ReversePair {
        let (tunnel, entrance) = (crate::free_addr(), crate::free_addr());
        let body = |url: String, alias: &str| {
            let mut b = serde_json::json!({ "url": url, "alias": alias });
            if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
                b.extend(extra.clone());
            }
            b
        };
        let server = api
            .create(body(format!("server://{tunnel}/{entrance}?mode=1"), "srv"))
            .await;
        let client = api
            .create(body(format!("client://{tunnel}/{backend}?mode=2"), "cli"))
            .await;
        let pair = ReversePair {
            server_id: id_of(&server),
            client_id: id_of(&client),
            tunnel,
            entrance,
        };
        pair.wait_up(api).await;
        pair
    }

    /// Waits until both ends' workers have logged `tunnel up` (in this
    /// master's run: the log ring is not persisted).
    pub async fn wait_up(&self, api: &Api) {
        crate::wait_until_async(crate::DEADLINE, "both ends log `tunnel up`", || async {
            api.logged(&self.server_id, "tunnel up").await
                && api.logged(&self.client_id, "tunnel up").await
        })
        .await;
    }

    /// Waits until the server's and the client's counters are `server` and
    /// `client` (the next stats reports); returns both instances.
    pub async fn wait_counters(
        &self,
        api: &Api,
        server: [u64; 4],
        client: [u64; 4],
    ) -> (Value, Value) {
        let end = tokio::time::Instant::now() + crate::DEADLINE;
        loop {
            let last = (
                api.instance(&self.server_id).await,
                api.instance(&self.client_id).await,
            );
            if counters(&last.0) == server && counters(&last.1) == client {
                return last;
            }
            if tokio::time::Instant::now() >= end {
                panic!(
                    "counters (server, client) are ({:?}, {:?}), want ({server:?}, {client:?}) \
                     after {:?}",
                    counters(&last.0),
                    counters(&last.1),
                    crate::DEADLINE
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the outermost object's keys, in order, strings with quotes and
    /// escapes skipped.
    #[test]
    fn top_level_keys_in_order() {
        let raw = r#"{"id":"a\"b","meta":{"peer":{"type":"x"}},"list":[{"z":1}],"type":"s"}"#;
        assert_eq!(top_level_keys(raw), ["id", "meta", "list", "type"]);
    }
}
