//! PATCH of an instance's stored fields (alias, restart flag, meta), checked
//! against the record they produce before anything is applied.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use super::instance::{Command, Instance, Status, WorkerState};
use super::listeners::Listeners;
use super::state::State;
use super::{SupError, Supervisor};
use crate::model::{Counters, InstanceRecord, InstanceView, MAX_META, Peer};
use crate::sse::EventKind;

/// The stored fields a PATCH sets; `None` keeps a field. `peer` and `tags`
/// replace what was there (NodePass's semantics).
#[derive(Default)]
pub struct RecordEdit {
    pub alias: Option<String>,
    pub restart: Option<bool>,
    pub peer: Option<Peer>,
    pub tags: Option<BTreeMap<String, String>>,
}

impl RecordEdit {
    /// `record` with this edit applied, or why the result is refused.
    fn applied_to(&self, record: &InstanceRecord) -> Result<InstanceRecord, SupError> {
        let mut r = record.clone();
        if let Some(a) = &self.alias {
            r.alias.clone_from(a);
        }
        if let Some(x) = self.restart {
            r.restart = x;
        }
        if let Some(p) = &self.peer {
            r.meta.peer = p.clone();
        }
        if let Some(t) = &self.tags {
            r.meta.tags.clone_from(t);
        }
        // Every SSE frame carries the instance whole and must stay under
        // 64 KiB; only a meta this PATCH sets is held to the limit.
        let sets_meta = self.peer.is_some() || self.tags.is_some();
        if sets_meta && r.meta.json_len() > MAX_META {
            return Err(SupError::Invalid(format!(
                "Meta exceeds maximum size {MAX_META} bytes"
            )));
        }
        Ok(r)
    }
}

/// A PATCH `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Reset,
}

/// What a start or restart comes to, decided before anything is changed.
enum Go {
    /// Already running.
    Nothing,
    /// A fresh worker on the listeners it has.
    Restart,
    /// A first worker on these listeners (bound for it).
    Start(Listeners),
}

impl Supervisor {
    /// PATCH: the stored fields, then the action, all or nothing. What can be
    /// refused (the edit's limits, the ports a start binds) is settled
    /// before anything is persisted or shown, so a 400 or 409 changes
    /// nothing; NodePass instead saves each part as it goes.
    pub async fn patch(
        &self,
        id: &str,
        edit: &RecordEdit,
        action: Option<Action>,
    ) -> Result<InstanceView, SupError> {
        let inst = self.require(id)?;
        edit.applied_to(&inst.lock().record)?;
        let go = match action {
            Some(a @ (Action::Start | Action::Restart)) => self.plan(&inst, a).await?,
            _ => Go::Nothing,
        };
        // If this fails, `go` is dropped with the listeners it bound.
        let reset = action == Some(Action::Reset);
        let mut view = self.update(&inst, edit, reset).await?;
        match action {
            None | Some(Action::Reset) => return Ok(view),
            Some(Action::Stop) => self.stop(&inst).await,
            Some(Action::Start | Action::Restart) => match go {
                Go::Nothing => {}
                Go::Restart => inst.send(Command::Restart),
                Go::Start(l) => self.launch(&inst, l),
            },
        }
        view = inst.view();
        Ok(view)
    }

    /// Start: a stopped instance binds its listeners (a taken port is a
    /// 409 here), a failed one gets a fresh worker; restart: a fresh worker
    /// whatever the state, binding first if it has no listeners.
    async fn plan(&self, inst: &Instance, action: Action) -> Result<Go, SupError> {
        let (status, has_worker, spec) = {
            let s = inst.lock();
            let has_worker = s.pid.is_some() || s.worker != WorkerState::Parked;
            (s.status, has_worker, s.spec.clone())
        };
        Ok(match (status, action) {
            (Status::Running, Action::Start) => Go::Nothing,
            (Status::Running, _) => Go::Restart,
            (Status::Error, _) if has_worker => Go::Restart,
            _ => Go::Start(self.acquire(inst, &spec).await?),
        })
    }

    /// Applies `edit` to the stored fields and, with `reset`, zeroes the
    /// counters, in one write. Memory changes under the store's write gate
    /// and is put back there if the write fails: the change is shown only
    /// once it is on disk, and a failed write changes nothing.
    async fn update(
        &self,
        inst: &Instance,
        edit: &RecordEdit,
        reset: bool,
    ) -> Result<InstanceView, SupError> {
        let mut skipped = Skipped::Removed;
        let wrote = self
            .shared
            .store
            .put_instance_settled(
                || {
                    let mut s = inst.lock();
                    if s.removed {
                        return None;
                    }
                    let record = match edit.applied_to(&s.record) {
                        Ok(r) if r == s.record && !reset => {
                            skipped = Skipped::Unchanged;
                            return None;
                        }
                        Ok(r) => r,
                        Err(e) => {
                            skipped = Skipped::Refused(e);
                            return None;
                        }
                    };
                    let undo = Undo::apply(&mut s, record.clone(), reset);
                    let totals = reset.then(|| s.totals());
                    Some((record, totals, (undo, totals)))
                },
                |landed, (undo, totals)| {
                    let mut s = inst.lock();
                    match (landed, totals) {
                        (true, Some(t)) => s.shown = t,
                        (true, None) => {}
                        (false, _) => undo.revert(&mut s),
                    }
                },
            )
            .await
            .map_err(|e| SupError::Store(e.to_string()))?;
        if !wrote {
            return match skipped {
                Skipped::Removed => Err(SupError::NotFound),
                Skipped::Unchanged => Ok(inst.view()),
                Skipped::Refused(e) => Err(e),
            };
        }
        let view = inst.view();
        self.shared.hub.publish(EventKind::Update, Some(&view), "");
        Ok(view)
    }

    /// Action stop: waits until the worker is gone.
    pub(super) async fn stop(&self, inst: &Instance) {
        if inst.lock().status == Status::Stopped {
            return;
        }
        let (tx, rx) = oneshot::channel();
        inst.send(Command::Stop(tx));
        let _ = rx.await;
    }
}

/// Why [`Supervisor::update`] wrote nothing.
enum Skipped {
    /// The instance is being deleted.
    Removed,
    /// The edit changes nothing.
    Unchanged,
    /// The edited record is refused (its limits).
    Refused(SupError),
}

/// What an update changed in memory, to put back if its write fails.
struct Undo {
    /// The record before, and the one the update set.
    before: InstanceRecord,
    set: InstanceRecord,
    /// `base` and `offset` before a reset, and what the reset set them to.
    counters: Option<([Counters; 2], [Counters; 2])>,
}

impl Undo {
    fn apply(s: &mut State, record: InstanceRecord, reset: bool) -> Undo {
        let before = std::mem::replace(&mut s.record, record.clone());
        let counters = reset.then(|| {
            let old = [s.base, s.offset];
            s.reset_counters();
            (old, [s.base, s.offset])
        });
        Undo {
            before,
            set: record,
            counters,
        }
    }

    /// Puts back what is still as the update left it (a worker that exited
    /// meanwhile has folded its counters: those stay).
    fn revert(self, s: &mut State) {
        if s.record == self.set {
            s.record = self.before;
        }
        if let Some((old, set)) = self.counters
            && [s.base, s.offset] == set
        {
            [s.base, s.offset] = old;
        }
    }
}
