//! What the store promises beyond a clean restart: a master SIGKILLed the
//! moment a 2xx arrives has every acknowledged change on disk, and a corrupt
//! record is reported and skipped, never used to wipe the store or the key
//! (and never deleted); a full disk refuses changes without showing them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use drover_e2e::api::{id_of, stored_fields, worker_state};
use drover_e2e::confine::is_root;
use drover_e2e::master::{DEFAULT_URL, master_bin};
use drover_e2e::procs::{tcp_port_free, udp_port_free};
use drover_e2e::tmpfs::Tmpfs;
use drover_e2e::{DEADLINE, KEY_ID, Master, free_addr, wait_for, wait_until, worker_bin};

/// How long after the master's death its workers may still hold ports.
const ORPHAN_DEADLINE: Duration = Duration::from_secs(2);

/// Bytes that are no record (not JSON, not UTF-8).
const GARBAGE: &[u8] = b"\xff\x00{\"v\":1,\"id\": garbage";

/// A reverse-mode server URL on fresh ports (runs without a client), and
/// the ports, so a test can wait for them to be free.
fn server_url(ports: &mut Vec<SocketAddr>) -> String {
    let (tunnel, entrance) = (free_addr(), free_addr());
    ports.extend([tunnel, entrance]);
    format!("server://{tunnel}/{entrance}?mode=1")
}

/// Runs `f` on tree `name` of the sled database the master keeps in
/// `data_dir` (the master must not be running: sled locks it).
fn with_tree<T>(data_dir: &Path, name: &str, f: impl FnOnce(&sled::Tree) -> T) -> T {
    let db = sled::open(data_dir.join("db")).expect("opening the master's sled database");
    let tree = db.open_tree(name).expect("opening the tree");
    let out = f(&tree);
    db.flush().expect("flushing sled");
    out
}

/// Replaces the acknowledged state of `v`'s instance with `v`.
fn ack(acked: &mut [Value], v: Value) {
    let id = id_of(&v);
    let slot = acked.iter_mut().find(|a| a["id"] == id.as_str());
    *slot.unwrap_or_else(|| panic!("{id} was not acknowledged before")) = v;
}

/// A burst of mutations of every kind, each answer taken as the acknowledged
/// state, and SIGKILL the moment the last 2xx is read: a new master on the
/// same data dir has exactly those records, the master alias and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_2xx_loses_nothing_acknowledged() {
    let master = Master::start().await;
    let api = master.api();
    let mut ports = Vec::new();
    let mut acked: Vec<Value> = Vec::new();
    let mut ids = Vec::new();
    for i in 0..4 {
        let v = api
            .create(json!({
                "url": server_url(&mut ports),
                "alias": format!("i{i}"),
                "restart": i % 2 == 0,
                "tenant": "blue",
            }))
            .await;
        ids.push(id_of(&v));
        acked.push(v);
    }
    let v = api
        .patch_instance(&ids[0], json!({ "alias": "renamed", "restart": false }))
        .await;
    ack(&mut acked, v);
    let meta = json!({ "peer": { "sid": "s", "type": "2", "alias": "p" }, "tags": { "a": "1" } });
    let v = api.patch_instance(&ids[1], json!({ "meta": meta })).await;
    ack(&mut acked, v);
    let put = api
        .put(
            &format!("/instances/{}", ids[2]),
            &json!({ "url": server_url(&mut ports) }),
        )
        .await
        .ok_json(200);
    ack(&mut acked, put);
    api.delete(&format!("/instances/{}", ids[3]))
        .await
        .expect(204);
    acked.retain(|a| a["id"] != ids[3].as_str());
    let info = api
        .post("/info", &json!({ "alias": "edge" }))
        .await
        .ok_json(200);
    assert_eq!(info["alias"], "edge");
    let last = api
        .patch_instance(
            &ids[2],
            json!({ "alias": "last", "restart": true, "meta": { "tags": { "z": "9" } } }),
        )
        .await;
    master.kill();
    ack(&mut acked, last);

    // The killed master's workers go (PDEATHSIG); the new master needs the
    // ports to start the restart:true ones.
    wait_until(ORPHAN_DEADLINE, "every tunnel port is free again", || {
        ports.iter().all(|a| tcp_port_free(*a) && udp_port_free(*a))
    })
    .await;
    let master = Master::restart(&master).await;
    let api = master.api();
    let list = api.list().await;
    assert_eq!(list[0]["id"], KEY_ID);
    assert_eq!(list[0]["url"], master.key().as_str(), "the API key");
    assert_eq!(list[0]["alias"], "edge", "the master alias");
    assert_eq!(
        stored_fields(&list[1..]),
        stored_fields(&acked),
        "instances after SIGKILL vs what was acknowledged"
    );
    for v in acked.iter().filter(|v| v["restart"] == true) {
        let id = id_of(v);
        wait_for(DEADLINE, &format!("{id} to run again"), || async {
            let now = api.instance(&id).await;
            (worker_state(&now) == "ready").then_some(())
        })
        .await;
    }
}

/// An instance record overwritten with garbage while the master is down:
/// the next master starts, logs the record as skipped, serves the other
/// instances and the same key, and leaves the bad bytes on disk untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_instance_record_is_reported_and_skipped() {
    let master = Master::start().await;
    let api = master.api();
    let mut ports = Vec::new();
    let keep = api
        .create(json!({ "url": server_url(&mut ports), "alias": "keep" }))
        .await;
    let bad_id = id_of(
        &api.create(json!({ "url": server_url(&mut ports), "alias": "bad" }))
            .await,
    );
    let idle = api
        .create(json!({ "url": server_url(&mut ports), "restart": false }))
        .await;
    let before: Vec<Value> = api
        .list()
        .await
        .into_iter()
        .filter(|v| v["id"] != bad_id.as_str() && v["id"] != KEY_ID)
        .collect();
    master.stop().await;
    with_tree(master.data_dir(), "instances", |t| {
        t.insert(bad_id.as_bytes(), GARBAGE).expect("overwriting");
    });

    let master = Master::restart(&master).await;
    let line = master
        .wait_for_line(&format!("instance {bad_id}: skipped"), DEADLINE)
        .await;
    assert!(
        line.contains("ERROR"),
        "the skipped record is reported as an error: {line}"
    );
    let api = master.api();
    let list = api.list().await;
    assert_eq!(list[0]["url"], master.key().as_str(), "the API key");
    assert_eq!(stored_fields(&list[1..]), stored_fields(&before));
    api.get(&format!("/instances/{bad_id}"))
        .await
        .assert_error(404, "Instance not found");
    let keep_id = id_of(&keep);
    wait_for(DEADLINE, "the intact instance to run again", || async {
        (worker_state(&api.instance(&keep_id).await) == "ready").then_some(())
    })
    .await;
    assert_eq!(api.instance(&id_of(&idle)).await["status"], "stopped");
    // Writes go on around the bad record.
    api.create_url(&server_url(&mut ports)).await;
    master.stop().await;

    let on_disk = with_tree(master.data_dir(), "instances", |t| t.get(bad_id.as_bytes()));
    assert_eq!(
        on_disk.expect("reading").as_deref(),
        Some(GARBAGE),
        "the unreadable record was changed or deleted"
    );
}

/// A corrupt master record (the API key) makes the master refuse to start,
/// naming the record, rather than make a new key; the bytes stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_master_record_refuses_to_start() {
    let master = Master::start().await;
    master.stop().await;
    let dir = master.data_dir();
    with_tree(dir, "master", |t| {
        t.insert("master", GARBAGE).expect("overwriting")
    });

    let run = tokio::process::Command::new(master_bin())
        .arg(master.url())
        .env("DROVER_DATA_DIR", dir)
        .env("DROVER_WORKER_BIN", worker_bin())
        .env_remove("STATE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the master exits")
        .expect("running drover");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a corrupt key: {stderr}");
    assert!(
        stderr.contains("master/master is unreadable") && !stderr.contains("API Key created"),
        "stderr: {stderr}"
    );
    let kept = with_tree(dir, "master", |t| t.get("master"));
    assert_eq!(kept.expect("reading").as_deref(), Some(GARBAGE));
}

/// A master on a 4 MiB tmpfs data dir with one instance whose alias
/// "acknowledged" is on disk, then the tmpfs filled: a PATCH gets a JSON 500
/// naming the cause and changes nothing the API shows, `/healthz` says 503.
/// `None` (saying so) where this process may not mount a tmpfs.
struct FullDisk {
    master: Master,
    id: String,
    filler: std::path::PathBuf,
    _disk: Tmpfs,
}

async fn full_disk(prefix: &str) -> Option<FullDisk> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temporary dir");
    let disk = match Tmpfs::mount(dir.path(), "4m") {
        Ok(d) => d,
        Err(e) if !is_root() || e.raw_os_error() == Some(libc::EPERM) => {
            eprintln!("skipped: cannot mount a tmpfs here ({e})");
            return None;
        }
        Err(e) => panic!("mounting a tmpfs as root: {e}"),
    };
    let master = Master::start_in(DEFAULT_URL, dir).await;
    let api = master.api();
    let id = id_of(&api.create(json!({ "url": instance_url() })).await);
    api.patch_instance(&id, json!({ "alias": "acknowledged" }))
        .await;

    let filler = disk.fill();
    let tags: serde_json::Map<String, Value> = (0..100)
        .map(|i| (format!("t{i}"), json!("x".repeat(100))))
        .collect();
    let refused = api
        .patch(
            &format!("/instances/{id}"),
            &json!({ "alias": "refused", "meta": { "tags": tags } }),
        )
        .await;
    assert_eq!(refused.status, 500, "{}", refused.text());
    let why = refused.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("No space left"),
        "error names the cause: {why:?}"
    );
    let shown = api.instance(&id).await;
    assert_eq!(
        shown["alias"], "acknowledged",
        "a refused PATCH shows nothing"
    );
    assert_eq!(shown["meta"]["tags"], json!({}));
    assert_eq!(api.get("/healthz").await.status, 503);
    Some(FullDisk {
        master,
        id,
        filler,
        _disk: disk,
    })
}

fn instance_url() -> String {
    format!("client://{}/{}?mode=1", free_addr(), free_addr())
}

/// A store that runs out of space (see [`full_disk`]): a master SIGKILLed
/// then and restarted after space is freed has the instance as last
/// acknowledged, and writes work again. Needs root (to mount a tmpfs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_a_patch_and_loses_nothing() {
    let Some(FullDisk {
        master,
        id,
        filler,
        _disk,
    }) = full_disk("drover-e2e-full-").await
    else {
        return;
    };
    master.kill();
    std::fs::remove_file(&filler).expect("freeing the space");
    let master = Master::restart(&master).await;
    let api = master.api();
    let restored = api.instance(&id).await;
    assert_eq!(restored["alias"], "acknowledged");
    assert_eq!(restored["meta"]["tags"], json!({}));
    assert_eq!(api.get("/healthz").await.status, 200);
    let after = api.patch_instance(&id, json!({ "alias": "after" })).await;
    assert_eq!(after["alias"], "after");
}

/// A full disk that is freed again needs no restart: while full (see
/// [`full_disk`]) a create also gets a JSON 500; once space is freed the
/// store reopens (sled refuses every write after its first failure, so the
/// master drops and reopens it), `/healthz` answers 200, and the API shows
/// and stores exactly what was acknowledged: the refused alias and the
/// refused instance never appear, also after a SIGKILL and a restart. Needs
/// root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_disk_takes_writes_again_without_a_restart() {
    let Some(FullDisk {
        master,
        id,
        filler,
        _disk,
    }) = full_disk("drover-e2e-freed-").await
    else {
        return;
    };
    let api = master.api();
    let refused_create = api
        .post(
            "/instances",
            &json!({ "url": instance_url(), "alias": "refused" }),
        )
        .await;
    assert_eq!(refused_create.status, 500, "{}", refused_create.text());
    assert!(refused_create.json()["error"].is_string());
    assert_eq!(api.get("/healthz").await.status, 503, "still full");

    std::fs::remove_file(&filler).expect("freeing the space");
    wait_for(
        DEADLINE,
        "/healthz to answer 200 after freeing space",
        || async { (api.get("/healthz").await.status == 200).then_some(()) },
    )
    .await;
    master.wait_for_line("store reopened", DEADLINE).await;
    let shown = api.instance(&id).await;
    assert_eq!(shown["alias"], "acknowledged");
    assert_eq!(shown["meta"]["tags"], json!({}));
    let after = api.patch_instance(&id, json!({ "alias": "after" })).await;
    assert_eq!(after["alias"], "after");
    let second = id_of(
        &api.create(json!({ "url": instance_url(), "alias": "second" }))
            .await,
    );

    master.kill();
    let master = Master::restart(&master).await;
    let api = master.api();
    let list = api.list().await;
    let aliases: Vec<&str> = list[1..]
        .iter()
        .map(|v| v["alias"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(aliases.len(), 2, "instances after the restart: {list:?}");
    assert!(
        aliases.contains(&"after") && aliases.contains(&"second"),
        "{aliases:?}"
    );
    assert_eq!(api.instance(&id).await["meta"]["tags"], json!({}));
    assert_eq!(api.instance(&second).await["alias"], "second");
}
