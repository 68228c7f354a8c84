//! Tunnel parameters: several targets (failover, round-robin, `lbs=2`),
//! `slot`, `proxy=1|2`, `block`, `notcp`, `noudp`, `read`.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use drover_e2e::io::{
    assert_echo, connect, echo_on, expect_closed_without_data, try_echo, udp_connected, udp_recv,
    udp_warm_up, wait_closed,
};
use drover_e2e::{
    DEADLINE, EchoServer, Mode, ProxyHeader, ProxyHeaderServer, TunnelBuilder, UdpEchoServer,
    free_addr, wait_until_async,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Connections made in the multi-target tests.
const ROUNDS: usize = 6;

async fn failover(mode: Mode) {
    let dead = free_addr(); // nothing listens there
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(mode, &[dead, echo.addr]).start().await;
    for i in 0..ROUNDS {
        assert_echo(
            tunnel.entrance,
            format!("connection {i} despite a dead target").as_bytes(),
        )
        .await;
    }
    assert_eq!(
        echo.accepted(),
        ROUNDS,
        "the live target did not serve every connection"
    );
}

/// Single-end client: with the first target down, every connection is served
/// by the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_target_down_second_serves_single() {
    failover(Mode::Single).await;
}

/// Reverse pair (the client dials): with the first target down, every
/// connection is served by the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_target_down_second_serves_reverse() {
    failover(Mode::Reverse).await;
}

/// Forward pair (the server dials): with the first target down, every
/// connection is served by the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_target_down_second_serves_forward() {
    failover(Mode::Forward).await;
}

/// Default balancing (`lbs=0`) spreads connections over two live targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_uses_every_target() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let tunnel = TunnelBuilder::new(Mode::Single, &[a.addr, b.addr])
        .start()
        .await;
    for i in 0..ROUNDS {
        assert_echo(tunnel.entrance, format!("round {i}").as_bytes()).await;
    }
    assert_eq!(a.accepted() + b.accepted(), ROUNDS);
    assert!(
        a.accepted() > 0 && b.accepted() > 0,
        "round-robin sent {} connections to the first target and {} to the second",
        a.accepted(),
        b.accepted()
    );
}

/// `lbs=2` (primary/backup): while the first target is up, it takes every
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lbs2_prefers_the_primary() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let tunnel = TunnelBuilder::new(Mode::Single, &[a.addr, b.addr])
        .client("lbs=2")
        .start()
        .await;
    for i in 0..ROUNDS {
        assert_echo(tunnel.entrance, format!("round {i}").as_bytes()).await;
    }
    assert_eq!(
        (a.accepted(), b.accepted()),
        (ROUNDS, 0),
        "lbs=2 did not send every connection to the primary"
    );
}

/// Opens a connection and proves it is a live session by one echo.
async fn open_session(addr: SocketAddr, i: usize) -> TcpStream {
    let mut stream = connect(addr).await;
    let msg = format!("held session {i}");
    stream.write_all(msg.as_bytes()).await.expect("write");
    let back = drover_e2e::io::read_exact_len(&mut stream, msg.len(), "held session echo").await;
    assert_eq!(back, msg.as_bytes());
    stream
}

async fn slot_limit(mode: Mode) {
    const SLOTS: usize = 2;
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(mode, &[echo.addr])
        .entrance(&format!("slot={SLOTS}"))
        .start()
        .await;
    let mut held = Vec::new();
    for i in 0..SLOTS {
        held.push(open_session(tunnel.entrance, i).await);
    }
    let mut over = connect(tunnel.entrance).await;
    // The write may already fail if the worker closed first: that is fine.
    let _ = over.write_all(b"one connection over the limit").await;
    expect_closed_without_data(&mut over, "the connection over slot").await;
    assert_eq!(
        echo.accepted(),
        SLOTS,
        "the connection over the limit reached the target"
    );
    // A slot frees when a session ends.
    drop(held.pop());
    wait_until_async(
        DEADLINE,
        "a new connection is served once a slot is free",
        || try_echo(tunnel.entrance, b"a freed slot", Duration::from_secs(2)),
    )
    .await;
}

/// Single-end client, `slot=2`: with two sessions open the third connection
/// is closed without data and never reaches the target; closing one frees a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_refuses_connection_over_limit_single() {
    slot_limit(Mode::Single).await;
}

/// Reverse pair, `slot=2` on the server (entrance): the third connection is
/// closed without data; closing one frees a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_refuses_connection_over_limit_reverse() {
    slot_limit(Mode::Reverse).await;
}

async fn proxy_header(mode: Mode, version: u8) {
    let backend = ProxyHeaderServer::start().await;
    let tunnel = TunnelBuilder::new(mode, &[backend.addr])
        .exit(&format!("proxy={version}"))
        .start()
        .await;
    let user = connect(tunnel.entrance).await;
    let user_addr = user.local_addr().expect("local_addr");
    let msg = b"data after the PROXY header";
    let back = echo_on(user, msg).await;
    assert_eq!(back, msg, "the data after the header did not pass intact");
    let headers = backend.headers();
    assert_eq!(
        headers.len(),
        1,
        "expected one connection at the target, got {headers:?}"
    );
    match (&headers[0], version) {
        (ProxyHeader::V1 { proto, src, dst }, 1) => {
            assert_eq!(proto, "TCP4");
            assert_eq!(*src, user_addr, "PROXY v1 source is not the user's address");
            assert_eq!(
                *dst, backend.addr,
                "PROXY v1 destination is not the target's address"
            );
        }
        (
            ProxyHeader::V2 {
                ver_cmd,
                fam,
                src,
                dst,
            },
            2,
        ) => {
            assert_eq!(*ver_cmd, 0x21, "PROXY v2 version/command");
            assert_eq!(*fam, 0x11, "PROXY v2 family (TCP over IPv4)");
            assert_eq!(*src, user_addr, "PROXY v2 source is not the user's address");
            assert_eq!(
                *dst, backend.addr,
                "PROXY v2 destination is not the target's address"
            );
        }
        (other, _) => panic!("proxy={version}: the target received {other:?}"),
    }
}

/// Single-end client, `proxy=1`: the target first receives a PROXY v1 line
/// carrying the user's address, then the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_header_single() {
    proxy_header(Mode::Single, 1).await;
}

/// Single-end client, `proxy=2`: the target first receives a PROXY v2 binary
/// header carrying the user's address, then the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_header_single() {
    proxy_header(Mode::Single, 2).await;
}

/// Reverse pair, `proxy=1` on the client (exit): the header carries the
/// address of the user who connected at the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_header_reverse() {
    proxy_header(Mode::Reverse, 1).await;
}

/// Forward pair, `proxy=2` on the server (exit): the header carries the
/// address of the user who connected at the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_header_forward() {
    proxy_header(Mode::Forward, 2).await;
}

/// Sends `first` on a new connection and expects it closed without data.
async fn refused(addr: SocketAddr, first: &[u8], what: &str) {
    let mut stream = connect(addr).await;
    let _ = stream.write_all(first).await;
    expect_closed_without_data(&mut stream, what).await;
}

async fn block_http(mode: Mode) {
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(mode, &[echo.addr])
        .entrance("block=2")
        .start()
        .await;
    refused(
        tunnel.entrance,
        b"GET / HTTP/1.1\r\nHost: example.test\r\nUser-Agent: e2e\r\n\r\n",
        "an HTTP request with block=2",
    )
    .await;
    refused(
        tunnel.entrance,
        b"POST /submit HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "an HTTP POST with block=2",
    )
    .await;
    let payload = b"\x00\x01 not an http request, just bytes";
    assert_echo(tunnel.entrance, payload).await;
    assert_eq!(
        echo.received(),
        payload.len() as u64,
        "bytes of the refused HTTP requests reached the target"
    );
}

/// Single-end client, `block=2`: an HTTP request is closed without any byte
/// reaching the target; a non-HTTP payload passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_http_single() {
    block_http(Mode::Single).await;
}

/// Reverse pair, `block=2` on the server (entrance): an HTTP request is
/// closed without any byte reaching the target; a non-HTTP payload passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_http_reverse() {
    block_http(Mode::Reverse).await;
}

/// Single-end client, `block=13`: a SOCKS5 greeting and a TLS ClientHello
/// are closed without reaching the target; HTTP (not blocked) passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_socks_and_tls_single() {
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(Mode::Single, &[echo.addr])
        .client("block=13")
        .start()
        .await;
    // SOCKS5 greeting offering six methods (8 bytes, so a peek of 8 completes).
    refused(
        tunnel.entrance,
        &[0x05, 0x06, 0x00, 0x01, 0x02, 0x03, 0x04, 0x80],
        "a SOCKS5 greeting with block=1",
    )
    .await;
    // The start of a TLS 1.2/1.3 ClientHello record.
    refused(
        tunnel.entrance,
        &[
            0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
        ],
        "a TLS ClientHello with block=3",
    )
    .await;
    let payload = b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n";
    assert_echo(tunnel.entrance, payload).await;
    assert_eq!(
        echo.received(),
        payload.len() as u64,
        "bytes of refused connections reached the target"
    );
}

/// Single-end client, `notcp=1`: TCP connections to the entrance are
/// refused; UDP still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notcp_refuses_tcp_udp_works() {
    let backend = free_addr();
    let _tcp = EchoServer::start_at(backend).await;
    let udp = UdpEchoServer::start_at(backend).await;
    let tunnel = TunnelBuilder::new(Mode::Single, &[backend])
        .client("notcp=1")
        .start()
        .await;
    match TcpStream::connect(tunnel.entrance).await {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("TCP connect with notcp=1 failed with {e}, not `connection refused`"),
        Ok(_) => panic!("TCP connect with notcp=1 was accepted"),
    }
    let socket = udp_connected(tunnel.entrance).await;
    udp_warm_up(&socket, b"udp still works with notcp=1").await;
    assert!(udp.datagrams() > 0);
}

/// Single-end client, `noudp=1`: UDP to the entrance is refused (ICMP port
/// unreachable); TCP still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noudp_refuses_udp_tcp_works() {
    let backend = free_addr();
    let _tcp = EchoServer::start_at(backend).await;
    let udp = UdpEchoServer::start_at(backend).await;
    let tunnel = TunnelBuilder::new(Mode::Single, &[backend])
        .client("noudp=1")
        .start()
        .await;
    assert_echo(tunnel.entrance, b"tcp still works with noudp=1").await;
    let socket = &udp_connected(tunnel.entrance).await;
    wait_until_async(
        DEADLINE,
        "a UDP datagram to the entrance is refused",
        move || async move {
            socket.send(b"is anyone there?").await.ok();
            match udp_recv(socket, Duration::from_millis(500)).await {
                Some(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => true,
                Some(Err(e)) => {
                    panic!("UDP with noudp=1 failed with {e}, not `connection refused`")
                }
                Some(Ok(d)) => panic!(
                    "UDP with noudp=1 was answered: {:?}",
                    String::from_utf8_lossy(&d)
                ),
                None => false,
            }
        },
    )
    .await;
    assert_eq!(
        udp.datagrams(),
        0,
        "a datagram reached the target with noudp=1"
    );
}

async fn read_timeout(mode: Mode) {
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(mode, &[echo.addr])
        .entrance("read=1s")
        .start()
        .await;
    let mut stream = connect(tunnel.entrance).await;
    stream
        .write_all(b"hello, then silence")
        .await
        .expect("write");
    let back = drover_e2e::io::read_exact_len(&mut stream, 19, "echo before idling").await;
    assert_eq!(back, b"hello, then silence");
    // Idle in both directions now; read=1s must close it well within the bound.
    wait_closed(
        &mut stream,
        Duration::from_secs(10),
        "an idle connection with read=1s",
    )
    .await;
}

/// Single-end client, `read=1s`: a connection idle in both directions is
/// closed (within a generous 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_closes_idle_single() {
    read_timeout(Mode::Single).await;
}

/// Reverse pair, `read=1s` on the server (entrance): an idle connection is
/// closed (within a generous 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_closes_idle_reverse() {
    read_timeout(Mode::Reverse).await;
}
