//! A worker gives a burst's memory back. Many concurrent bulk sessions
//! through a TLS tunnel grow both workers' heaps by megabytes; glibc would
//! keep that freed memory resident for good, the worker trims it once quiet.

use drover_e2e::io::stream_echo_sha256;
use drover_e2e::procs::proc_rss_anon_kib;
use drover_e2e::{DEADLINE, EchoServer, Mode, TunnelBuilder, pattern, wait_until};

/// Users in the burst, all at once, and the bytes each sends and reads back.
const USERS: usize = 48;
const EACH: usize = 2 << 20;
/// What a worker may keep over its idle size after the burst: the grown TLS
/// buffers of its now idle pool links (~14 KiB each) and allocator slack.
const KEEP_KIB: u64 = 2 * 1024;

fn anon(pid: u32) -> u64 {
    proc_rss_anon_kib(pid).expect("the worker's /proc/<pid>/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_workers_give_a_bursts_memory_back() {
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(Mode::Reverse, &[echo.addr])
        .server("tls=1")
        .start()
        .await;
    let workers = [tunnel.server.as_ref().expect("server"), &tunnel.client];
    let idle: Vec<u64> = workers.iter().map(|w| anon(w.pid())).collect();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..USERS {
        burst.spawn(stream_echo_sha256(tunnel.entrance, pattern(EACH, i as u64)));
    }
    while let Some(done) = burst.join_next().await {
        done.expect("a user of the burst");
    }
    let loaded: Vec<u64> = workers.iter().map(|w| anon(w.pid())).collect();
    // Otherwise the test could not tell trimming from no growth at all.
    assert!(
        loaded.iter().zip(&idle).any(|(l, i)| *l > i + 2 * KEEP_KIB),
        "the burst did not grow either worker's heap: idle {idle:?} KiB, after {loaded:?} KiB"
    );
    for (w, (idle, loaded)) in workers.iter().zip(idle.iter().zip(&loaded)) {
        let what = format!(
            "worker {} is back within {KEEP_KIB} KiB of its idle {idle} KiB of anonymous memory \
             (after the burst: {loaded} KiB)",
            w.pid()
        );
        wait_until(DEADLINE, &what, || anon(w.pid()) <= idle + KEEP_KIB).await;
    }
}
