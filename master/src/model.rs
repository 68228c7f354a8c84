//! The master's data: what is persisted (records, schema-versioned) and what
//! the API and SSE show (views, with NodePass's exact keys and order).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Instance ids are 8 lowercase hex chars; this one is the API-key record.
pub const KEY_RECORD_ID: &str = "********";
/// Schema version written into every record.
pub const SCHEMA_VERSION: u32 = 1;
/// Longest alias, meta string or client id accepted (bytes).
pub const MAX_FIELD: usize = 256;
/// Largest `meta` accepted, in bytes of its JSON. With the URL (8192 bytes,
/// canonical) and the fields above, it bounds an instance's JSON well under
/// the 64 KiB of an SSE frame (`crate::sse::FRAME_LIMIT`), which must carry
/// it whole.
pub const MAX_META: usize = 16 * 1024;

/// `meta.peer` as NodePassDash uses it (opaque strings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(default)]
    pub sid: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub alias: String,
}

/// `meta`: always present, `tags` never null.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub peer: Peer,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Meta {
    /// Bytes of its JSON, as the API and SSE send it (see [`MAX_META`]).
    pub fn json_len(&self) -> usize {
        serde_json::to_vec(self).map_or(usize::MAX, |v| v.len())
    }
}

/// `tls=1` certificate kept per instance so its fingerprint survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub cert_pem: String,
    pub key_pem: String,
}

/// One instance as stored in the `instances` tree (id → JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub v: u32,
    pub id: String,
    #[serde(default)]
    pub alias: String,
    /// The instance URL as served in the API (contains the tunnel key).
    pub url: String,
    /// Start with the master (NodePass `restart`).
    pub restart: bool,
    /// Free-form metadata (NodePassDash peer and tags); replaced, never merged.
    #[serde(default)]
    pub meta: Meta,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    #[serde(default)]
    pub cert: Option<CertRecord>,
    /// Creation time, ms since the Unix epoch.
    #[serde(default)]
    pub created_ms: u64,
}

/// Instances created without a tenant belong to `default`.
pub fn default_tenant() -> String {
    "default".into()
}

/// Cumulative traffic of an instance (the `counters` tree), across worker
/// restarts, since the last `reset`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub tcprx: u64,
    pub tcptx: u64,
    pub udprx: u64,
    pub udptx: u64,
}

/// `counters` tree value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRecord {
    pub v: u32,
    #[serde(flatten)]
    pub totals: Counters,
}

/// The `master` tree: API key, master id and alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterRecord {
    pub v: u32,
    /// 32 hex chars.
    pub api_key: String,
    /// 16 hex chars (NodePass's Master ID).
    pub master_id: String,
    #[serde(default)]
    pub alias: String,
}

/// `worker` in the instance JSON (Drover).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerView {
    /// `parked starting ready stopping backoff failed`.
    pub state: String,
    pub pid: Option<u32>,
    /// The worker's loopback entrance (`127.0.0.1:port`), if it has one.
    pub entry: Option<String>,
    pub restarts: u64,
    /// When the current state began (RFC 3339).
    pub since: String,
    /// How the last worker process ended (`exit 1`, `signal 9 (SIGKILL)`), if any did.
    pub last_exit: Option<String>,
}

/// The instance JSON of the API and SSE; every key always present, in
/// NodePass's order, Drover's `tenant` and `worker` last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub alias: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub url: String,
    pub config: String,
    pub restart: bool,
    pub meta: Meta,
    pub mode: u64,
    pub ping: u64,
    pub pool: u64,
    pub tcps: u64,
    pub udps: u64,
    pub tcprx: u64,
    pub tcptx: u64,
    pub udprx: u64,
    pub udptx: u64,
    pub tenant: String,
    /// `null` only for the `********` record.
    pub worker: Option<WorkerView>,
}

impl InstanceView {
    /// The pseudo-instance that carries the API key (NodePass compatible).
    pub fn key_record(master: &MasterRecord) -> Self {
        Self {
            id: KEY_RECORD_ID.into(),
            alias: master.alias.clone(),
            kind: String::new(),
            status: String::new(),
            url: master.api_key.clone(),
            config: master.master_id.clone(),
            restart: false,
            meta: Meta::default(),
            mode: 0,
            ping: 0,
            pool: 0,
            tcps: 0,
            udps: 0,
            tcprx: 0,
            tcptx: 0,
            udprx: 0,
            udptx: 0,
            tenant: String::new(),
            worker: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The view serialises with NodePass's keys in NodePass's order.
    #[test]
    fn view_key_order() {
        let m = MasterRecord {
            v: 1,
            api_key: "k".into(),
            master_id: "m".into(),
            alias: String::new(),
        };
        let json = serde_json::to_string(&InstanceView::key_record(&m)).unwrap();
        assert!(json.starts_with(
            r#"{"id":"********","alias":"","type":"","status":"","url":"k","config":"m","restart":false,"meta":{"peer":{"sid":"","type":"","alias":""},"tags":{}},"mode":0,"ping":0,"pool":0,"tcps":0"#
        ), "{json}");
    }
}
