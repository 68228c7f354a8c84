//! What survives a master restart: after SIGTERM (graceful: final counters
//! exact) and after SIGKILL (counters as last shown: a shown count is on
//! disk; no worker outlives the master; ports free again).
//!
//! Each test: a reverse pair (`restart:true`, with meta) carrying 8 MiB and a
//! `restart:false` single-end client; stop the master; start a new one on the
//! same data dir; check ids, alias, restart flag, meta, counters, key; the
//! pair runs again in new processes and carries data; the other stays stopped.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use drover_e2e::api::{ReversePair, counters, id_of, stored_fields, worker_pid, worker_state};
use drover_e2e::io::stream_echo_sha256;
use drover_e2e::lifecycle::wait_ready;
use drover_e2e::procs::{proc_alive, tcp_port_free, udp_port_free};
use drover_e2e::{
    Api, DEADLINE, EchoServer, KEY_ID, Master, free_addr, random_bytes, wait_for, wait_until,
};

/// The bulk transfer before the restart.
const BULK: u64 = 8 * 1024 * 1024;
/// The transfer after the restart.
const AFTER: u64 = 256 * 1024;
/// How long after the master's death its workers may still run.
const ORPHAN_DEADLINE: Duration = Duration::from_secs(2);

/// What a test set up before stopping the master.
struct Setup {
    echo: EchoServer,
    pair: ReversePair,
    /// The `restart:false` instance and its entrance.
    idle_id: String,
    idle_entrance: SocketAddr,
    key: String,
    mid: String,
}

async fn setup(master: &Master) -> Setup {
    let api = master.api();
    let echo = EchoServer::start().await;
    let pair = ReversePair::create(&api, echo.addr, json!({ "tenant": "blue" })).await;
    api.patch_instance(
        &pair.server_id,
        json!({
            "meta": {
                "peer": { "sid": "s-1", "type": "2", "alias": "peer" },
                "tags": { "env": "e2e", "team": "net" },
            },
        }),
    )
    .await;
    let idle_entrance = free_addr();
    let idle = api
        .create(json!({
            "url": format!("client://{idle_entrance}/{}?mode=1", echo.addr),
            "alias": "idle",
            "restart": false,
        }))
        .await;
    assert_eq!(idle["restart"], false);
    stream_echo_sha256(pair.entrance, random_bytes(BULK as usize)).await;
    let mid = api.get("/info").await.ok_json(200)["mid"]
        .as_str()
        .expect("mid")
        .to_string();
    Setup {
        echo,
        pair,
        idle_id: id_of(&idle),
        idle_entrance,
        key: master.key(),
        mid,
    }
}

/// Checks the new master against what was set up: same key (not printed
/// again), master id, records; counters `want`; the pair runs again in new
/// processes and carries data (counted on top); the `restart:false` instance
/// stays stopped and holds no port.
async fn check_restored(
    master: &Master,
    s: &Setup,
    before: &[Value],
    old_pids: &[u32],
    want: [u64; 4],
) {
    assert_eq!(master.key(), s.key);
    assert_eq!(
        master.count_lines(&s.key),
        0,
        "the API key was logged again on a later start\n{}",
        master.dump()
    );
    let api = master.api();
    let after = api.list().await;
    assert_eq!(after[0]["id"], KEY_ID);
    assert_eq!(after[0]["url"], s.key.as_str(), "API key after the restart");
    assert_eq!(
        after[0]["config"],
        s.mid.as_str(),
        "master id after the restart"
    );
    let info = api.get("/info").await.ok_json(200);
    assert_eq!(info["mid"], s.mid.as_str());
    assert_eq!(
        stored_fields(&after),
        stored_fields(before),
        "stored instances after the restart"
    );

    // Counters are checked last, so that a loss there does not hide the rest.
    let server = api.instance(&s.pair.server_id).await;
    let client = api.instance(&s.pair.client_id).await;
    let restored = (counters(&server), counters(&client));
    assert_eq!(server["meta"]["tags"]["team"], "net");

    // restart:false stays stopped and holds nothing.
    let idle = api.instance(&s.idle_id).await;
    assert_eq!(idle["status"], "stopped", "restart:false instance: {idle}");
    assert_eq!(
        worker_pid(&idle),
        None,
        "restart:false instance has no worker: {idle}"
    );
    assert_eq!(worker_state(&idle), "parked");
    assert_eq!(counters(&idle), [0; 4]);
    assert!(
        tcp_port_free(s.idle_entrance),
        "the stopped instance's port {} is held",
        s.idle_entrance
    );

    // restart:true runs again, in new processes, and carries data.
    for id in [&s.pair.server_id, &s.pair.client_id] {
        let pid = wait_for(DEADLINE, &format!("instance {id} to run again"), || async {
            let v = api.instance(id).await;
            worker_pid(&v).filter(|_| worker_state(&v) == "ready" && v["status"] == "running")
        })
        .await;
        assert!(
            !old_pids.contains(&pid),
            "{id} runs in an old process {pid}"
        );
        assert!(
            master.children().contains(&pid),
            "{pid} is not the new master's child"
        );
    }
    s.pair.wait_up(&api).await;
    stream_echo_sha256(s.pair.entrance, random_bytes(AFTER as usize)).await;
    assert_eq!(s.echo.received(), BULK + AFTER);
    // New traffic counts on top of what was restored.
    let plus = |c: [u64; 4]| [c[0] + AFTER, c[1] + AFTER, c[2], c[3]];
    s.pair
        .wait_counters(&api, plus(restored.0), plus(restored.1))
        .await;

    assert_eq!(
        restored,
        (want, want),
        "(server, client) counters right after the restart"
    );
}

/// After SIGTERM the master exits 0 with its workers gone; a new master on
/// the same data dir has everything, with the counters exactly as carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_sigterm_exactly() {
    let master = Master::start().await;
    let s = setup(&master).await;
    let before = master.api().list().await;
    let old_pids = master.instance_workers();
    assert_eq!(old_pids.len(), 3, "three workers before the stop");
    master.stop().await;
    for pid in &old_pids {
        assert!(
            !proc_alive(*pid),
            "worker {pid} outlived a graceful master stop"
        );
    }

    let master = Master::restart(&master).await;
    check_restored(&master, &s, &before, &old_pids, [BULK, BULK, 0, 0]).await;
}

/// After SIGKILL no worker survives (gone within 2 s) and every port can be
/// bound again; a new master on the same data dir has everything, with the
/// counters exactly as the API last showed them (a shown count is on disk),
/// though the kill comes right after they were shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_sigkill() {
    let master = Master::start().await;
    let s = setup(&master).await;
    let api: Api = master.api();
    let full = [BULK, BULK, 0, 0];
    s.pair.wait_counters(&api, full, full).await;
    let before = api.list().await;
    let old_pids = kill_and_wait_released(&master, &s).await;
    let master = Master::restart(&master).await;
    check_restored(&master, &s, &before, &old_pids, full).await;
}

/// SIGKILLs the master; waits until no worker survives it (within 2 s) and
/// every port of `s` can be bound again. Returns the workers it had.
async fn kill_and_wait_released(master: &Master, s: &Setup) -> Vec<u32> {
    let old_pids = master.instance_workers();
    assert_eq!(old_pids.len(), 3, "three workers before the kill");
    master.kill();
    wait_until(
        ORPHAN_DEADLINE,
        "every worker of the killed master is gone",
        || old_pids.iter().all(|p| !proc_alive(*p)),
    )
    .await;
    // A zombie's last threads may hold sockets a moment after its main thread
    // is gone: poll within the same deadline instead of checking once.
    let (tcp, udp) = (
        [s.pair.tunnel, s.pair.entrance, s.idle_entrance],
        [s.pair.entrance, s.idle_entrance],
    );
    wait_until(
        ORPHAN_DEADLINE,
        "every tunnel port can be bound again",
        || tcp.iter().all(|a| tcp_port_free(*a)) && udp.iter().all(|a| udp_port_free(*a)),
    )
    .await;
    old_pids
}

/// A PATCH that renames and resets in one request is on disk whole when it
/// is answered: a master killed right after the answer comes back with the
/// new alias and zero counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_alias_and_reset_survive_sigkill() {
    let master = Master::start().await;
    let s = setup(&master).await;
    let api: Api = master.api();
    let full = [BULK, BULK, 0, 0];
    s.pair.wait_counters(&api, full, full).await;
    let id = &s.pair.server_id;
    let answer = api
        .patch_instance(
            id,
            json!({ "alias": "renamed with reset", "action": "reset" }),
        )
        .await;
    assert_eq!(answer["alias"], "renamed with reset");
    assert_eq!(counters(&answer), [0; 4], "the PATCH answer's counters");
    kill_and_wait_released(&master, &s).await;

    let master = Master::restart(&master).await;
    let restored = master.api().instance(id).await;
    assert_eq!(restored["alias"], "renamed with reset");
    assert_eq!(counters(&restored), [0; 4], "counters after the restart");
}

/// SIGINT stops the master as SIGTERM does: exit 0, its workers gone, what
/// was set on disk (a new master has the alias and runs the instance again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_like_sigterm() {
    let master = Master::start().await;
    let api = master.api();
    let created = api
        .create(json!({
            "url": format!("server://{}/{}?mode=1", free_addr(), free_addr()),
            "alias": "interrupted",
        }))
        .await;
    let id = id_of(&created);
    let (pid, _) = wait_ready(&api, &id, None, DEADLINE).await;
    master.signal(nix::sys::signal::Signal::SIGINT);
    let status = master.wait_exit(DEADLINE).await;
    assert!(
        status.success(),
        "exit after SIGINT: {status}\n{}",
        master.dump()
    );
    assert!(
        !proc_alive(pid),
        "worker {pid} outlived the master's SIGINT stop"
    );

    let master = Master::restart(&master).await;
    let api = master.api();
    assert_eq!(api.instance(&id).await["alias"], "interrupted");
    wait_ready(&api, &id, None, DEADLINE).await;
}
