//! TCP through every mode: 8 MiB each way with equal SHA-256, 200 concurrent
//! connections, half-close; a single-end burst served by two acceptors.

use std::time::Duration;

use drover_e2e::io::{send_half_close_read_all, stream_echo_sha256};
use drover_e2e::{
    EchoServer, Mode, SinkReplyServer, TRANSFER_DEADLINE, TunnelBuilder, pattern, random_bytes,
    sha256,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Bytes each way in the bulk test.
const BULK: usize = 8 << 20;
/// Connections at once in the concurrency test.
const CONNECTIONS: usize = 200;
/// Bytes each way per connection in the concurrency test.
const PER_CONNECTION: usize = 64 << 10;
/// What the user sends before half-closing.
const HALF_CLOSE_SEND: usize = 256 << 10;
/// What the backend sends after the digest.
const HALF_CLOSE_REPLY: usize = 1 << 20;

async fn bulk(mode: Mode) {
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(mode, &[echo.addr]).start().await;
    stream_echo_sha256(tunnel.entrance, random_bytes(BULK)).await;
}

/// Reverse pair: 8 MiB sent while its echo is read back has the same SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_8mib_reverse() {
    bulk(Mode::Reverse).await;
}

/// Forward pair: 8 MiB sent while its echo is read back has the same SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_8mib_forward() {
    bulk(Mode::Forward).await;
}

/// Single-end client: 8 MiB sent while its echo is read back has the same SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_8mib_single() {
    bulk(Mode::Single).await;
}

async fn one_connection(addr: std::net::SocketAddr, index: usize) -> Result<(), String> {
    let data = pattern(PER_CONNECTION, index as u64 + 1);
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("#{index}: connect: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move { wr.write_all(&sent).await.map(|_| wr) });
    let mut back = vec![0u8; PER_CONNECTION];
    rd.read_exact(&mut back)
        .await
        .map_err(|e| format!("#{index}: reading the echo: {e}"))?;
    writer
        .await
        .expect("writer task")
        .map_err(|e| format!("#{index}: writing: {e}"))?;
    if back != data {
        return Err(format!("#{index}: echo differs from what was sent"));
    }
    Ok(())
}

async fn concurrent(mode: Mode) {
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(mode, &[echo.addr]).start().await;
    let mut set = JoinSet::new();
    for i in 0..CONNECTIONS {
        set.spawn(one_connection(tunnel.entrance, i));
    }
    let results = tokio::time::timeout(TRANSFER_DEADLINE, set.join_all())
        .await
        .unwrap_or_else(|_| {
            panic!("{CONNECTIONS} echoes did not finish within {TRANSFER_DEADLINE:?}")
        });
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} connections failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(
        echo.accepted(),
        CONNECTIONS,
        "the backend saw a different number of connections"
    );
}

/// Reverse pair: 200 concurrent connections each echo 64 KiB intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_200_reverse() {
    concurrent(Mode::Reverse).await;
}

/// Forward pair: 200 concurrent connections each echo 64 KiB intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_200_forward() {
    concurrent(Mode::Forward).await;
}

/// Single-end client: 200 concurrent connections each echo 64 KiB intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_200_single() {
    concurrent(Mode::Single).await;
}

async fn half_close(mode: Mode) {
    let backend = SinkReplyServer::start(HALF_CLOSE_REPLY).await;
    let tunnel = TunnelBuilder::new(mode, &[backend.addr]).start().await;
    let sent = random_bytes(HALF_CLOSE_SEND);
    let reply = send_half_close_read_all(tunnel.entrance, &sent).await;
    assert_eq!(
        reply.len(),
        32 + HALF_CLOSE_REPLY,
        "after half-closing, the reply (digest + {HALF_CLOSE_REPLY} bytes) did not arrive whole"
    );
    assert_eq!(
        hex::encode(&reply[..32]),
        hex::encode(sha256(&sent)),
        "the backend did not receive exactly what was sent before the half-close"
    );
    assert!(
        reply[32..] == SinkReplyServer::reply_tail(HALF_CLOSE_REPLY)[..],
        "the reply sent after the half-close arrived corrupted"
    );
    assert_eq!(backend.received(), HALF_CLOSE_SEND as u64);
}

/// Reverse pair: after the user half-closes, the backend sees EOF and its
/// whole reply (SHA-256 of what it got + 1 MiB) still reaches the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_reverse() {
    half_close(Mode::Reverse).await;
}

/// Forward pair: after the user half-closes, the backend sees EOF and its
/// whole reply still reaches the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_forward() {
    half_close(Mode::Forward).await;
}

/// Single-end client: after the user half-closes, the backend sees EOF and its
/// whole reply still reaches the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_single() {
    half_close(Mode::Single).await;
}

/// Connections at once per wave in the burst test.
const WAVE: usize = 128;
/// Waves at most before the second acceptor must have started.
const WAVES: usize = 30;

/// Waves of 128 connections at once through a single-end client queue up at
/// its listener: a second acceptor thread starts, every echo comes back
/// intact, the helper retires once the burst is over and the first thread
/// serves alone again, and the final counters equal the bytes carried by
/// both threads exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_spreads_over_a_second_acceptor() {
    let echo = EchoServer::start().await;
    let tunnel = TunnelBuilder::new(Mode::Single, &[echo.addr])
        .entrance("log=debug")
        .start()
        .await;
    let worker = tunnel.entrance_worker();
    let mut carried = 0usize;
    for wave in 0..WAVES {
        let mut set = JoinSet::new();
        for i in 0..WAVE {
            set.spawn(one_connection(tunnel.entrance, wave * WAVE + i));
        }
        let results = tokio::time::timeout(TRANSFER_DEADLINE, set.join_all())
            .await
            .expect("a wave of echoes did not finish");
        let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        assert!(failures.is_empty(), "wave {wave}: {failures:?}");
        carried += WAVE;
        if worker.count_lines("second acceptor started") > 0 {
            break;
        }
    }
    assert!(
        worker.count_lines("second acceptor started") > 0,
        "{carried} connections in waves of {WAVE} never started a second acceptor\n{}",
        worker.dump()
    );
    worker
        .wait_for_line("second acceptor retired", Duration::from_secs(30))
        .await;
    one_connection(tunnel.entrance, usize::MAX - 1)
        .await
        .expect("echo after the second acceptor retired");
    carried += 1;
    assert_eq!(echo.accepted(), carried);

    let stats = worker.stop_and_read_stats().await;
    let bytes = (carried * PER_CONNECTION) as u64;
    assert_eq!(
        (stats.tcprx, stats.tcptx, stats.tcps),
        (bytes, bytes, 0),
        "{stats:?}"
    );
}
