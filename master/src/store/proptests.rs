//! Property tests of the store's records (issue 8):
//!
//! 1. Every record type (instance, master, counters, binding) with any
//!    content and any schema version up to [`SCHEMA_VERSION`] survives
//!    record → bytes → record.
//! 2. A record of any newer version is refused as newer, never misread,
//!    whether or not the rest of it still fits today's struct; bytes without
//!    a version are corrupt.
//! 3. Through a real sled store: instances written and read back (after a
//!    reopen) are the same, and newer ones stored beside them are skipped
//!    and kept.
//!
//! Case counts are modest (CI runs on 2 cores); `PROPTEST_CASES` raises them.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use super::*;
use crate::model::{CertRecord, Meta, Peer};

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    // No regression files in the tree: a failure prints its minimal input,
    // and a bug it finds gets a unit test of its own.
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any text, control characters and non-ASCII included.
fn text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    vec(any::<char>(), len).prop_map(|c| c.into_iter().collect())
}

fn version() -> impl Strategy<Value = u32> {
    0..=SCHEMA_VERSION
}

/// A version above ours: often the very next ones, any up to `u32::MAX`.
fn newer_version() -> impl Strategy<Value = u32> {
    prop_oneof![
        (SCHEMA_VERSION + 1)..=(SCHEMA_VERSION + 3),
        (SCHEMA_VERSION + 1)..=u32::MAX,
    ]
}

fn instance() -> impl Strategy<Value = InstanceRecord> {
    (
        (
            version(),
            "[0-9a-f]{8}",
            text(0..16),
            text(0..64),
            any::<bool>(),
        ),
        (
            text(0..8),
            text(0..8),
            text(0..8),
            btree_map(text(0..8), text(0..8), 0..4),
        ),
        (
            text(0..8),
            proptest::option::of((text(0..32), text(0..32))),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (v, id, alias, url, restart),
                (sid, kind, peer_alias, tags),
                (tenant, cert, created_ms),
            )| {
                InstanceRecord {
                    v,
                    id,
                    alias,
                    url,
                    restart,
                    meta: Meta {
                        peer: Peer {
                            sid,
                            kind,
                            alias: peer_alias,
                        },
                        tags,
                    },
                    tenant,
                    cert: cert.map(|(cert_pem, key_pem)| CertRecord { cert_pem, key_pem }),
                    created_ms,
                }
            },
        )
}

fn master() -> impl Strategy<Value = MasterRecord> {
    (version(), "[0-9a-f]{32}", "[0-9a-f]{16}", text(0..16)).prop_map(
        |(v, api_key, master_id, alias)| MasterRecord {
            v,
            api_key,
            master_id,
            alias,
        },
    )
}

fn counter() -> impl Strategy<Value = CounterRecord> {
    (version(), any::<[u64; 4]>()).prop_map(|(v, n)| CounterRecord {
        v,
        totals: Counters {
            tcprx: n[0],
            tcptx: n[1],
            udprx: n[2],
            udptx: n[3],
        },
    })
}

fn binding() -> impl Strategy<Value = BindingRecord> {
    (version(), "[0-9a-f]{8}").prop_map(|(v, instance)| BindingRecord { v, instance })
}

/// record → bytes → record, through the store's own encode/decode.
fn round_trip<T>(record: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(record, "t", "k").expect("encode");
    match decode::<T>(&bytes) {
        Ok(back) => prop_assert_eq!(&back, record),
        Err(bad) => prop_assert!(false, "{} for {:?}", bad, record),
    }
    Ok(())
}

/// The record's JSON with `v` replaced by `newer`, and, when `reshape`, its
/// other fields renamed and a new one added (as a future schema might).
fn as_newer<T: Serialize>(record: &T, newer: u32, reshape: bool) -> Vec<u8> {
    let mut value = serde_json::to_value(record).expect("to value");
    let map = value.as_object_mut().expect("records are objects");
    if reshape {
        let old: Vec<(String, serde_json::Value)> = std::mem::take(map)
            .into_iter()
            .filter(|(k, _)| k != "v")
            .collect();
        for (k, v) in old {
            map.insert(format!("{k}_v{newer}"), v);
        }
        map.insert("added".into(), serde_json::json!({ "nested": [1, 2, 3] }));
    }
    map.insert("v".into(), newer.into());
    serde_json::to_vec(&value).expect("to bytes")
}

/// A newer record is refused as newer (with its version), never decoded.
fn refused_as_newer<T>(record: &T, newer: u32, reshape: bool) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + std::fmt::Debug,
{
    let bytes = as_newer(record, newer, reshape);
    match decode::<T>(&bytes) {
        Err(Bad::Newer(v)) => prop_assert_eq!(v, newer),
        Err(Bad::Corrupt(why)) => prop_assert!(false, "reported as corrupt: {}", why),
        Ok(misread) => prop_assert!(false, "a v{} record was read as {:?}", newer, misread),
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    /// Every record type, any content, any version up to ours: the bytes
    /// decode to the same record.
    #[test]
    fn records_round_trip(
        i in instance(),
        m in master(),
        c in counter(),
        b in binding(),
    ) {
        round_trip(&i)?;
        round_trip(&m)?;
        round_trip(&c)?;
        round_trip(&b)?;
    }

    /// Any version above ours is refused as newer, for every record type,
    /// whether the rest still fits today's struct or not.
    #[test]
    fn newer_versions_are_refused(
        i in instance(),
        m in master(),
        c in counter(),
        b in binding(),
        newer in newer_version(),
        reshape in any::<bool>(),
    ) {
        refused_as_newer(&i, newer, reshape)?;
        refused_as_newer(&m, newer, reshape)?;
        refused_as_newer(&c, newer, reshape)?;
        refused_as_newer(&b, newer, reshape)?;
    }

    /// Without a version, or with one that is not a u32, a record is
    /// corrupt, not decoded.
    #[test]
    fn unversioned_records_are_corrupt(i in instance(), bad_v in prop_oneof![
        Just(serde_json::Value::Null),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(1.5)),
        Just(serde_json::json!(u64::from(u32::MAX) + 1)),
        text(0..4).prop_map(serde_json::Value::String),
    ], drop_v in any::<bool>()) {
        let mut value = serde_json::to_value(&i).expect("to value");
        let map = value.as_object_mut().expect("object");
        if drop_v {
            map.remove("v");
        } else {
            map.insert("v".into(), bad_v);
        }
        let bytes = serde_json::to_vec(&value).expect("to bytes");
        prop_assert!(matches!(decode::<InstanceRecord>(&bytes), Err(Bad::Corrupt(_))));
    }
}

proptest! {
    // Each case opens, writes (with fsync), reopens a sled store.
    #![proptest_config(cases(24))]

    /// Through sled: what was written reads back the same after a reopen;
    /// newer records beside them are skipped, reported and kept.
    #[test]
    fn store_round_trips_and_skips_newer(
        records in vec(instance(), 1..5),
        newer in newer_version(),
        m in master(),
    ) {
        let mut by_id = BTreeMap::new();
        for r in records {
            by_id.insert(r.id.clone(), r);
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = Store::open(&dir).expect("open");
        rt.block_on(async {
            for r in by_id.values() {
                store.put_instance(r).await.expect("put");
            }
            store.put_master(&m).await.expect("put master");
        });
        // A newer record under a key of its own, stored as a newer drover would.
        let future_id = "ffffffff_newer";
        let first = by_id.values().next().expect("one").clone();
        store
            .raw()
            .instances
            .insert(future_id, as_newer(&InstanceRecord { id: future_id.into(), ..first }, newer, false))
            .expect("raw insert");
        rt.block_on(store.flush()).expect("flush");
        drop(store);
        let store = reopen_after_drop(&dir);
        let (loaded, problems) = store.instances();
        prop_assert_eq!(loaded, by_id.into_values().collect::<Vec<_>>());
        prop_assert_eq!(problems.len(), 1);
        prop_assert!(problems[0].contains(&format!("schema v{newer} is newer")), "{}", problems[0]);
        prop_assert!(store.raw().instances.get(future_id).expect("get").is_some(), "the newer record is kept");
        prop_assert_eq!(store.master().expect("master"), Some(m));
    }
}
