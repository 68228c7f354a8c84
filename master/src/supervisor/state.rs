//! What the API sees of an instance: NodePass's `status`, the worker's
//! state (DESIGN §2), and the counters folded across worker lifetimes.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use proto::message::Stats;
use proto::spec::TunnelSpec;
use proto::{ControlSender, ToWorker};

use super::handoffs::InFlight;
use super::listeners::Listeners;
use super::time_text;
use crate::model::{Counters, InstanceRecord, InstanceView, WorkerView};

/// Default idle period of instances the gateway started (DESIGN §2).
pub const GATEWAY_IDLE: Duration = Duration::from_secs(360);

/// NodePass's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Stopped,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Error => "error",
        }
    }
}

/// `worker.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Parked,
    Starting,
    Ready,
    Stopping,
    Backoff,
    Failed,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Parked => "parked",
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Stopping => "stopping",
            WorkerState::Backoff => "backoff",
            WorkerState::Failed => "failed",
        }
    }
}

/// What the API sees of an instance.
pub struct State {
    pub record: InstanceRecord,
    pub spec: TunnelSpec,
    pub status: Status,
    pub worker: WorkerState,
    pub pid: Option<u32>,
    pub entry: Option<String>,
    pub restarts: u64,
    pub since: SystemTime,
    pub last_exit: Option<String>,
    /// Latest `Stats` of the current worker (its counters start at 0).
    pub live: Stats,
    /// Totals folded in from earlier workers.
    pub base: Counters,
    /// Worker counters at the last `reset` (subtracted from `live`).
    pub offset: Counters,
    /// The totals last written to the store: what the API and SSE show, so
    /// a shown count is never taken back by a crash of the master.
    pub shown: Counters,
    pub logs: VecDeque<String>,
    /// The ready worker's control channel (gateway handoff), if any.
    pub control: Option<ControlSender<ToWorker>>,
    /// Gateway connections the current worker has not answered yet.
    pub in_flight: InFlight,
    /// Woken by the gateway: reaped after [`GATEWAY_IDLE`] unless `idle=` says otherwise.
    pub woken_by_gateway: bool,
    /// Being deleted: the record must not be written again.
    pub removed: bool,
    /// The sockets the master holds for the instance while it should run
    /// (the task sets them; a PUT shares those its new URL keeps).
    pub listeners: Option<Listeners>,
}

impl State {
    /// Whether the instance has (or may get) an entrance, so gateway clients
    /// can be handed to it: a forward-mode server never does, and a worker
    /// that reported ready without an entry port does not.
    pub fn may_have_entrance(&self) -> bool {
        let forward_server = self.spec.role == proto::Role::Server && self.spec.params.mode == 2;
        let ready_without_entry = self.live.mode != 0 && self.entry.is_none() && self.pid.is_some();
        !(forward_server || ready_without_entry)
    }

    /// How long the worker may sit idle before it is reaped, if at all.
    pub fn idle_limit(&self) -> Option<Duration> {
        match self.spec.params.idle {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None if self.woken_by_gateway => Some(GATEWAY_IDLE),
            None => None,
        }
    }

    /// Cumulative counters: earlier workers' plus the current one's since
    /// the last reset. Saturating: a worker reports whatever it likes (a
    /// compromised one `u64::MAX`), and an overflow would panic under the
    /// instance's lock.
    pub fn totals(&self) -> Counters {
        let d = |base: u64, live: u64, off: u64| base.saturating_add(live.saturating_sub(off));
        Counters {
            tcprx: d(self.base.tcprx, self.live.tcprx, self.offset.tcprx),
            tcptx: d(self.base.tcptx, self.live.tcptx, self.offset.tcptx),
            udprx: d(self.base.udprx, self.live.udprx, self.offset.udprx),
            udptx: d(self.base.udptx, self.live.udptx, self.offset.udptx),
        }
    }

    pub fn view(&self) -> InstanceView {
        let t = self.shown;
        let running = self.pid.is_some();
        let live = |v: u64| if running { v } else { 0 };
        InstanceView {
            id: self.record.id.clone(),
            alias: self.record.alias.clone(),
            kind: self.spec.role.as_str().into(),
            status: self.status.as_str().into(),
            url: self.record.url.clone(),
            config: self.spec.config_url(),
            restart: self.record.restart,
            meta: self.record.meta.clone(),
            mode: live(u64::from(self.live.mode)),
            ping: live(self.live.ping),
            pool: live(self.live.pool),
            tcps: live(self.live.tcps),
            udps: live(self.live.udps),
            tcprx: t.tcprx,
            tcptx: t.tcptx,
            udprx: t.udprx,
            udptx: t.udptx,
            tenant: self.record.tenant.clone(),
            worker: Some(WorkerView {
                state: self.worker.as_str().into(),
                pid: self.pid,
                entry: self.entry.clone(),
                restarts: self.restarts,
                since: time_text(self.since),
                last_exit: self.last_exit.clone(),
            }),
        }
    }

    /// Zeroes the counters: the worker's current ones become the offset.
    pub fn reset_counters(&mut self) {
        self.base = Counters::default();
        self.offset = Counters {
            tcprx: self.live.tcprx,
            tcptx: self.live.tcptx,
            udprx: self.live.udprx,
            udptx: self.live.udptx,
        };
    }

    /// Counts the current worker's traffic into `base` (it is gone).
    pub(super) fn fold_counters(&mut self) {
        self.base = self.totals();
        self.offset = Counters::default();
        self.live = Stats::default();
    }
}
