//! Loopback sockets do not pace: when the system default congestion control
//! is BBR, the sockets a tunnel's workers own towards loopback use CUBIC —
//! pool links at both ends and the user's accepted socket (even when the
//! server listens on all interfaces for both) and the target connection —
//! while the test's own sockets keep the default.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_e2e::{DEADLINE, EchoServer, Mode, TunnelBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Congestion control of each established TCP socket whose local (`local`)
/// or peer port is `port`, as `ss` reports it.
fn congestion(port: u16, local: bool) -> Vec<String> {
    let side = if local { "sport" } else { "dport" };
    let out = Command::new("ss")
        .args([
            "-HtinO",
            "state",
            "established",
            &format!("( {side} = :{port} )"),
        ])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            // After Recv-Q, Send-Q and the two addresses: options such as
            // `ts sack`, then the algorithm, then `key:value` fields.
            line.split_whitespace()
                .skip(4)
                .find(|t| {
                    !t.contains(':') && !["ts", "sack", "ecn", "ecnseen", "fastopen"].contains(t)
                })
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

/// One user session stays open through a reverse tunnel whose server
/// listens on 0.0.0.0 (tunnel and entrance); every worker socket on loopback
/// has left BBR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_sockets_of_a_tunnel_do_not_pace() {
    let default = proto::congestion::system_default().expect("the system default");
    let want = if default.starts_with("bbr") {
        "cubic"
    } else {
        default.as_str()
    };
    let echo = EchoServer::start().await;
    let mut plan = TunnelBuilder::new(Mode::Reverse, &[echo.addr]).plan();
    let tunnel_port = plan.tunnel.expect("a dual-end tunnel").port();
    let entrance = plan.entrance.port();
    // The client and the user still dial 127.0.0.1; the derived key depends
    // on the port only.
    let server_url = plan.server_url.take().expect("a server");
    let everywhere = server_url
        .replace(
            &format!("127.0.0.1:{tunnel_port}/"),
            &format!("0.0.0.0:{tunnel_port}/"),
        )
        .replace(
            &format!("/127.0.0.1:{entrance}"),
            &format!("/0.0.0.0:{entrance}"),
        );
    assert_eq!(everywhere.matches("0.0.0.0").count(), 2, "{everywhere}");
    plan.server_url = Some(everywhere);
    let tunnel = plan.start().await;

    let mut user = TcpStream::connect(tunnel.entrance).await.expect("connect");
    let mut echoed = [0u8; 5];
    timeout(DEADLINE, async {
        user.write_all(b"hello").await?;
        user.read_exact(&mut echoed).await
    })
    .await
    .expect("echo within the deadline")
    .expect("echo");
    assert_eq!(&echoed, b"hello");

    let checks: [(&str, u16, bool); 4] = [
        ("server's pool links", tunnel_port, true),
        ("client's pool links", tunnel_port, false),
        ("accepted user socket", entrance, true),
        ("target connection", echo.addr.port(), false),
    ];
    for (what, port, local) in checks {
        // A link just accepted is tuned when its handshake task first runs:
        // wait for every socket to settle, then report what was seen.
        let end = Instant::now() + DEADLINE;
        let found = loop {
            let found = congestion(port, local);
            let settled = !found.is_empty() && found.iter().all(|cc| cc == want);
            if settled || Instant::now() > end {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            !found.is_empty() && found.iter().all(|cc| cc == want),
            "{what} (port {port}): {found:?}, want all {want}"
        );
    }
    // The control: the test's own user socket keeps the system default.
    let own: SocketAddr = user.local_addr().expect("local address");
    assert_eq!(
        congestion(own.port(), true),
        [default.as_str()],
        "the test's own socket"
    );
    drop(user);
}
