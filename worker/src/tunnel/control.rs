//! The control link of a dual-end session: heartbeats both ways (RTT into
//! `ping`), starvation signals, and liveness — a peer silent for
//! [`SILENCE_LIMIT`] ends the session.

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::link::Link;
use super::pool::IdlePool;
use super::wire::Control;
use crate::stats::Stats;

pub const PING_INTERVAL: Duration = Duration::from_secs(5);
pub const SILENCE_LIMIT: Duration = Duration::from_secs(15);

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_us() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// What the session does with signals from the peer.
pub struct Hooks {
    /// Notified to send a `Starved` frame to the peer (entrance side).
    pub send_starved: Option<Arc<Notify>>,
    /// Notified when the peer says it starved (client side).
    pub on_starved: Option<Arc<Notify>>,
    /// The pool capacity to tell the peer whenever it changes (client side).
    pub send_capacity: Option<watch::Receiver<u64>>,
    /// The pool to trim to the capacity the peer tells (server, reverse flow).
    pub on_capacity: Option<Arc<IdlePool>>,
}

/// Runs the control link until it fails, goes silent, or `token` is cancelled.
/// Returns why it ended.
pub async fn run(link: Link, stats: &Stats, hooks: Hooks, token: &CancellationToken) -> String {
    let (mut r, mut w) = tokio::io::split(link);
    let (tx, mut rx) = mpsc::channel::<Control>(16);
    let reader = async {
        loop {
            let mut b = [0u8; 9];
            match tokio::time::timeout(SILENCE_LIMIT, r.read_exact(&mut b)).await {
                Err(_) => return format!("peer silent for {} s", SILENCE_LIMIT.as_secs()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return "peer closed the control connection".to_string();
                }
                Ok(Err(e)) => return format!("control connection lost: {e}"),
                Ok(Ok(_)) => {}
            }
            match Control::decode(b) {
                Ok(Control::Ping(v)) => {
                    let _ = tx.try_send(Control::Pong(v));
                }
                Ok(Control::Pong(v)) => {
                    let rtt_ms = now_us().saturating_sub(v) / 1000;
                    stats.ping.store(rtt_ms, Relaxed);
                }
                Ok(Control::Starved(_)) => {
                    if let Some(n) = &hooks.on_starved {
                        n.notify_one();
                    }
                }
                Ok(Control::Capacity(n)) => {
                    if let Some(pool) = &hooks.on_capacity {
                        pool.set_target(usize::try_from(n).unwrap_or(usize::MAX));
                    }
                }
                Err(e) => return format!("peer sent a bad control frame: {e}"),
            }
        }
    };
    let writer = async {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        let never = Notify::new();
        let starved = hooks.send_starved.as_deref().unwrap_or(&never);
        let mut capacity = hooks.send_capacity.clone();
        loop {
            let msg = tokio::select! {
                _ = tick.tick() => Control::Ping(now_us()),
                Some(m) = rx.recv() => m,
                () = starved.notified() => Control::Starved(1),
                Some(n) = changed(&mut capacity) => Control::Capacity(n),
            };
            if let Err(e) = w.write_all(&msg.encode()).await {
                return format!("control connection lost: {e}");
            }
            if let Err(e) = w.flush().await {
                return format!("control connection lost: {e}");
            }
        }
    };
    tokio::select! {
        why = reader => why,
        why = writer => why,
        () = token.cancelled() => "stopped".to_string(),
    }
}

/// The next value of `rx`; never resolves when there is none (or the sender
/// is gone), so a `select!` branch on it simply stays quiet.
async fn changed(rx: &mut Option<watch::Receiver<u64>>) -> Option<u64> {
    if let Some(r) = rx
        && r.changed().await.is_ok()
    {
        return Some(*r.borrow_and_update());
    }
    std::future::pending().await
}
