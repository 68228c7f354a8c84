//! Counters: the `CHECK_POINT` line printed at exit after SIGTERM equals the
//! bytes carried, per the contract (user/target sockets only).

use nix::sys::signal::Signal;

use drover_e2e::io::{echo_once, send_half_close_read_all, udp_connected, udp_recv};
use drover_e2e::{
    DEADLINE, EchoServer, Mode, SinkReplyServer, Stats, TunnelBuilder, UdpEchoServer, free_addr,
    pattern, random_bytes,
};

/// Bytes the user sends before half-closing.
const SENT: usize = 300_000;
/// Bytes the backend sends after its 32-byte digest.
const REPLY_TAIL: usize = 123_457;

/// One TCP exchange of known size: `SENT` bytes up, `32 + REPLY_TAIL` down.
async fn tcp_exchange(entrance: std::net::SocketAddr) {
    let reply = send_half_close_read_all(entrance, &random_bytes(SENT)).await;
    assert_eq!(
        reply.len(),
        32 + REPLY_TAIL,
        "the reply did not arrive whole"
    );
}

/// Single-end client: after a TCP exchange and UDP datagrams of known sizes,
/// the final stats line has exactly those byte counts (TCPRX = sent by the
/// user, TCPTX = received by the user, likewise UDP) and MODE=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_stats_count_bytes_single() {
    let backend = free_addr();
    let sink = SinkReplyServer::start_at(backend, REPLY_TAIL).await;
    let _udp = UdpEchoServer::start_at(backend).await;
    let tunnel = TunnelBuilder::new(Mode::Single, &[backend]).start().await;
    tcp_exchange(tunnel.entrance).await;

    let socket = udp_connected(tunnel.entrance).await;
    let mut udp_bytes = 0u64;
    for i in 0..20usize {
        let d = pattern(1 + i * 61, i as u64);
        socket.send(&d).await.expect("send");
        let back = udp_recv(&socket, DEADLINE)
            .await
            .unwrap_or_else(|| panic!("datagram #{i} not echoed"))
            .expect("recv");
        assert_eq!(back, d);
        udp_bytes += d.len() as u64;
    }
    assert_eq!(sink.received(), SENT as u64);

    let stats = tunnel.client.stop_and_read_stats().await;
    let want = (SENT as u64, 32 + REPLY_TAIL as u64, udp_bytes, udp_bytes);
    assert_eq!(
        (stats.tcprx, stats.tcptx, stats.udprx, stats.udptx),
        want,
        "(TCPRX, TCPTX, UDPRX, UDPTX) at exit; full stats {stats:?}"
    );
    assert_eq!(stats.mode, 1, "MODE of a single-end client");
    assert_eq!(stats.tcps, 0, "TCPS at exit, after the only session ended");
}

/// Reverse pair: after a TCP exchange of known size, the server's final
/// stats count the user's side (TCPRX = sent, TCPTX = received) and the
/// client's count the target's side (TCPTX = sent, TCPRX = received).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_stats_count_bytes_reverse() {
    let sink = SinkReplyServer::start(REPLY_TAIL).await;
    let tunnel = TunnelBuilder::new(Mode::Reverse, &[sink.addr])
        .start()
        .await;
    tcp_exchange(tunnel.entrance).await;
    assert_eq!(sink.received(), SENT as u64);

    let (up, down) = (SENT as u64, 32 + REPLY_TAIL as u64);
    let client = tunnel.client.stop_and_read_stats().await;
    let server = tunnel.server().stop_and_read_stats().await;
    assert_eq!(
        (server.tcprx, server.tcptx, server.udprx, server.udptx),
        (up, down, 0, 0),
        "server (entrance) (TCPRX, TCPTX, UDPRX, UDPTX); full stats {server:?}"
    );
    assert_eq!(
        (client.tcprx, client.tcptx, client.udprx, client.udptx),
        (down, up, 0, 0),
        "client (exit) (TCPRX, TCPTX, UDPRX, UDPTX); full stats {client:?}"
    );
    assert_eq!(
        (server.mode, client.mode),
        (1, 2),
        "MODE of server and client"
    );
}

/// A running worker logs a `CHECK_POINT` line periodically (every 5 s),
/// without being asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_line_is_periodic() {
    let sink = SinkReplyServer::start(10).await;
    let tunnel = TunnelBuilder::new(Mode::Single, &[sink.addr]).start().await;
    let line = tunnel.client.wait_for_line("CHECK_POINT|", DEADLINE).await;
    assert!(
        Stats::parse(&line).is_some(),
        "malformed CHECK_POINT line {line:?}"
    );
    assert!(tunnel.client.is_running());
}

/// SIGINT also stops the worker and prints a final `CHECK_POINT` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_with_final_stats() {
    let sink = SinkReplyServer::start(10).await;
    let tunnel = TunnelBuilder::new(Mode::Single, &[sink.addr]).start().await;
    let mark = tunnel.client.mark();
    tunnel.client.signal(Signal::SIGINT);
    tunnel.client.wait_exit(DEADLINE).await;
    assert!(
        !tunnel.client.lines_since(mark, "CHECK_POINT|").is_empty(),
        "no CHECK_POINT line after SIGINT\n{}",
        tunnel.client.dump()
    );
}

/// The pre-dialled pool grows with demand, not with the number of starved
/// takes: after 400 connections from 8 concurrent users through a reverse
/// tunnel with `tls=1` (slow refills, so the entrance starves) and `min=2`,
/// the client holds a small multiple of 8 idle links (twice the sessions
/// open when it starved, and sessions linger at the exit while they close);
/// it used to double on every starved take, to `max` = 1,024.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_grows_with_demand_not_past_it() {
    const USERS: usize = 8;
    const EACH: usize = 50;
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(Mode::Reverse, &[echo.addr])
        .server("tls=1")
        .client("min=2")
        .start()
        .await;
    let entrance = tunnel.entrance;
    let users: Vec<_> = (0..USERS)
        .map(|u| {
            tokio::spawn(async move {
                for i in 0..EACH {
                    let payload = pattern(64, (u * EACH + i) as u64);
                    assert_eq!(echo_once(entrance, &payload).await, payload);
                }
            })
        })
        .collect();
    for u in users {
        u.await.expect("user task");
    }
    assert_eq!(echo.accepted(), USERS * EACH);
    // The next periodic stats line shows the pool after the burst.
    let mark = tunnel.client.mark();
    tunnel
        .client
        .wait_for_line_since(mark, "CHECK_POINT|", DEADLINE)
        .await;
    let line = tunnel.client.lines_since(mark, "CHECK_POINT|").remove(0);
    let stats = Stats::parse(&line).unwrap_or_else(|| panic!("malformed {line:?}"));
    assert!(
        (1..=8 * USERS as u64).contains(&stats.pool),
        "pool after the burst: {stats:?}\n{}",
        tunnel.client.dump()
    );
}
