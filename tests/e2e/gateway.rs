//! The gateway (DESIGN §1) and the `/clients` API: a connection to the one
//! gateway port reaches the instance its client is bound to, identified by
//! `X-Client-Id`, `X-Forwarded-For`, a PROXY header or the peer IP; unbound
//! clients go to the default instance or are closed. Idle reaping (DESIGN §2)
//! is woken by gateway traffic and by traffic on the instance's own listener.
//!
//! Each tenant is a single-end client instance
//! (`client://127.0.0.1:E/127.0.0.1:BACKEND?mode=1`) in front of a backend
//! that answers with the tenant's name, so the answer shows where the
//! connection went.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use drover_e2e::api::{id_of, worker_pid, worker_state};
use drover_e2e::gateway::{
    DirMaster, NameServer, ask, ask_from, gateway_addr, http_request, proxy_v2,
};
use drover_e2e::io::{connect, read_exact_len, stream_echo_sha256, try_echo, wait_closed};
use drover_e2e::procs::proc_alive;
use drover_e2e::prom;
use drover_e2e::{
    Api, DEADLINE, EchoServer, Master, free_addr, pattern, wait_for, wait_until, wait_until_async,
};

/// The master URL of these tests: a gateway on a free loopback port, plus
/// `extra` params. (The address is read back from the log; `gateway=…:0`
/// would be nicer, but the master refuses port 0 there.)
fn gateway_url(extra: &str) -> String {
    format!("master://127.0.0.1:0/api?gateway={}{extra}", free_addr())
}

/// Reaping waits for a stats report (every 5 s) past the idle period, then a
/// graceful stop: more than [`DEADLINE`] may pass under load.
const REAP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(40);

/// One tenant: its backend and its instance.
struct Tenant {
    backend: NameServer,
    id: String,
    /// The instance's own entrance (E).
    entrance: SocketAddr,
}

/// A single-end client instance in front of `backend`, created and ready.
async fn instance_for(api: &Api, backend: SocketAddr, extra: &str) -> (String, SocketAddr) {
    let entrance = free_addr();
    let url = format!("client://{entrance}/{backend}?mode=1{extra}");
    let v = api
        .create(json!({ "url": url, "alias": "gw", "restart": true }))
        .await;
    let id = id_of(&v);
    ready(api, &id).await;
    (id, entrance)
}

/// A tenant named `name`.
async fn tenant(api: &Api, name: &str) -> Tenant {
    let backend = NameServer::start(name).await;
    let (id, entrance) = instance_for(api, backend.addr, "").await;
    Tenant {
        backend,
        id,
        entrance,
    }
}

/// Waits until instance `id` has a ready worker with an entry port; returns it.
async fn ready(api: &Api, id: &str) -> Value {
    wait_for(
        DEADLINE,
        &format!("instance {id} to have a ready worker with an entry port"),
        || async {
            let v = api.instance(id).await;
            (worker_state(&v) == "ready" && v["worker"]["entry"].is_string()).then_some(v)
        },
    )
    .await
}

/// `PUT /clients/{client} {instance}`; asserts 200 and the echoed binding.
async fn bind(api: &Api, client: &str, instance: &str) {
    let v = api
        .put(
            &format!("/clients/{client}"),
            &json!({ "instance": instance }),
        )
        .await
        .ok_json(200);
    assert_eq!(
        v,
        json!({ "client": client, "instance": instance }),
        "PUT /clients/{client}"
    );
}

/// An HTTP request identified by `X-Client-Id: client`.
fn as_client(client: &str) -> Vec<u8> {
    http_request(&[("X-Client-Id", client)])
}

/// Asserts that `request` to the gateway is answered by `want`.
async fn assert_routed(gw: SocketAddr, request: &[u8], want: &str, what: &str) {
    match ask(gw, request).await {
        Ok(name) => assert_eq!(name, want, "{what}: answered by the wrong backend"),
        Err(e) => panic!("{what}: expected an answer from {want}, got: {e}"),
    }
}

/// Asserts that `request` to the gateway is closed without an answer.
async fn assert_closed(gw: SocketAddr, request: &[u8], what: &str) {
    match ask(gw, request).await {
        Err(e) if e.starts_with("closed") || e.contains("reset") || e.contains("writing") => {}
        Err(e) => panic!("{what}: expected the connection closed, got: {e}"),
        Ok(name) => panic!("{what}: expected the connection closed, answered by {name}"),
    }
}

/// A counter from `GET /metrics` (`name` or `name_total`).
async fn metric(api: &Api, name: &str) -> f64 {
    let text = api.get("/metrics").await.expect(200).text();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name || key == format!("{name}_total")).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no metric {name} in /metrics:\n{text}"))
}

/// Alice and bob each reach their own backend through the one gateway port,
/// whichever way they are identified: `X-Client-Id`, the first
/// `X-Forwarded-For` address, a PROXY v2 (and v1) source address (the
/// backend gets the PROXY header bytes as sent), the peer IP. `X-Client-Id` wins over the
/// others. With no default instance, an unbound client is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_each_identity_to_its_tenant() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let alice = tenant(&api, "alice").await;
    let bob = tenant(&api, "bob").await;

    bind(&api, "alice", &alice.id).await;
    bind(&api, "bob", &bob.id).await;
    assert_routed(gw, &as_client("alice"), "alice", "X-Client-Id: alice").await;
    assert_routed(gw, &as_client("bob"), "bob", "X-Client-Id: bob").await;

    // X-Forwarded-For: the first address is the client.
    bind(&api, "203.0.113.7", &alice.id).await;
    bind(&api, "203.0.113.8", &bob.id).await;
    for (xff, want) in [
        ("203.0.113.7, 10.0.0.1", "alice"),
        ("203.0.113.8, 203.0.113.7", "bob"),
    ] {
        let req = http_request(&[("X-Forwarded-For", xff)]);
        assert_routed(gw, &req, want, &format!("X-Forwarded-For: {xff}")).await;
    }
    // X-Client-Id takes precedence over X-Forwarded-For.
    let req = http_request(&[("X-Forwarded-For", "203.0.113.7"), ("X-Client-Id", "bob")]);
    assert_routed(
        gw,
        &req,
        "bob",
        "X-Client-Id bob + X-Forwarded-For of alice",
    )
    .await;

    // PROXY v2: the source address is the client; the backend receives the
    // header as sent, then the request.
    bind(&api, "198.51.100.4", &bob.id).await;
    let v2 = proxy_v2(
        "198.51.100.4:40000".parse().unwrap(),
        "127.0.0.1:80".parse().unwrap(),
    );
    let before = bob.backend.accepted();
    let req = [v2.as_slice(), &http_request(&[])].concat();
    assert_routed(gw, &req, "bob", "PROXY v2 from 198.51.100.4").await;
    assert_eq!(bob.backend.accepted(), before + 1, "connections at bob");
    assert_eq!(
        bob.backend.received(before),
        req,
        "bob's backend receives the PROXY header and the request as sent"
    );

    // PROXY v1 likewise.
    bind(&api, "192.0.2.44", &alice.id).await;
    let req = [
        b"PROXY TCP4 192.0.2.44 127.0.0.1 5555 80\r\n".as_slice(),
        &http_request(&[]),
    ]
    .concat();
    assert_routed(gw, &req, "alice", "PROXY v1 from 192.0.2.44").await;

    // The peer IP, when nothing in the bytes names the client.
    let peer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    bind(&api, "127.0.0.2", &alice.id).await;
    match ask_from(peer, gw, &http_request(&[])).await {
        Ok(name) => assert_eq!(name, "alice", "peer 127.0.0.2"),
        Err(e) => panic!("peer 127.0.0.2: expected alice, got: {e}"),
    }

    // Unbound, no default instance: closed.
    assert_closed(gw, &as_client("carol"), "unbound X-Client-Id carol").await;
    let req = http_request(&[("X-Forwarded-For", "192.0.2.99")]);
    assert_closed(gw, &req, "unbound X-Forwarded-For").await;
    // 127.0.0.1 (this test's peer address) is not bound either.
    assert_closed(gw, &http_request(&[]), "unbound peer 127.0.0.1").await;
    // The log is written by its own thread: it may trail the closes a little.
    wait_until(
        DEADLINE,
        "the gateway to log why it closed unbound clients",
        || master.count_lines("not bound and no default") >= 3,
    )
    .await;

    // Each backend saw only its own tenant's connections.
    assert_eq!(alice.backend.accepted(), 4, "connections at alice");
    assert_eq!(bob.backend.accepted(), 4, "connections at bob");
    assert_ne!(alice.entrance, bob.entrance);
}

/// With `gateway_default=<id>`, unbound clients reach that instance while
/// bound ones still reach theirs; the bindings survive the master restart.
/// (The id is only known once the instance exists, so the first master
/// creates the instances and binds, the second runs on its data dir with
/// `gateway_default` set.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_clients_reach_the_default_instance() {
    let first = Master::start_url(&gateway_url("")).await;
    let api = first.api();
    let gw = gateway_addr(&first).await;
    let alice_backend = NameServer::start("alice").await;
    let bob_backend = NameServer::start("bob").await;
    let (alice, _) = instance_for(&api, alice_backend.addr, "").await;
    let (bob, _) = instance_for(&api, bob_backend.addr, "").await;
    bind(&api, "bob", &bob).await;
    assert_closed(gw, &as_client("zed"), "unbound, no default yet").await;
    first.stop().await;

    let url = gateway_url(&format!("&gateway_default={alice}"));
    let second = DirMaster::start(&url, &first).await;
    let api = second.api();
    let gw = second.gateway_addr().await;
    ready(&api, &alice).await;
    ready(&api, &bob).await;
    let v = api.get("/clients/bob").await.ok_json(200);
    assert_eq!(
        v["instance"],
        bob.as_str(),
        "binding kept across the restart"
    );

    assert_routed(gw, &as_client("bob"), "bob", "bound bob").await;
    assert_routed(gw, &as_client("zed"), "alice", "unbound X-Client-Id").await;
    let req = http_request(&[("X-Forwarded-For", "192.0.2.1")]);
    assert_routed(gw, &req, "alice", "unbound X-Forwarded-For").await;
    assert_routed(gw, &http_request(&[]), "alice", "unbound peer").await;
    // Not HTTP at all (a TLS ClientHello start): the peer IP, unbound.
    let before = alice_backend.accepted();
    let mut s = connect(gw).await;
    s.write_all(b"\x16\x03\x01\x02\x00").await.expect("write");
    wait_for(
        DEADLINE,
        "the default backend to get the non-HTTP connection",
        || {
            let n = alice_backend.accepted();
            async move { (n > before).then_some(()) }
        },
    )
    .await;
    assert_eq!(alice_backend.received(before), b"\x16\x03\x01\x02\x00");
}

/// A new binding applies from the next connection on; a connection already
/// handed over stays where it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_takes_effect_on_the_next_connection() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let alice = tenant(&api, "alice").await;
    let bob = tenant(&api, "bob").await;

    bind(&api, "alice", &alice.id).await;
    assert_routed(gw, &as_client("alice"), "alice", "before the rebind").await;
    bind(&api, "alice", &bob.id).await;
    assert_routed(gw, &as_client("alice"), "bob", "right after the rebind").await;
    let v = api.get("/clients/alice").await.ok_json(200);
    assert_eq!(v["instance"], bob.id.as_str(), "GET after the rebind");
    bind(&api, "alice", &alice.id).await;
    assert_routed(gw, &as_client("alice"), "alice", "after binding back").await;
    assert_eq!(
        (alice.backend.accepted(), bob.backend.accepted()),
        (2, 1),
        "connections at (alice, bob)"
    );
}

/// With an LRU of 2 entries and 5 clients, every client still reaches its
/// instance: evicted bindings are read from the store again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_lru_routes_every_client() {
    let master = Master::start_url(&gateway_url("&lru=2")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let alice = tenant(&api, "alice").await;
    let bob = tenant(&api, "bob").await;

    let clients: Vec<(String, &Tenant, &str)> = (0..5)
        .map(|i| {
            let (t, name) = if i % 2 == 0 {
                (&alice, "alice")
            } else {
                (&bob, "bob")
            };
            (format!("client-{i}"), t, name)
        })
        .collect();
    for (client, t, _) in &clients {
        bind(&api, client, &t.id).await;
    }
    // Twice round, then in reverse: every lookup beyond the two most recent
    // clients misses the cache.
    let order: Vec<usize> = (0..5).chain(0..5).chain((0..5).rev()).collect();
    for i in order {
        let (client, _, want) = &clients[i];
        assert_routed(gw, &as_client(client), want, client).await;
    }
    assert_eq!(
        (alice.backend.accepted(), bob.backend.accepted()),
        (9, 6),
        "connections at (alice, bob)"
    );
    assert!(
        metric(&api, "drover_lru_evictions").await >= 1.0,
        "an LRU of 2 with 5 clients evicts"
    );
}

/// `idle=1s`: the worker is reaped (process gone, `worker.state` parked,
/// `status` still running); the next gateway connection wakes it, and after
/// the next reap so does a direct connection to the instance's entrance;
/// both are served with the payload intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_is_reaped_then_woken_by_gateway_and_by_its_listener() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let echo = EchoServer::start().await;
    let (id, entrance) = instance_for(&api, echo.addr, "&idle=1s").await;
    bind(&api, "sleeper", &id).await;

    let mut pid = worker_pid(&api.instance(&id).await).expect("a ready worker has a pid");
    for round in ["gateway", "entrance"] {
        let v = wait_for(
            REAP_DEADLINE,
            &format!("instance {id} to be reaped before the {round} connection"),
            || async {
                let v = api.instance(&id).await;
                (worker_state(&v) == "parked").then_some(v)
            },
        )
        .await;
        assert_eq!(v["status"], "running", "a reaped instance still runs: {v}");
        assert!(
            worker_pid(&v).is_none(),
            "a parked instance has no pid: {v}"
        );
        wait_until(DEADLINE, &format!("reaped worker {pid} to exit"), || {
            !proc_alive(pid)
        })
        .await;

        let payload = pattern(6 * 1024, 7);
        let data = if round == "gateway" {
            let head = format!(
                "POST / HTTP/1.1\r\nHost: x\r\nX-Client-Id: sleeper\r\nContent-Length: {}\r\n\r\n",
                payload.len()
            );
            [head.as_bytes(), &payload].concat()
        } else {
            payload
        };
        let addr = if round == "gateway" { gw } else { entrance };
        stream_echo_sha256(addr, data).await;
        let v = ready(&api, &id).await;
        let woken = worker_pid(&v).expect("pid");
        assert_ne!(woken, pid, "the {round} connection started a new worker");
        assert!(proc_alive(woken), "worker {woken} runs");
        pid = woken;
    }
    assert!(
        metric(&api, "drover_wakes").await >= 2.0,
        "two wakes counted"
    );
    assert!(
        metric(&api, "drover_reaps").await >= 2.0,
        "two reaps counted"
    );
}

/// A client that sends half a request head and then nothing does not hold
/// up the gateway: another client is served while the slow ones are still
/// open and silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_does_not_delay_other_clients() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let alice = tenant(&api, "alice").await;
    let bob = tenant(&api, "bob").await;
    bind(&api, "alice", &alice.id).await;
    // Once the gateway gives up waiting for their headers, the slow clients
    // are identified by their peer IP and go to bob, whose backend waits for
    // the rest of the request: they stay open either way.
    bind(&api, "127.0.0.1", &bob.id).await;

    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = connect(gw).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost:")
            .await
            .expect("write");
        slow.push(s);
    }
    assert_routed(
        gw,
        &as_client("alice"),
        "alice",
        "a client behind slow ones",
    )
    .await;
    for (i, s) in slow.iter().enumerate() {
        let mut buf = [0u8; 64];
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(0) => panic!("slow client {i} was closed"),
            Ok(n) => panic!("slow client {i} got {n} bytes"),
            Err(e) => panic!("slow client {i}: {e}"),
        }
    }
    assert_eq!(alice.backend.accepted(), 1, "connections at alice");
}

/// SIGKILL of a worker that carries a gateway session ends that session;
/// the next gateway connection is served by the restarted worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_ends_its_session_and_the_next_is_served() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let echo = EchoServer::start().await;
    let (id, _) = instance_for(&api, echo.addr, "").await;
    bind(&api, "victim", &id).await;

    let head = as_client("victim");
    let mut session = connect(gw).await;
    session.write_all(&head).await.expect("write");
    let back = read_exact_len(&mut session, head.len(), "the echo of the session's head").await;
    assert_eq!(back, head, "the session is open through the worker");

    let pid = worker_pid(&api.instance(&id).await).expect("pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9 the worker");
    wait_closed(&mut session, DEADLINE, "the session of the killed worker").await;
    let v = wait_for(DEADLINE, "the worker to be restarted", || async {
        let v = api.instance(&id).await;
        (worker_state(&v) == "ready" && worker_pid(&v).is_some_and(|p| p != pid)).then_some(v)
    })
    .await;
    assert_eq!(v["worker"]["restarts"], 1, "one restart: {v}");
    assert!(
        v["worker"]["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("signal 9")),
        "last_exit names SIGKILL: {v}"
    );
    stream_echo_sha256(gw, [head.as_slice(), &pattern(4096, 3)].concat()).await;
}

/// `/clients`: PUT to an unknown instance is 404; a client id over 256 bytes
/// is 400; GET pages in client order with `limit` and `after`; DELETE is 204
/// then 404; deleting an instance removes its bindings (and the gateway then
/// closes those clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_api_validates_pages_and_follows_deletes() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let alice = tenant(&api, "alice").await;
    let bob = tenant(&api, "bob").await;

    api.put("/clients/x", &json!({ "instance": "00000000" }))
        .await
        .assert_error(404, "Instance not found");
    api.put("/clients/x", &json!({}))
        .await
        .assert_error_prefix(400, "");
    let long = "c".repeat(257);
    api.put(
        &format!("/clients/{long}"),
        &json!({ "instance": alice.id }),
    )
    .await
    .assert_error_prefix(400, "");
    api.get(&format!("/clients/{long}"))
        .await
        .assert_error_prefix(400, "");
    bind(&api, &"c".repeat(256), &alice.id).await;
    api.delete(&format!("/clients/{}", "c".repeat(256)))
        .await
        .expect(204);

    let names = ["c1", "c2", "c3", "c4", "c5"];
    for (i, c) in names.iter().enumerate() {
        bind(&api, c, if i < 3 { &alice.id } else { &bob.id }).await;
    }
    let page = |v: &Value| -> Vec<(String, String)> {
        v["clients"]
            .as_array()
            .unwrap_or_else(|| panic!("no `clients` array in {v}"))
            .iter()
            .map(|b| {
                (
                    b["client"].as_str().expect("client").to_string(),
                    b["instance"].as_str().expect("instance").to_string(),
                )
            })
            .collect()
    };
    let want = |cs: &[&str]| -> Vec<(String, String)> {
        cs.iter()
            .map(|c| {
                let i = names.iter().position(|n| n == c).expect("known");
                let id = if i < 3 { &alice.id } else { &bob.id };
                (c.to_string(), id.clone())
            })
            .collect()
    };
    let all = api.get("/clients").await.ok_json(200);
    assert_eq!(page(&all), want(&names), "GET /clients");
    let p1 = api.get("/clients?limit=2").await.ok_json(200);
    assert_eq!(page(&p1), want(&["c1", "c2"]), "first page");
    assert_eq!(p1["next"], "c2", "first page's next");
    let p2 = api.get("/clients?limit=2&after=c2").await.ok_json(200);
    assert_eq!(page(&p2), want(&["c3", "c4"]), "second page");
    let p3 = api.get("/clients?limit=2&after=c4").await.ok_json(200);
    assert_eq!(page(&p3), want(&["c5"]), "last page");
    assert!(p3["next"].is_null(), "the last page has no next: {p3}");

    api.delete("/clients/c5").await.expect(204);
    api.delete("/clients/c5").await.assert_error_prefix(404, "");
    api.get("/clients/c5").await.assert_error_prefix(404, "");
    assert_closed(gw, &as_client("c5"), "unbound after DELETE").await;

    // Deleting bob's instance removes c4's binding with it.
    assert_routed(gw, &as_client("c4"), "bob", "c4 before the delete").await;
    api.delete(&format!("/instances/{}", bob.id))
        .await
        .expect(204);
    api.get("/clients/c4").await.assert_error_prefix(404, "");
    let all = api.get("/clients").await.ok_json(200);
    assert_eq!(
        page(&all),
        want(&["c1", "c2", "c3"]),
        "bindings after the delete"
    );
    assert_closed(gw, &as_client("c4"), "bound to a deleted instance").await;
    api.put("/clients/c4", &json!({ "instance": bob.id }))
        .await
        .assert_error(404, "Instance not found");
    assert_routed(gw, &as_client("c1"), "alice", "c1 unaffected").await;
}

/// `worker.entry`, the worker's loopback entry port, serves like the
/// instance's own entrance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_port_serves_like_the_entrance() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let alice = tenant(&api, "alice").await;
    let v = ready(&api, &alice.id).await;
    let entry: SocketAddr = v["worker"]["entry"]
        .as_str()
        .expect("entry")
        .parse()
        .expect("entry is IP:PORT");
    assert!(entry.ip().is_loopback(), "entry {entry} is on loopback");
    assert_ne!(entry, alice.entrance, "entry port is not the entrance");
    for addr in [alice.entrance, entry] {
        match ask(addr, &http_request(&[])).await {
            Ok(name) => assert_eq!(name, "alice", "through {addr}"),
            Err(e) => panic!("through {addr}: {e}"),
        }
    }

    let echo = EchoServer::start().await;
    let (id, entrance) = instance_for(&api, echo.addr, "").await;
    let v = ready(&api, &id).await;
    let entry: SocketAddr = v["worker"]["entry"]
        .as_str()
        .expect("entry")
        .parse()
        .expect("addr");
    stream_echo_sha256(entrance, pattern(64 * 1024, 1)).await;
    stream_echo_sha256(entry, pattern(64 * 1024, 2)).await;
    assert_eq!(echo.accepted(), 2, "both reached the backend");
}

// ---- Races around worker death, reaping and exit-only instances. ----

/// A gateway connection that arrives after a worker died but before the
/// master noticed is closed ("sending to the control socket: Broken pipe")
/// instead of waiting for the restarted worker, as it would while the
/// worker is starting. Hits about every other round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_right_after_a_worker_death_waits_for_the_restart() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let echo = EchoServer::start().await;
    let (id, _) = instance_for(&api, echo.addr, "").await;
    bind(&api, "victim", &id).await;
    for round in 0..3 {
        let pid = worker_pid(&ready(&api, &id).await).expect("pid");
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9 the worker");
        wait_until(DEADLINE, &format!("worker {pid} to be gone"), || {
            !proc_alive(pid)
        })
        .await;
        let data = [as_client("victim").as_slice(), &pattern(1024, round)].concat();
        assert!(
            try_echo(gw, &data, DEADLINE).await,
            "round {round}: the first gateway connection after worker {pid} died was not served"
        );
    }
}

/// A connection handed to a worker that dies before reading it is served by
/// the next worker: the master keeps a copy until the worker answers
/// `Adopted`, and nothing was read from it. The worker is frozen (SIGSTOP) so
/// the handoff sits unread in its control socket when it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_the_dead_worker_never_read_goes_to_the_next() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let echo = EchoServer::start().await;
    let (id, _) = instance_for(&api, echo.addr, "").await;
    bind(&api, "frozen", &id).await;
    let pid = worker_pid(&ready(&api, &id).await).expect("pid");
    let worker = Pid::from_raw(pid as i32);
    kill(worker, Signal::SIGSTOP).expect("freeze the worker");
    let data = [as_client("frozen").as_slice(), &pattern(4096, 7)].concat();
    let client = tokio::spawn(async move { try_echo(gw, &data, DEADLINE).await });
    wait_until_async(DEADLINE, "the gateway to hand the connection over", || {
        let api = api.clone();
        async move {
            let text = api.get("/metrics").await.text();
            prom::parse(&text).is_ok_and(|e| e.value("drover_handoff_seconds_count", &[]) >= 1.0)
        }
    })
    .await;
    kill(worker, Signal::SIGKILL).expect("kill -9 the frozen worker");
    assert!(
        client.await.expect("client task"),
        "the connection handed to the killed worker was not served by the next one"
    );
    assert_eq!(echo.accepted(), 1, "served exactly once");
    let v = api.instance(&id).await;
    assert_ne!(worker_pid(&v), Some(pid), "served by a new worker");
}

/// A gateway connection that arrives while its instance is being reaped
/// (`worker.state` = `stopping`) sends no wake: it waits the 10 s readiness
/// timeout and is then reset, although the next connection wakes the
/// instance at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_during_a_reap_wakes_the_instance() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let echo = EchoServer::start().await;
    let (id, _) = instance_for(&api, echo.addr, "&idle=1s").await;
    bind(&api, "sleeper", &id).await;
    let mut events = master.events().await;
    for round in 0..3 {
        events
            .wait_event("worker.state stopping", REAP_DEADLINE, |e| {
                e.kind() == "update" && e.instance()["worker"]["state"] == "stopping"
            })
            .await;
        let data = [as_client("sleeper").as_slice(), &pattern(1024, round)].concat();
        assert!(
            try_echo(gw, &data, DEADLINE).await,
            "round {round}: a gateway connection made while the worker was being reaped \
             was not served"
        );
    }
}

/// DESIGN §1: the gateway binds clients only to instances with an entry
/// port. `PUT /clients` accepts an exit-only instance (a forward-mode
/// server, `worker.entry` null), and a gateway connection for that client
/// then hangs: the worker queues the adopted socket and never serves or
/// closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_only_instances_take_no_gateway_clients() {
    let master = Master::start_url(&gateway_url("")).await;
    let api = master.api();
    let gw = gateway_addr(&master).await;
    let echo = EchoServer::start().await;
    let url = format!("server://{}/{}?mode=2", free_addr(), echo.addr);
    let id = id_of(&api.create_url(&url).await);
    let v = wait_for(DEADLINE, "the exit-only worker to be ready", || async {
        let v = api.instance(&id).await;
        (worker_state(&v) == "ready").then_some(v)
    })
    .await;
    assert!(v["worker"]["entry"].is_null(), "exit-only: no entry: {v}");
    let r = api.put("/clients/exit", &json!({ "instance": id })).await;
    if r.status == 200 {
        // Accepted anyway: the connection must at least not hang.
        assert_closed(
            gw,
            &as_client("exit"),
            "gateway client of an exit-only instance",
        )
        .await;
    }
    assert!(
        (400..500).contains(&r.status),
        "PUT /clients to an exit-only instance: {} {}",
        r.status,
        r.text()
    );
}
