//! The sled store: everything the master must remember across restarts.
//!
//! One sled database under `<data dir>/db` with four trees, every value a
//! schema-versioned JSON record (`v`, see [`SCHEMA_VERSION`]):
//!
//! | tree        | key        | value                          |
//! |-------------|------------|--------------------------------|
//! | `instances` | id         | [`InstanceRecord`]             |
//! | `master`    | `"master"` | [`MasterRecord`]               |
//! | `counters`  | id         | [`CounterRecord`]              |
//! | `bindings`  | client id  | `{"v":1,"instance":"<id>"}`    |
//!
//! Flow:
//! 1. [`Store::open`] creates the data dir (0700), opens sled (its exclusive
//!    lock keeps a second master out) and makes the files 0600.
//! 2. At start the master reads [`Store::master`] (a corrupt record is an
//!    error, so the API key is never regenerated behind the operator's back)
//!    and [`Store::instances`], which skips and reports unreadable records
//!    and those written by a newer Drover; nothing is ever deleted for being
//!    unreadable.
//! 3. Every mutation is `async` and returns only after `flush_async` has
//!    fsynced sled's log, so the API replies 2xx only once the change is on
//!    disk.
//!
//! Invariants kept here rather than by callers: counters and bindings exist
//! only for stored instances (written in transactions that check the
//! instance, removed together with it).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::ops::Bound;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use tracing::{error, warn};

use crate::model::{CounterRecord, Counters, InstanceRecord, MasterRecord, SCHEMA_VERSION};

/// The master record's key in the `master` tree.
const MASTER_KEY: &str = "master";
/// Key of the tenant → uid map in the `master` tree.
const TENANT_UIDS_KEY: &str = "tenant_uids";
/// sled's page cache; its 1 GiB default is far more than a few hundred records need.
const CACHE_CAPACITY: u64 = 64 << 20;
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Below this much free space a failed database is not reopened (nothing
/// would be written; its reads keep working meanwhile).
const REOPEN_MIN_FREE: u64 = 1 << 20;
/// How long a reopen waits for sled's lock (its IO threads let go of it a
/// moment after the last handle), and how often an open tries for it.
const REOPEN_LOCK_WAIT: Duration = Duration::from_secs(1);
const LOCK_PAUSE: Duration = Duration::from_millis(20);
/// Text sled puts in the I/O error when another process holds the lock.
const SLED_LOCK_TEXT: &str = "could not acquire lock";

/// What went wrong in the store, with the tree, key and operation involved.
///
/// The cause is part of the message (not a `source()`), so `{}` alone tells the
/// whole story in an API error body or a log line.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating or securing the data directory (or a file in it) failed.
    #[error("data dir {}: {op}: {cause}", path.display())]
    Dir {
        path: PathBuf,
        op: &'static str,
        cause: io::Error,
    },
    /// Another process (normally another master) holds sled's lock.
    #[error("data dir {} is in use by another drover master (sled lock)", dir.display())]
    Locked { dir: PathBuf },
    /// sled refused to open the database for another reason.
    #[error("data dir {}: opening the sled database: {cause}", dir.display())]
    Open { dir: PathBuf, cause: sled::Error },
    /// A sled read, write or transaction failed.
    #[error("store: {op} {tree}/{key}: {cause}")]
    Sled {
        op: &'static str,
        tree: &'static str,
        key: String,
        cause: sled::Error,
    },
    /// fsync of sled's log failed: the change may not be on disk.
    #[error("store: flushing to disk: {cause}")]
    Flush { cause: sled::Error },
    /// A record could not be encoded as JSON (a bug, not bad data).
    #[error("store: encoding {tree}/{key}: {cause}")]
    Encode {
        tree: &'static str,
        key: String,
        cause: serde_json::Error,
    },
    /// A stored record is unreadable (left in place, untouched).
    #[error("store: {tree}/{key} is unreadable: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    /// A stored record was written by a newer Drover (left in place, untouched).
    #[error(
        "store: {tree}/{key} has schema v{found}, newer than the v{supported} this drover \
         understands; run a newer drover"
    )]
    Newer {
        tree: &'static str,
        key: String,
        found: u32,
        supported: u32,
    },
    /// The database was dropped after a failed write and is not open again
    /// yet (the next write tries).
    #[error("store: the database is closed after a failed write and not yet reopened")]
    Closed,
    /// A binding was asked for an instance that is not stored.
    #[error("store: no instance {instance}")]
    UnknownInstance { instance: String },
}

/// `bindings` tree value: which instance a gateway client goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BindingRecord {
    v: u32,
    instance: String,
}

/// The open database and its trees; replaced whole when the store reopens.
#[derive(Clone)]
struct Trees {
    db: sled::Db,
    instances: sled::Tree,
    master: sled::Tree,
    counters: sled::Tree,
    bindings: sled::Tree,
}

/// Handle on the database; cloning is cheap (every clone shares one state).
#[derive(Clone)]
pub struct Store {
    /// The data dir (sled's files are in `db/` under it), for reopening.
    dir: PathBuf,
    /// `None` only between dropping a failed database and opening it again.
    trees: Arc<RwLock<Option<Trees>>>,
    /// A write failed inside sled. sled's error state is sticky: from then on
    /// it refuses every write, also once the cause (a full disk) is gone, so
    /// the next write reopens the database first.
    failed: Arc<AtomicBool>,
    /// What memory holds, written over the disk after a reopen.
    memory: Arc<OnceLock<MemorySource>>,
    /// Told how long each flush took (metrics), once set.
    flush_observer: Arc<OnceLock<FlushObserver>>,
    /// One mutation and its flush at a time. sled 0.34 guards every tree op
    /// and flush with a process-wide lock that transactions take exclusively;
    /// a flush holds it shared while it waits for log writes queued on sled's
    /// small IO pool. Many flushes at once (100 instances reaped together)
    /// fill that pool with flushes blocked behind a waiting transaction, and
    /// the master deadlocks. Through this gate no transaction ever waits
    /// behind one of our flushes, and flushes never pile up.
    write_gate: Arc<tokio::sync::Mutex<()>>,
}

/// The records the master holds in memory: after a reopen they replace
/// whatever of the failed writes reached the disk, so a change answered with
/// an error never shows up later.
pub struct Memory {
    pub instances: Vec<InstanceRecord>,
    /// Ids whose records are being written (a create): kept as stored.
    pub creating: Vec<String>,
    pub master: MasterRecord,
}

/// Produces [`Memory`] on demand.
pub type MemorySource = Box<dyn Fn() -> Memory + Send + Sync>;

/// Receives the duration of every flush.
pub type FlushObserver = Box<dyn Fn(std::time::Duration) + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Where the data lives: `DROVER_DATA_DIR`, else systemd's `$STATE_DIRECTORY`
/// (its first entry when it lists several), else `./drover-data`.
pub fn data_dir() -> PathBuf {
    data_dir_from(|name| std::env::var_os(name))
}

fn data_dir_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    if let Some(dir) = var("DROVER_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dirs) = var("STATE_DIRECTORY") {
        let first = dirs
            .as_bytes()
            .split(|&b| b == b':')
            .find(|d| !d.is_empty());
        if let Some(first) = first {
            return PathBuf::from(OsString::from_vec(first.to_vec()));
        }
    }
    PathBuf::from("./drover-data")
}

impl Trees {
    /// Opens sled in `dir`/db, making its files 0600.
    fn open(dir: &Path) -> Result<Trees, StoreError> {
        let db_dir = dir.join("db");
        let db = sled::Config::new()
            .path(&db_dir)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|cause| match &cause {
                sled::Error::Io(e) if e.to_string().contains(SLED_LOCK_TEXT) => {
                    StoreError::Locked {
                        dir: dir.to_path_buf(),
                    }
                }
                _ => StoreError::Open {
                    dir: dir.to_path_buf(),
                    cause,
                },
            })?;
        restrict_tree(&db_dir)?;
        let tree = |name: &'static str| {
            db.open_tree(name).map_err(|cause| StoreError::Sled {
                op: "opening tree",
                tree: name,
                key: String::new(),
                cause,
            })
        };
        Ok(Trees {
            instances: tree("instances")?,
            master: tree("master")?,
            counters: tree("counters")?,
            bindings: tree("bindings")?,
            db,
        })
    }

    /// [`Trees::open`], trying again while another holder keeps sled's lock,
    /// for up to `wait`.
    async fn open_waiting(dir: &Path, wait: Duration) -> Result<Trees, StoreError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Trees::open(dir) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(LOCK_PAUSE).await;
                }
                res => return res,
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// The dir is made 0700 (also when it already exists with looser bits) and
    /// sled's files 0600. Files sled creates later (snapshots, blobs) get the
    /// process umask, but the 0700 directories keep them private regardless.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        secure_dir(dir)?;
        Ok(Store::over(dir, Trees::open(dir)?))
    }

    /// [`open`](Self::open), waiting up to `wait` for sled's lock: a master
    /// just SIGKILLed can leave it held for a moment by a worker it was
    /// forking (the child has the master's fds until it execs).
    pub async fn open_waiting(dir: &Path, wait: Duration) -> Result<Store, StoreError> {
        secure_dir(dir)?;
        Ok(Store::over(dir, Trees::open_waiting(dir, wait).await?))
    }

    fn over(dir: &Path, trees: Trees) -> Store {
        Store {
            dir: dir.to_path_buf(),
            trees: Arc::new(RwLock::new(Some(trees))),
            failed: Default::default(),
            memory: Default::default(),
            flush_observer: Default::default(),
            write_gate: Default::default(),
        }
    }

    /// Hands the store what memory holds, to write after a reopen (set once).
    pub fn resync_from(&self, source: MemorySource) {
        let _ = self.memory.set(source);
    }

    /// Reports every flush's duration to `observer` (set once).
    pub fn observe_flushes(&self, observer: FlushObserver) {
        let _ = self.flush_observer.set(observer);
    }

    /// Fsyncs everything written so far (also done by every mutation); the
    /// health check. After a failed write it reopens the database first.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(|t| async move { self.flush_gated(&t).await })
            .await
    }

    /// Runs one write under the write gate on the open trees (reopened
    /// first after a failed write), noting a failure inside sled.
    async fn write<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Trees) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let _gate = self.write_gate.lock().await;
        let t = self.writable().await?;
        let res = op(t).await;
        self.noted(res)
    }

    /// [`flush`](Self::flush) for a caller that holds the write gate.
    async fn flush_gated(&self, t: &Trees) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let res =
            t.db.flush_async()
                .await
                .map(drop)
                .map_err(|cause| StoreError::Flush { cause });
        if let Some(observe) = self.flush_observer.get() {
            observe(started.elapsed());
        }
        res
    }

    /// The open trees, for a read.
    fn trees(&self) -> Result<Trees, StoreError> {
        self.trees
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// The trees for a write (under the write gate), reopening the database
    /// first when an earlier write failed inside sled.
    async fn writable(&self) -> Result<Trees, StoreError> {
        if self.failed.load(Relaxed) {
            self.reopen_gated().await?;
        }
        self.trees()
    }

    /// A write's result, noting a failure inside sled (see `failed`).
    fn noted<T>(&self, res: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Sled { .. } | StoreError::Flush { .. }) = &res {
            self.failed.store(true, Relaxed);
        }
        res
    }

    /// Drops the failed database, opens it again and writes memory's records
    /// over it; the caller holds the write gate. While the disk stays nearly
    /// full it keeps the failed database (reads still work; writes keep
    /// failing with its error).
    async fn reopen_gated(&self) -> Result<(), StoreError> {
        if free_bytes(&self.dir).is_some_and(|free| free < REOPEN_MIN_FREE) {
            return Ok(());
        }
        let old = self
            .trees
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(old);
        let trees = Trees::open_waiting(&self.dir, REOPEN_LOCK_WAIT).await?;
        *self.trees.write().unwrap_or_else(PoisonError::into_inner) = Some(trees.clone());
        self.failed.store(false, Relaxed);
        if let Some(memory) = self.memory.get() {
            let res = self.rewrite(&trees, memory()).await;
            self.noted(res)?;
        }
        warn!("store reopened after a failed write; memory's records written over it");
        Ok(())
    }

    /// Writes `memory` over the store: every instance record and the master
    /// record; readable instance records memory does not hold (a create
    /// answered with an error whose write reached the disk) go, with their
    /// counters; those being created stay. Unreadable records stay, as
    /// everywhere.
    async fn rewrite(&self, t: &Trees, memory: Memory) -> Result<(), StoreError> {
        let held: std::collections::HashSet<&str> = memory
            .instances
            .iter()
            .map(|r| r.id.as_str())
            .chain(memory.creating.iter().map(String::as_str))
            .collect();
        let mut stale = Vec::new();
        for item in t.instances.iter() {
            let (key, bytes) = item.map_err(sled_err("scanning", "instances", ""))?;
            let known = std::str::from_utf8(&key).is_ok_and(|id| held.contains(id));
            if !known && decode::<InstanceRecord>(&bytes).is_ok_and(|r| r.id.as_bytes() == &key[..])
            {
                stale.push(key.to_vec());
            }
        }
        let mut values = Vec::with_capacity(memory.instances.len());
        for record in &memory.instances {
            values.push((record.id.as_str(), encode(record, "instances", &record.id)?));
        }
        let master = encode(&memory.master, "master", MASTER_KEY)?;
        (&t.instances, &t.counters, &t.master)
            .transaction(|(instances, counters, master_tree)| {
                for key in &stale {
                    instances.remove(key.as_slice())?;
                    counters.remove(key.as_slice())?;
                }
                for (id, value) in &values {
                    instances.insert(id.as_bytes(), value.as_slice())?;
                }
                master_tree.insert(MASTER_KEY, master.as_slice())?;
                Ok(())
            })
            .map_err(txn_err("rewriting", "instances", "(all)"))?;
        self.flush_gated(t).await
    }

    // ---- master ----

    /// The master record; `Ok(None)` on first start. A corrupt or newer record
    /// is an error: the caller must refuse to start rather than make a new key.
    pub fn master(&self) -> Result<Option<MasterRecord>, StoreError> {
        let tree = "master";
        let Some(bytes) = self
            .trees()?
            .master
            .get(MASTER_KEY)
            .map_err(sled_err("reading", tree, MASTER_KEY))?
        else {
            return Ok(None);
        };
        decode::<MasterRecord>(&bytes)
            .map(Some)
            .map_err(|bad| bad.into_error(tree, MASTER_KEY))
    }

    /// Stores the master record (API key, master id, alias) durably.
    pub async fn put_master(&self, record: &MasterRecord) -> Result<(), StoreError> {
        let value = encode(record, "master", MASTER_KEY)?;
        self.put_in_master(MASTER_KEY, value).await
    }

    /// Tenant → uid allocations (isolation); empty when none or unreadable.
    pub fn tenant_uids(&self) -> std::collections::BTreeMap<String, u32> {
        match self.trees().map(|t| t.master.get(TENANT_UIDS_KEY)) {
            Ok(Ok(Some(bytes))) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(cause = %e, "tenant uid map unreadable; allocating afresh");
                Default::default()
            }),
            _ => Default::default(),
        }
    }

    /// Stores the tenant → uid allocations durably.
    pub async fn put_tenant_uids(
        &self,
        map: &std::collections::BTreeMap<String, u32>,
    ) -> Result<(), StoreError> {
        let value = encode(map, "master", TENANT_UIDS_KEY)?;
        self.put_in_master(TENANT_UIDS_KEY, value).await
    }

    /// One value of the `master` tree, durably.
    async fn put_in_master(&self, key: &'static str, value: Vec<u8>) -> Result<(), StoreError> {
        self.write(|t| async move {
            t.master
                .insert(key, value)
                .map_err(sled_err("writing", "master", key))?;
            self.flush_gated(&t).await
        })
        .await
    }

    // ---- instances ----

    /// Every readable instance in id order, and one line per record skipped
    /// (`instance <id>: skipped: <why>`) for the caller to log. Skipped
    /// records stay in the store untouched.
    pub fn instances(&self) -> (Vec<InstanceRecord>, Vec<String>) {
        let mut records = Vec::new();
        let mut problems = Vec::new();
        let t = match self.trees() {
            Ok(t) => t,
            Err(e) => return (records, vec![format!("instances: {e}")]),
        };
        for item in t.instances.iter() {
            let (key, bytes) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    problems.push(format!("instances: reading stopped early: {e}"));
                    break;
                }
            };
            let id = key_text(&key);
            match decode::<InstanceRecord>(&bytes) {
                Ok(record) if record.id.as_bytes() == &key[..] => records.push(record),
                Ok(record) => problems.push(format!(
                    "instance {id}: skipped: the record says its id is {:?}",
                    record.id
                )),
                Err(bad) => problems.push(format!("instance {id}: skipped: {bad}")),
            }
        }
        (records, problems)
    }

    /// Stores an instance under its id, durably. The caller sets `v`
    /// ([`SCHEMA_VERSION`]).
    pub async fn put_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        self.put_instance_latest(|| Some(record.clone())).await?;
        Ok(())
    }

    /// Writes the record `latest` returns once this write's turn has come
    /// (`None`: nothing to write; returns whether it wrote).
    ///
    /// For records also changed in memory by others: whatever is written
    /// last is then the newest state, so a change acknowledged after its
    /// write is never overwritten on disk by an older copy that another
    /// writer took before it and wrote after it.
    pub async fn put_instance_latest(
        &self,
        latest: impl FnOnce() -> Option<InstanceRecord>,
    ) -> Result<bool, StoreError> {
        self.put_instance_settled(|| latest().map(|r| (r, None, ())), |_, ()| {})
            .await
    }

    /// [`put_instance_latest`](Self::put_instance_latest) that may also
    /// write the instance's counters, in the same transaction, and then
    /// hands `settle` whether the write landed together with the `T` that
    /// `latest` returned. Both run under the write gate, so a caller that
    /// changes memory in `latest` can take the change back in `settle`
    /// before any other write sees it.
    pub async fn put_instance_settled<T>(
        &self,
        latest: impl FnOnce() -> Option<(InstanceRecord, Option<Counters>, T)>,
        settle: impl FnOnce(bool, T),
    ) -> Result<bool, StoreError> {
        // A reopen (writing memory's records) runs before `latest` changes memory.
        self.write(|t| async move {
            let Some((record, totals, token)) = latest() else {
                return Ok(false);
            };
            let res = self.write_instance(&t, &record, totals).await;
            settle(res.is_ok(), token);
            res.map(|()| true)
        })
        .await
    }

    /// Writes a record (and its counters, when given) durably; the caller
    /// holds the write gate.
    async fn write_instance(
        &self,
        t: &Trees,
        record: &InstanceRecord,
        totals: Option<Counters>,
    ) -> Result<(), StoreError> {
        let id = record.id.as_str();
        let value = encode(record, "instances", id)?;
        match totals {
            None => {
                t.instances.insert(id.as_bytes(), value).map_err(sled_err(
                    "writing",
                    "instances",
                    id,
                ))?;
            }
            Some(totals) => {
                let counters = encode_counters(id, totals)?;
                (&t.instances, &t.counters)
                    .transaction(|(instances, counters_tree)| {
                        instances.insert(id.as_bytes(), value.as_slice())?;
                        counters_tree.insert(id.as_bytes(), counters.as_slice())?;
                        Ok(())
                    })
                    .map_err(txn_err("writing", "instances", id))?;
            }
        }
        self.flush_gated(t).await
    }

    /// Removes an instance with its counters and every binding to it, in one
    /// transaction, durably. Returns whether the instance existed.
    pub async fn delete_instance(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|t| async move {
            let doomed = bindings_to(&t, id)?;
            let existed = (&t.instances, &t.counters, &t.bindings)
                .transaction(|(instances, counters, bindings)| {
                    let existed = instances.remove(id.as_bytes())?.is_some();
                    counters.remove(id.as_bytes())?;
                    unbind(bindings, &doomed, id)?;
                    Ok(existed)
                })
                .map_err(txn_err("deleting", "instances", id))?;
            // A binding committed between the scan and the transaction survived
            // it; none can be added now that the instance is gone (put_binding
            // checks), so one more sweep catches them all.
            let late = bindings_to(&t, id)?;
            if !late.is_empty() {
                t.bindings
                    .transaction(|bindings| unbind(bindings, &late, id))
                    .map_err(txn_err("unbinding", "bindings", id))?;
            }
            self.flush_gated(&t).await?;
            Ok(existed)
        })
        .await
    }

    // ---- counters ----

    /// The cumulative counters of an instance; zero when missing, and when
    /// unreadable (logged: the next [`Store::put_counters`] replaces it).
    pub fn counters(&self, id: &str) -> Counters {
        match self.trees().and_then(|t| {
            t.counters
                .get(id.as_bytes())
                .map_err(sled_err("reading", "counters", id))
        }) {
            Ok(None) => Counters::default(),
            Ok(Some(bytes)) => match decode::<CounterRecord>(&bytes) {
                Ok(record) => record.totals,
                Err(bad) => {
                    warn!(instance = %id, why = %bad, "stored counters unreadable; counting from zero");
                    Counters::default()
                }
            },
            Err(e) => {
                error!(instance = %id, cause = %e, "failed to read counters; counting from zero");
                Counters::default()
            }
        }
    }

    /// Stores several instances' counters in one transaction, durably.
    /// Entries for instances no longer stored are dropped, so a late write
    /// from a deleted instance's task cannot resurrect its counters.
    pub async fn put_counters(&self, batch: &[(String, Counters)]) -> Result<(), StoreError> {
        self.put_counters_latest(|| batch.to_vec(), |_| {}).await
    }

    /// Writes the counters `latest` returns once this write's turn has come,
    /// then hands them to `written` once they are on disk. Both run under
    /// the write gate, so what `written` records follows the disk, in write
    /// order (an earlier snapshot never lands after a later one).
    pub async fn put_counters_latest(
        &self,
        latest: impl FnOnce() -> Vec<(String, Counters)>,
        written: impl FnOnce(&[(String, Counters)]),
    ) -> Result<(), StoreError> {
        self.write(|t| async move {
            let batch = latest();
            if batch.is_empty() {
                return Ok(());
            }
            let mut values = Vec::with_capacity(batch.len());
            for (id, totals) in &batch {
                values.push((id.as_str(), encode_counters(id, *totals)?));
            }
            (&t.instances, &t.counters)
                .transaction(|(instances, counters)| {
                    for (id, value) in &values {
                        if instances.get(id.as_bytes())?.is_some() {
                            counters.insert(id.as_bytes(), value.as_slice())?;
                        }
                    }
                    Ok(())
                })
                .map_err(txn_err("writing", "counters", "(batch)"))?;
            self.flush_gated(&t).await?;
            written(&batch);
            Ok(())
        })
        .await
    }

    // ---- bindings ----

    /// The instance a gateway client is bound to; `None` when unbound or the
    /// binding is unreadable (logged).
    pub fn binding(&self, client: &str) -> Option<String> {
        match self.trees().and_then(|t| {
            t.bindings
                .get(client.as_bytes())
                .map_err(sled_err("reading", "bindings", client))
        }) {
            Ok(bytes) => bytes.and_then(|b| binding_target(client, &b)),
            Err(e) => {
                error!(client = %client.escape_debug(), cause = %e, "failed to read binding");
                None
            }
        }
    }

    /// Up to `limit` `(client, instance)` pairs in client order, starting
    /// after `after` (exclusive); unreadable entries are skipped (logged).
    pub fn bindings(&self, after: Option<&str>, limit: usize) -> Vec<(String, String)> {
        let start = match after {
            Some(a) => Bound::Excluded(a.as_bytes()),
            None => Bound::Unbounded,
        };
        let mut page = Vec::new();
        if limit == 0 {
            return page;
        }
        let t = match self.trees() {
            Ok(t) => t,
            Err(e) => {
                error!(cause = %e, "failed to list bindings");
                return page;
            }
        };
        for item in t.bindings.range::<&[u8], _>((start, Bound::Unbounded)) {
            let (key, bytes) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    error!(cause = %e, "failed to list bindings");
                    break;
                }
            };
            let Ok(client) = std::str::from_utf8(&key) else {
                warn!(client = %key_text(&key), "binding key is not UTF-8; skipped");
                continue;
            };
            if let Some(instance) = binding_target(client, &bytes) {
                page.push((client.to_owned(), instance));
                if page.len() == limit {
                    break;
                }
            }
        }
        page
    }

    /// Binds a gateway client to a stored instance, durably;
    /// [`StoreError::UnknownInstance`] if the instance is not stored.
    pub async fn put_binding(&self, client: &str, instance: &str) -> Result<(), StoreError> {
        let record = BindingRecord {
            v: SCHEMA_VERSION,
            instance: instance.to_owned(),
        };
        let value = encode(&record, "bindings", client)?;
        self.write(|t| async move {
            (&t.instances, &t.bindings)
                .transaction(|(instances, bindings)| {
                    if instances.get(instance.as_bytes())?.is_none() {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::UnknownInstance {
                                instance: instance.to_owned(),
                            },
                        ));
                    }
                    bindings.insert(client.as_bytes(), value.as_slice())?;
                    Ok(())
                })
                .map_err(txn_err("writing", "bindings", client))?;
            self.flush_gated(&t).await
        })
        .await
    }

    /// Removes a client's binding, durably; returns whether it existed.
    pub async fn delete_binding(&self, client: &str) -> Result<bool, StoreError> {
        self.write(|t| async move {
            let old = t
                .bindings
                .remove(client.as_bytes())
                .map_err(sled_err("deleting", "bindings", client))?;
            self.flush_gated(&t).await?;
            Ok(old.is_some())
        })
        .await
    }
}

#[cfg(test)]
impl Store {
    /// The open trees, for tests that write records by hand.
    fn raw(&self) -> Trees {
        self.trees().expect("the store is open")
    }
}

/// Keys of the bindings that point to `id` (unreadable ones are left alone).
fn bindings_to(t: &Trees, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut keys = Vec::new();
    for item in t.bindings.iter() {
        let (key, bytes) = item.map_err(sled_err("scanning", "bindings", id))?;
        if points_to(&bytes, id) {
            keys.push(key.to_vec());
        }
    }
    Ok(keys)
}

/// Free bytes for an unprivileged writer on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() * st.fragment_size())
}

/// Why a stored record could not be used.
#[derive(Debug)]
enum Bad {
    /// Not JSON, no `v`, or not the expected shape.
    Corrupt(String),
    /// Written by a newer schema.
    Newer(u32),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Corrupt(why) => f.write_str(why),
            Bad::Newer(v) => write!(
                f,
                "schema v{v} is newer than the v{SCHEMA_VERSION} this drover understands"
            ),
        }
    }
}

impl Bad {
    fn into_error(self, tree: &'static str, key: &str) -> StoreError {
        match self {
            Bad::Corrupt(reason) => StoreError::Corrupt {
                tree,
                key: key.to_owned(),
                reason,
            },
            Bad::Newer(found) => StoreError::Newer {
                tree,
                key: key.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            },
        }
    }
}

/// Decodes a versioned record: the version first, so a newer record that no
/// longer fits today's struct is reported as newer, not as garbage.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Bad> {
    #[derive(Deserialize)]
    struct Version {
        v: Option<u32>,
    }
    let version: Version = serde_json::from_slice(bytes)
        .map_err(|e| Bad::Corrupt(format!("not a JSON record: {e}")))?;
    match version.v {
        None => return Err(Bad::Corrupt("no schema version (v)".into())),
        Some(v) if v > SCHEMA_VERSION => return Err(Bad::Newer(v)),
        Some(_) => {}
    }
    serde_json::from_slice(bytes).map_err(|e| Bad::Corrupt(format!("invalid record: {e}")))
}

fn encode<T: Serialize>(record: &T, tree: &'static str, key: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|cause| StoreError::Encode {
        tree,
        key: key.to_owned(),
        cause,
    })
}

/// An instance's counters as stored in the `counters` tree.
fn encode_counters(id: &str, totals: Counters) -> Result<Vec<u8>, StoreError> {
    let record = CounterRecord {
        v: SCHEMA_VERSION,
        totals,
    };
    encode(&record, "counters", id)
}

/// The instance of a stored binding, or `None` (logged) if unreadable.
fn binding_target(client: &str, bytes: &[u8]) -> Option<String> {
    match decode::<BindingRecord>(bytes) {
        Ok(record) => Some(record.instance),
        Err(bad) => {
            warn!(client = %client.escape_debug(), why = %bad, "stored binding unreadable; ignored");
            None
        }
    }
}

fn points_to(bytes: &[u8], id: &str) -> bool {
    decode::<BindingRecord>(bytes).is_ok_and(|r| r.instance == id)
}

/// Removes, inside a transaction, those of `keys` that still point to `id`.
fn unbind(
    bindings: &TransactionalTree,
    keys: &[Vec<u8>],
    id: &str,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    for key in keys {
        if let Some(bytes) = bindings.get(key)?
            && points_to(&bytes, id)
        {
            bindings.remove(key.as_slice())?;
        }
    }
    Ok(())
}

/// A key for messages: lossy UTF-8 with control characters escaped.
fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).escape_debug().to_string()
}

fn sled_err(
    op: &'static str,
    tree: &'static str,
    key: &str,
) -> impl FnOnce(sled::Error) -> StoreError {
    let key = key.to_owned();
    move |cause| StoreError::Sled {
        op,
        tree,
        key,
        cause,
    }
}

fn txn_err(
    op: &'static str,
    tree: &'static str,
    key: &str,
) -> impl FnOnce(TransactionError<StoreError>) -> StoreError {
    let key = key.to_owned();
    move |e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(cause) => StoreError::Sled {
            op,
            tree,
            key,
            cause,
        },
    }
}

/// Creates `dir` as 0700, or tightens an existing one to 0700.
fn secure_dir(dir: &Path) -> Result<(), StoreError> {
    let dir_err = |op| {
        move |cause| StoreError::Dir {
            path: dir.to_path_buf(),
            op,
            cause,
        }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(dir_err("creating"))?;
    let meta = fs::metadata(dir).map_err(dir_err("inspecting"))?;
    if !meta.is_dir() {
        return Err(dir_err("inspecting")(io::Error::other("not a directory")));
    }
    if meta.permissions().mode() & 0o777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(dir_err("setting mode 0700"))?;
    }
    Ok(())
}

/// Makes every directory under `dir` (and itself) 0700 and every file 0600;
/// symlinks and other kinds are left alone.
fn restrict_tree(dir: &Path) -> Result<(), StoreError> {
    let set = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|cause| {
            StoreError::Dir {
                path: path.to_path_buf(),
                op: "restricting permissions",
                cause,
            }
        })
    };
    set(dir, DIR_MODE)?;
    let entries = fs::read_dir(dir).map_err(|cause| StoreError::Dir {
        path: dir.to_path_buf(),
        op: "listing",
        cause,
    })?;
    for entry in entries {
        let entry = entry.map_err(|cause| StoreError::Dir {
            path: dir.to_path_buf(),
            op: "listing",
            cause,
        })?;
        let path = entry.path();
        let kind = fs::symlink_metadata(&path)
            .map_err(|cause| StoreError::Dir {
                path: path.clone(),
                op: "inspecting",
                cause,
            })?
            .file_type();
        if kind.is_dir() {
            restrict_tree(&path)?;
        } else if kind.is_file() {
            set(&path, FILE_MODE)?;
        }
    }
    Ok(())
}

/// Opens `dir` again after the `Store` there was dropped (tests only).
///
/// sled's IO pool threads let go of the files a moment after a flush has
/// answered, so the lock can outlive the drop briefly (seen under CI load);
/// a master's own reopen after a failed write retries the same way.
#[cfg(test)]
fn reopen_after_drop(dir: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Store::open(dir) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            res => return res.expect("reopen store"),
        }
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
