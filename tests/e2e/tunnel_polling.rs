//! A worker polls its sockets while short messages come back to back
//! (`worker::spin`) and stops once they stop: after thousands of round
//! trips through a single-end worker and a reverse tunnel, none of the
//! three workers keeps using CPU.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use drover_e2e::procs::proc_cpu_ticks;
use drover_e2e::{Mode, TunnelBuilder};

/// Round trips per path, back to back.
const ROUND_TRIPS: usize = 5_000;
/// How long the workers are watched once the traffic stopped.
const QUIET: Duration = Duration::from_secs(2);
/// The most CPU a quiet worker may use meanwhile, in 1/100 s (a quarter of
/// the time; one that kept polling would use all of it).
const QUIET_TICKS: u64 = 50;

/// A blocking echo server on its own threads: a round trip in a few tens
/// of µs, so that the workers see messages within their polling window.
fn blocking_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
    let addr = listener.local_addr().expect("echo address");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `ROUND_TRIPS` 64-byte round trips on one connection to `addr`.
fn ping_pong(addr: SocketAddr) {
    let mut conn = TcpStream::connect(addr).expect("connect through the worker");
    conn.set_nodelay(true).expect("nodelay");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let (msg, mut back) = ([7u8; 64], [0u8; 64]);
    for i in 0..ROUND_TRIPS {
        conn.write_all(&msg).expect("send");
        conn.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("echo of round trip {i}: {e}"));
        assert_eq!(back, msg, "round trip {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stop_polling_once_short_messages_stop() {
    let echo = blocking_echo();
    let single = TunnelBuilder::new(Mode::Single, &[echo]).start().await;
    let reverse = TunnelBuilder::new(Mode::Reverse, &[echo]).start().await;
    let entrances = [single.entrance, reverse.entrance];
    tokio::task::spawn_blocking(move || entrances.into_iter().for_each(ping_pong))
        .await
        .expect("the round trips");

    let workers = [
        ("single-end client", single.client.pid()),
        ("reverse tunnel server", reverse.server().pid()),
        ("reverse tunnel client", reverse.client.pid()),
    ];
    let ticks = |pid| proc_cpu_ticks(pid).expect("the worker's /proc/<pid>/stat");
    let before: Vec<u64> = workers.iter().map(|(_, pid)| ticks(*pid)).collect();
    tokio::time::sleep(QUIET).await;
    for ((what, pid), before) in workers.iter().zip(before) {
        let used = ticks(*pid) - before;
        assert!(
            used <= QUIET_TICKS,
            "{what} (pid {pid}) used {:.2} s of CPU in {QUIET:?} with no traffic",
            used as f64 / 100.0
        );
    }
}
