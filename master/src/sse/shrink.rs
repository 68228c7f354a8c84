//! The last resort of `frame_body`: an instance whose JSON alone would not
//! fit in one frame is sent with its long strings cut. The API bounds every
//! record it accepts (URL, field lengths, [`crate::model::MAX_META`]) so
//! that never happens to them; what is left is a worker's report (its
//! `entry`, its fatal message in `last_exit`) or a record from an older store.

use std::collections::BTreeMap;

use super::{CUT_MARK, json_char_len, json_str_len};
use crate::model::InstanceView;

/// JSON bytes each string may keep, cut mark included.
const FIELD_BUDGET: usize = 1024;
/// JSON bytes all `meta.tags` entries may keep together.
const TAGS_BUDGET: usize = 8 * 1024;

/// `view` with every string cut to [`FIELD_BUDGET`] JSON bytes and only the
/// tags that fit in [`TAGS_BUDGET`]: about 23 KiB at most, whatever came in.
pub(super) fn shrink(view: &InstanceView) -> InstanceView {
    let mut v = view.clone();
    for s in [
        &mut v.id,
        &mut v.alias,
        &mut v.kind,
        &mut v.status,
        &mut v.url,
        &mut v.config,
        &mut v.tenant,
        &mut v.meta.peer.sid,
        &mut v.meta.peer.kind,
        &mut v.meta.peer.alias,
    ] {
        cut(s, FIELD_BUDGET);
    }
    if let Some(w) = v.worker.as_mut() {
        for s in [&mut w.state, &mut w.since] {
            cut(s, FIELD_BUDGET);
        }
        for s in [w.entry.as_mut(), w.last_exit.as_mut()]
            .into_iter()
            .flatten()
        {
            cut(s, FIELD_BUDGET);
        }
    }
    // Whole entries or none: a cut key could collide with another.
    let mut used = 0;
    let mut tags = BTreeMap::new();
    for (k, val) in std::mem::take(&mut v.meta.tags) {
        let len = json_str_len(&k) + json_str_len(&val) + 4;
        if used + len <= TAGS_BUDGET {
            used += len;
            tags.insert(k, val);
        }
    }
    v.meta.tags = tags;
    v
}

/// Cuts `s` on a char boundary so that, with [`CUT_MARK`] appended, it takes
/// at most `budget` bytes inside a JSON string; short strings are kept.
pub(super) fn cut(s: &mut String, budget: usize) {
    if json_str_len(s) <= budget {
        return;
    }
    let room = budget.saturating_sub(json_str_len(CUT_MARK));
    let mut used = 0;
    let mut at = 0;
    for (i, c) in s.char_indices() {
        used += json_char_len(c);
        if used > room {
            at = i;
            break;
        }
    }
    s.truncate(at);
    s.push_str(CUT_MARK);
}
