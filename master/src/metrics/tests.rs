//! Tests of [`Metrics`]: the output is valid OpenMetrics (checked by the
//! strict parser in [`exposition`], and by Python's `prometheus_client` when
//! installed) and mirrors the views it was given.

mod exposition;

use std::collections::BTreeSet;

use super::*;
use crate::model::{MasterRecord, Meta, WorkerView};
use crate::supervisor::instance::{Status, WorkerState};
use exposition::{parse, python_parse};

fn view(id: &str, tenant: &str, state: WorkerState, status: Status) -> InstanceView {
    InstanceView {
        id: id.into(),
        alias: String::new(),
        kind: "server".into(),
        status: status.as_str().into(),
        url: "server://:10101/127.0.0.1:8080".into(),
        config: String::new(),
        restart: true,
        meta: Meta::default(),
        mode: 1,
        ping: 0,
        pool: 0,
        tcps: 0,
        udps: 0,
        tcprx: 0,
        tcptx: 0,
        udprx: 0,
        udptx: 0,
        tenant: tenant.into(),
        worker: Some(WorkerView {
            state: state.as_str().into(),
            pid: Some(4242),
            entry: None,
            restarts: 0,
            since: "2026-01-01T00:00:00.000+00:00".into(),
            last_exit: None,
        }),
    }
}

fn key_record() -> InstanceView {
    InstanceView::key_record(&MasterRecord {
        v: 1,
        api_key: "0123456789abcdef0123456789abcdef".into(),
        master_id: "0123456789abcdef".into(),
        alias: String::new(),
    })
}

/// Two tenants, three states, traffic on one of them, plus the key record.
fn sample_views() -> Vec<InstanceView> {
    let mut a = view("a1b2c3d4", "default", WorkerState::Ready, Status::Running);
    a.tcprx = 1_000;
    a.tcptx = 2_000;
    a.udprx = 3_000;
    a.udptx = 4_000;
    a.tcps = 5;
    a.udps = 6;
    a.pool = 7;
    a.ping = 8;
    a.worker.as_mut().expect("worker").restarts = 9;
    let b = view("0000beef", "acme", WorkerState::Parked, Status::Stopped);
    let c = view("c0ffee00", "acme", WorkerState::Failed, Status::Error);
    vec![key_record(), a, b, c]
}

/// `Metrics` can be shared between the API and supervisor tasks.
#[test]
fn metrics_is_send_and_sync() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Metrics>();
}

/// The state and status lists cover exactly what the supervisor reports.
#[test]
fn label_lists_match_the_supervisor() {
    use WorkerState::*;
    let states = [Parked, Starting, Ready, Stopping, Backoff, Failed].map(WorkerState::as_str);
    assert_eq!(states, WORKER_STATES);
    let statuses = [Status::Running, Status::Stopped, Status::Error].map(Status::as_str);
    assert_eq!(statuses, STATUSES);
}

/// The output parses strictly, ends with `# EOF`, and has every family with
/// its OpenMetrics type and name (counters carry `_total` on their samples).
#[test]
fn render_is_valid_openmetrics() {
    let m = Metrics::new();
    let text = m.render(&sample_views(), 2);
    let exp = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(text.ends_with("\n# EOF\n"));
    assert!(CONTENT_TYPE.starts_with("application/openmetrics-text; version=1.0.0"));
    let expected = [
        ("drover_workers", "gauge"),
        ("drover_instances", "gauge"),
        ("drover_spawn_seconds", "histogram"),
        ("drover_worker_restarts", "counter"),
        ("drover_sse_subscribers", "gauge"),
        ("drover_store_flush_seconds", "histogram"),
        ("drover_lru_hits", "counter"),
        ("drover_lru_misses", "counter"),
        ("drover_lru_evictions", "counter"),
        ("drover_wakes", "counter"),
        ("drover_reaps", "counter"),
        ("drover_handoff_seconds", "histogram"),
        ("drover_instance_bytes", "gauge"),
        ("drover_instance_sessions", "gauge"),
        ("drover_instance_pool", "gauge"),
        ("drover_instance_ping_ms", "gauge"),
        ("drover_instance_restarts", "gauge"),
        ("drover_instance_state", "gauge"),
    ];
    let got: Vec<(&str, &str)> = exp
        .types
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(got, want);
    for counter in [
        "drover_worker_restarts_total",
        "drover_lru_hits_total",
        "drover_reaps_total",
    ] {
        assert_eq!(exp.value(counter, &[]), 0.0);
    }
}

/// Each instance's series carry the view's numbers; the key record has none.
#[test]
fn values_match_the_views() {
    let m = Metrics::new();
    let exp = parse(&m.render(&sample_views(), 2)).expect("valid");
    let a = [("instance", "a1b2c3d4"), ("tenant", "default")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut l = a.to_vec();
        l.extend_from_slice(extra);
        l
    };
    let bytes = "drover_instance_bytes";
    assert_eq!(
        exp.value(bytes, &with(&[("proto", "tcp"), ("dir", "rx")])),
        1_000.0
    );
    assert_eq!(
        exp.value(bytes, &with(&[("proto", "tcp"), ("dir", "tx")])),
        2_000.0
    );
    assert_eq!(
        exp.value(bytes, &with(&[("proto", "udp"), ("dir", "rx")])),
        3_000.0
    );
    assert_eq!(
        exp.value(bytes, &with(&[("proto", "udp"), ("dir", "tx")])),
        4_000.0
    );
    let sessions = "drover_instance_sessions";
    assert_eq!(exp.value(sessions, &with(&[("proto", "tcp")])), 5.0);
    assert_eq!(exp.value(sessions, &with(&[("proto", "udp")])), 6.0);
    assert_eq!(exp.value("drover_instance_pool", &a), 7.0);
    assert_eq!(exp.value("drover_instance_ping_ms", &a), 8.0);
    assert_eq!(exp.value("drover_instance_restarts", &a), 9.0);

    // One state at 1 per instance, every other known state at 0.
    for (id, tenant, current) in [
        ("a1b2c3d4", "default", "ready"),
        ("0000beef", "acme", "parked"),
        ("c0ffee00", "acme", "failed"),
    ] {
        for state in WORKER_STATES {
            let l = [("instance", id), ("tenant", tenant), ("state", state)];
            let want = if state == current { 1.0 } else { 0.0 };
            assert_eq!(exp.value("drover_instance_state", &l), want, "{id} {state}");
        }
    }

    let workers = |s: &str| exp.value("drover_workers", &[("state", s)]);
    assert_eq!(
        WORKER_STATES.map(workers),
        [1.0, 0.0, 1.0, 0.0, 0.0, 1.0],
        "parked starting ready stopping backoff failed"
    );
    let statuses = |s: &str| exp.value("drover_instances", &[("status", s)]);
    assert_eq!(STATUSES.map(statuses), [1.0, 1.0, 1.0]);
    assert_eq!(exp.value("drover_sse_subscribers", &[]), 2.0);

    assert!(
        exp.matching("drover_instance_pool", ("instance", "********"))
            .is_empty()
    );
    let instances: BTreeSet<&str> = exp
        .samples
        .iter()
        .filter_map(|s| s.labels.get("instance").map(String::as_str))
        .collect();
    assert_eq!(
        instances,
        BTreeSet::from(["0000beef", "a1b2c3d4", "c0ffee00"])
    );
}

/// A deleted instance's series are gone from the next scrape, and changed
/// values (a reset) replace the old ones.
#[test]
fn deleted_instances_vanish() {
    let m = Metrics::new();
    let mut views = sample_views();
    let first = parse(&m.render(&views, 0)).expect("valid");
    assert_eq!(
        first
            .matching("drover_instance_state", ("instance", "0000beef"))
            .len(),
        6
    );

    views.retain(|v| v.id != "0000beef");
    views[1].tcprx = 0; // a1b2c3d4 was reset
    let second = parse(&m.render(&views, 0)).expect("valid");
    assert!(
        second
            .samples
            .iter()
            .all(|s| s.labels.get("instance").map(String::as_str) != Some("0000beef")),
        "deleted instance still exported"
    );
    let rx = [
        ("instance", "a1b2c3d4"),
        ("tenant", "default"),
        ("proto", "tcp"),
        ("dir", "rx"),
    ];
    assert_eq!(second.value("drover_instance_bytes", &rx), 0.0);
    assert_eq!(second.value("drover_workers", &[("state", "parked")]), 0.0);
    assert_eq!(
        second.value("drover_instances", &[("status", "stopped")]),
        0.0
    );

    let empty = parse(&m.render(&[key_record()], 0)).expect("valid");
    assert!(
        empty
            .samples
            .iter()
            .all(|s| !s.labels.contains_key("instance"))
    );
    assert_eq!(empty.value("drover_workers", &[("state", "ready")]), 0.0);
}

/// Histograms count observations into the right buckets; counters count calls.
#[test]
fn histograms_and_counters_count_events() {
    let m = Metrics::new();
    m.observe_spawn(Duration::from_micros(500));
    m.observe_spawn(Duration::from_millis(30));
    m.observe_spawn(Duration::from_secs(20));
    m.observe_flush(Duration::from_micros(150));
    m.observe_handoff(Duration::from_millis(2));
    m.observe_handoff(Duration::from_secs(3));
    m.worker_restarted();
    m.worker_restarted();
    m.lru_hit();
    m.lru_miss();
    m.lru_miss();
    m.lru_evicted();
    m.wake();
    m.reap();
    let exp = parse(&m.render(&[], 0)).expect("valid");

    assert_eq!(exp.value("drover_spawn_seconds_count", &[]), 3.0);
    let sum = exp.value("drover_spawn_seconds_sum", &[]);
    assert!((sum - 20.0305).abs() < 1e-9, "{sum}");
    let spawn = exp.buckets("drover_spawn_seconds");
    assert_eq!(spawn.first(), Some(&(0.001, 1.0)));
    assert!(spawn.contains(&(0.025, 1.0)) && spawn.contains(&(0.05, 2.0)));
    assert!(spawn.contains(&(10.0, 2.0)));
    assert_eq!(spawn.last(), Some(&(f64::INFINITY, 3.0)));

    let flush = exp.buckets("drover_store_flush_seconds");
    assert_eq!(flush[..2], [(0.0001, 0.0), (0.00025, 1.0)]);
    assert_eq!(exp.value("drover_store_flush_seconds_count", &[]), 1.0);
    assert_eq!(exp.value("drover_handoff_seconds_count", &[]), 2.0);
    assert!(
        exp.buckets("drover_handoff_seconds")
            .contains(&(0.0025, 1.0))
    );

    for (name, n) in [
        ("drover_worker_restarts_total", 2.0),
        ("drover_lru_hits_total", 1.0),
        ("drover_lru_misses_total", 2.0),
        ("drover_lru_evictions_total", 1.0),
        ("drover_wakes_total", 1.0),
        ("drover_reaps_total", 1.0),
    ] {
        assert_eq!(exp.value(name, &[]), n, "{name}");
    }
}

/// Python's `prometheus_client` OpenMetrics parser (strict: it validates
/// names, types, buckets and `# EOF`) accepts the output and reads the same
/// series as the parser above. Skipped, with a note, when not installed.
#[test]
fn python_parser_agrees() {
    let m = Metrics::new();
    m.observe_spawn(Duration::from_millis(3));
    m.worker_restarted();
    m.observe_handoff(Duration::from_micros(300));
    let text = m.render(&sample_views(), 1);
    let Some(py) = python_parse(&text) else {
        return;
    };
    let ours = parse(&text).expect("valid");
    assert_eq!(py.len(), ours.samples.len(), "sample count");
    for (family, kind, name, labels, value) in &py {
        assert_eq!(ours.types.get(family), Some(kind), "{family}");
        let got = ours
            .samples
            .iter()
            .find(|s| &s.name == name && &s.labels == labels)
            .unwrap_or_else(|| panic!("python saw {name}{labels:?}, we did not"));
        assert_eq!(got.value, *value, "{name}{labels:?}");
    }
}

/// The test parser itself rejects what OpenMetrics forbids.
#[test]
fn strict_parser_rejects_bad_text() {
    let ok = "# HELP x n\n# TYPE x counter\nx_total{a=\"b\\\"c\"} 1\n# EOF\n";
    let exp = parse(ok).expect("valid");
    assert_eq!(exp.samples[0].labels["a"], "b\"c");
    for bad in [
        "# TYPE x gauge\nx 1\n",                                   // no EOF
        "# TYPE x gauge\nx 1\n# EOF\n\n",                          // text after EOF
        "x 1\n# EOF\n",                                            // no TYPE
        "# TYPE x gauge\nx{a=b} 1\n# EOF\n",                       // unquoted
        "# TYPE x gauge\nx{a=\"b} 1\n# EOF\n",                     // unterminated
        "# TYPE x gauge\nx{a=\"b\",a=\"c\"} 1\n# EOF\n",           // duplicate label
        "# TYPE x gauge\nx 1\nx 2\n# EOF\n",                       // duplicate series
        "# TYPE x gauge\nx_total 1\n# EOF\n",                      // wrong suffix
        "# TYPE x counter\nx 1\n# EOF\n",                          // counter without _total
        "# TYPE x gauge\nx one\n# EOF\n",                          // bad value
        "# TYPE x gauge\nx 1 2 3\n# EOF\n",                        // trailing text
        "# TYPE x gauge\n# TYPE x gauge\nx 1\n# EOF\n",            // typed twice
        "# TYPE x_seconds gauge\n# UNIT x_seconds bytes\n# EOF\n", // unit mismatch
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n# EOF\n", // no +Inf
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}
