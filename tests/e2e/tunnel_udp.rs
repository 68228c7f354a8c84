//! UDP through every mode: datagram boundaries survive, sessions stay apart.

use drover_e2e::io::{udp_connected, udp_recv, udp_warm_up};
use drover_e2e::{DEADLINE, Mode, TunnelBuilder, UdpEchoServer, pattern};
use tokio::net::UdpSocket;

/// Datagrams in the boundary test.
const DATAGRAMS: usize = 1000;
/// The largest payload that fits one Ethernet-sized IPv4 packet.
const MAX_PAYLOAD: usize = 1472;

/// Size of datagram `i`: from 1 up to [`MAX_PAYLOAD`], both ends included.
fn size_of(i: usize) -> usize {
    1 + i * (MAX_PAYLOAD - 1) / (DATAGRAMS - 1)
}

/// Receives the next datagram that is not a late copy of `probe`.
async fn recv_skipping(socket: &UdpSocket, probe: &[u8], what: &str) -> Vec<u8> {
    loop {
        match udp_recv(socket, DEADLINE).await {
            Some(Ok(d)) if d == probe => continue,
            Some(Ok(d)) => return d,
            Some(Err(e)) => panic!("{what}: {e}"),
            None => panic!("{what}: nothing within {DEADLINE:?}"),
        }
    }
}

async fn boundaries(mode: Mode) {
    let echo = UdpEchoServer::start().await;
    let tunnel = TunnelBuilder::new(mode, &[echo.addr]).start().await;
    let socket = udp_connected(tunnel.entrance).await;
    let probe = b"warm-up probe";
    udp_warm_up(&socket, probe).await;
    // Lock-step, so no socket buffer anywhere can overflow: a missing or
    // merged datagram is the engine's.
    for i in 0..DATAGRAMS {
        let sent = pattern(size_of(i), i as u64 + 7);
        socket.send(&sent).await.expect("send datagram");
        let back = recv_skipping(
            &socket,
            probe,
            &format!("datagram #{i} ({} bytes)", sent.len()),
        )
        .await;
        assert_eq!(
            back.len(),
            sent.len(),
            "datagram #{i}: sent {} bytes, got back one of {} bytes",
            sent.len(),
            back.len()
        );
        assert!(
            back == sent,
            "datagram #{i} ({} bytes) came back with other content",
            sent.len()
        );
    }
}

/// Reverse pair: 1,000 datagrams of 1..1472 bytes each come back whole, as
/// one datagram of the same size and content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_keep_boundaries_reverse() {
    boundaries(Mode::Reverse).await;
}

/// Forward pair: 1,000 datagrams of 1..1472 bytes each come back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_keep_boundaries_forward() {
    boundaries(Mode::Forward).await;
}

/// Single-end client: 1,000 datagrams of 1..1472 bytes each come back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_keep_boundaries_single() {
    boundaries(Mode::Single).await;
}

async fn sessions_apart(mode: Mode) {
    let echo = UdpEchoServer::start().await;
    let tunnel = TunnelBuilder::new(mode, &[echo.addr]).start().await;
    let a = udp_connected(tunnel.entrance).await;
    let b = udp_connected(tunnel.entrance).await;
    udp_warm_up(&a, b"warm A").await;
    udp_warm_up(&b, b"warm B").await;
    for i in 0..50 {
        let (msg_a, msg_b) = (format!("A says {i}"), format!("B says {i} and more"));
        a.send(msg_a.as_bytes()).await.expect("send A");
        b.send(msg_b.as_bytes()).await.expect("send B");
        let got_a = recv_skipping(&a, b"warm A", "client A").await;
        let got_b = recv_skipping(&b, b"warm B", "client B").await;
        assert_eq!(
            String::from_utf8_lossy(&got_a),
            msg_a,
            "client A got another session's reply"
        );
        assert_eq!(
            String::from_utf8_lossy(&got_b),
            msg_b,
            "client B got another session's reply"
        );
    }
    // Each user session has its own socket at the exit.
    assert!(
        echo.sources().len() >= 2,
        "the backend saw {:?}: both sessions came from one socket",
        echo.sources()
    );
}

/// Reverse pair: two UDP clients with different source ports only ever see
/// their own replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_do_not_mix_reverse() {
    sessions_apart(Mode::Reverse).await;
}

/// Forward pair: two UDP clients only ever see their own replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_do_not_mix_forward() {
    sessions_apart(Mode::Forward).await;
}

/// Single-end client: two UDP clients only ever see their own replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_do_not_mix_single() {
    sessions_apart(Mode::Single).await;
}
