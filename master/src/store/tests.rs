//! Unit tests of the sled store, each on its own temporary data dir.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::model::{CertRecord, Meta, Peer};

fn instance(id: &str) -> InstanceRecord {
    InstanceRecord {
        v: SCHEMA_VERSION,
        id: id.into(),
        alias: format!("alias-{id}"),
        url: format!("server://key@:10101/127.0.0.1:{}", 8000 + id.len()),
        restart: true,
        meta: Meta::default(),
        tenant: "default".into(),
        cert: None,
        created_ms: 1,
    }
}

fn master_record() -> MasterRecord {
    MasterRecord {
        v: SCHEMA_VERSION,
        api_key: "0123456789abcdef0123456789abcdef".into(),
        master_id: "fedcba9876543210".into(),
        alias: "lab".into(),
    }
}

fn counters(n: u64) -> Counters {
    Counters {
        tcprx: n,
        tcptx: n + 1,
        udprx: n + 2,
        udptx: n + 3,
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("data")).expect("open store");
    (tmp, store)
}

fn reopen(tmp: &tempfile::TempDir, store: Store) -> Store {
    drop(store);
    reopen_after_drop(&tmp.path().join("data"))
}

/// Every record type reads back as written.
#[tokio::test]
async fn round_trip_each_record() {
    let (_tmp, store) = open();
    assert_eq!(store.master().unwrap(), None);
    store.put_master(&master_record()).await.unwrap();
    assert_eq!(store.master().unwrap(), Some(master_record()));

    let mut rec = instance("aaaa0001");
    rec.meta = Meta {
        peer: Peer {
            sid: "s".into(),
            kind: "1".into(),
            alias: "p".into(),
        },
        tags: BTreeMap::from([("k".into(), "v".into())]),
    };
    rec.cert = Some(CertRecord {
        cert_pem: "C".into(),
        key_pem: "K".into(),
    });
    store.put_instance(&rec).await.unwrap();
    assert_eq!(store.instances(), (vec![rec], vec![]));

    assert_eq!(store.counters("aaaa0001"), Counters::default());
    store
        .put_counters(&[("aaaa0001".into(), counters(10))])
        .await
        .unwrap();
    assert_eq!(store.counters("aaaa0001"), counters(10));

    assert_eq!(store.binding("alice"), None);
    store.put_binding("alice", "aaaa0001").await.unwrap();
    assert_eq!(store.binding("alice").as_deref(), Some("aaaa0001"));
    assert!(store.delete_binding("alice").await.unwrap());
    assert!(!store.delete_binding("alice").await.unwrap());
    assert_eq!(store.binding("alice"), None);
}

/// What was written is there after the store is closed and opened again.
#[tokio::test]
async fn persists_across_reopen() {
    let (tmp, store) = open();
    store.put_master(&master_record()).await.unwrap();
    store.put_instance(&instance("aaaa0001")).await.unwrap();
    store.put_instance(&instance("aaaa0002")).await.unwrap();
    store
        .put_counters(&[("aaaa0002".into(), counters(7))])
        .await
        .unwrap();
    store.put_binding("bob", "aaaa0002").await.unwrap();

    let store = reopen(&tmp, store);
    assert_eq!(store.master().unwrap(), Some(master_record()));
    let (records, problems) = store.instances();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(records, vec![instance("aaaa0001"), instance("aaaa0002")]);
    assert_eq!(store.counters("aaaa0002"), counters(7));
    assert_eq!(store.binding("bob").as_deref(), Some("aaaa0002"));
}

/// A garbage record is reported and skipped, the others load, and the
/// garbage is still there afterwards (also after further writes and a reopen).
#[tokio::test]
async fn corrupt_instance_is_skipped_and_kept() {
    let (tmp, store) = open();
    store.put_instance(&instance("aaaa0001")).await.unwrap();
    store
        .raw()
        .instances
        .insert("bad00bad", &b"\xff{not json"[..])
        .unwrap();
    store
        .raw()
        .instances
        .insert("noversio", &br#"{"id":"noversio"}"#[..])
        .unwrap();
    store.put_instance(&instance("aaaa0003")).await.unwrap();

    let (records, problems) = store.instances();
    assert_eq!(records, vec![instance("aaaa0001"), instance("aaaa0003")]);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("instance bad00bad: skipped: not a JSON record"));
    assert!(problems[1].starts_with("instance noversio: skipped: no schema version"));

    store.put_instance(&instance("aaaa0004")).await.unwrap();
    let store = reopen(&tmp, store);
    let (records, problems) = store.instances();
    assert_eq!(records.len(), 3);
    assert_eq!(problems.len(), 2);
    let kept = store
        .raw()
        .instances
        .get("bad00bad")
        .unwrap()
        .expect("still stored");
    assert_eq!(&kept[..], b"\xff{not json");
}

/// A record of a newer schema is skipped with a message saying so.
#[tokio::test]
async fn newer_schema_is_skipped() {
    let (_tmp, store) = open();
    let mut future = instance("aaaa0009");
    future.v = 999;
    store.put_instance(&future).await.unwrap();
    // A newer record need not fit today's struct at all.
    store
        .raw()
        .instances
        .insert("aaaa000a", &br#"{"v":999,"id":7}"#[..])
        .unwrap();
    store.put_instance(&instance("aaaa0001")).await.unwrap();

    let (records, problems) = store.instances();
    assert_eq!(records, vec![instance("aaaa0001")]);
    assert_eq!(
        problems,
        vec![
            "instance aaaa0009: skipped: schema v999 is newer than the v1 this drover understands",
            "instance aaaa000a: skipped: schema v999 is newer than the v1 this drover understands",
        ]
    );
    assert!(store.raw().instances.get("aaaa0009").unwrap().is_some());
}

/// A record stored under another id's key is reported, not loaded.
#[tokio::test]
async fn instance_under_wrong_key_is_skipped() {
    let (_tmp, store) = open();
    let json = serde_json::to_vec(&instance("aaaa0001")).unwrap();
    store.raw().instances.insert("ffff0000", json).unwrap();
    let (records, problems) = store.instances();
    assert!(records.is_empty());
    assert_eq!(
        problems,
        vec![r#"instance ffff0000: skipped: the record says its id is "aaaa0001""#]
    );
}

/// A corrupt or newer master record is an error naming the record, never `None`.
#[tokio::test]
async fn corrupt_master_is_an_error() {
    let (_tmp, store) = open();
    store
        .raw()
        .master
        .insert(MASTER_KEY, &b"garbage"[..])
        .unwrap();
    let err = store.master().unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { tree: "master", .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("store: master/master is unreadable: not a JSON record"),
        "{err}"
    );

    store
        .raw()
        .master
        .insert(MASTER_KEY, &br#"{"v":2,"api_key":"x"}"#[..])
        .unwrap();
    let err = store.master().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Newer {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Deleting an instance removes its counters and every binding to it, and
/// nothing that belongs to another instance.
#[tokio::test]
async fn delete_instance_removes_counters_and_bindings() {
    let (tmp, store) = open();
    store.put_instance(&instance("aaaa0001")).await.unwrap();
    store.put_instance(&instance("aaaa0002")).await.unwrap();
    store
        .put_counters(&[
            ("aaaa0001".into(), counters(1)),
            ("aaaa0002".into(), counters(2)),
        ])
        .await
        .unwrap();
    for client in ["a", "b", "c"] {
        store.put_binding(client, "aaaa0001").await.unwrap();
    }
    store.put_binding("d", "aaaa0002").await.unwrap();

    assert!(store.delete_instance("aaaa0001").await.unwrap());
    assert!(!store.delete_instance("aaaa0001").await.unwrap());

    let store = reopen(&tmp, store);
    assert_eq!(store.instances().0, vec![instance("aaaa0002")]);
    assert!(store.raw().counters.get("aaaa0001").unwrap().is_none());
    assert_eq!(store.counters("aaaa0002"), counters(2));
    assert_eq!(
        store.bindings(None, 10),
        vec![("d".to_string(), "aaaa0002".to_string())]
    );
}

/// Bindings and counters exist only for stored instances.
#[tokio::test]
async fn writes_for_unknown_instances() {
    let (_tmp, store) = open();
    store.put_instance(&instance("aaaa0001")).await.unwrap();
    let err = store.put_binding("eve", "0000dead").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownInstance { instance } if instance == "0000dead"),
        "{err:?}"
    );
    assert_eq!(store.binding("eve"), None);

    store
        .put_counters(&[
            ("0000dead".into(), counters(5)),
            ("aaaa0001".into(), counters(6)),
        ])
        .await
        .unwrap();
    assert!(store.raw().counters.get("0000dead").unwrap().is_none());
    assert_eq!(store.counters("aaaa0001"), counters(6));
}

/// Unreadable counters count from zero; unreadable bindings are unbound.
#[tokio::test]
async fn corrupt_counters_and_bindings_read_as_empty() {
    let (_tmp, store) = open();
    store.put_instance(&instance("aaaa0001")).await.unwrap();
    store.raw().counters.insert("aaaa0001", &b"[]"[..]).unwrap();
    assert_eq!(store.counters("aaaa0001"), Counters::default());
    store.raw().bindings.insert("zed", &b"nope"[..]).unwrap();
    store.put_binding("amy", "aaaa0001").await.unwrap();
    assert_eq!(store.binding("zed"), None);
    assert_eq!(
        store.bindings(None, 10),
        vec![("amy".to_string(), "aaaa0001".to_string())]
    );
    // Deleting the instance leaves the unreadable binding alone.
    store.delete_instance("aaaa0001").await.unwrap();
    assert!(store.raw().bindings.get("zed").unwrap().is_some());
}

/// Paging walks the bindings in client order, `after` exclusive.
#[tokio::test]
async fn bindings_paging() {
    let (_tmp, store) = open();
    store.put_instance(&instance("aaaa0001")).await.unwrap();
    for client in ["c5", "c1", "c3", "c2", "c4"] {
        store.put_binding(client, "aaaa0001").await.unwrap();
    }
    let names = |page: Vec<(String, String)>| page.into_iter().map(|(c, _)| c).collect::<Vec<_>>();
    assert_eq!(names(store.bindings(None, 2)), ["c1", "c2"]);
    assert_eq!(names(store.bindings(Some("c2"), 2)), ["c3", "c4"]);
    assert_eq!(names(store.bindings(Some("c4"), 2)), ["c5"]);
    assert!(store.bindings(Some("c5"), 2).is_empty());
    assert_eq!(names(store.bindings(Some("c25"), 1)), ["c3"]);
    assert!(store.bindings(None, 0).is_empty());
}

/// The data dir is 0700 (tightened if it was looser) and sled's files 0600.
#[tokio::test]
async fn files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::open(&dir).unwrap();
    store.put_instance(&instance("aaaa0001")).await.unwrap();

    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let mut seen = 0;
    let mut stack = vec![dir.join("db")];
    while let Some(d) = stack.pop() {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 2, "expected sled's conf and db files");
}

/// A second open of a dir in use fails with a message saying why.
#[test]
fn second_open_is_refused_plainly() {
    let (tmp, _store) = open();
    let dir = tmp.path().join("data");
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "data dir {} is in use by another drover master (sled lock)",
            dir.display()
        )
    );
}

/// A data dir path that is a file is an error naming it.
#[test]
fn data_dir_that_is_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    fs::write(&file, "x").unwrap();
    let err = Store::open(&file).unwrap_err();
    assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
}

/// The data dir comes from DROVER_DATA_DIR, then STATE_DIRECTORY's first
/// entry, then `./drover-data`.
#[test]
fn data_dir_choice() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    let cases: &[(&'static [(&'static str, &'static str)], &str)] = &[
        (&[], "./drover-data"),
        (
            &[("DROVER_DATA_DIR", "/d"), ("STATE_DIRECTORY", "/s")],
            "/d",
        ),
        (&[("DROVER_DATA_DIR", ""), ("STATE_DIRECTORY", "/s")], "/s"),
        (&[("STATE_DIRECTORY", "/s1:/s2")], "/s1"),
        (&[("STATE_DIRECTORY", ":/s2")], "/s2"),
        (&[("STATE_DIRECTORY", "")], "./drover-data"),
    ];
    for (vars, want) in cases {
        assert_eq!(data_dir_from(env(vars)), PathBuf::from(want), "{vars:?}");
    }
}

/// The store's futures can be spawned on the multi-threaded runtime.
#[test]
fn futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let (_tmp, store) = open();
    send(&store.put_master(&master_record()));
    send(&store.put_instance(&instance("aaaa0001")));
    send(&store.delete_instance("aaaa0001"));
    send(&store.put_counters(&[]));
    send(&store.put_binding("a", "b"));
    send(&store.delete_binding("a"));
    send(&store.flush());
}

/// Golden files of every record type (tests/data/store) still decode through
/// the store, so old data dirs keep loading.
#[tokio::test]
async fn golden_records_decode() {
    let golden = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/store")
            .join(name);
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let (_tmp, store) = open();
    store
        .raw()
        .instances
        .insert("1a2b3c4d", golden("instance.v1.json"))
        .unwrap();
    store
        .raw()
        .instances
        .insert("0000beef", golden("instance-minimal.v1.json"))
        .unwrap();
    store
        .raw()
        .master
        .insert(MASTER_KEY, golden("master.v1.json"))
        .unwrap();
    store
        .raw()
        .counters
        .insert("1a2b3c4d", golden("counters.v1.json"))
        .unwrap();
    store
        .raw()
        .bindings
        .insert("alice", golden("binding.v1.json"))
        .unwrap();

    assert_eq!(store.master().unwrap(), Some(master_record()));
    let (records, problems) = store.instances();
    assert!(problems.is_empty(), "{problems:?}");
    let full = InstanceRecord {
        v: 1,
        id: "1a2b3c4d".into(),
        alias: "web".into(),
        url: "server://s3cret@:10101/127.0.0.1:8080?log=info&tls=1".into(),
        restart: true,
        meta: Meta {
            peer: Peer {
                sid: "svc-7".into(),
                kind: "1".into(),
                alias: "edge".into(),
            },
            tags: BTreeMap::from([("env".into(), "prod".into()), ("team".into(), "net".into())]),
        },
        tenant: "acme".into(),
        cert: Some(CertRecord {
            cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n".into(),
        }),
        created_ms: 1_767_225_600_000,
    };
    let minimal = InstanceRecord {
        v: 1,
        id: "0000beef".into(),
        alias: String::new(),
        url: "client://:10101/127.0.0.1:22".into(),
        restart: false,
        meta: Meta::default(),
        tenant: "default".into(),
        cert: None,
        created_ms: 0,
    };
    assert_eq!(records, vec![minimal, full]);
    assert_eq!(
        store.counters("1a2b3c4d"),
        Counters {
            tcprx: 1_048_576,
            tcptx: 2_097_152,
            udprx: 512,
            udptx: 1024,
        }
    );
    assert_eq!(store.binding("alice").as_deref(), Some("1a2b3c4d"));
}

/// Many tasks writing at once (as when 100 instances are reaped together and
/// each persists its counters) finish: without the write gate, sled's
/// flushes fill its IO pool behind a waiting transaction and every writer
/// hangs for good. The writers run on a runtime of their own in a thread the
/// test can abandon, so a deadlock fails the test instead of hanging it.
#[test]
fn concurrent_writers_do_not_deadlock() {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (_tmp, store) = open();
        let outcome = rt.block_on(async {
            let ids: Vec<String> = (0..50).map(|i| format!("cc{i:06}")).collect();
            for id in &ids {
                store.put_instance(&instance(id)).await?;
            }
            let mut tasks = tokio::task::JoinSet::new();
            for round in 0..4u64 {
                for (i, id) in ids.iter().enumerate() {
                    let store = store.clone();
                    let id = id.clone();
                    tasks.spawn(async move {
                        store.put_counters(&[(id.clone(), counters(round))]).await?;
                        store.put_binding(&format!("client-{i}-{round}"), &id).await
                    });
                }
            }
            while let Some(res) = tasks.join_next().await {
                res.expect("writer task")?;
            }
            Ok::<_, StoreError>(store.bindings(None, 1000).len())
        });
        let _ = done.send(outcome.map_err(|e| e.to_string()));
    });
    let bound = std::time::Duration::from_secs(120);
    match result.recv_timeout(bound) {
        Ok(outcome) => assert_eq!(outcome.expect("writes"), 200),
        Err(_) => panic!("200 concurrent writers still hung after {bound:?}: store deadlock"),
    }
}

/// `put_instance_latest` takes the record when its write's turn comes: a
/// change made while it waited for an earlier write is in what it writes,
/// and `None` writes nothing.
#[tokio::test]
async fn latest_record_is_taken_at_write_time() {
    let (tmp, store) = open();
    let store = std::sync::Arc::new(store);
    let memory = std::sync::Arc::new(std::sync::Mutex::new(instance("aaaa0001")));
    let gate = store.write_gate.lock().await; // an earlier write in progress
    let writer = {
        let (store, memory) = (store.clone(), memory.clone());
        tokio::spawn(async move {
            store
                .put_instance_latest(|| Some(memory.lock().unwrap().clone()))
                .await
        })
    };
    tokio::task::yield_now().await;
    memory.lock().unwrap().alias = "changed while waiting".into();
    drop(gate);
    assert!(writer.await.unwrap().unwrap(), "it wrote");
    assert!(
        !store.put_instance_latest(|| None).await.unwrap(),
        "None writes nothing"
    );
    let store = std::sync::Arc::into_inner(store).expect("one owner");
    let store = reopen(&tmp, store);
    let (records, _) = store.instances();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].alias, "changed while waiting");
}

/// `put_instance_settled` writes a record and its counters together, hands
/// `settle` the outcome with the caller's token, and with `None` writes
/// nothing and settles nothing.
#[tokio::test]
async fn record_and_counters_land_together() {
    let (tmp, store) = open();
    let record = instance("aaaa0002");
    let mut settled = Vec::new();
    let wrote = store
        .put_instance_settled(
            || Some((record.clone(), Some(counters(5)), "token")),
            |landed, token| settled.push((landed, token)),
        )
        .await
        .unwrap();
    assert!(wrote);
    assert_eq!(settled, [(true, "token")]);
    let wrote = store
        .put_instance_settled(
            || None::<(InstanceRecord, Option<Counters>, ())>,
            |_, ()| panic!("nothing was written, nothing to settle"),
        )
        .await
        .unwrap();
    assert!(!wrote);
    let store = reopen(&tmp, store);
    let (records, _) = store.instances();
    assert_eq!(records, [record]);
    assert_eq!(store.counters("aaaa0002"), counters(5));
}

/// After a write failed inside sled, the next write drops the database,
/// opens it again and writes memory's records over it: a refused change that
/// reached the disk is undone, a refused create's record goes with its
/// counters, a record being created and an unreadable one stay, and writes go
/// on.
#[tokio::test]
async fn reopen_writes_memory_over_the_disk() {
    let (_tmp, store) = open();
    store.put_master(&master_record()).await.unwrap();
    for id in ["aaaa0001", "aaaa0002", "aaaa0003"] {
        store.put_instance(&instance(id)).await.unwrap();
    }
    store
        .put_counters(&[("aaaa0002".into(), counters(5))])
        .await
        .unwrap();
    store
        .raw()
        .instances
        .insert("bad00bad", &b"garbage"[..])
        .unwrap();
    // Writes answered with an error that reached the disk all the same.
    let mut refused = instance("aaaa0001");
    refused.alias = "refused".into();
    store.put_instance(&refused).await.unwrap();
    let mut new_key = master_record();
    new_key.api_key = "ffffffffffffffffffffffffffffffff".into();
    store.put_master(&new_key).await.unwrap();
    store.resync_from(Box::new(|| Memory {
        instances: vec![instance("aaaa0001")],
        creating: vec!["aaaa0003".into()],
        master: master_record(),
    }));

    store.failed.store(true, Relaxed);
    // sled may hold its lock a moment past the drop (see `reopen_after_drop`).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(e) = store.flush().await {
        assert!(std::time::Instant::now() < deadline, "never reopened: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!store.failed.load(Relaxed));
    let (records, problems) = store.instances();
    assert_eq!(records, vec![instance("aaaa0001"), instance("aaaa0003")]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(store.master().unwrap(), Some(master_record()));
    assert_eq!(store.counters("aaaa0002"), Counters::default());
    store.put_instance(&instance("aaaa0004")).await.unwrap();
    assert_eq!(store.instances().0.len(), 3);
}
