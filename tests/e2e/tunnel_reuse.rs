//! Pool links carry one short session after another: many short connections
//! through a tunnel close almost no pool link, and the counters still equal
//! the bytes carried; after a burst, the idle pool shrinks back.

use std::time::Duration;

use drover_e2e::io::send_half_close_read_all;
use drover_e2e::{DEADLINE, EchoServer, Mode, TunnelBuilder, closed_recently, pattern, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Short connections made one after another.
const SESSIONS: usize = 100;

async fn sessions_reuse_links(mode: Mode, server_params: &str) {
    let echo = EchoServer::start().await;
    let mut builder = TunnelBuilder::new(mode, &[echo.addr]).client("min=4");
    if !server_params.is_empty() {
        builder = builder.server(server_params);
    }
    let tunnel = builder.start().await;
    let port = tunnel.plan.tunnel.expect("a dual-end tunnel").port();
    let before = closed_recently(port);
    let mut bytes = 0u64;
    for i in 0..SESSIONS {
        // Below the size at which a session turns raw (and spends its link).
        let data = pattern(1 + i * 97 % 4_000, i as u64);
        let back = send_half_close_read_all(tunnel.entrance, &data).await;
        assert!(
            back == data,
            "session {i}: the echo differs from what was sent"
        );
        bytes += data.len() as u64;
    }
    assert_eq!(
        echo.accepted(),
        SESSIONS,
        "one target connection per session"
    );
    let closed = closed_recently(port).saturating_sub(before);
    assert!(
        closed < 10,
        "{closed} connections on the tunnel port closed over {SESSIONS} short sessions: pool links are not reused"
    );
    for worker in [tunnel.server.as_ref().expect("server"), &tunnel.client] {
        let stats = worker.stop_and_read_stats().await;
        assert_eq!(
            (stats.tcprx, stats.tcptx),
            (bytes, bytes),
            "counters after {SESSIONS} sessions\n{}",
            worker.dump()
        );
    }
}

/// Reverse pair: 100 short sessions, almost no pool link closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_sessions_reuse_links_reverse() {
    sessions_reuse_links(Mode::Reverse, "").await;
}

/// Forward pair: the client's own pool takes its links back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_sessions_reuse_links_forward() {
    sessions_reuse_links(Mode::Forward, "").await;
}

/// tls=1: a reused link costs no TLS handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_sessions_reuse_links_tls() {
    sessions_reuse_links(Mode::Reverse, "tls=1").await;
}

/// Users held open at once in the burst of the shrink test.
const BURST: usize = 16;

/// After a burst the pool has grown; idle again, the client lowers its
/// capacity (by a quarter every 30 s) and tells the server, which — the
/// entrance of a reverse pair — closes idle links beyond it. (Links are
/// reused, so without that nothing would ever make the pool smaller.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pool_shrinks_after_a_burst() {
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(Mode::Reverse, &[echo.addr])
        .client("min=2")
        .start()
        .await;
    let server = tunnel.server.as_ref().expect("server");
    // BURST users at once, each held open until all have been served.
    let mut users = Vec::new();
    for i in 0..BURST {
        let mut user = TcpStream::connect(tunnel.entrance).await.expect("connect");
        let data = pattern(100, i as u64);
        user.write_all(&data).await.expect("write");
        let mut back = vec![0u8; data.len()];
        timeout(DEADLINE, user.read_exact(&mut back))
            .await
            .expect("echo within the deadline")
            .expect("echo");
        assert_eq!(back, data, "user {i}");
        users.push(user);
    }
    drop(users);
    let pool = || server.last_stats().map_or(0, |s| s.pool);
    wait_until(
        DEADLINE,
        "the server's stats show the grown pool idle",
        || pool() >= BURST as u64 / 2,
    )
    .await;
    let peak = pool();
    // The first decay after the burst may still see it as recent: two periods.
    wait_until(Duration::from_secs(75), "the idle pool shrinks", || {
        pool() < peak
    })
    .await;
    let after = pool();
    assert!(after >= 2, "not below min=2: {after}\n{}", server.dump());
    // What is left still serves.
    let data = pattern(1000, 99);
    assert_eq!(send_half_close_read_all(tunnel.entrance, &data).await, data);
}
