//! Spare workers: per tenant, one `drover-worker --spare` started ahead of
//! need, already confined (uid, cgroup, rlimits, working dir).
//!
//! Starting a worker from scratch forks the master and joins a cgroup; on a
//! small VM the cgroup join alone waits for an RCU grace period (5–15 ms).
//! A spare pays that in the background: creating, restarting or waking an
//! instance takes the tenant's spare (`Become`, then `Hello`; see
//! `worker::spare`), renames its cgroup leaf to the instance id, and starts
//! the next spare. At most [`MAX_SPARES`] tenants keep one; spares die with
//! the master (PDEATHSIG, control EOF).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Shared;
use super::spawn::{self, Spare};

/// Tenants with a spare at a time (each costs one idle worker, ~5 MiB).
pub const MAX_SPARES: usize = 8;

enum Slot {
    /// Being started (confinement and fork run in the background).
    Starting,
    Ready(Box<Spare>),
}

/// The spare of each tenant that recently started a worker.
#[derive(Default)]
pub struct Spares {
    slots: Mutex<HashMap<String, Slot>>,
    seq: AtomicU64,
}

impl Spares {
    /// The tenant's spare, if one is ready and alive.
    pub fn take(&self, tenant: &str) -> Option<Spare> {
        let mut slots = self.slots.lock().expect("spares lock");
        if !matches!(slots.get(tenant), Some(Slot::Ready(_))) {
            return None;
        }
        let Some(Slot::Ready(mut spare)) = slots.remove(tenant) else {
            return None;
        };
        // A spare that died (OOM-killed, say) is dropped: reaped by tokio.
        matches!(spare.child.try_wait(), Ok(None)).then_some(*spare)
    }

    /// Starts a spare for `tenant` in the background unless it has one or
    /// [`MAX_SPARES`] tenants do.
    pub fn refill(&self, shared: &Arc<Shared>, tenant: &str) {
        {
            let mut slots = self.slots.lock().expect("spares lock");
            if slots.contains_key(tenant) || slots.len() >= MAX_SPARES {
                return;
            }
            slots.insert(tenant.to_owned(), Slot::Starting);
        }
        let shared2 = shared.clone();
        let tenant = tenant.to_owned();
        let leaf = format!("spare{}", self.seq.fetch_add(1, Ordering::Relaxed));
        // On the main runtime: PR_SET_PDEATHSIG fires when the forking thread exits.
        shared.runtime.spawn(async move {
            let started = match shared2
                .isolation
                .confine(&shared2.store, &tenant, &leaf)
                .await
            {
                Ok(confine) => spawn::start_spare(&shared2.worker_bin, confine, leaf),
                Err(e) => Err(e),
            };
            let mut slots = shared2.spares.slots.lock().expect("spares lock");
            match started {
                Ok(spare) => {
                    slots.insert(tenant, Slot::Ready(Box::new(spare)));
                }
                Err(e) => {
                    tracing::warn!(tenant, cause = %e, "cannot start a spare worker");
                    slots.remove(&tenant);
                }
            }
        });
    }

    /// Ends every spare (master shutdown).
    pub fn clear(&self) {
        let slots = std::mem::take(&mut *self.slots.lock().expect("spares lock"));
        for slot in slots.into_values() {
            if let Slot::Ready(spare) = slot {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(spare.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
