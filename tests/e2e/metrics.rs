//! `GET {prefix}/metrics` against the API it mirrors: the exposition parses
//! (a strict OpenMetrics parser here, and Python's `prometheus_client` when
//! installed, which must read exactly the same samples), and every
//! per-instance series equals what `GET /instances` shows at the same moment:
//! bytes after a transfer, sessions while one is open, `state` 1 for the
//! current worker state and 0 for the others, restarts after a `kill -9`;
//! plus the master-wide families (workers by state, instances by status,
//! restarts, spawns, SSE subscribers).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use drover_e2e::api::{KEY_ID, counters, id_of, worker_state};
use drover_e2e::confine::{cleanup_tenant_soon, unique_suffix};
use drover_e2e::io::{connect, stream_echo_sha256};
use drover_e2e::lifecycle::{wait_instance, wait_ready, worker_processes};
use drover_e2e::prom::{Exposition, Labels, parse, python_parse};
use drover_e2e::{Api, DEADLINE, EchoServer, Master, free_addr, random_bytes, wait_until};

/// Bytes carried through the instance.
const BULK: usize = 1024 * 1024;

/// `worker.state` values (DESIGN §2).
const STATES: [&str; 6] = [
    "parked", "starting", "ready", "stopping", "backoff", "failed",
];
/// NodePass `status` values.
const STATUSES: [&str; 3] = ["running", "stopped", "error"];

/// `GET /metrics`: 200, OpenMetrics content type; the text and what the
/// strict parser read (cross-checked with Python's parser when available).
async fn scrape(api: &Api) -> (String, Exposition) {
    let resp = api.get("/metrics").await;
    resp.expect(200);
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/openmetrics-text"),
        "/metrics Content-Type {ct:?}"
    );
    let text = resp.text();
    let expo = parse(&text).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"));
    if let Some(py) = python_parse(&text) {
        // Same series; values equal up to float decoding (serde_json may
        // round Python's shortest repr one ulp differently).
        let key = |name: &str, labels: &Labels| format!("{name} {labels:?}");
        let ours: BTreeMap<String, f64> = expo
            .samples
            .iter()
            .map(|s| (key(&s.name, &s.labels), s.value))
            .collect();
        let theirs: BTreeMap<String, f64> = py
            .iter()
            .map(|s| (key(&s.name, &s.labels), s.value))
            .collect();
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "prometheus_client reads other series than the strict parser\n{text}"
        );
        for (k, v) in &ours {
            let p = theirs[k];
            assert!(
                (v - p).abs() <= 1e-12 * v.abs().max(1.0),
                "{k}: {v} here, {p} per prometheus_client"
            );
        }
        for s in &py {
            assert_eq!(
                expo.types.get(&s.family).map(String::as_str),
                Some(s.kind.as_str()),
                "type of family {} per prometheus_client",
                s.family
            );
        }
    }
    (text, expo)
}

/// The instance list and a scrape taken between two identical lists, so
/// the scrape saw the same state as the API (stats arrive every interval).
async fn consistent(api: &Api) -> (Vec<Value>, String, Exposition) {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let before = api.list().await;
        let (text, expo) = scrape(api).await;
        let after = api.list().await;
        if before == after {
            return (after, text, expo);
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the instances never held still around a scrape for {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every per-instance series equals the API's view, and the master-wide
/// counts by state and status add up.
fn assert_mirrors(list: &[Value], expo: &Exposition, text: &str) {
    let views: Vec<&Value> = list.iter().filter(|v| v["id"] != KEY_ID).collect();
    for v in &views {
        let id = v["id"].as_str().expect("id");
        let tenant = v["tenant"].as_str().expect("tenant");
        let l = |extra: &[(&'static str, &'static str)]| {
            let mut pairs: Vec<(&str, &str)> = vec![("instance", id), ("tenant", tenant)];
            pairs.extend_from_slice(extra);
            pairs
        };
        let api_u64 = |key: &str| v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as f64;
        for (proto, dir, key) in [
            ("tcp", "rx", "tcprx"),
            ("tcp", "tx", "tcptx"),
            ("udp", "rx", "udprx"),
            ("udp", "tx", "udptx"),
        ] {
            assert_eq!(
                expo.value(
                    "drover_instance_bytes",
                    &l(&[("proto", proto), ("dir", dir)])
                ),
                api_u64(key),
                "{id}: drover_instance_bytes {proto}/{dir} vs API {key}\n{text}"
            );
        }
        for (proto, key) in [("tcp", "tcps"), ("udp", "udps")] {
            assert_eq!(
                expo.value("drover_instance_sessions", &l(&[("proto", proto)])),
                api_u64(key),
                "{id}: drover_instance_sessions {proto} vs API {key}"
            );
        }
        assert_eq!(
            expo.value("drover_instance_pool", &l(&[])),
            api_u64("pool"),
            "{id}: pool"
        );
        assert_eq!(
            expo.value("drover_instance_ping_ms", &l(&[])),
            api_u64("ping"),
            "{id}: ping"
        );
        assert_eq!(
            expo.value("drover_instance_restarts", &l(&[])),
            v["worker"]["restarts"].as_u64().expect("restarts") as f64,
            "{id}: restarts"
        );
        let state = worker_state(v);
        for s in STATES {
            assert_eq!(
                expo.value("drover_instance_state", &l(&[("state", s)])),
                if s == state { 1.0 } else { 0.0 },
                "{id}: drover_instance_state{{state={s:?}}} while the API says {state:?}"
            );
        }
    }
    // No series for anything else (the key record, deleted instances).
    let ids: BTreeSet<&str> = views
        .iter()
        .map(|v| v["id"].as_str().expect("id"))
        .collect();
    for s in &expo.samples {
        if let Some(inst) = s.labels.get("instance") {
            assert!(
                ids.contains(inst.as_str()),
                "series for unknown instance: {s:?}"
            );
        }
    }
    for s in STATES {
        let n = views.iter().filter(|v| worker_state(v) == s).count();
        assert_eq!(
            expo.value("drover_workers", &[("state", s)]),
            n as f64,
            "drover_workers{{state={s:?}}}"
        );
    }
    for s in STATUSES {
        let n = views.iter().filter(|v| v["status"] == s).count();
        assert_eq!(
            expo.value("drover_instances", &[("status", s)]),
            n as f64,
            "drover_instances{{status={s:?}}}"
        );
    }
}

/// Traffic, an open session, a stopped instance, a `kill -9` restart: at
/// each step `/metrics` parses and mirrors the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_mirror_the_api() {
    let master = Master::start().await;
    let api = master.api();
    let echo = EchoServer::start().await;
    let entrance = free_addr();
    // Unique: masters on one machine share tenants' directories and cgroups.
    let tenant = format!("metrics-{}", unique_suffix());
    let x = id_of(
        &api.create(json!({
            "url": format!("client://{entrance}/{}?mode=1", echo.addr),
            "alias": "x",
            "tenant": tenant,
        }))
        .await,
    );
    let y = id_of(
        &api.create_url(&format!("client://{}/{}?mode=1", free_addr(), echo.addr))
            .await,
    );
    let (x_pid, _) = wait_ready(&api, &x, None, DEADLINE).await;
    wait_ready(&api, &y, None, DEADLINE).await;
    api.patch_instance(&y, json!({ "action": "stop" })).await;

    // Bytes: after a transfer, once the API shows them.
    stream_echo_sha256(entrance, random_bytes(BULK)).await;
    wait_instance(&api, &x, DEADLINE, "counts the transfer", |v| {
        let c = counters(v);
        c[0] >= BULK as u64 && c[1] >= BULK as u64
    })
    .await;
    let (list, text, expo) = consistent(&api).await;
    assert_mirrors(&list, &expo, &text);
    let l = [("instance", x.as_str()), ("tenant", tenant.as_str())];
    assert!(
        expo.value(
            "drover_instance_bytes",
            &[l[0], l[1], ("proto", "tcp"), ("dir", "rx")]
        ) >= BULK as f64
    );
    let ys = list
        .iter()
        .find(|v| v["id"] == y.as_str())
        .expect("y listed");
    assert_eq!(ys["status"], "stopped", "{ys}");
    assert_eq!(
        expo.value("drover_instances", &[("status", "stopped")]),
        1.0
    );
    assert_eq!(
        expo.value(
            "drover_instance_state",
            &[
                ("instance", y.as_str()),
                ("tenant", "default"),
                ("state", "parked")
            ]
        ),
        1.0
    );
    assert_eq!(
        expo.value("drover_instance_state", &[l[0], l[1], ("state", "ready")]),
        1.0
    );
    assert_eq!(
        expo.value("drover_spawn_seconds_count", &[]),
        2.0,
        "spawns that reached Ready"
    );

    // Sessions: one held open.
    let mut session = connect(entrance).await;
    session.write_all(b"held open").await.expect("write");
    let mut buf = [0u8; 9];
    session.read_exact(&mut buf).await.expect("echo");
    wait_instance(&api, &x, DEADLINE, "shows the open session", |v| {
        v["tcps"] == 1
    })
    .await;
    let mut sse = master.events().await;
    let _ = sse.next_event(DEADLINE).await;
    let (list, text, expo) = consistent(&api).await;
    assert_mirrors(&list, &expo, &text);
    assert_eq!(
        expo.value("drover_instance_sessions", &[l[0], l[1], ("proto", "tcp")]),
        1.0
    );
    assert_eq!(
        expo.value("drover_sse_subscribers", &[]),
        1.0,
        "one SSE stream open"
    );
    drop(session);
    drop(sse);

    // Restarts: after a kill -9 of X's worker.
    kill(Pid::from_raw(x_pid as i32), Signal::SIGKILL).expect("kill -9");
    wait_ready(&api, &x, Some(x_pid), DEADLINE).await;
    wait_instance(&api, &x, DEADLINE, "has no session left", |v| {
        v["tcps"] == 0
    })
    .await;
    let (list, text, expo) = consistent(&api).await;
    assert_mirrors(&list, &expo, &text);
    assert_eq!(expo.value("drover_instance_restarts", &l), 1.0);
    assert_eq!(expo.value("drover_worker_restarts_total", &[]), 1.0);
    assert_eq!(
        expo.value("drover_spawn_seconds_count", &[]),
        3.0,
        "spawns that reached Ready"
    );
    // The traffic of the killed worker still counts.
    assert!(
        expo.value(
            "drover_instance_bytes",
            &[l[0], l[1], ("proto", "tcp"), ("dir", "rx")]
        ) >= BULK as f64
    );

    master.stop().await;
    let ids = [x, y];
    wait_until(DEADLINE, "the workers are gone", || {
        worker_processes(&ids).is_empty()
    })
    .await;
    cleanup_tenant_soon(&tenant).await;
}
