//! The supervisor: every instance, each run by its own task (see
//! [`instance`]), and the operations the API performs on them.
//!
//! Stop order of the master (DESIGN §7): stop accepting API requests →
//! `Shutdown{grace_ms}` to every worker at once → wait out the grace →
//! SIGTERM, then SIGKILL of each worker's group → persist counters → flush.

pub mod backoff;
pub mod handoffs;
pub mod instance;
pub mod isolation;
pub mod listeners;
mod log_budget;
mod patch;
pub mod spares;
pub mod spawn;
pub mod state;

pub use patch::{Action, RecordEdit};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use proto::spec::TunnelSpec;
use tokio::sync::oneshot;

use crate::model::{
    CertRecord, Counters, InstanceRecord, InstanceView, MAX_FIELD, Meta, SCHEMA_VERSION,
};
use crate::sse::{EventKind, Hub};
use crate::store::Store;
use instance::{Command, Instance, Status};
use listeners::{BindError, Listeners};

/// What every instance task needs from the master.
pub struct Shared {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub worker_bin: PathBuf,
    /// Log level handed to workers without their own `log=`.
    pub log: String,
    pub stats_interval: Duration,
    pub grace: Duration,
    /// How often a `failed` instance is tried again.
    pub failed_retry: Duration,
    pub isolation: isolation::Isolation,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The master's main runtime: instance tasks live here.
    pub runtime: tokio::runtime::Handle,
    /// Spare workers, one per recently active tenant.
    pub spares: spares::Spares,
}

/// An operation the API asked for that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum SupError {
    #[error("Instance not found")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("store: {0}")]
    Store(String),
}

impl From<BindError> for SupError {
    fn from(e: BindError) -> Self {
        match e {
            BindError::Conflict { .. } => SupError::Conflict(e.to_string()),
            BindError::Unusable { .. } => SupError::Invalid(e.to_string()),
        }
    }
}

/// What a new instance is made from (validated here).
pub struct NewInstance {
    pub url: String,
    pub alias: String,
    pub restart: bool,
    pub tenant: String,
}

/// The master-wide defaults applied to instance URLs (NodePass "enhancement").
#[derive(Clone, Default)]
pub struct UrlDefaults {
    pub log: Option<String>,
    pub tls: u8,
    pub crt: Option<String>,
    pub key: Option<String>,
}

pub struct Supervisor {
    shared: Arc<Shared>,
    instances: RwLock<BTreeMap<String, Arc<Instance>>>,
    /// Ids being created: written (or being written) to the store, not yet
    /// in `instances`. A store resync must not take their records away.
    creating: std::sync::Mutex<std::collections::BTreeSet<String>>,
    defaults: UrlDefaults,
}

/// RFC 3339 text for API fields.
pub fn time_text(t: SystemTime) -> String {
    proto::clock::rfc3339(t)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A `tls=1` server keeps a self-signed certificate in its record.
fn needs_cert(spec: &TunnelSpec) -> bool {
    spec.role == proto::Role::Server && spec.params.tls == 1
}

fn new_cert() -> Result<CertRecord, SupError> {
    let ck = rcgen::generate_simple_self_signed(vec!["drover".to_string()])
        .map_err(|e| SupError::Invalid(format!("self-signed certificate: {e}")))?;
    Ok(CertRecord {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    })
}

/// `[a-z0-9_-]{1,32}`.
pub fn valid_tenant(t: &str) -> bool {
    (1..=32).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Supervisor {
    pub fn new(shared: Arc<Shared>, defaults: UrlDefaults) -> Arc<Self> {
        Arc::new(Self {
            shared,
            instances: RwLock::new(BTreeMap::new()),
            creating: Default::default(),
            defaults,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Parses a user URL, applies the master defaults, returns (canonical URL, spec).
    pub fn normalise(&self, url: &str) -> Result<(String, TunnelSpec), SupError> {
        let mut spec =
            TunnelSpec::parse(url).map_err(|e| SupError::Invalid(format!("Invalid URL: {e}")))?;
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
        let has = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
        if !has("log")
            && let Some(level) = self.defaults.log.as_deref().and_then(|l| l.parse().ok())
        {
            spec.params.log = level;
        }
        if spec.role == proto::Role::Server && self.defaults.tls != 0 && !has("tls") {
            spec.params.tls = self.defaults.tls;
            if self.defaults.tls == 2 {
                spec.params.crt = spec.params.crt.or(self.defaults.crt.clone());
                spec.params.key = spec.params.key.or(self.defaults.key.clone());
            }
        }
        let canonical = spec.to_string();
        // What the API stores must parse back to the same tunnel.
        let spec = TunnelSpec::parse(&canonical)
            .map_err(|e| SupError::Invalid(format!("Invalid URL: {e}")))?;
        Ok((canonical, spec))
    }

    /// Loads the stored instances and starts those with `restart:true`.
    /// Returns the problems found (skipped records, ports in use).
    pub async fn restore(self: &Arc<Self>) -> Vec<String> {
        let (records, mut problems) = self.shared.store.instances();
        for record in records {
            let spec = match TunnelSpec::parse(&record.url) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!(
                        "instance {}: skipped: stored URL no longer parses: {e}",
                        record.id
                    ));
                    continue;
                }
            };
            let base = self.shared.store.counters(&record.id);
            let autostart = record.restart;
            let id = record.id.clone();
            let inst = Instance::new(record, spec.clone(), base, self.shared.clone());
            self.instances
                .write()
                .expect("instances lock")
                .insert(id.clone(), inst.clone());
            if autostart {
                match self.acquire(&inst, &spec).await {
                    Ok(l) => self.launch(&inst, l),
                    Err(e) => {
                        inst.lock().status = Status::Error;
                        problems.push(format!("instance {id}: not started: {e}"));
                    }
                }
            }
        }
        problems
    }

    /// Binds an instance's listeners (a conflict is a synchronous error) and
    /// makes sure a `tls=1` server has its certificate. Changes nothing the
    /// API shows: the caller starts the instance with [`Supervisor::launch`].
    async fn acquire(&self, inst: &Instance, spec: &TunnelSpec) -> Result<Listeners, SupError> {
        let listeners = Listeners::bind_for(spec)?;
        if needs_cert(spec) && inst.lock().record.cert.is_none() {
            inst.lock().record.cert = Some(new_cert()?);
            self.persist(inst).await?;
        }
        Ok(listeners)
    }

    /// Runs a worker on listeners from [`Supervisor::acquire`].
    fn launch(&self, inst: &Instance, listeners: Listeners) {
        inst.lock().status = Status::Running;
        inst.send(Command::Start(listeners));
    }

    /// Writes the instance's record as it is when the write's turn comes
    /// (see [`crate::store::Store::put_instance_latest`]); `NotFound` once it is being
    /// deleted (nothing is written then).
    async fn persist(&self, inst: &Instance) -> Result<(), SupError> {
        let wrote = self
            .shared
            .store
            .put_instance_latest(|| {
                let s = inst.lock();
                (!s.removed).then(|| s.record.clone())
            })
            .await
            .map_err(|e| SupError::Store(e.to_string()))?;
        if wrote {
            Ok(())
        } else {
            Err(SupError::NotFound)
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Instance>> {
        self.instances
            .read()
            .expect("instances lock")
            .get(id)
            .cloned()
    }

    fn require(&self, id: &str) -> Result<Arc<Instance>, SupError> {
        self.get(id).ok_or(SupError::NotFound)
    }

    /// Every instance, in id order (a snapshot: the lock is not held after).
    fn all(&self) -> Vec<Arc<Instance>> {
        self.instances
            .read()
            .expect("instances lock")
            .values()
            .cloned()
            .collect()
    }

    fn creating_mark(&self, id: &str, on: bool) {
        let mut creating = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        if on {
            creating.insert(id.to_owned());
        } else {
            creating.remove(id);
        }
    }

    /// What the store must hold, from memory (see [`crate::store::Memory`]):
    /// every instance's record, also of one being deleted, and the ids
    /// being created.
    pub fn memory(&self) -> (Vec<InstanceRecord>, Vec<String>) {
        let records = self.all().iter().map(|i| i.lock().record.clone()).collect();
        let creating = self
            .creating
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        (records, creating)
    }

    /// Every instance view, in id order.
    pub fn list(&self) -> Vec<InstanceView> {
        let all = self.all();
        all.iter().map(|i| i.view()).collect()
    }

    /// Counts of instances by status, for `STATUS=` and metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        let all = self.all();
        let mut c = (0, 0, 0);
        for i in all {
            match i.lock().status {
                Status::Running => c.0 += 1,
                Status::Stopped => c.1 += 1,
                Status::Error => c.2 += 1,
            }
        }
        c
    }

    /// POST /instances: validate, bind, persist, start.
    pub async fn create(self: &Arc<Self>, new: NewInstance) -> Result<InstanceView, SupError> {
        if new.alias.len() > MAX_FIELD {
            return Err(SupError::Invalid(format!(
                "Instance alias exceeds maximum length {MAX_FIELD}"
            )));
        }
        if !valid_tenant(&new.tenant) {
            return Err(SupError::Invalid(
                "Invalid tenant: expected [a-z0-9_-]{1,32}".into(),
            ));
        }
        let (url, spec) = self.normalise(&new.url)?;
        let id = loop {
            let id = hex::encode(rand::random::<[u8; 4]>());
            if self.get(&id).is_none() {
                break id;
            }
        };
        let record = InstanceRecord {
            v: SCHEMA_VERSION,
            id: id.clone(),
            alias: new.alias,
            url,
            restart: new.restart,
            meta: Meta::default(),
            tenant: new.tenant,
            cert: None,
            created_ms: now_ms(),
        };
        let inst = Instance::new(
            record.clone(),
            spec.clone(),
            Counters::default(),
            self.shared.clone(),
        );
        let listeners = match self.acquire(&inst, &spec).await {
            Ok(l) => l,
            Err(e) => {
                inst.send(Command::Delete(oneshot::channel().0));
                return Err(e);
            }
        };
        self.creating_mark(&id, true);
        if let Err(e) = self.persist(&inst).await {
            self.creating_mark(&id, false);
            inst.send(Command::Delete(oneshot::channel().0));
            return Err(e);
        }
        self.instances
            .write()
            .expect("instances lock")
            .insert(id.clone(), inst.clone());
        self.creating_mark(&id, false);
        inst.lock().worker = instance::WorkerState::Starting;
        inst.lock().status = Status::Running;
        // `create` goes out before the task's first `update` can.
        let view = inst.view();
        self.shared.hub.publish(EventKind::Create, Some(&view), "");
        inst.send(Command::Start(listeners));
        Ok(view)
    }

    /// PUT: a new URL, all or nothing. Its listeners are bound first,
    /// sharing the sockets of addresses the instance keeps (it holds them, so
    /// binding them again would fail); a taken port is a 409 that leaves the
    /// state, the listeners and the store as they were. Then the URL is
    /// persisted and the worker restarted on the new listeners, the answer
    /// coming once the old ones not kept are closed. A stopped instance
    /// starts, as NodePass's PUT does.
    pub async fn set_url(&self, id: &str, url: &str) -> Result<InstanceView, SupError> {
        let inst = self.require(id)?;
        let (url, spec) = self.normalise(url)?;
        let (old_tls, old_cert, held) = {
            let s = inst.lock();
            if s.record.url == url {
                return Err(SupError::Conflict("Instance URL conflict".into()));
            }
            let held = s.listeners.clone().unwrap_or_default();
            (s.spec.params.tls, s.record.cert.clone(), held)
        };
        let listeners = Listeners::bind_reusing(&spec, &held)?;
        drop(held);
        let mut cert = if old_tls == spec.params.tls {
            old_cert
        } else {
            None
        };
        if needs_cert(&spec) && cert.is_none() {
            cert = Some(new_cert()?);
        }
        let old = {
            let mut s = inst.lock();
            (
                std::mem::replace(&mut s.record.url, url),
                std::mem::replace(&mut s.record.cert, cert),
                std::mem::replace(&mut s.spec, spec),
            )
        };
        if let Err(e) = self.persist(&inst).await {
            let mut s = inst.lock();
            (s.record.url, s.record.cert, s.spec) = old;
            return Err(e);
        }
        inst.lock().status = Status::Running;
        let (done, swapped) = oneshot::channel();
        inst.send(Command::Replace(listeners, done));
        let _ = swapped.await;
        let view = inst.view();
        self.shared.hub.publish(EventKind::Update, Some(&view), "");
        Ok(view)
    }

    /// DELETE: stop, forget, remove from the store (with counters and bindings).
    pub async fn delete(&self, id: &str) -> Result<(), SupError> {
        let inst = self.require(id)?;
        let (tx, rx) = oneshot::channel();
        inst.send(Command::Delete(tx));
        let _ = rx.await;
        inst.lock().removed = true;
        if let Err(e) = self.shared.store.delete_instance(id).await {
            inst.lock().removed = false;
            return Err(SupError::Store(e.to_string()));
        }
        self.instances.write().expect("instances lock").remove(id);
        let view = inst.view();
        self.shared.hub.publish(EventKind::Delete, Some(&view), "");
        Ok(())
    }

    /// Hands an accepted gateway connection to the instance's worker, waking
    /// it first if it is parked. Gives up after the readiness timeout.
    /// `stream` must be non-blocking with TCP_NODELAY (see `Adopt`).
    pub async fn handoff(
        &self,
        inst: &Arc<Instance>,
        stream: std::net::TcpStream,
        client: &str,
        peer: std::net::SocketAddr,
    ) -> Result<(), String> {
        use std::os::fd::AsFd;
        let stream = Arc::new(stream);
        let deadline = tokio::time::Instant::now() + instance::READY_TIMEOUT;
        let mut ready = inst.ready.subscribe();
        let mut last_error = None;
        loop {
            let (control, status) = {
                let s = inst.lock();
                (s.control.clone(), s.status)
            };
            if status == Status::Stopped {
                return Err("instance is stopped".into());
            }
            match control {
                Some(control) => {
                    let client: String = client.chars().take(256).collect();
                    let seq = inst.lock().in_flight.track(&stream, &client, peer);
                    let msg = proto::ToWorker::Adopt(proto::message::Adopt {
                        kind: proto::message::Transport::Tcp,
                        client,
                        peer,
                        seq,
                    });
                    match control.send(&msg, &[stream.as_fd()]).await {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            // The worker just died. If its task already took our
                            // kept copy, the task hands it to the replacement;
                            // otherwise we do, once that one is ready.
                            if seq != 0 && !inst.lock().in_flight.ack(seq) {
                                return Ok(());
                            }
                            last_error = Some(format!("sending to the worker: {e}"));
                        }
                    }
                }
                None => {
                    // Parked, stopping or in backoff: ask for a worker. A wake
                    // that arrives while it stops waits in the queue.
                    if inst.lock().worker == instance::WorkerState::Parked {
                        inst.lock().woken_by_gateway = true;
                    }
                    inst.send(Command::Wake);
                }
            }
            let wait = async {
                ready
                    .changed()
                    .await
                    .map_err(|_| "instance was deleted".to_string())
            };
            match tokio::time::timeout_at(deadline, wait).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(last_error.unwrap_or_else(|| {
                        "worker not ready within the readiness timeout".into()
                    }));
                }
            }
        }
    }

    /// Recent log lines of an instance.
    pub fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>, SupError> {
        let inst = self.require(id)?;
        let s = inst.lock();
        let skip = s.logs.len().saturating_sub(tail);
        Ok(s.logs.iter().skip(skip).cloned().collect())
    }

    /// Writes the counters that changed since they were last written, then
    /// shows them (API, SSE update): a count is shown only once it is on
    /// disk, so a `kill -9` of the master never takes one back. Runs every
    /// [`COUNTERS_INTERVAL`](crate::run::COUNTERS_INTERVAL) and on stop.
    pub async fn persist_counters(&self) {
        let all = self.all();
        let mut shown = Vec::new();
        let res = self
            .shared
            .store
            .put_counters_latest(
                || {
                    all.iter()
                        .filter_map(|i| {
                            let s = i.lock();
                            let t = s.totals();
                            (t != s.shown).then(|| (i.id.clone(), t))
                        })
                        .collect()
                },
                |batch| {
                    for (id, t) in batch {
                        if let Some(i) = self.get(id) {
                            i.lock().shown = *t;
                            shown.push(i);
                        }
                    }
                },
            )
            .await;
        match res {
            Ok(()) => {
                for i in shown {
                    self.shared
                        .hub
                        .publish(EventKind::Update, Some(&i.view()), "");
                }
            }
            Err(e) => tracing::error!(cause = %e, "cannot persist counters"),
        }
    }

    /// Master stop: every worker gets `Shutdown` at once; returns when all are gone.
    pub async fn stop_all(&self) {
        let all = self.all();
        let mut waits = Vec::new();
        for inst in all {
            if inst.lock().status != Status::Stopped {
                let (tx, rx) = oneshot::channel();
                inst.send(Command::Stop(tx));
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
        self.persist_counters().await;
    }
}
