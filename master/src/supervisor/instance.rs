//! One instance: its shared state (read by the API) and the task that runs
//! its worker through the state machine of DESIGN §2:
//! `parked → starting → ready → stopping → parked`, plus `backoff`/`failed`.
//!
//! The task is event-driven: it waits on the child's exit, control frames,
//! the ping timer and commands from the API, never polls.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use proto::message::{Bound, Settings, Stats, TlsMaterial, Transport};
use proto::spec::TunnelSpec;
use proto::{Secret, ToMaster, ToWorker};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};

use super::Shared;
use super::backoff::{Next, Policy};
use super::handoffs::{Handed, InFlight};
use super::listeners::{self, Listeners};
use super::log_budget::{LogBudget, LogVerdict, clip};
use super::spawn::{self, Launch, Worker};
pub use super::state::{State, Status, WorkerState};
use crate::model::{Counters, InstanceRecord, InstanceView};
use crate::sse::EventKind;

/// No `Ready` within this → kill, count a failure.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// No `Pong` within this → the worker is hung: SIGKILL and restart.
pub const PONG_DEADLINE: Duration = Duration::from_secs(15);
/// A stopped worker still running this long after SIGTERM gets SIGKILL.
pub const TERM_WAIT: Duration = Duration::from_secs(5);
/// Log lines kept per instance for `/instances/{id}/logs`.
pub const LOG_RING: usize = 1000;

/// What the API asks of the instance task.
pub enum Command {
    /// Run with these listeners (bound by the caller, so conflicts are synchronous).
    Start(Listeners),
    /// A new URL (PUT): stop the worker if one runs, swap in these listeners
    /// (answering once the old ones not kept are closed), then run a worker on them.
    Replace(Listeners, oneshot::Sender<()>),
    /// A fresh worker now, keeping the listeners; recovers `failed`.
    Restart,
    /// Stop the worker and release the listeners.
    Stop(oneshot::Sender<()>),
    /// Stop and end the task.
    Delete(oneshot::Sender<()>),
    /// Start the worker of a parked instance (gateway traffic).
    Wake,
}

/// One instance: shared state plus the command line to its task.
pub struct Instance {
    pub id: String,
    pub state: Mutex<State>,
    cmds: mpsc::UnboundedSender<Command>,
    /// Bumped each time a worker becomes ready (waited on by the gateway).
    pub ready: watch::Sender<u64>,
}

impl Instance {
    /// Writes this instance's counters as they are when the write's turn
    /// comes, then shows them (see `Supervisor::persist_counters`).
    pub async fn persist_counters(
        &self,
        store: &crate::store::Store,
    ) -> Result<(), crate::store::StoreError> {
        store
            .put_counters_latest(
                || vec![(self.id.clone(), self.lock().totals())],
                |batch| self.lock().shown = batch[0].1,
            )
            .await
    }

    pub fn new(
        record: InstanceRecord,
        spec: TunnelSpec,
        base: Counters,
        shared: Arc<Shared>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inst = Arc::new(Self {
            id: record.id.clone(),
            state: Mutex::new(State {
                record,
                spec,
                status: Status::Stopped,
                worker: WorkerState::Parked,
                pid: None,
                entry: None,
                restarts: 0,
                since: SystemTime::now(),
                last_exit: None,
                live: Stats::default(),
                base,
                offset: Counters::default(),
                shown: base,
                logs: VecDeque::new(),
                control: None,
                in_flight: InFlight::default(),
                woken_by_gateway: false,
                removed: false,
                listeners: None,
            }),
            cmds: tx,
            ready: watch::channel(0).0,
        });
        let task = Task {
            inst: inst.clone(),
            shared: shared.clone(),
            cmds: rx,
            policy: Policy::default(),
            reap_due: false,
            log_budget: LogBudget::new(),
            carried: Vec::new(),
        };
        // On the master's main runtime, never on an API thread's: tasks must
        // outlive API shutdown, and PR_SET_PDEATHSIG fires when the *thread*
        // that spawned a worker exits.
        shared.runtime.spawn(task.run());
        inst
    }

    pub fn send(&self, cmd: Command) {
        // The task only ends after Delete; a send after that is moot.
        let _ = self.cmds.send(cmd);
    }

    pub fn view(&self) -> InstanceView {
        self.lock().view()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("instance state lock")
    }
}

/// Why supervising a worker ended.
enum Outcome {
    /// The worker ended without being asked.
    Exited { how: String, ran: Duration },
    /// A command that needs the worker gone (already stopped).
    Command(Command),
    /// Idle for its `idle` period: stopped, listeners kept.
    Reaped,
}

struct Task {
    inst: Arc<Instance>,
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedReceiver<Command>,
    policy: Policy,
    /// Set when the worker reported an idle period past the limit.
    reap_due: bool,
    log_budget: LogBudget,
    /// Gateway connections a dead worker never took, for the next one.
    carried: Vec<Handed>,
}

impl Task {
    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.inst.lock());
    }

    /// The instance's listeners (sockets shared, not duplicated).
    fn listeners(&self) -> Option<Listeners> {
        self.inst.lock().listeners.clone()
    }

    /// Takes the listeners of a `Replace`; the old ones close unless kept.
    fn replace_listeners(&mut self, listeners: Listeners, done: oneshot::Sender<()>) {
        self.inst.lock().listeners = Some(listeners);
        spawn::forks_settled();
        self.policy.reset();
        let _ = done.send(());
    }

    fn transition(&self, to: WorkerState) {
        self.set(|s| {
            s.worker = to;
            s.since = SystemTime::now();
        });
        self.publish();
    }

    fn publish(&self) {
        self.shared
            .hub
            .publish(EventKind::Update, Some(&self.inst.view()), "");
    }

    fn log_line(&self, line: String) {
        let view = {
            let mut s = self.inst.lock();
            if s.logs.len() >= LOG_RING {
                s.logs.pop_front();
            }
            s.logs.push_back(line.clone());
            s.view()
        };
        tracing::info!(instance = %self.inst.id, "{line}");
        self.shared.hub.publish(EventKind::Log, Some(&view), &line);
    }

    async fn run(mut self) {
        while let Some(cmd) = self.cmds.recv().await {
            let ends = match cmd {
                Command::Start(l) => {
                    self.inst.lock().listeners = Some(l);
                    self.policy.reset();
                    self.serve().await
                }
                Command::Replace(l, done) => {
                    self.replace_listeners(l, done);
                    self.serve().await
                }
                Command::Restart if self.inst.lock().listeners.is_some() => {
                    self.policy.reset();
                    self.serve().await
                }
                other => self.finish(other).await,
            };
            if ends {
                return;
            }
        }
    }

    /// Runs workers until a command stops them, then completes it; true =
    /// the task ends.
    async fn serve(&mut self) -> bool {
        match self.run_worker().await {
            Some(cmd) => self.finish(cmd).await,
            None => false,
        }
    }

    /// Completes a stop-type command once no worker runs; true = task ends.
    async fn finish(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Stop(done) => {
                self.drop_carried("the instance stopped");
                self.set(|s| {
                    s.listeners = None;
                    s.status = Status::Stopped;
                    s.entry = None;
                });
                spawn::forks_settled();
                self.transition(WorkerState::Parked);
                let _ = done.send(());
                false
            }
            Command::Delete(done) => {
                self.drop_carried("the instance was deleted");
                self.inst.lock().listeners = None;
                spawn::forks_settled();
                let _ = done.send(());
                true
            }
            Command::Start(_) | Command::Replace(..) | Command::Restart | Command::Wake => false,
        }
    }

    /// Runs workers until a command stops them; returns that command.
    async fn run_worker(&mut self) -> Option<Command> {
        self.set(|s| s.status = Status::Running);
        loop {
            self.transition(WorkerState::Starting);
            let spawned = Instant::now();
            let outcome = match self.spawn().await {
                Ok(mut worker) => {
                    let outcome = self.supervise(&mut worker, spawned).await;
                    self.read_last_answers(&mut worker).await;
                    outcome
                }
                Err(why) => Outcome::Exited {
                    how: format!("spawn failed: {why}"),
                    ran: Duration::ZERO,
                },
            };
            self.persist_counters().await;
            match outcome {
                Outcome::Command(Command::Restart) => {
                    self.policy.reset();
                    continue;
                }
                Outcome::Command(Command::Replace(l, done)) => {
                    self.replace_listeners(l, done);
                    continue;
                }
                Outcome::Command(cmd) => return Some(cmd),
                Outcome::Reaped if !self.carried.is_empty() => {
                    tracing::info!(instance = %self.inst.id, waiting = self.carried.len(), "worker reaped with gateway connections unanswered; starting another");
                }
                Outcome::Reaped => {
                    self.shared.metrics.reap();
                    tracing::info!(instance = %self.inst.id, "worker idle; reaped (listeners kept, wakes on traffic)");
                    self.log_line("worker idle: reaped; the next connection wakes it".into());
                    self.transition(WorkerState::Parked);
                    match self.wait_activation().await {
                        Ok(why) => {
                            self.shared.metrics.wake();
                            tracing::info!(instance = %self.inst.id, "{why}; waking");
                        }
                        Err(cmd) => return Some(cmd),
                    }
                }
                Outcome::Exited { how, ran } => {
                    tracing::warn!(instance = %self.inst.id, how, ran_ms = ran.as_millis() as u64, "worker ended unexpectedly");
                    self.shared.metrics.worker_restarted();
                    self.set(|s| {
                        s.restarts += 1;
                        s.last_exit = Some(how);
                        s.pid = None;
                        // The dead worker's entry port is closed; the next one reports its own.
                        s.entry = None;
                    });
                    match self.policy.after_exit(ran) {
                        Next::RestartNow => {}
                        // Connections are waiting: restart now, but keep the crash-loop count.
                        Next::RestartAfter(_) if !self.carried.is_empty() => {}
                        Next::RestartAfter(d) => {
                            self.transition(WorkerState::Backoff);
                            if let Some(cmd) = self.wait_command(d).await {
                                match cmd {
                                    Command::Restart | Command::Start(_) => self.policy.reset(),
                                    Command::Replace(l, done) => self.replace_listeners(l, done),
                                    // Traffic is waiting: restart now, but keep the crash-loop count.
                                    Command::Wake => {}
                                    other => return Some(other),
                                }
                            }
                        }
                        Next::Failed => {
                            self.drop_carried("the worker keeps failing");
                            self.set(|s| s.status = Status::Error);
                            self.transition(WorkerState::Failed);
                            let every = self.shared.failed_retry;
                            tracing::error!(instance = %self.inst.id, retry_every = %proto::duration::format(every), "worker keeps failing; marked failed");
                            loop {
                                match self.wait_command(every).await {
                                    None | Some(Command::Restart) | Some(Command::Start(_)) => {
                                        break;
                                    }
                                    Some(Command::Replace(l, done)) => {
                                        self.replace_listeners(l, done);
                                        break;
                                    }
                                    // Gateway traffic does not override the crash-loop guard.
                                    Some(Command::Wake) => {}
                                    Some(other) => return Some(other),
                                }
                            }
                            self.policy.reset();
                            self.set(|s| s.status = Status::Running);
                        }
                    }
                }
            }
        }
    }

    /// Parked: waits for traffic on any kept listener (socket activation) or
    /// a command. `Ok(why)` = wake up; `Err` = a command to finish.
    async fn wait_activation(&mut self) -> Result<&'static str, Command> {
        let watchers: Vec<AsyncFd<std::os::fd::OwnedFd>> = self
            .listeners()
            .map(|l| l.dup_fds())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|fd| {
                // SAFETY: the AsyncFd owns this duplicate, so the fd stays valid while registered.
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
            })
            .collect();
        let traffic = async {
            if watchers.is_empty() {
                return std::future::pending::<()>().await;
            }
            let _ =
                futures_util::future::select_all(watchers.iter().map(|w| Box::pin(w.readable())))
                    .await;
        };
        let cmd = tokio::select! {
            cmd = self.cmds.recv() => cmd.unwrap_or(Command::Delete(oneshot::channel().0)),
            () = traffic => return Ok("traffic on a parked listener"),
        };
        match cmd {
            Command::Wake => Ok("gateway traffic for a parked instance"),
            Command::Restart | Command::Start(_) => Ok("restart asked"),
            Command::Replace(l, done) => {
                self.replace_listeners(l, done);
                Ok("the URL changed")
            }
            other => Err(other),
        }
    }

    /// Waits `d` or until a command arrives.
    async fn wait_command(&mut self, d: Duration) -> Option<Command> {
        tokio::select! {
            cmd = self.cmds.recv() => cmd.or(Some(Command::Delete(oneshot::channel().0))),
            () = tokio::time::sleep(d) => None,
        }
    }

    async fn spawn(&self) -> Result<Worker, String> {
        let listeners = self.listeners().ok_or("no listeners")?;
        let (url, tls, tenant) = {
            let s = self.inst.lock();
            let tls = s.record.cert.as_ref().map(|c| TlsMaterial {
                cert_pem: c.cert_pem.clone(),
                key_pem: Secret::new(c.key_pem.clone()),
            });
            (s.record.url.clone(), tls, s.record.tenant.clone())
        };
        // Reaping acts on stats: report at least twice per idle period.
        let idle = self.inst.lock().idle_limit();
        let stats_interval = idle
            .map(|d| (d / 2).max(std::time::Duration::from_millis(100)))
            .map_or(self.shared.stats_interval, |half| {
                half.min(self.shared.stats_interval)
            });
        let inst = self.inst.clone();
        let hub = self.shared.hub.clone();
        let on_stderr = move |line: String| {
            let line = format!("worker stderr: {line}");
            let view = {
                let mut s = inst.lock();
                if s.logs.len() >= LOG_RING {
                    s.logs.pop_front();
                }
                s.logs.push_back(line.clone());
                s.view()
            };
            tracing::warn!(instance = %inst.id, "{line}");
            hub.publish(EventKind::Log, Some(&view), &line);
        };
        let launch = Launch {
            id: &self.inst.id,
            url: &url,
            log: self.shared.log.as_str(),
            tls,
            settings: Settings {
                stats_interval_ms: stats_interval.as_millis() as u64,
                grace_ms: self.shared.grace.as_millis() as u64,
                idle_ms: None,
            },
            confine: None,
        };
        let worker = match self.shared.spares.take(&tenant) {
            Some(spare) => {
                let leaf = spare.leaf.clone();
                let worker = spawn::adopt_spare(spare, launch, &listeners, on_stderr).await?;
                self.shared
                    .isolation
                    .rename_leaf(&tenant, &leaf, &self.inst.id);
                worker
            }
            None => {
                let launch = Launch {
                    confine: self
                        .shared
                        .isolation
                        .confine(&self.shared.store, &tenant, &self.inst.id)
                        .await?,
                    ..launch
                };
                spawn::spawn(&self.shared.worker_bin, launch, &listeners, on_stderr).await?
            }
        };
        // The next start in this tenant takes a spare started now, off its path.
        self.shared.spares.refill(&self.shared, &tenant);
        self.set(|s| {
            s.pid = Some(worker.pid);
            s.live = Stats::default();
        });
        tracing::info!(instance = %self.inst.id, pid = worker.pid, "worker spawned");
        Ok(worker)
    }

    /// Watches a worker until it exits or a command stops it.
    async fn supervise(&mut self, w: &mut Worker, spawned: Instant) -> Outcome {
        // A verdict about the previous worker (its last stats) is not about this one.
        self.reap_due = false;
        let started = Instant::now();
        // Set when a send to the worker timed out and killed it.
        let deaf = w.deaf.clone();
        let why = move |fatal: Option<String>| {
            fatal.or_else(|| {
                deaf.load(Ordering::Relaxed)
                    .then(|| spawn::DEAF.to_string())
            })
        };
        let mut ready = false;
        let mut last_pong = Instant::now();
        let mut ping = tokio::time::interval(PING_INTERVAL);
        let mut seq = 0u64;
        let mut fatal: Option<String> = None;
        let ready_deadline = tokio::time::sleep(READY_TIMEOUT);
        tokio::pin!(ready_deadline);
        loop {
            tokio::select! {
                status = w.child.wait() => {
                    // The exit can be seen before the frames the worker wrote
                    // just before it: its `Fatal` belongs in `how`.
                    if let Some(f) = self.read_last_answers(w).await {
                        fatal = Some(f);
                    }
                    return Outcome::Exited { how: exit_text(status, why(fatal)), ran: started.elapsed() };
                }
                msg = w.channel.recv() => match msg {
                    Ok(Some((msg, _fds))) => {
                        if !ready && matches!(msg, ToMaster::Ready(_)) {
                            self.shared.metrics.observe_spawn(spawned.elapsed());
                        }
                        if let Some(f) = self.on_message(w, msg, &mut ready, &mut last_pong).await {
                            fatal = Some(f);
                        }
                        if std::mem::take(&mut self.reap_due) {
                            self.stop_worker(w).await;
                            return Outcome::Reaped;
                        }
                    }
                    // Control closed or reset: the worker is exiting (or was killed
                    // with frames unread); its exit status says how.
                    Ok(None) | Err(proto::ProtoError::Io { .. }) => {
                        let status = w.child.wait().await;
                        return Outcome::Exited { how: exit_text(status, why(fatal)), ran: started.elapsed() };
                    }
                    Err(e) => {
                        tracing::error!(instance = %self.inst.id, cause = %e, "protocol error from the worker; killing it");
                        w.signal_group(Signal::SIGKILL);
                        let status = w.child.wait().await;
                        return Outcome::Exited { how: exit_text(status, Some(format!("protocol error: {e}"))), ran: started.elapsed() };
                    }
                },
                cmd = self.cmds.recv() => {
                    let cmd = cmd.unwrap_or(Command::Delete(oneshot::channel().0));
                    match cmd {
                        Command::Start(_) | Command::Wake => {}
                        cmd => {
                            self.stop_worker(w).await;
                            return Outcome::Command(cmd);
                        }
                    }
                }
                _ = ping.tick(), if ready => {
                    if last_pong.elapsed() > PONG_DEADLINE {
                        tracing::error!(instance = %self.inst.id, pid = w.pid, "worker hung (no Pong in 15 s); killing it");
                        w.signal_group(Signal::SIGKILL);
                        let status = w.child.wait().await;
                        return Outcome::Exited { how: exit_text(status, Some("hung: no Pong in 15 s".into())), ran: started.elapsed() };
                    }
                    seq += 1;
                    w.send(&ToWorker::Ping { seq }, &[]).await;
                }
                () = &mut ready_deadline, if !ready => {
                    tracing::error!(instance = %self.inst.id, pid = w.pid, "worker not ready within 10 s; killing it");
                    w.signal_group(Signal::SIGKILL);
                    let status = w.child.wait().await;
                    return Outcome::Exited { how: exit_text(status, Some("not ready within 10 s".into())), ran: started.elapsed() };
                }
            }
        }
    }

    /// Handles one worker message; returns a `Fatal` message if it was one.
    async fn on_message(
        &mut self,
        w: &Worker,
        msg: ToMaster,
        ready: &mut bool,
        last_pong: &mut Instant,
    ) -> Option<String> {
        match msg {
            ToMaster::Ready(r) => {
                *ready = true;
                *last_pong = Instant::now();
                self.set(|s| {
                    s.entry = r.entry.clone();
                    s.live.mode = r.mode;
                    s.control = Some(w.channel.sender());
                });
                tracing::info!(instance = %self.inst.id, pid = r.pid, mode = r.mode, entry = ?r.entry, "worker ready");
                self.transition(WorkerState::Ready);
                self.hand_over_carried(w).await;
                self.inst.ready.send_modify(|g| *g += 1);
            }
            ToMaster::Adopted { seq } => {
                self.inst.lock().in_flight.ack(seq);
            }
            ToMaster::Stats(st) => {
                let changed = {
                    let mut s = self.inst.lock();
                    // Traffic counters are shown once written (see
                    // `Supervisor::persist_counters`), which publishes them.
                    let gauges = |x: &Stats| (x.mode, x.ping, x.pool, x.tcps, x.udps);
                    let changed = gauges(&s.live) != gauges(&st);
                    let idle = s.idle_limit().is_some_and(|limit| {
                        st.tcps + st.udps == 0 && Duration::from_millis(st.idle_ms) >= limit
                    });
                    s.live = st;
                    self.reap_due = idle;
                    changed
                };
                // Stats arrive once per interval, so this is at most one update per interval.
                if changed {
                    self.publish();
                }
            }
            ToMaster::Log(l) => self.on_log(l.line),
            ToMaster::Pong { .. } => *last_pong = Instant::now(),
            ToMaster::Bind(b) => self.on_bind(w, b.addr, b.proto).await,
            ToMaster::Fatal { message } => return Some(self.on_fatal(message)),
        }
        None
    }

    fn on_log(&mut self, line: String) {
        // A flooding (or compromised) worker must not drown the master or SSE.
        match self.log_budget.take() {
            LogVerdict::Pass(dropped) => {
                if dropped > 0 {
                    self.log_line(format!(
                        "({dropped} log lines dropped: the worker logged too fast)"
                    ));
                }
                self.log_line(clip(line));
            }
            LogVerdict::Drop => {}
        }
    }

    fn on_fatal(&mut self, message: String) -> String {
        let message = clip(message);
        tracing::error!(instance = %self.inst.id, message, "worker reported a fatal error");
        self.log_line(format!("fatal: {message}"));
        message
    }

    /// Binds what the worker asks for, if its URL allows it.
    async fn on_bind(&mut self, w: &Worker, addr: String, proto: Transport) {
        let spec = self.inst.lock().spec.clone();
        let answer_err = |reason: String| {
            ToWorker::BindError(proto::message::BindError {
                addr: addr.clone(),
                proto,
                reason,
            })
        };
        if !listeners::may_bind(&spec, &addr, proto) {
            let addr: String = addr.chars().take(128).collect();
            tracing::warn!(instance = %self.inst.id, addr = %addr.escape_debug(), proto = %proto, "worker asked to bind an address its URL does not listen on; refused");
            w.send(&answer_err("not an address of this instance".into()), &[])
                .await;
            return;
        }
        let hp = match proto::spec::HostPort::parse(&addr, "addr") {
            Ok(hp) => hp,
            Err(e) => {
                w.send(&answer_err(e.to_string()), &[]).await;
                return;
            }
        };
        let res = self.inst.lock().listeners.as_mut().map(|listeners| {
            match listeners.get(&addr, proto) {
                Some(fd) => Ok(fd),
                None => listeners.bind(&hp, proto, proto::message::ListenerRole::Entrance),
            }
        });
        let Some(res) = res else {
            w.send(&answer_err("instance is stopping".into()), &[])
                .await;
            return;
        };
        match res {
            Ok(fd) => {
                let msg = ToWorker::Bound(Bound {
                    addr: addr.clone(),
                    proto,
                });
                use std::os::fd::AsFd;
                w.send(&msg, &[fd.as_fd()]).await;
            }
            Err(e) => {
                w.send(&answer_err(e.to_string()), &[]).await;
            }
        }
    }

    /// Graceful stop: `Shutdown` → drain up to the grace (plus a second for
    /// the worker's own exit) → SIGTERM of the group → [`TERM_WAIT`] →
    /// SIGKILL of the group, processing the worker's last messages (final
    /// stats) meanwhile. A stop that needed a signal is kept in `last_exit`.
    async fn stop_worker(&mut self, w: &mut Worker) {
        self.set(|s| s.control = None);
        self.transition(WorkerState::Stopping);
        let grace = self.shared.grace;
        w.send(
            &ToWorker::Shutdown {
                grace_ms: grace.as_millis() as u64,
            },
            &[],
        )
        .await;
        let mut ready = true;
        let mut pong = Instant::now();
        let mut channel_open = true;
        // What was sent last, and when the next step is due (`None` after SIGKILL).
        let mut sent: Option<Signal> = None;
        let mut deadline = Some(tokio::time::Instant::now() + grace + Duration::from_secs(1));
        let status = loop {
            tokio::select! {
                status = w.child.wait() => break status,
                msg = w.channel.recv(), if channel_open => {
                    match msg {
                        Ok(Some((msg, _))) => {
                            self.on_message(w, msg, &mut ready, &mut pong).await;
                        }
                        // Closed or broken: only the exit is left to wait for.
                        _ => channel_open = false,
                    }
                }
                () = sleep_until_opt(deadline) => {
                    if sent.is_none() {
                        tracing::warn!(instance = %self.inst.id, pid = w.pid, grace_ms = grace.as_millis() as u64, "worker did not stop within the grace; SIGTERM to its group");
                        w.signal_group(Signal::SIGTERM);
                        sent = Some(Signal::SIGTERM);
                        deadline = Some(tokio::time::Instant::now() + TERM_WAIT);
                    } else {
                        tracing::warn!(instance = %self.inst.id, pid = w.pid, "worker still running {}s after SIGTERM; SIGKILL to its group", TERM_WAIT.as_secs());
                        w.signal_group(Signal::SIGKILL);
                        sent = Some(Signal::SIGKILL);
                        deadline = None;
                    }
                }
            }
        };
        let how = exit_text(status, None);
        tracing::info!(instance = %self.inst.id, pid = w.pid, how, "worker stopped");
        // Anything left in the group (children that ignored SIGTERM) goes too.
        w.signal_group(Signal::SIGKILL);
        let escalated = sent.map(|sig| {
            let grace = proto::duration::format(grace);
            match sig {
                Signal::SIGTERM => {
                    format!("{how}: stop escalated: SIGTERM after the {grace} grace")
                }
                _ => format!(
                    "{how}: stop escalated: SIGTERM after the {grace} grace, SIGKILL {}s later",
                    TERM_WAIT.as_secs()
                ),
            }
        });
        self.set(|s| {
            s.pid = None;
            s.fold_counters();
            if let Some(text) = escalated {
                s.last_exit = Some(text);
            }
        });
    }

    /// Gives the new worker the connections its predecessor never took.
    async fn hand_over_carried(&mut self, w: &Worker) {
        use std::os::fd::AsFd;
        for h in std::mem::take(&mut self.carried) {
            let seq = self
                .inst
                .lock()
                .in_flight
                .track(&h.stream, &h.client, h.peer);
            let msg = ToWorker::Adopt(proto::message::Adopt {
                kind: Transport::Tcp,
                client: h.client,
                peer: h.peer,
                seq,
            });
            // A failed send leaves the kept copy in flight for the next worker.
            w.send(&msg, &[h.stream.as_fd()]).await;
        }
    }

    /// The worker is gone: reads the frames it wrote before it went, so its
    /// last counters, log lines and `Adopted` answers count. Its end is
    /// closed, so this does not wait. Returns its `Fatal` message, if any.
    async fn read_last_answers(&mut self, w: &mut Worker) -> Option<String> {
        let mut fatal = None;
        let read = async {
            while let Ok(Some((msg, _))) = w.channel.recv().await {
                match msg {
                    ToMaster::Adopted { seq } => {
                        self.inst.lock().in_flight.ack(seq);
                    }
                    ToMaster::Stats(st) => self.inst.lock().live = st,
                    ToMaster::Log(l) => self.on_log(l.line),
                    ToMaster::Fatal { message } => {
                        fatal = Some(self.on_fatal(message));
                    }
                    ToMaster::Ready(_) | ToMaster::Pong { .. } | ToMaster::Bind(_) => {}
                }
            }
        };
        // Guards against a worker's descendant holding its control socket open.
        let _ = tokio::time::timeout(Duration::from_millis(200), read).await;
        fatal
    }

    fn drop_carried(&mut self, why: &str) {
        if !self.carried.is_empty() {
            tracing::warn!(instance = %self.inst.id, count = self.carried.len(), why, "gateway connections closed unserved");
            self.carried.clear();
        }
    }

    async fn persist_counters(&mut self) {
        {
            let mut s = self.inst.lock();
            s.pid = None;
            s.control = None;
            let (fresh, begun) = s.in_flight.take_unanswered();
            if begun > 0 {
                tracing::warn!(instance = %self.inst.id, count = begun, "gateway connections the worker had begun to serve closed with it");
            }
            self.carried.extend(fresh);
            s.fold_counters();
        }
        if let Err(e) = self.inst.persist_counters(&self.shared.store).await {
            tracing::error!(instance = %self.inst.id, cause = %e, "cannot persist counters");
        }
    }
}

/// Sleeps until `at`; never wakes for `None`.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `exit 0`, `signal 9 (SIGKILL)`, with the worker's fatal message if any.
fn exit_text(status: std::io::Result<std::process::ExitStatus>, fatal: Option<String>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let base = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(name) => format!("signal {sig} ({name})"),
                Err(_) => format!("signal {sig}"),
            },
            _ => "unknown".into(),
        },
        Err(e) => format!("wait failed: {e}"),
    };
    match fatal {
        Some(f) => format!("{base}: {f}"),
        None => base,
    }
}
