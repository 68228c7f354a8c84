//! A compromised worker cannot hurt the master (issue 8).
//!
//! Each test runs a real master whose worker binary is `drover-evil-worker`
//! (see `tests/evil/`): instances whose tunnel key names a behaviour
//! misbehave, the others run the real `drover-worker`. Throughout, a
//! bystander instance (a single-end forwarder to an echo server) carries
//! traffic that must come back byte for byte, and the API must answer.
//!
//! 1. Bad frames (a 2 GiB header, a non-JSON body, unframed bytes, an fd on a
//!    message that carries none): the master kills that worker (its pid is
//!    gone, `last_exit` says `protocol error`) and restarts it.
//! 2. Floods of `Log` (lines up to a megabyte), of stderr (one 256 MiB
//!    line) and of `Stats` (counters at `u64::MAX`, twice over): the master
//!    keeps what it stores of a worker's logs bounded (line length, ring
//!    size), its own peak memory stays bounded, counters saturate instead of
//!    overflowing, and the API keeps answering.
//! 3. `Bind` for another instance's ports, for the instance's own target
//!    (a forward server dials it, never listens on it), for UDP on a TCP-only
//!    tunnel port, and for non-addresses: every one refused, no fd passed,
//!    and each port can still be bound by anyone else (probe) or still
//!    belongs to its instance.
//! 4. A worker that never sends `Ready`, one that never answers `Ping`, and
//!    one that stops reading its control socket while asking for things:
//!    each is killed, and deleting it through the API does not hang.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use drover_e2e::api::{id_of, worker_pid};
use drover_e2e::evil::{Behaviour, DONE_TCPS, STDERR_DONE, create_evil, evil_worker_bin};
use drover_e2e::lifecycle::{echo_attempt, wait_instance, wait_ready};
use drover_e2e::master::DEFAULT_URL;
use drover_e2e::procs::{proc_alive, tcp_port_free, udp_port_free};
use drover_e2e::{
    Api, DEADLINE, EchoServer, Master, free_addr, pattern, wait_until, wait_until_async,
};

/// Until the master has killed a misbehaving worker: the longest path is a
/// missing `Pong` (15 s without one, seen at the next 5 s ping tick), plus
/// a restart. Only catches hangs.
const KILL_DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound of the bystander's sequential echo attempts.
const MAX_ATTEMPTS: usize = 100_000;
/// Longest log line the master keeps of a worker (`/logs`, its own log).
const MAX_KEPT_LINE: usize = 16 * 1024;
/// Lines `/instances/{id}/logs` keeps per instance.
const LOG_RING: usize = 1000;
/// Peak resident memory the master may reach in the flood test (it runs
/// three floods totalling over 700 MiB through it).
const MAX_MASTER_PEAK: u64 = 128 << 20;

/// A normal instance beside the evil ones: a single-end forwarder to an
/// echo server, with a task echoing distinct payloads through it until
/// [`Bystander::finish`].
struct Bystander {
    id: String,
    entrance: SocketAddr,
    _echo: EchoServer,
    stop: Arc<AtomicBool>,
    traffic: JoinHandle<(usize, Vec<String>)>,
}

impl Bystander {
    async fn start(api: &Api) -> Bystander {
        let echo = EchoServer::start().await;
        let entrance = free_addr();
        let v = api
            .create_url(&format!("client://{entrance}/{}?mode=1", echo.addr))
            .await;
        let id = id_of(&v);
        wait_ready(api, &id, None, DEADLINE).await;
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut ok, mut errors) = (0, Vec::new());
                for i in 0..MAX_ATTEMPTS {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let payload = pattern(16 * 1024 + i % 977, i as u64);
                    match echo_attempt(entrance, &payload, DEADLINE).await {
                        Ok(()) => ok += 1,
                        Err(e) => errors.push(format!("attempt {i}: {e}")),
                    }
                }
                (ok, errors)
            }
        });
        Bystander {
            id,
            entrance,
            _echo: echo,
            stop,
            traffic,
        }
    }

    /// Stops the traffic; asserts every echo came back exact (and there were
    /// some) and the instance is still ready in its first worker.
    async fn finish(self, api: &Api, first_pid: u32) {
        // One more after everything the test did.
        echo_attempt(self.entrance, &pattern(4096, 7), DEADLINE)
            .await
            .expect("a last echo through the bystander");
        self.stop.store(true, Ordering::Relaxed);
        let (ok, errors) = self.traffic.await.expect("traffic task");
        assert!(errors.is_empty(), "bystander echoes failed: {errors:?}");
        assert!(ok > 0, "no bystander echo ran");
        let v = api.instance(&self.id).await;
        assert_eq!(worker_pid(&v), Some(first_pid), "bystander restarted: {v}");
        assert_eq!(v["worker"]["restarts"], 0, "bystander restarted: {v}");
    }
}

/// Pids of the workers the master spawned for `id` so far (its log).
fn spawned_pids(master: &Master, id: &str) -> Vec<u32> {
    let tag = format!("instance={id}");
    master
        .lines()
        .iter()
        .filter(|l| l.contains("worker spawned") && l.contains(&tag))
        .filter_map(|l| {
            let rest = &l[l.find("pid=")? + 4..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Waits until the master has ended a worker of `id` (`restarts` ≥ 1);
/// asserts every worker of it but the current one is gone; returns the
/// instance (with `last_exit`).
async fn wait_killed(master: &Master, api: &Api, id: &str) -> Value {
    wait_instance(api, id, KILL_DEADLINE, "has lost a worker", |v| {
        v["worker"]["restarts"].as_u64() >= Some(1)
    })
    .await;
    // The log first, the instance after: the master records a worker's pid
    // before it logs "worker spawned", so a logged pid that is not current
    // in this later view has ended (a replacement may be starting meanwhile).
    let logged = spawned_pids(master, id);
    let v = wait_instance(api, id, KILL_DEADLINE, "is listed", |_| true).await;
    let current = worker_pid(&v);
    let ended: Vec<u32> = logged.into_iter().filter(|p| Some(*p) != current).collect();
    assert!(
        !ended.is_empty(),
        "no ended worker of {id} in the master's log: {v}"
    );
    for pid in ended {
        assert!(!proc_alive(pid), "worker {pid} of {id} still runs: {v}");
    }
    v
}

fn last_exit(v: &Value) -> String {
    v["worker"]["last_exit"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every API call on the way answers (the HTTP client gives up after
/// [`DEADLINE`], which fails the test).
async fn api_answers(api: &Api, ids: &[&str]) {
    assert!(api.list().await.len() > ids.len());
    for id in ids {
        api.instance(id).await;
        api.logs(id, 10).await;
    }
    api.get("/info").await.expect(200);
}

/// Peak resident memory of `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in kB");
    kb * 1024
}

/// Bad frames end that worker (killed, pid gone, `protocol error` in
/// `last_exit`, restarted); the bystander and the API are untouched.
#[tokio::test]
async fn bad_frames_get_that_worker_killed() {
    let master = Master::start_with_worker(DEFAULT_URL, &evil_worker_bin()).await;
    let api = master.api();
    let bystander = Bystander::start(&api).await;
    let (first_pid, _) = wait_ready(&api, &bystander.id, None, DEADLINE).await;
    let behaviours = [
        Behaviour::Oversize,
        Behaviour::Garbage,
        Behaviour::Noise,
        Behaviour::FdSmuggle,
    ];
    let mut ids = Vec::new();
    for b in &behaviours {
        ids.push(create_evil(&api, b).await);
    }
    for (b, id) in behaviours.iter().zip(&ids) {
        let v = wait_killed(&master, &api, id).await;
        let how = last_exit(&v);
        assert!(
            how.starts_with("signal 9 (SIGKILL): protocol error"),
            "{b:?}: the worker ended as {how:?}"
        );
        api_answers(&api, &[id, &bystander.id]).await;
    }
    // The log is written by its own thread: it may trail the API a little.
    wait_until(DEADLINE, "the master to log each protocol error", || {
        master.count_lines("protocol error from the worker; killing it") >= behaviours.len()
    })
    .await;
    bystander.finish(&api, first_pid).await;
}

/// Floods of `Log`, stderr and `Stats` are absorbed: kept logs are bounded
/// in line length and count, the master's peak memory stays bounded,
/// counters saturate at `u64::MAX` instead of overflowing (the master runs
/// a debug build: an overflow would panic), and the API keeps answering.
#[tokio::test]
async fn floods_are_absorbed() {
    let master = Master::start_with_worker(DEFAULT_URL, &evil_worker_bin()).await;
    let api = master.api();
    let bystander = Bystander::start(&api).await;
    let (first_pid, _) = wait_ready(&api, &bystander.id, None, DEADLINE).await;
    let logs = create_evil(&api, &Behaviour::LogFlood).await;
    let stderr = create_evil(&api, &Behaviour::StderrFlood).await;
    let stats = create_evil(&api, &Behaviour::StatsFlood).await;

    // The Log and stderr floods end with a marker Stats: everything before
    // it has been read by the master.
    for id in [&logs, &stderr] {
        wait_instance(&api, id, KILL_DEADLINE, "has read the whole flood", |v| {
            v["tcps"].as_u64() == Some(DONE_TCPS)
        })
        .await;
        api_answers(&api, &[id, &bystander.id]).await;
    }
    wait_until_async(
        KILL_DEADLINE,
        "the stderr flood's last line is kept",
        || async { api.logged(&stderr, STDERR_DONE).await },
    )
    .await;
    // The Stats flood ends with every counter at u64::MAX and an exit; the
    // next worker's counters add on top of those (shown once written, so
    // wait for that too).
    let v = wait_instance(
        &api,
        &stats,
        KILL_DEADLINE,
        "has run a second flooding worker and shows its counters",
        |v| v["worker"]["restarts"].as_u64() >= Some(2) && v["tcprx"].as_u64() == Some(u64::MAX),
    )
    .await;
    api_answers(&api, &[&stats, &logs, &stderr, &bystander.id]).await;
    for key in ["tcprx", "tcptx", "udprx", "udptx"] {
        assert_eq!(v[key].as_u64(), Some(u64::MAX), "{key} saturates: {v}");
    }

    for id in [&logs, &stderr, &stats] {
        let kept = api.logs(id, 100_000).await;
        assert!(kept.len() <= LOG_RING, "{id} keeps {} lines", kept.len());
        let longest = kept.iter().map(String::len).max().unwrap_or(0);
        assert!(
            longest <= MAX_KEPT_LINE,
            "{id} keeps a line of {longest} bytes"
        );
    }
    let dropped = api.logs(&logs, LOG_RING).await;
    assert!(
        dropped.iter().any(|l| l.contains("log lines dropped")),
        "the Log flood was throttled, and said so"
    );
    let longest = master.lines().iter().map(String::len).max().unwrap_or(0);
    assert!(
        longest <= MAX_KEPT_LINE + 1024,
        "the master logged a line of {longest} bytes"
    );
    let peak = peak_rss(master.pid());
    eprintln!("master peak RSS {} MiB", peak >> 20);
    assert!(
        peak <= MAX_MASTER_PEAK,
        "master peak RSS {} MiB",
        peak >> 20
    );
    bystander.finish(&api, first_pid).await;
}

/// `Bind` only ever binds what the instance's URL listens on: everything
/// else a worker asks for is refused, no fd is passed, and the port stays
/// free for others (or stays with the instance that holds it).
#[tokio::test]
async fn binds_beyond_the_url_are_refused() {
    let master = Master::start_with_worker(DEFAULT_URL, &evil_worker_bin()).await;
    let api = master.api();
    let bystander = Bystander::start(&api).await;
    let (first_pid, _) = wait_ready(&api, &bystander.id, None, DEADLINE).await;
    // Another instance: a reverse server holding a TCP tunnel port and a
    // TCP+UDP entrance.
    let (other_tunnel, other_entrance) = (free_addr(), free_addr());
    let other = id_of(
        &api.create_url(&format!("server://{other_tunnel}/{other_entrance}?mode=1"))
            .await,
    );
    wait_ready(&api, &other, None, DEADLINE).await;
    // Free ports nobody holds: one the evil instance dials as its target
    // (forward mode: it must never listen there), one it has no claim to.
    let (target, stranger) = (free_addr(), free_addr());
    let own_tunnel = free_addr();
    let ports = vec![
        other_tunnel.port(),
        other_entrance.port(),
        bystander.entrance.port(),
        stranger.port(),
    ];
    let url = format!(
        "server://{}@{own_tunnel}/{target}?mode=2",
        Behaviour::Bind(ports).key()
    );
    let evil = id_of(&api.create_url(&url).await);
    wait_until_async(
        KILL_DEADLINE,
        "the evil worker has asked for everything",
        || async { api.logged(&evil, "evil: bind done").await },
    )
    .await;

    let answers: Vec<String> = api
        .logs(&evil, LOG_RING)
        .await
        .into_iter()
        .filter(|l| l.contains("evil: bind \""))
        .collect();
    assert!(answers.len() > 40, "too few answers: {answers:?}");
    // Its own tunnel port over TCP is the one thing its URL listens on (the
    // master bound it already: the same socket again).
    let own = format!("evil: bind \"{own_tunnel}\"/tcp -> Bound fds=1");
    for line in &answers {
        if line.ends_with(&own) {
            continue;
        }
        assert!(line.contains("-> BindError: "), "not refused: {line}");
    }
    assert_eq!(answers.iter().filter(|l| l.ends_with(&own)).count(), 1);

    // Nothing was bound behind the refusals: free ports are still free…
    for addr in [target, stranger] {
        assert!(tcp_port_free(addr), "{addr}/tcp was bound");
        assert!(udp_port_free(addr), "{addr}/udp was bound");
    }
    assert!(udp_port_free(own_tunnel), "{own_tunnel}/udp was bound");
    assert!(udp_port_free(other_tunnel), "{other_tunnel}/udp was bound");
    // …and the other instances' ports are still theirs.
    assert!(!tcp_port_free(other_tunnel) && !tcp_port_free(other_entrance));
    assert!(!udp_port_free(other_entrance));
    let v = api.instance(&other).await;
    assert_eq!(v["worker"]["restarts"], 0, "{v}");
    api_answers(&api, &[&evil, &other, &bystander.id]).await;
    bystander.finish(&api, first_pid).await;
}

/// A worker that never gets ready, one that stops answering pings, and one
/// that stops reading its control socket while it asks for things: each is
/// killed, and deleting them through the API completes.
#[tokio::test]
async fn unresponsive_workers_are_killed() {
    let master = Master::start_with_worker(DEFAULT_URL, &evil_worker_bin()).await;
    let api = master.api();
    let bystander = Bystander::start(&api).await;
    let (first_pid, _) = wait_ready(&api, &bystander.id, None, DEADLINE).await;
    let cases = [
        (Behaviour::Silent, "not ready within 10 s"),
        (Behaviour::NoPong, "hung: no Pong"),
        (Behaviour::Deaf, "not reading its control socket"),
    ];
    let mut ids = Vec::new();
    for (b, _) in &cases {
        ids.push(create_evil(&api, b).await);
    }
    for ((b, why), id) in cases.iter().zip(&ids) {
        let v = wait_killed(&master, &api, id).await;
        let how = last_exit(&v);
        assert!(
            how.starts_with("signal 9 (SIGKILL)") && how.contains(why),
            "{b:?}: the worker ended as {how:?}, want {why:?}"
        );
        api_answers(&api, &[id, &bystander.id]).await;
    }
    for id in &ids {
        api.delete(&format!("/instances/{id}")).await.expect(204);
    }
    bystander.finish(&api, first_pid).await;
}
