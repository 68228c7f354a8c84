//! Every error answer of the master API: the status and the exact
//! `{"error":"…"}` body (plus NodePass's trailing newline), with CORS headers
//! and a JSON content type, under both spellings of the prefix.

use reqwest::Method;
use serde_json::{Value, json};

use drover_e2e::api::id_of;
use drover_e2e::lifecycle::wait_ready;
use drover_e2e::procs::tcp_port_free;
use drover_e2e::{Api, DEADLINE, KEY_ID, Master, free_addr, wait_for, wait_until};

/// Both spellings of the API of `master`.
fn spellings(master: &Master) -> [Api; 2] {
    [master.api(), master.api_v1()]
}

/// A reverse-mode server on fresh ports (runs without a client).
fn server_url() -> String {
    format!("server://{}/{}?mode=1", free_addr(), free_addr())
}

/// Requests on protected routes without a key, or with a wrong one, are
/// 401 with NodePass's two messages; public routes need no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_key_is_401() {
    let master = Master::start().await;
    let id = id_of(&master.api().create_url(&server_url()).await);
    let wrong_same_len = "0".repeat(master.key().len());
    let routes: Vec<(Method, String)> = vec![
        (Method::GET, "/instances".into()),
        (Method::POST, "/instances".into()),
        (Method::GET, format!("/instances/{id}")),
        (Method::PATCH, format!("/instances/{id}")),
        (Method::PUT, format!("/instances/{id}")),
        (Method::DELETE, format!("/instances/{id}")),
        (Method::GET, format!("/instances/{id}/logs")),
        (Method::PATCH, format!("/instances/{KEY_ID}")),
        (Method::GET, "/events".into()),
        (Method::GET, "/info".into()),
        (Method::POST, "/info".into()),
        (Method::GET, "/tcping?target=127.0.0.1:1".into()),
        (Method::GET, "/metrics".into()),
        (Method::GET, "/clients".into()),
        (Method::GET, "/clients/someone".into()),
        (Method::PUT, "/clients/someone".into()),
        (Method::DELETE, "/clients/someone".into()),
        (Method::GET, "/no/such/route".into()),
    ];
    for api in spellings(&master) {
        for (method, path) in &routes {
            let body = Some(b"{}".to_vec());
            api.clone()
                .without_key()
                .call(method.clone(), path, body.clone())
                .await
                .assert_error(401, "Unauthorized: API key required");
            for wrong in ["wrong", wrong_same_len.as_str()] {
                api.clone()
                    .with_key(wrong)
                    .call(method.clone(), path, body.clone())
                    .await
                    .assert_error(401, "Unauthorized: Invalid API key");
            }
        }
        for path in ["/healthz", "/openapi.json"] {
            api.clone().without_key().get(path).await.ok_json(200);
            api.clone().with_key("wrong").get(path).await.ok_json(200);
        }
    }
    // Nothing was changed by the refused requests.
    let inst = master.api().instance(&id).await;
    assert_eq!(inst["status"], "running");
}

/// `OPTIONS` on any path, known or not, answers 200 with the CORS headers
/// and an empty body before any key check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_is_200_without_key_everywhere() {
    let master = Master::start().await;
    let api = master.api();
    for path in [
        "/instances",
        "/v1/instances",
        "/instances/deadbeef",
        "/v1/instances/********",
        "/events",
        "/v1/info",
        "/no/such/route",
    ] {
        for key in [None, Some("wrong")] {
            let api = match key {
                Some(k) => api.clone().with_key(k),
                None => api.clone().without_key(),
            };
            let resp = api.options(path).await;
            resp.expect(200).assert_cors();
            assert!(
                resp.body.is_empty(),
                "OPTIONS {path}: body {:?}",
                resp.text()
            );
        }
    }
    let resp = master
        .api_path("/elsewhere")
        .without_key()
        .options("")
        .await;
    resp.expect(200).assert_cors();
}

/// Malformed JSON is `Invalid request body`; JSON of the wrong types is
/// `Invalid request body: <why>`; a body over 64 KiB is 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_errors() {
    let master = Master::start().await;
    let id = id_of(&master.api().create_url(&server_url()).await);
    let inst_path = format!("/instances/{id}");
    for api in spellings(&master) {
        let targets = [
            (Method::POST, "/instances"),
            (Method::PATCH, inst_path.as_str()),
            (Method::PUT, inst_path.as_str()),
            (Method::POST, "/info"),
        ];
        for (method, path) in &targets {
            for bad in [&b"{"[..], b"{\"url\":", b"not json", b"{\"url\":\"x\"}}"] {
                api.call(method.clone(), path, Some(bad.to_vec()))
                    .await
                    .assert_error(400, "Invalid request body");
            }
            let big = json!({ "url": "x".repeat(64 * 1024 + 1) });
            api.call(method.clone(), path, Some(big.to_string().into_bytes()))
                .await
                .assert_error(413, "Request body exceeds 65536 bytes");
        }
        for (method, path, body) in [
            (Method::POST, "/instances", json!({ "url": 5 })),
            (
                Method::POST,
                "/instances",
                json!({ "url": server_url(), "restart": "yes" }),
            ),
            (
                Method::POST,
                "/instances",
                json!({ "url": server_url(), "alias": 1 }),
            ),
            (Method::POST, "/instances", json!([1, 2])),
            (
                Method::PATCH,
                inst_path.as_str(),
                json!({ "restart": "yes" }),
            ),
            (Method::PATCH, inst_path.as_str(), json!({ "alias": 7 })),
            (
                Method::PATCH,
                inst_path.as_str(),
                json!({ "meta": { "tags": [1] } }),
            ),
            (
                Method::PATCH,
                inst_path.as_str(),
                json!({ "meta": { "tags": { "k": 1 } } }),
            ),
            (Method::PUT, inst_path.as_str(), json!({ "url": true })),
            (Method::POST, "/info", json!({ "alias": 3 })),
        ] {
            let resp = api
                .call(method.clone(), path, Some(body.to_string().into_bytes()))
                .await;
            resp.assert_error_prefix(400, "Invalid request body: ");
        }
        // A body without `url` is a bad body too.
        api.post("/instances", &json!({ "alias": "x" }))
            .await
            .assert_error_prefix(400, "Invalid request body");
        api.put(&inst_path, &json!({}))
            .await
            .assert_error_prefix(400, "Invalid request body");
    }
    // Nothing was applied by the rejected requests.
    let inst = master.api().instance(&id).await;
    assert_eq!(
        (inst["alias"].as_str(), inst["restart"].as_bool()),
        (Some(""), Some(true))
    );
    assert_eq!(master.api().list().await.len(), 2);
}

/// A URL that cannot be used is 400 `Invalid URL: …` naming the part at
/// fault, on POST and on PUT; nothing is created or changed. NodePassDash's
/// `type=0&block=0&lbs=0` are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_url_names_the_part() {
    let master = Master::start().await;
    let created = master.api().create_url(&server_url()).await;
    let id = id_of(&created);
    let (t, e) = (free_addr(), free_addr());
    let cases = [
        (format!("http://{t}/{e}"), "scheme"),
        (format!("master://{t}/{e}"), "scheme"),
        (format!("server://{t}"), "target"),
        (format!("server://{t}/"), "target"),
        (
            "server://127.0.0.1:0/127.0.0.1:80".to_string(),
            "tunnel address",
        ),
        (
            "server://127.0.0.1:70000/127.0.0.1:80".to_string(),
            "tunnel address",
        ),
        (format!("server://{t}/127.0.0.1:0"), "target"),
        (format!("client://{t}/{e}?min=0"), "param min"),
        (format!("client://{t}/{e}?min=-1"), "param min"),
        (format!("client://{t}/{e}?bogus=1"), "param bogus"),
        (format!("client://{t}/{e}?mode=3"), "param mode"),
        (format!("client://{t}/{e}?rate=abc"), "param rate"),
        (format!("client://{t}/{e}?read=5x"), "param read"),
        (format!("client://{t}/{e}?type=1"), "param type"),
        (format!("client://{t}/{e}?log=loud"), "param log"),
        (format!("server://{t}/{e}?tls=3"), "param tls"),
        (format!("server://{t}/{e}?tls=2"), "param tls"),
    ];
    for api in spellings(&master) {
        for (url, part) in &cases {
            let prefix = format!("Invalid URL: {part}");
            api.post("/instances", &json!({ "url": url }))
                .await
                .assert_error_prefix(400, &prefix);
            api.put(&format!("/instances/{id}"), &json!({ "url": url }))
                .await
                .assert_error_prefix(400, &prefix);
        }
    }
    let list = master.api().list().await;
    assert_eq!(list.len(), 2, "nothing created: {list:?}");
    let now = master.api().instance(&id).await;
    assert_eq!(
        now["url"], created["url"],
        "PUT with a bad URL changed nothing"
    );
    assert_eq!(now["status"], "running");

    // What NodePassDash writes into the URLs it builds is accepted.
    for url in [
        format!(
            "server://{}/{}?mode=1&type=0&block=0&lbs=0",
            free_addr(),
            free_addr()
        ),
        format!("client://{}/127.0.0.1:9?mode=1&lbs=0", free_addr()),
    ] {
        master.api().create_url(&url).await;
    }
}

/// `Invalid action: x`; field lengths over 256 bytes (256 is fine); a
/// rejected PATCH applies none of its parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_and_length_errors() {
    let master = Master::start().await;
    let id = id_of(&master.api().create_url(&server_url()).await);
    let path = format!("/instances/{id}");
    let long = "a".repeat(257);
    let max = "b".repeat(256);
    for api in spellings(&master) {
        for action in ["x", "status", "START", ""] {
            api.patch(&path, &json!({ "action": action }))
                .await
                .assert_error(400, &format!("Invalid action: {action}"));
        }
        api.patch(&path, &json!({ "alias": "new", "action": "x" }))
            .await
            .assert_error(400, "Invalid action: x");
        assert_eq!(
            api.instance(&id).await["alias"],
            "",
            "a rejected PATCH must not apply its alias"
        );

        let length_cases = [
            (
                json!({ "alias": long }),
                "Instance alias exceeds maximum length 256",
            ),
            (
                json!({ "meta": { "peer": { "sid": long } } }),
                "Meta peer.sid exceeds maximum length 256",
            ),
            (
                json!({ "meta": { "peer": { "type": long } } }),
                "Meta peer.type exceeds maximum length 256",
            ),
            (
                json!({ "meta": { "peer": { "alias": long } } }),
                "Meta peer.alias exceeds maximum length 256",
            ),
            (
                json!({ "meta": { "tags": { long.clone(): "v" } } }),
                "Meta tag key exceeds maximum length 256",
            ),
            (
                json!({ "meta": { "tags": { "k": long } } }),
                "Meta tag value exceeds maximum length 256",
            ),
        ];
        for (body, message) in &length_cases {
            api.patch(&path, body).await.assert_error(400, message);
        }
        // Multi-byte characters count in bytes: 129 × 2 bytes = 258.
        api.patch(&path, &json!({ "alias": "é".repeat(129) }))
            .await
            .assert_error(400, "Instance alias exceeds maximum length 256");
        api.post("/instances", &json!({ "url": server_url(), "alias": long }))
            .await
            .assert_error(400, "Instance alias exceeds maximum length 256");
        for tenant in ["", "Upper", "a b", "x/y", "é", &"t".repeat(33)] {
            api.post(
                "/instances",
                &json!({ "url": server_url(), "tenant": tenant }),
            )
            .await
            .assert_error(400, "Invalid tenant: expected [a-z0-9_-]{1,32}");
        }
        api.post("/info", &json!({ "alias": long }))
            .await
            .assert_error(400, "Master alias exceeds maximum length 256");

        let ok = api.patch_instance(&id, json!({ "alias": max })).await;
        assert_eq!(ok["alias"], max.as_str(), "256 bytes is allowed");
        api.patch_instance(&id, json!({ "alias": "" })).await;
    }
    assert_eq!(
        master.api().list().await.len(),
        2,
        "no instance was created"
    );
}

/// An unknown instance id is 404 `Instance not found` on every method; an
/// unknown path is a JSON 404; `/instances/` without id is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_and_paths_are_404() {
    let master = Master::start().await;
    for api in spellings(&master) {
        for (method, path, body) in [
            (Method::GET, "/instances/deadbeef", None),
            (
                Method::PATCH,
                "/instances/deadbeef",
                Some(json!({ "alias": "x" })),
            ),
            (
                Method::PATCH,
                "/instances/deadbeef",
                Some(json!({ "action": "stop" })),
            ),
            (
                Method::PUT,
                "/instances/deadbeef",
                Some(json!({ "url": server_url() })),
            ),
            (Method::DELETE, "/instances/deadbeef", None),
            (Method::GET, "/instances/deadbeef/logs", None),
        ] {
            let body = body.map(|b: Value| b.to_string().into_bytes());
            api.call(method, path, body)
                .await
                .assert_error(404, "Instance not found");
        }
        for path in [
            "/nope",
            "/instances/deadbeef/logs/more",
            "/v2/instances",
            "/v1/v1/info",
        ] {
            api.get(path).await.assert_error(404, "Not found");
        }
        api.get("/instances/")
            .await
            .assert_error(400, "Instance ID is required");
    }
    master
        .api_path("")
        .get("/nothing-here")
        .await
        .assert_error(404, "Not found");
}

/// A method a route does not have is 405 `Method not allowed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405() {
    let master = Master::start().await;
    let id = id_of(&master.api().create_url(&server_url()).await);
    for api in spellings(&master) {
        for (method, path) in [
            (Method::DELETE, "/instances".to_string()),
            (Method::PUT, "/instances".into()),
            (Method::PATCH, "/instances".into()),
            (Method::POST, format!("/instances/{id}")),
            (Method::POST, format!("/instances/{id}/logs")),
            (Method::DELETE, format!("/instances/{id}/logs")),
            (Method::POST, "/events".into()),
            (Method::DELETE, "/info".into()),
            (Method::PUT, "/info".into()),
            (Method::POST, "/tcping".into()),
            (Method::POST, "/healthz".into()),
        ] {
            api.call(method, &path, Some(b"{}".to_vec()))
                .await
                .assert_error(405, "Method not allowed");
        }
    }
}

/// A port held by another process or instance is 409
/// `Instance port conflict: <addr>` on create; PUT with the same URL is 409
/// `Instance URL conflict`; PUT onto a held port is 409 and the instance
/// keeps running on its old URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_409() {
    let master = Master::start().await;
    let api = master.api();

    // Another process holds the tunnel port.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let held_addr = held.local_addr().expect("addr");
    let url = format!("server://{held_addr}/{}?mode=1", free_addr());
    let msg = api
        .post("/instances", &json!({ "url": url }))
        .await
        .assert_error_prefix(409, "Instance port conflict: ");
    assert_port_named(&msg, held_addr);

    // Another instance holds the entrance.
    let first = api.create_url(&server_url()).await;
    let first_id = id_of(&first);
    let first_url = first["url"].as_str().expect("url").to_string();
    let entrance: std::net::SocketAddr = first_url
        .split('/')
        .nth(3)
        .and_then(|s| s.split('?').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("entrance of {first_url}"));
    for api in spellings(&master) {
        let url = format!("server://{}/{entrance}?mode=1", free_addr());
        let msg = api
            .post("/instances", &json!({ "url": url }))
            .await
            .assert_error_prefix(409, "Instance port conflict: ");
        assert_port_named(&msg, entrance);
    }
    assert_eq!(api.list().await.len(), 2, "no instance created by a 409");

    // PUT with the URL it already has.
    for api in spellings(&master) {
        api.put(
            &format!("/instances/{first_id}"),
            &json!({ "url": first_url }),
        )
        .await
        .assert_error(409, "Instance URL conflict");
    }

    // PUT onto a port another process holds: refused, old URL keeps running.
    let url = format!("server://{held_addr}/{}?mode=1", free_addr());
    let msg = api
        .put(&format!("/instances/{first_id}"), &json!({ "url": url }))
        .await
        .assert_error_prefix(409, "Instance port conflict: ");
    assert_port_named(&msg, held_addr);
    let now = api.instance(&first_id).await;
    assert_eq!(
        now["url"],
        first_url.as_str(),
        "URL unchanged after a refused PUT"
    );
    assert_eq!(
        now["status"], "running",
        "still running after a refused PUT: {now}"
    );
    drop(held);
}

/// PATCH start on a stopped instance whose port another process took is 409
/// with JSON and applies nothing (not the alias that came with it); once the
/// port is free again, PATCH start works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_start_on_a_taken_port_is_409_and_changes_nothing() {
    let master = Master::start().await;
    let api = master.api();
    let tunnel = free_addr();
    let created = api
        .create_url(&format!("server://{tunnel}/{}?mode=1", free_addr()))
        .await;
    let id = id_of(&created);
    let path = format!("/instances/{id}");
    api.patch_instance(&id, json!({ "action": "stop" })).await;

    // A process forking at that moment may hold a copy of the socket for a
    // few milliseconds (until its exec closes it).
    let held = wait_for(DEADLINE, "the freed tunnel port to bind", || async {
        std::net::TcpListener::bind(tunnel).ok()
    })
    .await;
    let msg = api
        .patch(&path, &json!({ "alias": "x", "action": "start" }))
        .await
        .assert_error_prefix(409, "Instance port conflict: ");
    assert_port_named(&msg, tunnel);
    let now = api.instance(&id).await;
    assert_eq!(now["alias"], "", "a refused PATCH must not apply its alias");
    assert_eq!(now["status"], "stopped", "{now}");

    drop(held);
    // Retried for the same reason: a refused try changes nothing.
    let started = wait_for(DEADLINE, "PATCH start once the port is free", || async {
        let resp = api
            .patch(&path, &json!({ "alias": "x", "action": "start" }))
            .await;
        (resp.status == 200).then(|| resp.json())
    })
    .await;
    assert_eq!(started["alias"], "x");
    wait_ready(&api, &id, None, DEADLINE).await;
}

/// PUT onto a port another process holds, on a stopped instance: 409, and
/// the instance stays stopped on its old URL, its ports not taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_put_leaves_a_stopped_instance_stopped() {
    let master = Master::start().await;
    let api = master.api();
    let (tunnel, entrance) = (free_addr(), free_addr());
    let created = api
        .create_url(&format!("server://{tunnel}/{entrance}?mode=1"))
        .await;
    let id = id_of(&created);
    api.patch_instance(&id, json!({ "action": "stop" })).await;

    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let held_addr = held.local_addr().expect("addr");
    let msg = api
        .put(
            &format!("/instances/{id}"),
            &json!({ "url": format!("server://{held_addr}/{}?mode=1", free_addr()) }),
        )
        .await
        .assert_error_prefix(409, "Instance port conflict: ");
    assert_port_named(&msg, held_addr);
    let now = api.instance(&id).await;
    assert_eq!(now["url"], created["url"], "URL unchanged");
    assert_eq!(now["status"], "stopped", "still stopped: {now}");
    assert_eq!(now["worker"]["pid"], Value::Null, "no worker: {now}");
    // Not at once: a process forking meanwhile may hold a copy for a moment.
    wait_until(
        DEADLINE,
        "the old ports to be free (a refused PUT must not bind them again)",
        || tcp_port_free(tunnel) && tcp_port_free(entrance),
    )
    .await;
}

fn assert_port_named(msg: &str, addr: std::net::SocketAddr) {
    let rest = &msg["Instance port conflict: ".len()..];
    assert!(
        rest == addr.to_string() || rest.starts_with(&format!("{addr}/")),
        "conflict message {msg:?} does not name {addr}"
    );
}

/// PUT and DELETE on the API-key record are 403 `Forbidden: API Key`, and
/// leave the key as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_record_is_forbidden_to_put_and_delete() {
    let master = Master::start().await;
    let key = master.key();
    for api in spellings(&master) {
        api.put(
            &format!("/instances/{KEY_ID}"),
            &json!({ "url": "server://127.0.0.1:1/127.0.0.1:2" }),
        )
        .await
        .assert_error(403, "Forbidden: API Key");
        api.delete(&format!("/instances/{KEY_ID}"))
            .await
            .assert_error(403, "Forbidden: API Key");
        // Any PATCH but `restart` leaves the key alone.
        let rec = api
            .patch_instance(KEY_ID, json!({ "alias": "ignored", "action": "stop" }))
            .await;
        assert_eq!(rec["url"], key.as_str());
    }
    let list = master.api().list().await;
    assert_eq!(list[0]["id"], KEY_ID);
    assert_eq!(list[0]["url"], key.as_str());
    // The key still works.
    master.api().get("/info").await.ok_json(200);
}
