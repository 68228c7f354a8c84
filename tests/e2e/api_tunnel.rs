//! Tunnels made through the API: real bytes through a server + client pair
//! of instances, the counters the API shows, `reset`, and one
//! `drover-worker` process per instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use drover_e2e::api::{ReversePair, counters, id_of, worker_pid, worker_state};
use drover_e2e::io::{assert_echo, stream_echo_sha256};
use drover_e2e::lifecycle::{echo_attempt, wait_ready};
use drover_e2e::procs::{proc_alive, proc_cmdline, proc_environ, proc_ppid, tcp_port_free};
use drover_e2e::{
    Api, DEADLINE, EchoServer, Master, free_addr, random_bytes, wait_for, wait_until,
};

/// The bulk transfer.
const BULK: u64 = 8 * 1024 * 1024;
/// A transfer before `reset` …
const FIRST: u64 = 1024 * 1024;
/// … and a smaller one after it.
const SMALL: u64 = 64 * 1024;

/// Waits until instance `id` has a worker in state `ready`; returns its pid.
async fn ready_pid(api: &Api, id: &str) -> u32 {
    wait_for(
        DEADLINE,
        &format!("instance {id} to have a ready worker"),
        || async {
            let v = api.instance(id).await;
            worker_pid(&v).filter(|_| worker_state(&v) == "ready")
        },
    )
    .await
}

/// A master with one single-end client instance (entrance → an echo
/// backend) whose worker is ready.
struct Forwarder {
    master: Master,
    echo: EchoServer,
    entrance: std::net::SocketAddr,
    id: String,
    url: serde_json::Value,
    pid: u32,
}

async fn forwarder() -> Forwarder {
    forwarder_on(Master::start().await).await
}

/// [`forwarder`] on a master started by the caller.
async fn forwarder_on(master: Master) -> Forwarder {
    let echo = EchoServer::start().await;
    let entrance = free_addr();
    let created = master
        .api()
        .create_url(&format!("client://{entrance}/{}?mode=1", echo.addr))
        .await;
    let id = id_of(&created);
    let pid = ready_pid(&master.api(), &id).await;
    Forwarder {
        master,
        echo,
        entrance,
        id,
        url: created["url"].clone(),
        pid,
    }
}

/// A server instance and a client instance (reverse mode) carry 8 MiB to an
/// echo backend and back with matching SHA-256; the counters move by exactly
/// that on both (next stats report); `PATCH reset` zeroes them: in its
/// answer and, at once, in `GET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_carries_8_mib_counted_exactly_then_reset() {
    let master = Master::start().await;
    let api = master.api();
    let echo = EchoServer::start().await;
    let pair = ReversePair::create(&api, echo.addr, json!({})).await;
    let server = api.instance(&pair.server_id).await;
    let client = api.instance(&pair.client_id).await;
    assert_eq!((counters(&server), counters(&client)), ([0; 4], [0; 4]));

    stream_echo_sha256(pair.entrance, random_bytes(BULK as usize)).await;
    assert_eq!(echo.received(), BULK, "bytes at the backend");
    // Server: user side (rx = sent by the user, tx = received by the user).
    // Client: target side (rx = from the target, tx = to the target).
    let (server, client) = pair
        .wait_counters(&api, [BULK, BULK, 0, 0], [BULK, BULK, 0, 0])
        .await;
    assert_eq!(server["mode"], 1, "server mode (reverse)");
    assert_eq!(client["mode"], 2, "client mode (dual-end)");
    assert_eq!(server["status"], "running");

    for id in [&pair.server_id, &pair.client_id] {
        let after = api.patch_instance(id, json!({ "action": "reset" })).await;
        assert_eq!(counters(&after), [0; 4], "PATCH reset answer of {id}");
        assert_eq!(after["status"], "running", "reset does not stop {id}");
        // A 2xx means the change is done (and on disk): a GET agrees.
        assert_eq!(
            counters(&api.instance(id).await),
            [0; 4],
            "GET right after PATCH reset of {id}"
        );
    }
}

/// After `reset`, counting starts again from zero: a later transfer shows
/// exactly its own bytes (not nothing until the pre-reset total is passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_count_from_zero_after_reset() {
    let master = Master::start().await;
    let api = master.api();
    let echo = EchoServer::start().await;
    let pair = ReversePair::create(&api, echo.addr, json!({})).await;
    let first = [FIRST, FIRST, 0, 0];
    stream_echo_sha256(pair.entrance, random_bytes(FIRST as usize)).await;
    pair.wait_counters(&api, first, first).await;
    for id in [&pair.server_id, &pair.client_id] {
        api.patch_instance(id, json!({ "action": "reset" })).await;
    }
    pair.wait_counters(&api, [0; 4], [0; 4]).await;

    stream_echo_sha256(pair.entrance, random_bytes(SMALL as usize)).await;
    let small = [SMALL, SMALL, 0, 0];
    pair.wait_counters(&api, small, small).await;
}

/// Each running instance is its own `drover-worker --instance <id>
/// --control-fd 3` child of the master, with the pid the API reports, no
/// tunnel URL or key on its command line and nothing in its environment;
/// `stop` answers once the process is gone, `start` makes a new one, and
/// `DELETE` answers once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_is_its_own_worker_process() {
    let master = Master::start().await;
    let api = master.api();
    let echo = EchoServer::start().await;
    let urls = [
        format!("server://secretkey1@{}/{}?mode=1", free_addr(), free_addr()),
        format!("client://{}/{}?mode=1", free_addr(), echo.addr),
        format!("server://secretkey2@{}/{}?mode=2", free_addr(), echo.addr),
    ];
    let mut ids = Vec::new();
    for url in &urls {
        ids.push(id_of(&api.create_url(url).await));
    }
    let mut pids = Vec::new();
    for id in &ids {
        pids.push(ready_pid(&api, id).await);
    }
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "three instances, three processes: {pids:?}"
    );
    // Besides these, the master may keep a spare worker (`--spare`) per tenant.
    assert_eq!(
        master.instance_workers(),
        distinct,
        "the master's children are exactly the workers"
    );

    for ((id, pid), url) in ids.iter().zip(&pids).zip(&urls) {
        assert!(proc_alive(*pid), "worker {pid} of {id} is not running");
        assert_eq!(
            proc_ppid(*pid),
            Some(master.pid()),
            "parent of worker {pid}"
        );
        let argv = proc_cmdline(*pid).expect("cmdline");
        assert!(
            argv[0].ends_with("drover-worker"),
            "worker {pid} runs {argv:?}"
        );
        assert_eq!(
            argv[1..],
            ["--instance", id.as_str(), "--control-fd", "3"],
            "argv of worker {pid}"
        );
        let all = argv.join(" ");
        assert!(
            !all.contains("://") && !all.contains("secretkey") && !all.contains(&master.key()),
            "secrets on the command line of worker {pid}: {all:?} (url {url})"
        );
        let env = proc_environ(*pid).expect("environ");
        let env_text = env.join("\n");
        assert!(
            !env_text.contains("://")
                && !env_text.contains("secretkey")
                && !env_text.contains(&master.key()),
            "secrets in the environment of worker {pid}: {env:?}"
        );
    }

    // Stop: answered once the worker is gone; listeners released.
    let stopped = api
        .patch_instance(&ids[0], json!({ "action": "stop" }))
        .await;
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(worker_pid(&stopped), None, "worker.pid after stop");
    assert!(
        !proc_alive(pids[0]),
        "worker {} still runs after stop answered",
        pids[0]
    );
    let tunnel: std::net::SocketAddr = urls[0]
        .split('@')
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .expect("tunnel address");
    assert!(tcp_port_free(tunnel), "{tunnel} still held after stop");

    // Start: a new process.
    let started = api
        .patch_instance(&ids[0], json!({ "action": "start" }))
        .await;
    assert_eq!(started["status"], "running");
    let new_pid = ready_pid(&api, &ids[0]).await;
    assert_ne!(new_pid, pids[0], "start runs a new process");
    assert!(proc_alive(new_pid));

    // Delete: answered once the worker is gone.
    api.delete(&format!("/instances/{}", ids[1]))
        .await
        .expect(204);
    assert!(
        !proc_alive(pids[1]),
        "worker {} still runs after DELETE answered",
        pids[1]
    );
    let mut left = vec![new_pid, pids[2]];
    left.sort_unstable();
    assert_eq!(master.instance_workers(), left);
}

/// A worker killed from outside is replaced by a new process; the API shows
/// the new pid, one restart and how the old one ended; the counters are
/// totals across worker processes (what was reported before the kill stays,
/// new traffic adds to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_replaced_and_counters_carry_over() {
    let Forwarder {
        master,
        echo: _echo,
        entrance,
        id,
        pid,
        ..
    } = forwarder().await;
    let api = master.api();
    stream_echo_sha256(entrance, random_bytes(FIRST as usize)).await;
    wait_for(
        DEADLINE,
        "the counters to show the first transfer",
        || async {
            let v = api.instance(&id).await;
            (counters(&v) == [FIRST, FIRST, 0, 0]).then_some(())
        },
    )
    .await;

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill the worker");
    let new_pid = wait_for(DEADLINE, "a new worker to be ready", || async {
        let v = api.instance(&id).await;
        worker_pid(&v).filter(|p| *p != pid && worker_state(&v) == "ready")
    })
    .await;
    let v = api.instance(&id).await;
    assert_eq!(v["status"], "running");
    assert_eq!(v["worker"]["restarts"], 1, "{v}");
    assert!(
        v["worker"]["last_exit"]
            .as_str()
            .is_some_and(|s| s.contains("SIGKILL")),
        "last_exit {}",
        v["worker"]["last_exit"]
    );
    assert!(proc_alive(new_pid));
    assert!(!proc_alive(pid));
    assert_eq!(
        counters(&v),
        [FIRST, FIRST, 0, 0],
        "counters after the restart"
    );

    stream_echo_sha256(entrance, random_bytes(SMALL as usize)).await;
    let total = FIRST + SMALL;
    wait_for(
        DEADLINE,
        "the counters to add the second transfer",
        || async {
            let v = api.instance(&id).await;
            (counters(&v) == [total, total, 0, 0]).then_some(())
        },
    )
    .await;
}

/// A forward pair through the master (server dials the backend, the
/// dual-end client opens the entrance once the handshake says "forward")
/// carries bytes: the client's worker must be allowed to `Bind` its first
/// target. The soak found every forward tunnel refused that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_pair_opens_its_entrance_at_the_client() {
    let master = Master::start().await;
    let api = master.api();
    let echo = EchoServer::start().await;
    let (tunnel, entrance) = (free_addr(), free_addr());
    let server = id_of(
        &api.create_url(&format!("server://fwdkey@{tunnel}/{}?mode=2", echo.addr))
            .await,
    );
    let client = id_of(
        &api.create_url(&format!("client://fwdkey@{tunnel}/{entrance}?mode=2"))
            .await,
    );
    for id in [&server, &client] {
        ready_pid(&api, id).await;
    }
    drover_e2e::wait_until_async(DEADLINE, "the client's entrance listens", || async {
        tokio::net::TcpStream::connect(entrance).await.is_ok()
    })
    .await;
    stream_echo_sha256(entrance, random_bytes(FIRST as usize)).await;
    assert_eq!(echo.received(), FIRST, "bytes at the backend");
}

/// A PUT refused (its new port is taken) while the instance serves: a
/// connection loop running across the PUT sees no refusal, and the worker
/// is the same process, on the same URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_put_keeps_a_running_instance_serving() {
    let Forwarder {
        master,
        echo,
        entrance,
        id,
        url: created_url,
        pid,
    } = forwarder().await;
    let api = master.api();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let looping = tokio::spawn({
        let (stop, done) = (stop.clone(), done.clone());
        async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match echo_attempt(entrance, b"still there?", DEADLINE).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.push(e);
                        0
                    }
                };
            }
            failures
        }
    });
    let served = |n: usize| {
        let done = done.clone();
        move || done.load(Ordering::Relaxed) >= n
    };
    wait_until(DEADLINE, "echoes before the PUT", served(5)).await;

    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "client://{}/{}?mode=1",
        held.local_addr().expect("addr"),
        echo.addr
    );
    api.put(&format!("/instances/{id}"), &json!({ "url": url }))
        .await
        .assert_error_prefix(409, "Instance port conflict: ");
    let after = done.load(Ordering::Relaxed) + 5;
    wait_until(DEADLINE, "echoes after the PUT", served(after)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = looping.await.expect("the connection loop");
    assert!(
        failures.is_empty(),
        "connections failed across a refused PUT: {failures:?}"
    );
    let now = api.instance(&id).await;
    assert_eq!(now["url"], created_url);
    assert_eq!(
        worker_pid(&now),
        Some(pid),
        "the worker was not restarted: {now}"
    );
}

/// A PUT that keeps the entrance port but changes the target: the instance
/// then serves the new target through the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_keeping_the_port_serves_the_new_target() {
    let Forwarder {
        master,
        echo: old,
        entrance,
        id,
        pid,
        ..
    } = forwarder().await;
    let api = master.api();
    let new = EchoServer::start().await;
    assert_echo(entrance, b"to the old target").await;
    let to_old = old.accepted();
    assert!(to_old >= 1 && new.accepted() == 0);

    let url = format!("client://{entrance}/{}?mode=1", new.addr);
    let put = api
        .put(&format!("/instances/{id}"), &json!({ "url": url }))
        .await
        .ok_json(200);
    assert!(
        put["url"]
            .as_str()
            .is_some_and(|u| u.contains(&new.addr.to_string())),
        "{put}"
    );
    wait_ready(&api, &id, Some(pid), DEADLINE).await;
    assert_echo(entrance, b"to the new target").await;
    assert_eq!(
        old.accepted(),
        to_old,
        "nothing more reaches the old target"
    );
    assert!(new.accepted() >= 1, "served by the new target");
}

/// `PATCH {"action":"restart"}` on a healthy running instance: a new worker
/// process (the old one gone), serving again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_restart_gives_a_new_worker_that_serves() {
    let Forwarder {
        master,
        echo: _echo,
        entrance,
        id,
        pid,
        ..
    } = forwarder().await;
    let api = master.api();
    assert_echo(entrance, b"before the restart").await;
    api.patch_instance(&id, json!({ "action": "restart" }))
        .await;
    let (new_pid, _) = wait_ready(&api, &id, Some(pid), DEADLINE).await;
    assert!(!proc_alive(pid), "the old worker {pid} is gone");
    assert!(proc_alive(new_pid));
    assert_echo(entrance, b"after the restart").await;
}

/// A worker's environment is empty but for the polling window the master
/// hands on (`DROVER_SPIN_US`): nothing else of the master's environment
/// (here `DROVER_E2E_CANARY`) reaches it, and the worker still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_get_only_the_polling_window_from_the_masters_environment() {
    let master = Master::start_with_env(
        drover_e2e::master::DEFAULT_URL,
        &[("DROVER_SPIN_US", "0"), ("DROVER_E2E_CANARY", "leaked")],
    )
    .await;
    let f = forwarder_on(master).await;
    assert_eq!(
        proc_environ(f.pid).expect("environ"),
        ["DROVER_SPIN_US=0"],
        "environment of worker {}",
        f.pid
    );
    assert_echo(f.entrance, b"no polling, still a relay").await;
}
