//! PATCH of an instance's stored fields (alias, restart flag, meta), checked
//! against the record they produce before anything is applied.

use std::collections::BTreeMap;

use super::{SupError, Supervisor};
use crate::model::{InstanceRecord, InstanceView, MAX_META, Peer};
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

impl Supervisor {
    /// Applies `edit` to the stored fields and persists them.
    pub async fn update(&self, id: &str, edit: &RecordEdit) -> Result<InstanceView, SupError> {
        let inst = self.require(id)?;
        {
            let mut s = inst.lock();
            let r = edit.applied_to(&s.record)?;
            if r == s.record {
                return Ok(s.view());
            }
            s.record = r;
        }
        self.persist(&inst).await?;
        let view = inst.view();
        self.shared.hub.publish(EventKind::Update, Some(&view), "");
        Ok(view)
    }
}
