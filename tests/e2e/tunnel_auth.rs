//! Tunnel authentication: a wrong key is refused on both sides with a clear
//! reason, and a recorded handshake replayed later is refused.

use std::time::Duration;

use drover_e2e::io::{assert_echo, connect, is_reset};
use drover_e2e::{DEADLINE, EchoServer, Mode, RecordingProxy, TunnelBuilder, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Wrong key: both sides log a WARN naming `wrong key`, neither brings the
/// tunnel up, and no byte a user sends reaches the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_refused_on_both_sides() {
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(Mode::Reverse, &[echo.addr])
        .keys("the-right-key", "a-wrong-key")
        .plan()
        .spawn()
        .await;
    let server = tunnel.server();
    server
        .wait_for_level_line("WARN", "wrong key", DEADLINE)
        .await;
    tunnel
        .client
        .wait_for_level_line("WARN", "wrong key", DEADLINE)
        .await;
    assert_eq!(
        server.count_lines("tunnel up"),
        0,
        "the server accepted a wrong key"
    );
    assert_eq!(
        tunnel.client.count_lines("tunnel up"),
        0,
        "the client came up with a wrong key"
    );
    assert!(
        tunnel.client.is_running(),
        "the client exited instead of retrying"
    );

    // A user at the entrance (if it is open) gets nothing back, and nothing
    // reaches the target. The second is the assertion; the read only gives
    // a would-be leak a bounded chance to happen.
    if let Ok(mut user) = TcpStream::connect(tunnel.entrance).await {
        let _ = user.write_all(b"this must not reach the target\n").await;
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = timeout(Duration::from_secs(1), user.read(&mut buf)).await {
            assert_eq!(
                n, 0,
                "the user got {n} bytes back through a tunnel with a wrong key"
            );
        }
    }
    assert_eq!(
        echo.accepted(),
        0,
        "the target was dialled through a tunnel with a wrong key"
    );
    assert_eq!(echo.received(), 0);
}

/// A handshake recorded between a real client and server, replayed later
/// from a raw socket, is refused: the server logs a WARN with `refused`,
/// closes the connection, brings no second tunnel up, and does not answer as
/// it answered the original (its challenge is fresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_handshake_refused() {
    let echo = EchoServer::start().await;
    let port = free_port();
    let tunnel_addr = ([127, 0, 0, 1], port).into();
    let proxy = RecordingProxy::start(tunnel_addr).await;
    let tunnel = TunnelBuilder::new(Mode::Reverse, &[echo.addr])
        .key("replay-test-key")
        .tunnel_port(port)
        .client_dials(proxy.addr)
        .start()
        .await;
    assert_echo(tunnel.entrance, b"the tunnel works before the replay").await;
    let server = tunnel.server();
    let original = proxy.recorded(0);
    assert!(
        !original.up.is_empty(),
        "the client's first connection sent nothing"
    );

    let mark = server.mark();
    let mut raw = connect(tunnel_addr).await;
    // The server may close before everything is written: that is a refusal too.
    let _ = raw.write_all(&original.up).await;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = timeout(DEADLINE, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if is_reset(&e) => return,
                Err(e) => panic!("reading the answer to the replay: {e}"),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the replayed connection open for {DEADLINE:?} (answered {} bytes)",
        answer.len()
    );
    server
        .wait_for_match(mark, 1, "WARN line with \"refused\"", DEADLINE, |l| {
            l.contains(" WARN ") && l.contains("refused")
        })
        .await;
    assert_eq!(
        server.count_lines("tunnel up"),
        1,
        "the replay brought a second tunnel up"
    );
    assert!(
        answer.is_empty() || !original.down.starts_with(&answer),
        "the server answered the replay exactly as it answered the original ({} bytes): no fresh challenge",
        answer.len()
    );
    // The real tunnel is unaffected.
    assert_echo(tunnel.entrance, b"the tunnel still works after the replay").await;
}
