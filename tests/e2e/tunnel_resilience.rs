//! Resilience: the server killed mid-stream and started again; the same
//! client process reconnects and serves new connections.

use drover_e2e::io::{connect, echo_on, wait_closed};
use drover_e2e::{DEADLINE, EchoServer, Mode, TunnelBuilder, Worker, pattern};
use tokio::io::AsyncWriteExt;

async fn server_restart(mode: Mode) {
    let echo = EchoServer::start().await;
    let mut tunnel = TunnelBuilder::new(mode, &[echo.addr]).start().await;
    let client_pid = tunnel.client.pid();

    // Mid-stream: a session that has carried data and is still open.
    let mut user = connect(tunnel.entrance).await;
    let chunk = pattern(64 << 10, 11);
    user.write_all(&chunk).await.expect("write");
    let back = drover_e2e::io::read_exact_len(&mut user, chunk.len(), "echo before the kill").await;
    assert!(back == chunk);
    let _ = user.write_all(&chunk).await;

    let status = tunnel.server().kill();
    assert!(!status.success());
    // The interrupted session ends (it must not hang).
    wait_closed(
        &mut user,
        DEADLINE,
        "the user's session after the server was killed",
    )
    .await;
    assert!(
        tunnel.client.is_running(),
        "the client exited when the server died"
    );

    let url = tunnel.plan.server_url.clone().expect("dual-end");
    let ups = tunnel.client.count_lines("tunnel up");
    let server = Worker::start(&url);
    server.wait_for_line("tunnel listening", DEADLINE).await;
    tunnel.server = Some(server);
    tunnel
        .client
        .wait_for_nth_line("tunnel up", ups + 1, DEADLINE)
        .await;
    tunnel.server().wait_for_line("tunnel up", DEADLINE).await;
    tunnel
        .entrance_worker()
        .wait_for_line("entrance listening", DEADLINE)
        .await;

    assert_eq!(tunnel.client.pid(), client_pid);
    assert!(
        tunnel.client.is_running(),
        "the client process is not the one that was running"
    );
    for i in 0..3 {
        let msg = format!("served again after the restart, #{i}");
        let back = echo_on(connect(tunnel.entrance).await, msg.as_bytes()).await;
        assert_eq!(back, msg.as_bytes());
    }
}

/// Reverse pair: the server SIGKILLed mid-stream and started again with the
/// same URL; the same client process reconnects and new connections are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_survives_server_restart_reverse() {
    server_restart(Mode::Reverse).await;
}

/// Forward pair: the server SIGKILLed mid-stream ends the user's session at
/// the client; once the server is back the same client serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_survives_server_restart_forward() {
    server_restart(Mode::Forward).await;
}
