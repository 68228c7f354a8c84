//! Prometheus metrics for `GET {prefix}/metrics`, in the OpenMetrics text
//! format (counters end in `_total`, the body ends with `# EOF`).
//!
//! Two kinds of numbers live here:
//! 1. Events the master counts as they happen (worker restarts, spawn and
//!    flush latencies, the gateway's LRU hits, wakes, reaps, handoffs): the
//!    supervisor, store and gateway call [`Metrics::observe_spawn`] and
//!    friends, which only touch atomics.
//! 2. Snapshots of the instances (worker states, traffic, sessions, pool,
//!    ping): [`Metrics::render`] takes the current [`InstanceView`]s, clears
//!    the per-instance families and refills them, so a deleted instance's
//!    series vanish on the next scrape, then encodes the registry.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::model::InstanceView;

/// `Content-Type` of the [`Metrics::render`] output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `worker.state` values (DESIGN §2); each gets a series, 0 when empty.
pub const WORKER_STATES: [&str; 6] = [
    "parked", "starting", "ready", "stopping", "backoff", "failed",
];
/// NodePass `status` values; each gets a series, 0 when empty.
pub const STATUSES: [&str; 3] = ["running", "stopped", "error"];

/// Worker spawn → `Ready`: 1 ms (warm exec) to 10 s (`READY_TIMEOUT`).
const SPAWN_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// sled `flush_async` (an fsync): 100 µs to 1 s.
const FLUSH_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Gateway accept → socket sent to the worker: tens of µs to a running
/// worker, up to a spawn (seconds) when the instance had to be woken.
const HANDOFF_BUCKETS: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A gauge holding the views' `u64`s without casts.
type U64Gauge = Gauge<u64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: String,
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    instance: String,
    tenant: String,
    proto: &'static str,
    dir: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    instance: String,
    tenant: String,
    proto: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceStateLabels {
    instance: String,
    tenant: String,
    state: String,
}

/// The master's metrics; shared as `Arc<Metrics>`, every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Serialises [`Metrics::render`]: a scrape clears and refills the
    /// snapshot families, so a concurrent one could encode them half empty.
    scrape: Mutex<()>,
    workers: Family<StateLabel, U64Gauge>,
    instances: Family<StatusLabel, U64Gauge>,
    spawn: Histogram,
    restarts: Counter,
    sse_subscribers: U64Gauge,
    store_flush: Histogram,
    lru_hits: Counter,
    lru_misses: Counter,
    lru_evictions: Counter,
    wakes: Counter,
    reaps: Counter,
    handoff: Histogram,
    // The instances' traffic comes from the views: cumulative, but the user
    // zeroes it with `PATCH {action:"reset"}` and it starts over when the
    // instance is re-created, so it is not a counter the master owns and
    // increments (prometheus-client's `Counter` cannot be set, and a value
    // that drops on a user action breaks counter semantics). It is exported
    // as a gauge that mirrors the API; PromQL's `rate()`/`increase()` treat
    // the drop of a reset like a counter reset, so they still give traffic
    // rates.
    inst_bytes: Family<BytesLabels, U64Gauge>,
    inst_sessions: Family<SessionLabels, U64Gauge>,
    inst_pool: Family<InstanceLabels, U64Gauge>,
    inst_ping: Family<InstanceLabels, U64Gauge>,
    inst_restarts: Family<InstanceLabels, U64Gauge>,
    inst_state: Family<InstanceStateLabels, U64Gauge>,
}

impl Metrics {
    /// Creates and registers every metric (all at zero).
    pub fn new() -> Arc<Metrics> {
        let mut m = Metrics {
            registry: Registry::default(),
            scrape: Mutex::new(()),
            workers: Family::default(),
            instances: Family::default(),
            spawn: Histogram::new(SPAWN_BUCKETS),
            restarts: Counter::default(),
            sse_subscribers: U64Gauge::default(),
            store_flush: Histogram::new(FLUSH_BUCKETS),
            lru_hits: Counter::default(),
            lru_misses: Counter::default(),
            lru_evictions: Counter::default(),
            wakes: Counter::default(),
            reaps: Counter::default(),
            handoff: Histogram::new(HANDOFF_BUCKETS),
            inst_bytes: Family::default(),
            inst_sessions: Family::default(),
            inst_pool: Family::default(),
            inst_ping: Family::default(),
            inst_restarts: Family::default(),
            inst_state: Family::default(),
        };
        let r = &mut m.registry;
        // Metric handles are `Arc`s: the registry and `m` share the values.
        // Names given here get the unit and, for counters, `_total` appended.
        r.register(
            "drover_workers",
            "Instances by worker state",
            m.workers.clone(),
        );
        r.register(
            "drover_instances",
            "Instances by NodePass status",
            m.instances.clone(),
        );
        r.register_with_unit(
            "drover_spawn",
            "Latency from spawning a worker to its Ready",
            Unit::Seconds,
            m.spawn.clone(),
        );
        r.register(
            "drover_worker_restarts",
            "Workers restarted after an exit the master did not ask for",
            m.restarts.clone(),
        );
        r.register(
            "drover_sse_subscribers",
            "Open SSE streams",
            m.sse_subscribers.clone(),
        );
        r.register_with_unit(
            "drover_store_flush",
            "Duration of a store flush (fsync)",
            Unit::Seconds,
            m.store_flush.clone(),
        );
        r.register(
            "drover_lru_hits",
            "Gateway clients found in the LRU",
            m.lru_hits.clone(),
        );
        r.register(
            "drover_lru_misses",
            "Gateway clients not in the LRU",
            m.lru_misses.clone(),
        );
        r.register(
            "drover_lru_evictions",
            "Gateway LRU entries evicted",
            m.lru_evictions.clone(),
        );
        r.register(
            "drover_wakes",
            "Parked instances started by the gateway",
            m.wakes.clone(),
        );
        r.register(
            "drover_reaps",
            "Idle instances stopped and parked",
            m.reaps.clone(),
        );
        r.register_with_unit(
            "drover_handoff",
            "Latency from a gateway accept to its socket being sent to the worker",
            Unit::Seconds,
            m.handoff.clone(),
        );
        r.register_with_unit(
            "drover_instance",
            "Traffic of an instance since its last reset (mirrors the API counters)",
            Unit::Bytes,
            m.inst_bytes.clone(),
        );
        r.register(
            "drover_instance_sessions",
            "Active sessions of an instance",
            m.inst_sessions.clone(),
        );
        r.register(
            "drover_instance_pool",
            "Idle pool connections of an instance",
            m.inst_pool.clone(),
        );
        r.register(
            "drover_instance_ping_ms",
            "Tunnel round trip of an instance in milliseconds",
            m.inst_ping.clone(),
        );
        r.register(
            "drover_instance_restarts",
            "Unrequested worker exits of an instance",
            m.inst_restarts.clone(),
        );
        r.register(
            "drover_instance_state",
            "Worker state of an instance: 1 for the current state, 0 for the others",
            m.inst_state.clone(),
        );
        Arc::new(m)
    }

    /// A worker became `Ready` `d` after it was spawned.
    pub fn observe_spawn(&self, d: Duration) {
        self.spawn.observe(d.as_secs_f64());
    }

    /// A worker is restarted after an exit the master did not ask for.
    pub fn worker_restarted(&self) {
        self.restarts.inc();
    }

    /// A store flush took `d`.
    pub fn observe_flush(&self, d: Duration) {
        self.store_flush.observe(d.as_secs_f64());
    }

    /// The gateway found a client in its LRU.
    pub fn lru_hit(&self) {
        self.lru_hits.inc();
    }

    /// The gateway did not find a client in its LRU.
    pub fn lru_miss(&self) {
        self.lru_misses.inc();
    }

    /// The gateway's LRU evicted an entry.
    pub fn lru_evicted(&self) {
        self.lru_evictions.inc();
    }

    /// The gateway started a parked instance.
    pub fn wake(&self) {
        self.wakes.inc();
    }

    /// An idle instance was stopped and parked.
    pub fn reap(&self) {
        self.reaps.inc();
    }

    /// A gateway handoff (accept → socket sent to the worker) took `d`.
    pub fn observe_handoff(&self, d: Duration) {
        self.handoff.observe(d.as_secs_f64());
    }

    /// Sets the snapshot metrics from `views` (the `********` record, which
    /// has no `worker`, is skipped) and returns the OpenMetrics text.
    pub fn render(&self, views: &[InstanceView], sse_subscribers: usize) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.sse_subscribers
            .set(u64::try_from(sse_subscribers).unwrap_or(u64::MAX));
        self.workers.clear();
        self.instances.clear();
        self.inst_bytes.clear();
        self.inst_sessions.clear();
        self.inst_pool.clear();
        self.inst_ping.clear();
        self.inst_restarts.clear();
        self.inst_state.clear();
        let mut workers: BTreeMap<&str, u64> = WORKER_STATES.iter().map(|s| (*s, 0)).collect();
        let mut statuses: BTreeMap<&str, u64> = STATUSES.iter().map(|s| (*s, 0)).collect();
        for v in views {
            let Some(worker) = &v.worker else { continue };
            *workers.entry(worker.state.as_str()).or_default() += 1;
            *statuses.entry(v.status.as_str()).or_default() += 1;
            self.fill_instance(v, &worker.state, worker.restarts);
        }
        for (state, n) in workers {
            let label = StateLabel {
                state: state.into(),
            };
            self.workers.get_or_create(&label).set(n);
        }
        for (status, n) in statuses {
            let label = StatusLabel {
                status: status.into(),
            };
            self.instances.get_or_create(&label).set(n);
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// The per-instance series of one view.
    fn fill_instance(&self, v: &InstanceView, state: &str, restarts: u64) {
        let id = || v.id.clone();
        let tenant = || v.tenant.clone();
        for (proto, dir, value) in [
            ("tcp", "rx", v.tcprx),
            ("tcp", "tx", v.tcptx),
            ("udp", "rx", v.udprx),
            ("udp", "tx", v.udptx),
        ] {
            let label = BytesLabels {
                instance: id(),
                tenant: tenant(),
                proto,
                dir,
            };
            self.inst_bytes.get_or_create(&label).set(value);
        }
        for (proto, value) in [("tcp", v.tcps), ("udp", v.udps)] {
            let label = SessionLabels {
                instance: id(),
                tenant: tenant(),
                proto,
            };
            self.inst_sessions.get_or_create(&label).set(value);
        }
        let label = InstanceLabels {
            instance: id(),
            tenant: tenant(),
        };
        self.inst_pool.get_or_create(&label).set(v.pool);
        self.inst_ping.get_or_create(&label).set(v.ping);
        self.inst_restarts.get_or_create(&label).set(restarts);
        // Every known state at 0 (kube-state-metrics style), so a query for
        // one state finds the instance whatever its current state is.
        let known = WORKER_STATES.contains(&state);
        let all = WORKER_STATES
            .iter()
            .copied()
            .chain((!known).then_some(state));
        for s in all {
            let label = InstanceStateLabels {
                instance: id(),
                tenant: tenant(),
                state: s.into(),
            };
            self.inst_state
                .get_or_create(&label)
                .set(u64::from(s == state));
        }
    }
}

#[cfg(test)]
mod tests;
