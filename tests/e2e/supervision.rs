//! Supervision (DESIGN §1, §2) with real workers on loopback:
//!
//! 1. A worker killed (`SIGKILL`, `SIGTERM`) or hung (`SIGSTOP`: no `Pong`
//!    for 15 s → the master SIGKILLs it) under load: every connection to its
//!    instance made during the outage waits in the master's listener and is
//!    served by the replacement (never refused); a long transfer on another
//!    instance goes on undisturbed; the instance is `ready` again in a new
//!    process, with `restarts`/`last_exit` in the API, an SSE `update` and a
//!    master log line. A busy worker that still answers pings is not killed.
//! 2. A crash loop (a `tls=2` server whose certificate file is deleted: every
//!    start fails at once) backs off and ends `failed`/`error` after five
//!    short runs, visible in the API and over SSE; `PATCH restart` or
//!    `PATCH start` recovers it once the file is back, and so does the
//!    master's own periodic retry (`retry_failed=`).
//! 3. `kill -9` of the master: its workers are gone within 2 s, every port
//!    can be bound again, and a new master on the same data dir runs the
//!    instances again.
//! 4. UDP: datagrams sent while a `kill -9`ed worker is down wait in the
//!    master's socket and are answered by the replacement, each by its own
//!    echo; a worker that had run ≥ 10 s is replaced at once (no `backoff`).
//! 5. A stop escalates: a worker that ignores `Shutdown` gets SIGTERM once
//!    the grace has passed, one that ignores SIGTERM too gets SIGKILL of its
//!    process group 5 s later; `last_exit` and SSE say so, nothing is left.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use drover_e2e::api::{ReversePair, id_of, worker_pid, worker_state};
use drover_e2e::evil::{Behaviour, CHILD_REPORT, create_evil, evil_worker_bin};
use drover_e2e::io::{assert_echo, udp_connected, udp_recv, udp_warm_up};
use drover_e2e::lifecycle::{
    all_exited, all_stopped, echo_attempt, tcp_listening, tcp_sockets_on, wait_instance,
    wait_ready, worker_processes,
};
use drover_e2e::master::DEFAULT_URL;
use drover_e2e::procs::{proc_alive, tcp_port_free, udp_port_free};
use drover_e2e::tls::make_pki;
use drover_e2e::{
    Api, DEADLINE, EchoServer, Master, SseStream, UdpEchoServer, free_addr, pattern, wait_until,
};

/// One connection attempt may wait this long: through a hang (up to 20 s
/// until the master's ping timer sees 15 s without a `Pong`) plus a restart.
/// Only catches hangs.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(60);
/// Until a killed or hung instance is back (same reasoning).
const OUTAGE_DEADLINE: Duration = Duration::from_secs(90);
/// Five short runs with back-off 1 + 2 + 4 + 8 s (±20 %), then `failed`.
const CRASH_LOOP_DEADLINE: Duration = Duration::from_secs(90);
/// Datagrams each of two clients sends while the UDP worker is down (well
/// within a socket receive buffer).
const OUTAGE_DATAGRAMS: usize = 20;
/// A run this long counts as healthy (the master's `HEALTHY_RUN`).
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// The master's wait between SIGTERM and SIGKILL of a stopping worker.
const TERM_WAIT: Duration = Duration::from_secs(5);
/// How long after the master's death its workers may still run (DESIGN §1).
const ORPHAN_DEADLINE: Duration = Duration::from_secs(2);
/// Sequential connections to A before the signal (steady load).
const WARM_UP: usize = 20;
/// Concurrent connections opened the moment A's worker is gone or stopped.
const BURST: usize = 8;
/// Sequential connections after A is back.
const AFTER: usize = 20;
/// Upper bound of A's sequential attempts during one outage.
const MAX_OUTAGE_ATTEMPTS: usize = 20_000;
/// B's paced transfer: this much per tick (SHA-256 in a debug build is slow;
/// the transfer's point is to span the outage, not to be fast).
const B_CHUNK: usize = 16 * 1024;
const B_TICK: Duration = Duration::from_millis(10);
/// C's flood: one 256 KiB chunk per tick at most.
const C_TICK: Duration = Duration::from_millis(5);

/// A single-end client instance: the master listens on `entrance`, the
/// worker forwards to `backend`.
fn single_end(entrance: SocketAddr, backend: SocketAddr) -> String {
    format!("client://{entrance}/{backend}?mode=1")
}

/// The payload of A's attempt `n` (distinct per attempt).
fn attempt_payload(n: usize) -> Vec<u8> {
    pattern(2048, n as u64 + 1)
}

fn signal_pid(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// What B's long transfer carried.
#[derive(Debug)]
struct Transfer {
    bytes: u64,
    sent_sha: String,
    back_sha: String,
}

/// One long echo transfer on a single connection, paced (a chunk per tick)
/// until `stop` says so; hashes what was sent and what came back. `progress`
/// counts the bytes back. Any I/O error is an `Err`.
async fn paced_transfer(
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
    progress: Arc<AtomicU64>,
) -> Result<Transfer, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let chunks: Vec<Vec<u8>> = (0..8).map(|i| pattern(B_CHUNK, 100 + i)).collect();
    let writer = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        // Pacing, not synchronisation: it only bounds the rate.
        let mut tick = tokio::time::interval(B_TICK);
        for i in 0usize.. {
            if *stop.borrow_and_update() {
                break;
            }
            let chunk = &chunks[i % chunks.len()];
            wr.write_all(chunk)
                .await
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            hasher.update(chunk);
            sent += chunk.len() as u64;
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
        }
        wr.shutdown()
            .await
            .map_err(|e| format!("half-close after {sent} bytes: {e}"))?;
        Ok::<_, String>((sent, hex::encode(hasher.finalize())))
    });
    let mut hasher = Sha256::new();
    let mut back = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rd
            .read(&mut buf)
            .await
            .map_err(|e| format!("read after {back} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        back += n as u64;
        progress.store(back, Ordering::SeqCst);
    }
    let (sent, sent_sha) = writer.await.map_err(|e| format!("writer: {e}"))??;
    if back != sent {
        return Err(format!("sent {sent} bytes, {back} came back"));
    }
    Ok(Transfer {
        bytes: sent,
        sent_sha,
        back_sha: hex::encode(hasher.finalize()),
    })
}

/// An echo flood on one connection (keeps a worker busy) until
/// `stop`; checks every byte that comes back against what was sent (a
/// repeated chunk) without hashing; returns the bytes carried.
async fn busy_flood(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> Result<u64, String> {
    const CHUNK: usize = 256 * 1024;
    let chunk = Arc::new(pattern(CHUNK, 7));
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let data = chunk.clone();
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        // A cap (about 50 MB/s), not synchronisation: enough to keep the
        // worker relaying all the time without starving the machine (and
        // the tests running beside this one).
        let mut tick = tokio::time::interval(C_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::SeqCst) {
            wr.write_all(&data)
                .await
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            sent += data.len() as u64;
            tick.tick().await;
        }
        wr.shutdown()
            .await
            .map_err(|e| format!("half-close after {sent} bytes: {e}"))?;
        Ok::<_, String>(sent)
    });
    let mut back = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = rd
            .read(&mut buf)
            .await
            .map_err(|e| format!("read after {back} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        // Compare with the chunk at the same offset (wrapping around).
        let mut off = (back % CHUNK as u64) as usize;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = rest.len().min(CHUNK - off);
            if rest[..take] != chunk[off..off + take] {
                return Err(format!("wrong bytes back near offset {back}"));
            }
            rest = &rest[take..];
            off = 0;
        }
        back += n as u64;
        progress.store(back, Ordering::SeqCst);
    }
    let sent = writer.await.map_err(|e| format!("writer: {e}"))??;
    if back != sent {
        return Err(format!("sent {sent} bytes, {back} came back"));
    }
    Ok(back)
}

/// Reads `/events` in the background (so it never backs up) until an
/// `update` of `id` carries `worker.last_exit == want_exit`, then one that
/// shows it `ready` in a worker other than `old_pid`; returns both instances.
fn watch_exit(
    mut sse: SseStream,
    id: String,
    old_pid: u32,
    want_exit: String,
) -> JoinHandle<(Value, Value)> {
    tokio::spawn(async move {
        let of = |e: &drover_e2e::Event| {
            e.kind() == "update" && e.instance_id().as_deref() == Some(id.as_str())
        };
        let exit = sse
            .wait_event(
                &format!("update of {id} with last_exit {want_exit:?}"),
                OUTAGE_DEADLINE,
                |e| of(e) && e.instance()["worker"]["last_exit"] == want_exit.as_str(),
            )
            .await
            .instance();
        let ready = sse
            .wait_event(
                &format!("update of {id}: ready in a new worker"),
                OUTAGE_DEADLINE,
                |e| {
                    let v = e.instance();
                    of(e)
                        && worker_state(&v) == "ready"
                        && worker_pid(&v).is_some_and(|p| p != old_pid)
                },
            )
            .await
            .instance();
        (exit, ready)
    })
}

/// Worker log lines at WARN or ERROR level among an instance's logs.
async fn problems(api: &Api, id: &str) -> Vec<String> {
    api.logs(id, 1000)
        .await
        .into_iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("fatal"))
        .collect()
}

/// Instance A under a loop of fresh connections, B carrying one long paced
/// transfer (and, for a hang, C kept busy by a flood); then `signal` to A's
/// worker. See the module docs for what must hold.
async fn worker_outage_under_load(signal: Signal, want_exit: &str) {
    let started = tokio::time::Instant::now();
    let master = Master::start().await;
    let api = master.api();
    let (echo_a, echo_b, echo_c) = (
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
    );
    let (entr_a, entr_b, entr_c) = (free_addr(), free_addr(), free_addr());
    let a = id_of(
        &api.create(json!({ "url": single_end(entr_a, echo_a.addr), "alias": "a" }))
            .await,
    );
    let b = id_of(
        &api.create(json!({ "url": single_end(entr_b, echo_b.addr), "alias": "b" }))
            .await,
    );
    let hang = signal == Signal::SIGSTOP;
    let c = if hang {
        Some(id_of(
            &api.create(json!({ "url": single_end(entr_c, echo_c.addr), "alias": "c" }))
                .await,
        ))
    } else {
        None
    };
    let (pid_a, _) = wait_ready(&api, &a, None, DEADLINE).await;
    let (pid_b, _) = wait_ready(&api, &b, None, DEADLINE).await;
    let pid_c = match &c {
        Some(c) => Some(wait_ready(&api, c, None, DEADLINE).await.0),
        None => None,
    };

    let sse = master.events().await;
    let sse_task = watch_exit(sse, a.clone(), pid_a, want_exit.to_string());

    // B: one long transfer, under way before the signal and until A is back.
    let (stop_b, stop_rx) = watch::channel(false);
    let progress_b = Arc::new(AtomicU64::new(0));
    let b_task = tokio::spawn(paced_transfer(entr_b, stop_rx, progress_b.clone()));
    // C (hang only): a worker kept busy through the whole 15 s Pong window.
    let stop_c = Arc::new(AtomicBool::new(false));
    let progress_c = Arc::new(AtomicU64::new(0));
    let c_task = hang.then(|| tokio::spawn(busy_flood(entr_c, stop_c.clone(), progress_c.clone())));
    wait_until(DEADLINE, "B's transfer is under way", || {
        progress_b.load(Ordering::SeqCst) >= 4 * B_CHUNK as u64
    })
    .await;
    if hang {
        wait_until(DEADLINE, "C's flood is under way", || {
            progress_c.load(Ordering::SeqCst) >= 1 << 20
        })
        .await;
    }

    // Steady load on A, one fresh connection after another.
    let mut n = 0usize;
    for _ in 0..WARM_UP {
        echo_attempt(entr_a, &attempt_payload(n), ATTEMPT_DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("A attempt #{n} before the signal: {e}"));
        n += 1;
    }

    // The signal lands between two attempts, so none is in flight in the
    // old worker. A killed worker must be gone before the outage attempts
    // start (a dying process could still accept one and take it along).
    signal_pid(pid_a, signal);
    let signalled = tokio::time::Instant::now();
    // A stopped one must be stopped in every thread for the same reason.
    if hang {
        wait_until(DEADLINE, "A's worker is stopped", || all_stopped(pid_a)).await;
    } else {
        wait_until(DEADLINE, "A's killed worker is gone", || all_exited(pid_a)).await;
    }

    // The outage: a burst of concurrent connections at once, then one after
    // another until the API shows A ready in a new worker.
    let burst: Vec<_> = (0..BURST)
        .map(|i| {
            let payload = attempt_payload(100_000 + i);
            tokio::spawn(async move { echo_attempt(entr_a, &payload, ATTEMPT_DEADLINE).await })
        })
        .collect();
    let mut during = 0usize;
    let new_pid = loop {
        echo_attempt(entr_a, &attempt_payload(n), ATTEMPT_DEADLINE)
            .await
            .unwrap_or_else(|e| {
                panic!("A attempt #{n} during the outage (after {signal}) was not served: {e}")
            });
        n += 1;
        during += 1;
        let v = api.instance(&a).await;
        if let Some(pid) = worker_pid(&v).filter(|p| *p != pid_a && worker_state(&v) == "ready") {
            break pid;
        }
        assert!(
            during < MAX_OUTAGE_ATTEMPTS && signalled.elapsed() < OUTAGE_DEADLINE,
            "A is not ready in a new worker after {during} attempts / {:?}: {v}",
            signalled.elapsed()
        );
    };
    let outage = signalled.elapsed();
    for (i, task) in burst.into_iter().enumerate() {
        task.await.expect("burst task").unwrap_or_else(|e| {
            panic!("A burst attempt #{i} during the outage was not served: {e}")
        });
    }
    for _ in 0..AFTER {
        echo_attempt(entr_a, &attempt_payload(n), ATTEMPT_DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("A attempt #{n} after the restart: {e}"));
        n += 1;
    }
    assert!(!proc_alive(pid_a), "A's old worker {pid_a} is still alive");

    // B's transfer ends now, with every byte back and the right hash.
    stop_b.send(true).expect("stop B");
    let t = b_task
        .await
        .expect("B task")
        .unwrap_or_else(|e| panic!("B's long transfer failed: {e}"));
    assert_eq!(
        t.back_sha, t.sent_sha,
        "SHA-256 of B's {} bytes back differs from what was sent",
        t.bytes
    );
    assert_eq!(echo_b.received(), t.bytes, "bytes at B's backend");
    let carried_c = match c_task {
        Some(task) => {
            stop_c.store(true, Ordering::SeqCst);
            Some(
                task.await
                    .expect("C task")
                    .unwrap_or_else(|e| panic!("C's flood failed: {e}")),
            )
        }
        None => None,
    };

    // B (and C) were never touched: same worker, no restart.
    let mut others = vec![(b.clone(), pid_b)];
    if let (Some(c), Some(pid)) = (&c, pid_c) {
        others.push((c.clone(), pid));
    }
    for (id, pid) in &others {
        let v = api.instance(id).await;
        assert_eq!(worker_pid(&v), Some(*pid), "{id} changed worker: {v}");
        assert_eq!(worker_state(&v), "ready", "{id}: {v}");
        assert_eq!(v["worker"]["restarts"], 0, "{id}: {v}");
        assert!(v["worker"]["last_exit"].is_null(), "{id}: {v}");
        assert!(proc_alive(*pid), "{id}'s worker {pid} is gone");
        assert_eq!(
            problems(&api, id).await,
            Vec::<String>::new(),
            "{id} logged problems"
        );
    }

    // A: back in a new worker, the exit counted and described.
    let v = api.instance(&a).await;
    assert_eq!(v["status"], "running", "A: {v}");
    assert_eq!(worker_state(&v), "ready", "A: {v}");
    assert_eq!(worker_pid(&v), Some(new_pid), "A: {v}");
    assert_eq!(v["worker"]["restarts"], 1, "A restarts: {v}");
    assert_eq!(v["worker"]["last_exit"], want_exit, "A last_exit: {v}");
    assert!(
        master.children().contains(&new_pid),
        "A's new worker {new_pid} is not the master's child"
    );

    // SSE: an update carrying the exit (no pid: the worker is gone), then
    // one with the new worker ready.
    let (exit_ev, ready_ev) = sse_task.await.expect("SSE task");
    assert_eq!(exit_ev["worker"]["restarts"], 1, "exit update: {exit_ev}");
    assert!(
        exit_ev["worker"]["pid"].is_null(),
        "exit update still shows a pid: {exit_ev}"
    );
    assert_eq!(
        worker_pid(&ready_ev),
        Some(new_pid),
        "ready update: {ready_ev}"
    );

    // The master logged it: instance id and how the worker ended.
    let lines = master.lines();
    assert!(
        lines.iter().any(|l| l.contains("worker ended unexpectedly")
            && l.contains(&a)
            && l.contains(want_exit.split(':').next().unwrap_or(want_exit))),
        "no master log line for A's exit ({want_exit})\n{}",
        master.dump()
    );
    println!(
        "{signal}: outage {outage:?}; A attempts: {WARM_UP} before, {} during ({BURST} concurrent), \
         {AFTER} after; B carried {} bytes{}; test {:?}",
        during + BURST,
        t.bytes,
        carried_c
            .map(|b| format!(", busy C {b} bytes"))
            .unwrap_or_default(),
        started.elapsed()
    );
}

/// `kill -9` of A's worker under load: no connection refused, B undisturbed,
/// A back in a new process (`last_exit` `signal 9 (SIGKILL)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_under_load_refuses_nothing() {
    worker_outage_under_load(Signal::SIGKILL, "signal 9 (SIGKILL)").await;
}

/// `kill <pid>` (SIGTERM) of A's worker under load: the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigtermed_worker_under_load_refuses_nothing() {
    worker_outage_under_load(Signal::SIGTERM, "signal 15 (SIGTERM)").await;
}

/// A worker stopped with SIGSTOP answers no `Ping`: after 15 s without a
/// `Pong` the master SIGKILLs and replaces it; connections made meanwhile
/// wait and are served. A worker kept busy by a flood the whole time (but
/// answering) is not touched. Slow: about 20 s of hang detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_worker_is_killed_and_replaced_busy_one_is_not() {
    worker_outage_under_load(Signal::SIGSTOP, "signal 9 (SIGKILL): hung: no Pong in 15 s").await;
}

/// A `tls=2` server whose certificate file is deleted, then its worker
/// killed: every start from then on fails at once (the worker reports
/// `Fatal` and exits 1).
struct CrashLoop {
    id: String,
    pid: u32,
    pki: drover_e2e::tls::TestPki,
    cert: Vec<u8>,
}

impl CrashLoop {
    /// Creates the instance and waits until it is ready (certificate in place).
    async fn create(api: &Api, alias: &str) -> CrashLoop {
        let pki = make_pki("localhost");
        // Under isolation the worker runs as a tenant uid: let it read the files.
        std::fs::set_permissions(pki.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod pki dir");
        for f in [&pki.cert_pem, &pki.key_pem] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let (tunnel, entrance) = (free_addr(), free_addr());
        let url = format!(
            "server://{tunnel}/{entrance}?mode=1&tls=2&crt={}&key={}",
            pki.cert_pem.display(),
            pki.key_pem.display()
        );
        let id = id_of(&api.create(json!({ "url": url, "alias": alias })).await);
        let (pid, _) = wait_ready(api, &id, None, DEADLINE).await;
        let cert = std::fs::read(&pki.cert_pem).expect("read cert");
        CrashLoop { id, pid, pki, cert }
    }

    /// The cause: the certificate is gone; then the worker dies.
    fn break_it(&self) {
        std::fs::remove_file(&self.pki.cert_pem).expect("remove cert");
        signal_pid(self.pid, Signal::SIGKILL);
    }

    /// The cause fixed.
    fn fix(&self) {
        std::fs::write(&self.pki.cert_pem, &self.cert).expect("restore cert");
        std::fs::set_permissions(&self.pki.cert_pem, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }

    /// Waits until the instance is `failed`; asserts what the API shows.
    async fn wait_failed(&self, api: &Api) -> Value {
        let failed = wait_instance(api, &self.id, CRASH_LOOP_DEADLINE, "is failed", |v| {
            worker_state(v) == "failed"
        })
        .await;
        assert_eq!(failed["status"], "error", "failed instance: {failed}");
        assert!(
            failed["worker"]["pid"].is_null(),
            "failed instance: {failed}"
        );
        // The kill, then four crashes (a first run of 10 s or more would not
        // count as short: one more).
        let restarts = failed["worker"]["restarts"].as_u64().expect("restarts");
        assert!(
            (5..=6).contains(&restarts),
            "restarts when failed: {failed}"
        );
        let last_exit = failed["worker"]["last_exit"].as_str().unwrap_or_default();
        assert!(
            last_exit.starts_with("exit 1: ") && last_exit.contains("server.pem"),
            "last_exit {last_exit:?} should be `exit 1: <the worker's fatal message naming the file>`"
        );
        failed
    }
}

/// Two `tls=2` servers whose certificate files disappear (see [`CrashLoop`]).
/// After five short runs with back-off each is `failed` (`status: error`),
/// in the API and over SSE, and no worker runs for it; with the files back,
/// `PATCH {"action":"restart"}` brings one up and `PATCH {"action":"start"}`
/// the other. Slow: the back-off alone is about 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_ends_failed_and_restart_or_start_recovers() {
    let started = tokio::time::Instant::now();
    let master = Master::start().await;
    let api = master.api();
    let by_restart = CrashLoop::create(&api, "tls2-restart").await;
    let by_start = CrashLoop::create(&api, "tls2-start").await;

    let mut sse = master.events().await;
    let t0 = tokio::time::Instant::now();
    by_restart.break_it();
    by_start.break_it();
    let failed = by_restart.wait_failed(&api).await;
    let to_failed = t0.elapsed();
    by_start.wait_failed(&api).await;
    let id = by_restart.id.clone();
    assert!(
        api.logs(&id, 1000)
            .await
            .iter()
            .any(|l| l.starts_with("fatal: ") && l.contains("server.pem")),
        "no `fatal:` log line naming the file: {:?}",
        api.logs(&id, 50).await
    );

    // SSE: updates through backoff to failed/error.
    let of = |e: &drover_e2e::Event, id: &str| {
        e.kind() == "update" && e.instance_id().as_deref() == Some(id)
    };
    sse.wait_event("update: failed with status error", DEADLINE, |e| {
        of(e, &id) && worker_state(&e.instance()) == "failed" && e.instance()["status"] == "error"
    })
    .await;
    let states: Vec<String> = sse
        .history
        .iter()
        .filter(|e| of(e, &id))
        .map(|e| worker_state(&e.instance()))
        .collect();
    let backoffs = states.iter().filter(|s| *s == "backoff").count();
    assert!(
        backoffs >= 4,
        "SSE states of the crash loop: {states:?} (want four back-offs before failed)"
    );
    let exit_updates = sse
        .history
        .iter()
        .filter(|e| {
            of(e, &id)
                && e.instance()["worker"]["last_exit"]
                    .as_str()
                    .is_some_and(|x| x.starts_with("exit 1"))
        })
        .count();
    assert!(
        exit_updates >= 4,
        "SSE updates carrying `exit 1`: {exit_updates}"
    );

    // Failed means no worker is started behind the operator's back.
    let ids = [by_restart.id.clone(), by_start.id.clone()];
    assert!(
        worker_processes(&ids).is_empty(),
        "a worker runs for a failed instance"
    );

    // The cause fixed, an operator restart or start recovers it.
    for (crash, action) in [(&by_restart, "restart"), (&by_start, "start")] {
        crash.fix();
        let answer = api
            .patch_instance(&crash.id, json!({ "action": action }))
            .await;
        assert_eq!(answer["id"], crash.id.as_str());
        let (new_pid, v) = wait_ready(&api, &crash.id, Some(crash.pid), DEADLINE).await;
        assert_eq!(v["status"], "running", "after {action}: {v}");
        sse.wait_event(
            &format!("update: ready again after {action}"),
            DEADLINE,
            |e| {
                of(e, &crash.id)
                    && worker_state(&e.instance()) == "ready"
                    && e.instance()["status"] == "running"
                    && worker_pid(&e.instance()) == Some(new_pid)
            },
        )
        .await;
        assert!(master.children().contains(&new_pid));
    }
    println!(
        "crash loop: failed {to_failed:?} after the kill ({} restarts); test {:?}",
        failed["worker"]["restarts"],
        started.elapsed()
    );
}

/// `master://…?retry_failed=2s`: a `failed` instance is tried again by the
/// master itself; once the cause is fixed the next try brings it up (SSE:
/// `failed`, then `starting` with no PATCH in between). Slow: the back-off
/// to `failed` is about 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_instance_is_retried_periodically() {
    let master = Master::start_url(&format!("{DEFAULT_URL}?retry_failed=2s")).await;
    let api = master.api();
    let crash = CrashLoop::create(&api, "tls2-retry").await;
    let mut sse = master.events().await;
    crash.break_it();
    crash.wait_failed(&api).await;
    assert!(
        master
            .lines()
            .iter()
            .any(|l| l.contains("marked failed") && l.contains("retry_every=2s")),
        "no `marked failed` line with retry_every=2s\n{}",
        master.dump()
    );
    crash.fix();
    let (_, v) = wait_ready(&api, &crash.id, Some(crash.pid), DEADLINE).await;
    assert_eq!(v["status"], "running", "{v}");
    // Over SSE: `failed`, then a try of the master's own.
    let of = |e: &drover_e2e::Event| {
        e.kind() == "update" && e.instance_id().as_deref() == Some(crash.id.as_str())
    };
    sse.wait_event("update: failed", DEADLINE, |e| {
        of(e) && worker_state(&e.instance()) == "failed"
    })
    .await;
    sse.wait_event("update: starting after failed", DEADLINE, |e| {
        of(e) && worker_state(&e.instance()) == "starting"
    })
    .await;
}

/// `kill -9` of the master: no worker of its instances survives it by more
/// than 2 s (orphans included, wherever reparented), every listener port
/// (TCP and UDP) and the workers' entry ports can be bound again; a new
/// master on the same data dir runs every instance again, in new processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_sigkill_takes_its_workers_new_master_restores() {
    let master = Master::start().await;
    let api = master.api();
    let echo = EchoServer::start().await;
    let pair = ReversePair::create(&api, echo.addr, json!({})).await;
    let single_entr = free_addr();
    let single = id_of(
        &api.create(json!({ "url": single_end(single_entr, echo.addr), "alias": "single" }))
            .await,
    );
    let ids = vec![
        pair.server_id.clone(),
        pair.client_id.clone(),
        single.clone(),
    ];
    let mut old_pids = Vec::new();
    let mut entries = Vec::new();
    for id in &ids {
        let (pid, v) = wait_ready(&api, id, None, DEADLINE).await;
        old_pids.push(pid);
        if let Some(e) = v["worker"]["entry"].as_str() {
            entries.push(e.parse::<SocketAddr>().expect("entry address"));
        }
    }
    assert_echo(pair.entrance, b"through the pair").await;
    assert_echo(single_entr, b"through the single-end client").await;
    let mut running: Vec<u32> = worker_processes(&ids).into_iter().map(|(p, _)| p).collect();
    running.sort_unstable();
    let mut want = old_pids.clone();
    want.sort_unstable();
    assert_eq!(running, want, "worker processes before the kill");

    master.kill();
    // Gone means the listeners are closed too: a thread-group leader shows
    // as a zombie while its other threads may still hold the fd table.
    let tcp = [pair.tunnel, pair.entrance, single_entr];
    let udp = [pair.entrance, single_entr];
    let held = || {
        let mut out: Vec<String> = worker_processes(&ids)
            .into_iter()
            .map(|(pid, id)| format!("worker {pid} of {id} alive"))
            .collect();
        out.extend(
            tcp.iter()
                .filter(|a| !tcp_port_free(**a))
                .map(|a| format!("TCP {a} held: {:?}", tcp_sockets_on(a.port()))),
        );
        out.extend(
            udp.iter()
                .filter(|a| !udp_port_free(**a))
                .map(|a| format!("UDP {a} held")),
        );
        out.extend(
            entries
                .iter()
                .filter(|a| tcp_listening(**a))
                .map(|a| format!("entry {a} still listening")),
        );
        out
    };
    let killed = tokio::time::Instant::now();
    let end = killed + ORPHAN_DEADLINE;
    let mut polls = 0usize;
    loop {
        let left = held();
        if left.is_empty() {
            println!(
                "master killed: workers gone and ports free after {:?} ({polls} polls with something left)",
                killed.elapsed()
            );
            break;
        }
        polls += 1;
        assert!(
            tokio::time::Instant::now() < end,
            "{ORPHAN_DEADLINE:?} after the master's death: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let master = Master::restart(&master).await;
    let api = master.api();
    for (id, old) in ids.iter().zip(&old_pids) {
        let (pid, _) = wait_ready(&api, id, Some(*old), DEADLINE).await;
        assert!(
            master.children().contains(&pid),
            "{id}: worker {pid} is not the new master's child"
        );
    }
    pair.wait_up(&api).await;
    assert_echo(pair.entrance, b"through the pair, new master").await;
    assert_echo(single_entr, b"through the single-end client, new master").await;
}

/// The pid `evil-noterm` reported for its child (`evil: child PID`).
async fn evil_child(api: &Api, id: &str) -> u32 {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let logs = api.logs(id, 100).await;
        if let Some(pid) = logs.iter().find_map(|l| {
            l[l.find(CHILD_REPORT)? + CHILD_REPORT.len()..]
                .trim()
                .parse()
                .ok()
        }) {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the noterm worker reported no child within {DEADLINE:?}: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stop through the API (`?grace=1s`) of a worker that ignores
/// `Shutdown` ends with SIGTERM of its group once the grace (plus 1 s) has
/// passed; of one that ignores SIGTERM too, as does a child in its process
/// group, with SIGKILL of the group 5 s after the SIGTERM. Each stop
/// completes (the PATCH answers), took at least that long, is described in
/// `last_exit` (API and the SSE `update` that shows it `parked`) and in the
/// master's log in that order, and leaves no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_from_shutdown_to_sigterm_to_sigkill() {
    let grace = Duration::from_secs(1);
    let master =
        Master::start_with_worker(&format!("{DEFAULT_URL}?grace=1s"), &evil_worker_bin()).await;
    let api = master.api();
    let term = create_evil(&api, &Behaviour::NoShutdown).await;
    let kill = create_evil(&api, &Behaviour::NoTerm).await;
    let (term_pid, _) = wait_ready(&api, &term, None, DEADLINE).await;
    let (kill_pid, _) = wait_ready(&api, &kill, None, DEADLINE).await;
    let child = evil_child(&api, &kill).await;
    assert!(proc_alive(child), "the noterm child {child} is not running");
    assert_eq!(
        nix::unistd::getpgid(Some(Pid::from_raw(child as i32))),
        Ok(Pid::from_raw(kill_pid as i32)),
        "the noterm child {child} is not in its worker's process group"
    );

    let mut sse = master.events().await;
    let stop = |id: String| {
        let api = api.clone();
        async move {
            let t0 = tokio::time::Instant::now();
            api.patch_instance(&id, json!({ "action": "stop" })).await;
            t0.elapsed()
        }
    };
    let (term_took, kill_took) = tokio::join!(stop(term.clone()), stop(kill.clone()));

    let want = [
        (
            &term,
            term_pid,
            "signal 15 (SIGTERM): stop escalated: SIGTERM after the 1s grace".to_string(),
            grace + Duration::from_secs(1),
            term_took,
        ),
        (
            &kill,
            kill_pid,
            format!(
                "signal 9 (SIGKILL): stop escalated: SIGTERM after the 1s grace, SIGKILL {}s later",
                TERM_WAIT.as_secs()
            ),
            grace + Duration::from_secs(1) + TERM_WAIT,
            kill_took,
        ),
    ];
    for (id, pid, exit, at_least, took) in &want {
        let v = api.instance(id).await;
        assert_eq!(v["status"], "stopped", "{id}: {v}");
        assert_eq!(worker_state(&v), "parked", "{id}: {v}");
        assert_eq!(v["worker"]["last_exit"], exit.as_str(), "{id}: {v}");
        assert!(
            took >= at_least,
            "{id}: the stop took {took:?}, less than the {at_least:?} it must wait before its last signal"
        );
        assert!(!proc_alive(*pid), "{id}'s worker {pid} is still alive");
        sse.wait_event(&format!("update: {id} parked, {exit:?}"), DEADLINE, |e| {
            e.kind() == "update"
                && e.instance_id().as_deref() == Some(id.as_str())
                && worker_state(&e.instance()) == "parked"
                && e.instance()["worker"]["last_exit"] == exit.as_str()
        })
        .await;
    }
    // The orphaned child got the group's SIGKILL.
    wait_until(DEADLINE, "the noterm child is gone", || !proc_alive(child)).await;

    // The master's log: SIGTERM for both, then SIGKILL for the second only.
    let lines = master.lines();
    let at = |id: &str, needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle) && l.contains(&format!("instance={id}")))
    };
    let (term_sigterm, kill_sigterm, kill_sigkill) = (
        at(&term, "SIGTERM to its group"),
        at(&kill, "SIGTERM to its group"),
        at(&kill, "SIGKILL to its group"),
    );
    assert!(
        term_sigterm.is_some(),
        "no SIGTERM line for {term}\n{}",
        master.dump()
    );
    assert!(
        at(&term, "SIGKILL to its group").is_none(),
        "{term} got SIGKILL\n{}",
        master.dump()
    );
    assert!(
        kill_sigterm.is_some() && kill_sigterm < kill_sigkill,
        "want SIGTERM then SIGKILL lines for {kill}\n{}",
        master.dump()
    );
    println!("stop escalation: SIGTERM after {term_took:?}, SIGKILL after {kill_took:?}");
}

/// A single-end UDP instance in front of a UDP echo; `kill -9` of its worker.
/// Two clients (one with a session in the dead worker, one new) send
/// datagrams while no worker runs (the worker had run < 10 s, so the
/// replacement comes after a ~1 s back-off): they wait in the master's UDP
/// socket and the replacement answers every one, each with its own bytes
/// and to its own client. The contract (docs/operations.md): datagrams that
/// arrive while the worker is down are kept up to the socket's receive
/// buffer; only one the dying worker had already read is lost, so a client
/// that retries until answered gets an answer, never another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_during_an_outage_are_answered_by_the_replacement() {
    let master = Master::start().await;
    let api = master.api();
    let echo = UdpEchoServer::start().await;
    let entrance = free_addr();
    let id = id_of(
        &api.create(json!({ "url": single_end(entrance, echo.addr), "alias": "udp" }))
            .await,
    );
    let (pid, _) = wait_ready(&api, &id, None, DEADLINE).await;
    let old_client = udp_connected(entrance).await;
    udp_warm_up(&old_client, b"warm-up").await;

    signal_pid(pid, Signal::SIGKILL);
    wait_until(DEADLINE, "the killed worker is gone", || all_exited(pid)).await;
    // The process can be gone before the master has seen it go: until then
    // the view still shows the killed worker, which is not one that is back.
    wait_instance(
        &api,
        &id,
        DEADLINE,
        "no longer shows the killed worker",
        |v| worker_pid(v) != Some(pid),
    )
    .await;
    let new_client = udp_connected(entrance).await;
    let payload =
        |who: &str, i: usize| format!("{who} datagram {i} during the outage").into_bytes();
    for i in 0..OUTAGE_DATAGRAMS {
        old_client.send(&payload("old", i)).await.expect("send");
        new_client.send(&payload("new", i)).await.expect("send");
    }
    let v = api.instance(&id).await;
    assert!(
        worker_pid(&v).is_none() && worker_state(&v) != "ready",
        "a worker was back before the outage datagrams were sent (back-off skipped?): {v}"
    );

    for (who, client) in [("old", &old_client), ("new", &new_client)] {
        let mut want: Vec<Vec<u8>> = (0..OUTAGE_DATAGRAMS).map(|i| payload(who, i)).collect();
        while !want.is_empty() {
            let got = match udp_recv(client, OUTAGE_DEADLINE).await {
                Some(Ok(d)) => d,
                Some(Err(e)) => panic!("{who} client: {e}"),
                None => panic!(
                    "{who} client: {} of {OUTAGE_DATAGRAMS} outage datagrams unanswered after {OUTAGE_DEADLINE:?}",
                    want.len()
                ),
            };
            if who == "old" && got == b"warm-up" {
                continue; // a late copy of the warm-up probe
            }
            let at = want.iter().position(|w| *w == got).unwrap_or_else(|| {
                panic!(
                    "{who} client got a datagram it did not send (or twice): {:?}",
                    String::from_utf8_lossy(&got)
                )
            });
            want.remove(at);
        }
    }

    let (new_pid, v) = wait_ready(&api, &id, Some(pid), DEADLINE).await;
    assert_eq!(v["worker"]["restarts"], 1, "{v}");
    assert_eq!(v["worker"]["last_exit"], "signal 9 (SIGKILL)", "{v}");
    assert!(master.children().contains(&new_pid));
    old_client.send(b"after the outage").await.expect("send");
    assert_eq!(
        udp_recv(&old_client, DEADLINE)
            .await
            .map(|r| r.expect("recv")),
        Some(b"after the outage".to_vec())
    );
}

/// A worker that has run more than 10 s and is `kill -9`ed is replaced at
/// once: `restarts` goes to 1 and no SSE update between the kill and the
/// new worker's `ready` shows `backoff`. Slow: one 11 s wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_that_ran_ten_seconds_restarts_without_backoff() {
    let master = Master::start().await;
    let api = master.api();
    let echo = EchoServer::start().await;
    let entrance = free_addr();
    let id = id_of(&api.create_url(&single_end(entrance, echo.addr)).await);
    let (pid, _) = wait_ready(&api, &id, None, DEADLINE).await;
    let mut sse = master.events().await;
    // The only way to have run ≥ 10 s.
    tokio::time::sleep(HEALTHY_RUN + Duration::from_secs(1)).await;
    assert_echo(entrance, b"before the kill").await;

    signal_pid(pid, Signal::SIGKILL);
    let of = |e: &drover_e2e::Event| {
        e.kind() == "update" && e.instance_id().as_deref() == Some(id.as_str())
    };
    let ready = sse
        .wait_event("update: ready in a new worker", DEADLINE, |e| {
            of(e)
                && worker_state(&e.instance()) == "ready"
                && worker_pid(&e.instance()).is_some_and(|p| p != pid)
        })
        .await
        .instance();
    assert_eq!(ready["worker"]["restarts"], 1, "{ready}");
    assert_eq!(
        ready["worker"]["last_exit"], "signal 9 (SIGKILL)",
        "{ready}"
    );
    let states: Vec<String> = sse
        .history
        .iter()
        .filter(|e| of(e))
        .map(|e| worker_state(&e.instance()))
        .collect();
    assert!(
        states.iter().any(|s| s == "starting"),
        "no `starting` update for the replacement: {states:?}"
    );
    assert!(
        !states.iter().any(|s| s == "backoff"),
        "a worker that had run ≥ 10 s went through back-off: {states:?}"
    );
    assert_echo(entrance, b"after the kill").await;
}
