//! Every route of the master API, under `{prefix}` and `{prefix}/v1`, with a
//! custom prefix too: status, shape of the answer, CORS, content type.

use serde_json::{Value, json};

use drover_e2e::api::{
    INSTANCE_KEYS, assert_instance_shape, counters, id_of, top_level_keys, worker_pid,
};
use drover_e2e::procs::tcp_port_free;
use drover_e2e::{DEADLINE, Frame, KEY_ID, Master, free_addr, wait_until_async};

/// A reverse-mode server URL on fresh ports: it runs without a client.
fn server_url() -> (String, std::net::SocketAddr, std::net::SocketAddr) {
    let (tunnel, entrance) = (free_addr(), free_addr());
    (
        format!("server://{tunnel}/{entrance}?mode=1"),
        tunnel,
        entrance,
    )
}

/// Walks every route once through `master.api_at(spelling)`.
async fn every_route(master: &Master, spelling: &str) {
    let api = master.api_at(spelling);

    // GET /instances: the API-key record first.
    let list = api.list().await;
    assert_eq!(list[0]["id"], KEY_ID, "first entry of {list:?}");
    let key_rec = &list[0];
    assert_instance_shape(key_rec);
    assert_eq!(key_rec["type"], "");
    assert_eq!(key_rec["status"], "");
    assert_eq!(key_rec["url"], master.key().as_str(), "url of {KEY_ID}");
    let mid = key_rec["config"].as_str().expect("config").to_string();
    assert!(
        mid.len() == 16 && mid.bytes().all(|b| b.is_ascii_hexdigit()),
        "master id {mid:?}"
    );

    // GET /info: NodePass's fields with NodePass's JSON types.
    let info = api.get("/info").await.ok_json(200);
    for k in [
        "os", "arch", "ver", "name", "log", "tls", "crt", "key", "alias", "mid", "drover",
    ] {
        assert!(info[k].is_string(), "/info `{k}` is not a string: {info}");
    }
    for k in [
        "mem_used",
        "mem_total",
        "swap_used",
        "swap_total",
        "netrx",
        "nettx",
        "diskr",
        "diskw",
        "sysup",
        "uptime",
    ] {
        assert!(info[k].is_u64(), "/info `{k}` is not an integer: {info}");
    }
    assert!(
        info["cpu"].is_i64(),
        "/info `cpu` is not an integer: {info}"
    );
    assert_eq!(info["ver"], "v1.14.0");
    assert_eq!(info["tls"], "0");
    assert_eq!(info["log"], "info");
    assert_eq!(info["name"], "127.0.0.1");
    assert_eq!(info["os"], "linux");
    assert_eq!(
        info["mid"],
        mid.as_str(),
        "/info mid vs the {KEY_ID} config"
    );

    // POST /info: the master alias, shown in /info and in the key record.
    let info = api
        .post("/info", &json!({ "alias": "edge-1" }))
        .await
        .ok_json(200);
    assert_eq!(info["alias"], "edge-1");
    assert_eq!(api.instance(KEY_ID).await["alias"], "edge-1");
    let info = api.post("/info", &json!({})).await.ok_json(200);
    assert_eq!(info["alias"], "", "a POST /info without alias clears it");

    // POST /instances: 201, running, defaults.
    let (url, tunnel, entrance) = server_url();
    let resp = api
        .post(
            "/instances",
            &json!({ "url": url, "alias": "first", "tenant": "team-a" }),
        )
        .await;
    let created = resp.ok_json(201);
    assert_instance_shape(&created);
    assert_eq!(
        top_level_keys(&resp.text()),
        INSTANCE_KEYS,
        "key order of the created instance"
    );
    let id = id_of(&created);
    assert!(
        id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "instance id {id:?}"
    );
    assert_eq!(created["status"], "running");
    assert_eq!(created["type"], "server");
    assert_eq!(created["restart"], true, "POST defaults to restart:true");
    assert_eq!(created["alias"], "first");
    assert_eq!(created["tenant"], "team-a");
    assert!(
        created["url"]
            .as_str()
            .expect("url")
            .starts_with(&format!("server://{tunnel}/{entrance}")),
        "url {}",
        created["url"]
    );
    assert!(
        created["config"]
            .as_str()
            .expect("config")
            .contains("mode=1"),
        "config {}",
        created["config"]
    );
    assert_eq!(counters(&created), [0; 4]);
    assert_eq!(
        created["meta"],
        json!({"peer":{"sid":"","type":"","alias":""},"tags":{}})
    );

    // GET /instances/{id} and the list.
    let got = api.instance(&id).await;
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["url"], created["url"]);
    let list = api.list().await;
    assert_eq!(list.len(), 2, "list after one create: {list:?}");
    assert_eq!(list[0]["id"], KEY_ID);
    assert_eq!(list[1]["id"], id.as_str());
    for item in &list {
        assert_instance_shape(item);
    }

    // PATCH: alias, restart flag, meta.
    let patched = api
        .patch_instance(
            &id,
            json!({
                "alias": "renamed",
                "restart": false,
                "meta": { "peer": { "sid": "s-1", "type": "2", "alias": "peer" }, "tags": { "env": "test" } },
            }),
        )
        .await;
    assert_eq!(patched["alias"], "renamed");
    assert_eq!(patched["restart"], false);
    assert_eq!(
        patched["meta"],
        json!({ "peer": { "sid": "s-1", "type": "2", "alias": "peer" }, "tags": { "env": "test" } })
    );
    assert_eq!(api.instance(&id).await["alias"], "renamed");

    // meta is replaced, never merged: new tags replace the tags, a PATCH
    // without `peer` keeps the peer, `"peer": {}` clears it.
    let v = api
        .patch_instance(&id, json!({ "meta": { "tags": { "other": "1" } } }))
        .await;
    assert_eq!(
        v["meta"],
        json!({ "peer": { "sid": "s-1", "type": "2", "alias": "peer" }, "tags": { "other": "1" } })
    );
    let v = api
        .patch_instance(&id, json!({ "meta": { "peer": {} } }))
        .await;
    assert_eq!(
        v["meta"],
        json!({ "peer": { "sid": "", "type": "", "alias": "" }, "tags": { "other": "1" } })
    );
    let v = api
        .patch_instance(&id, json!({ "meta": { "tags": { "env": "test" } } }))
        .await;
    assert_eq!(v["meta"]["tags"], json!({ "env": "test" }));
    // An empty body changes nothing (NodePass answers 200 with the instance).
    let same = api
        .call(reqwest::Method::PATCH, &format!("/instances/{id}"), None)
        .await
        .ok_json(200);
    assert_eq!(same["meta"], v["meta"]);
    assert_eq!(same["alias"], "renamed");

    // GET /instances/{id}/logs?tail=N: the worker's lines reach the master.
    wait_until_async(DEADLINE, "the worker logged something", || async {
        api.logs(&id, 100).await.len() >= 2
    })
    .await;
    let logs = api
        .get(&format!("/instances/{id}/logs?tail=1"))
        .await
        .ok_json(200);
    assert_eq!(logs["id"], id.as_str());
    assert_eq!(
        logs["logs"].as_array().map(Vec::len),
        Some(1),
        "tail=1 gives one line: {logs}"
    );

    // PUT: a new URL; the old ports are released.
    let (url2, tunnel2, entrance2) = server_url();
    let put = api
        .put(&format!("/instances/{id}"), &json!({ "url": url2 }))
        .await
        .ok_json(200);
    assert_instance_shape(&put);
    assert!(
        put["url"]
            .as_str()
            .expect("url")
            .starts_with(&format!("server://{tunnel2}/{entrance2}")),
        "url after PUT: {}",
        put["url"]
    );
    assert_eq!(put["alias"], "renamed", "PUT keeps alias");
    assert_eq!(put["restart"], false, "PUT keeps the restart flag");
    assert_eq!(put["meta"]["tags"]["env"], "test", "PUT keeps meta");
    assert!(
        tcp_port_free(tunnel) && tcp_port_free(entrance),
        "the old ports {tunnel} {entrance} are still held after PUT"
    );

    // GET /tcping: a listening target and a refusing one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    let ping = api
        .get(&format!("/tcping?target={target}"))
        .await
        .ok_json(200);
    assert_eq!(ping["target"], target.as_str());
    assert_eq!(ping["connected"], true, "{ping}");
    assert!(ping["latency"].is_u64(), "latency is an integer: {ping}");
    assert!(ping["error"].is_null(), "{ping}");
    drop(listener);
    let closed = free_addr().to_string();
    let ping = api
        .get(&format!("/tcping?target={closed}"))
        .await
        .ok_json(200);
    assert_eq!(ping["connected"], false, "{ping}");
    assert_eq!(ping["latency"], 0, "{ping}");
    assert!(
        ping["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{ping}"
    );

    // GET /healthz and /openapi.json: public.
    let health = api.clone().without_key().get("/healthz").await.ok_json(200);
    assert_eq!(health["status"], "ok");
    let doc = api
        .clone()
        .without_key()
        .get("/openapi.json")
        .await
        .ok_json(200);
    assert_eq!(doc["openapi"], "3.1.0");

    // GET /events: an SSE stream that starts with `retry: 3000`.
    let mut events = master.events_at(spelling, None).await;
    assert_eq!(events.status, 200);
    assert_eq!(
        events.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(events.next_frame(DEADLINE).await, Some(Frame::Retry(3000)));
    drop(events);

    // OPTIONS: 200 with CORS and no key on every route.
    for path in [
        "/instances".to_string(),
        format!("/instances/{id}"),
        format!("/instances/{id}/logs"),
        "/events".into(),
        "/info".into(),
        "/tcping".into(),
        "/healthz".into(),
        "/openapi.json".into(),
    ] {
        let resp = api.clone().without_key().options(&path).await;
        resp.expect(200).assert_cors();
        assert!(
            resp.body.is_empty(),
            "OPTIONS {path}: body {:?}",
            resp.text()
        );
    }

    // DELETE: 204, the worker is gone, the id is unknown afterwards.
    let pid = worker_pid(&api.instance(&id).await);
    let resp = api.delete(&format!("/instances/{id}")).await;
    resp.expect(204).assert_cors();
    assert!(resp.body.is_empty(), "DELETE body {:?}", resp.text());
    api.get(&format!("/instances/{id}"))
        .await
        .assert_error(404, "Instance not found");
    if let Some(pid) = pid {
        assert!(
            !drover_e2e::procs::proc_alive(pid),
            "worker {pid} still runs after DELETE answered"
        );
    }
    assert!(
        tcp_port_free(tunnel2) && tcp_port_free(entrance2),
        "ports still held after DELETE"
    );
    let list: Vec<Value> = api.list().await;
    assert_eq!(list.len(), 1, "only {KEY_ID} is left: {list:?}");
}

/// Every route answers under `/api`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_under_prefix() {
    let master = Master::start().await;
    assert_eq!(master.prefix, "/api");
    let key = master.key();
    assert!(
        key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "API key {key:?} is not 32 hex chars"
    );
    assert_eq!(
        master.count_lines(&key),
        1,
        "the key is logged exactly once on the first start"
    );
    every_route(&master, "").await;
}

/// Every route answers under `/api/v1` (what NodePass and NodePassDash use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_under_prefix_v1() {
    let master = Master::start().await;
    every_route(&master, "/v1").await;
}

/// A custom prefix (`master://…/admin`) moves every route, both spellings;
/// `/api` is then an unknown path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_under_custom_prefix() {
    let master = Master::start_url("master://127.0.0.1:0/admin").await;
    assert_eq!(master.prefix, "/admin");
    every_route(&master, "").await;
    every_route(&master, "/v1").await;
    let other = master.api_path("/api");
    other.get("/instances").await.assert_error(404, "Not found");
    other
        .get("/v1/instances")
        .await
        .assert_error(404, "Not found");
}
