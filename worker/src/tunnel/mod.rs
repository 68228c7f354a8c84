//! The tunnel engine: one NodePass-grammar tunnel, as a library.
//!
//! [`Engine::run`] takes a parsed [`TunnelSpec`], a [`Binder`] for its
//! listeners (bound here standalone, passed in by the master later) and
//! keeps its counters in [`Stats`]. Flow:
//! 1. pick the mode (server: reverse/forward; client: single-end/dual-end),
//!    trying a bind for mode 0 as NodePass does;
//! 2. run the role until `stop` is cancelled;
//! 3. drain open sessions for up to `grace`, then close what is left.

pub mod auth;
pub mod binder;
mod block;
mod client;
mod control;
mod entrance;
pub mod error;
mod exit;
pub mod framed;
pub mod limits;
pub mod link;
mod pool;
pub mod proxy_header;
pub mod relay;
mod server;
mod spill;
pub mod target;
pub mod tls;
mod udp;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use proto::spec::{Role, TunnelSpec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use binder::{Binder, LocalBinder};
pub use error::TunnelError;

use crate::stats::Stats;
use limits::{RateLimiter, Slots};
use relay::RelayOpts;
use target::Dialer;

/// Everything the tasks of one running tunnel share.
pub(crate) struct Ctx {
    pub spec: TunnelSpec,
    pub stats: Arc<Stats>,
    pub slots: Arc<Slots>,
    pub relay: RelayOpts,
    pub dialer: Dialer,
    pub binder: Arc<dyn Binder>,
    pub tls_material: Option<tls::Material>,
    /// User sessions; drained on stop.
    pub sessions: TaskTracker,
    /// Cancelled when the drain grace runs out.
    pub hard_stop: CancellationToken,
    /// Cancelled when the engine starts to stop (UDP sessions end at once:
    /// nothing is in flight in them).
    pub stopping: CancellationToken,
    /// Whether to open a loopback entry port beside the entrance (under the master).
    pub with_entry: bool,
    ready: watch::Sender<Option<ReadyInfo>>,
    /// Connections handed over by the master's gateway, served by the entrance.
    adopted: std::sync::Mutex<Option<mpsc::Receiver<Adopted>>>,
    seq: AtomicU32,
}

/// What the engine reports once its listeners are up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyInfo {
    /// Server: 1 reverse, 2 forward. Client: 1 single-end, 2 dual-end.
    pub mode: u8,
    /// The loopback entry port, when there is an entrance here and it was asked for.
    pub entry: Option<SocketAddr>,
}

impl Ctx {
    /// A number for the next session, for logs on both ends.
    pub fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Relaxed)
    }

    /// Records the mode and tells whoever waits that the listeners are up.
    pub fn mark_ready(&self, mode: u8, entry: Option<SocketAddr>) {
        self.stats.mode.store(u64::from(mode), Relaxed);
        self.ready.send_replace(Some(ReadyInfo { mode, entry }));
    }

    /// Binds the loopback entry port (`127.0.0.1:0`) when asked for.
    pub fn entry_listener(&self) -> Option<TcpListener> {
        if !self.with_entry {
            return None;
        }
        let bound = proto::listen::bind_tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
            .and_then(TcpListener::from_std);
        match bound {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(cause = %e, "cannot bind the loopback entry port");
                None
            }
        }
    }

    /// Runs a session until it ends or the drain grace runs out.
    pub fn spawn_session(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let hard = self.hard_stop.clone();
        self.sessions.spawn(async move {
            tokio::select! {
                () = fut => {}
                () = hard.cancelled() => {}
            }
        });
    }
}

/// One tunnel instance.
pub struct Engine {
    spec: TunnelSpec,
    binder: Arc<dyn Binder>,
    stats: Arc<Stats>,
    tls_material: Option<tls::Material>,
    with_entry: bool,
    grace_ms: Arc<AtomicU64>,
    ready: watch::Sender<Option<ReadyInfo>>,
    adopt: (mpsc::Sender<Adopted>, mpsc::Receiver<Adopted>),
}

/// A connection handed over by the master's gateway, and its peer address.
pub type Adopted = (TcpStream, std::net::SocketAddr);

/// Connections waiting to be adopted before the entrance picks them up.
const ADOPT_QUEUE: usize = 1024;

impl Engine {
    /// `tls_material` is the `tls=1` certificate to use (made fresh when `None`).
    pub fn new(
        spec: TunnelSpec,
        binder: Arc<dyn Binder>,
        tls_material: Option<tls::Material>,
    ) -> Self {
        Self {
            spec,
            binder,
            stats: Arc::new(Stats::default()),
            tls_material,
            with_entry: false,
            grace_ms: Arc::new(AtomicU64::new(10_000)),
            ready: watch::channel(None).0,
            adopt: mpsc::channel(ADOPT_QUEUE),
        }
    }

    /// Where to hand accepted connections (gateway handoff): they are served
    /// exactly like connections on the instance's own entrance.
    pub fn adopter(&self) -> mpsc::Sender<Adopted> {
        self.adopt.0.clone()
    }

    /// Also serve a loopback entry port (`worker.entry` under the master).
    pub fn with_entry(mut self, on: bool) -> Self {
        self.with_entry = on;
        self
    }

    /// Resolves to `Some` once the listeners are bound.
    pub fn ready(&self) -> watch::Receiver<Option<ReadyInfo>> {
        self.ready.subscribe()
    }

    /// The drain grace in ms, settable while running (the master's `Shutdown`).
    pub fn grace_handle(&self) -> Arc<AtomicU64> {
        self.grace_ms.clone()
    }

    /// The live counters (read them while `run` is going).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until `stop` is cancelled, then drains sessions for up to the
    /// grace (see [`Engine::grace_handle`]). Returns early only on a fatal
    /// error (a listener that cannot be bound, unusable TLS files).
    pub async fn run(self, stop: CancellationToken) -> Result<(), TunnelError> {
        let p = &self.spec.params;
        let rate = (p.rate > 0).then(|| (RateLimiter::new(p.rate), RateLimiter::new(p.rate)));
        let ctx = Arc::new(Ctx {
            slots: Slots::new(p.slot),
            relay: RelayOpts {
                read_timeout: p.read,
                rate,
            },
            dialer: Dialer::new(self.spec.targets.clone(), p.lbs, p.dial, p.dns),
            spec: self.spec,
            stats: self.stats,
            binder: self.binder,
            tls_material: self.tls_material,
            sessions: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            stopping: stop.clone(),
            with_entry: self.with_entry,
            ready: self.ready,
            adopted: std::sync::Mutex::new(Some(self.adopt.1)),
            seq: AtomicU32::new(1),
        });
        let trimmer = tokio::spawn(crate::heap::trim_when_quiet(ctx.stats.clone()));
        let spinner = tokio::spawn(crate::spin::poller().run());
        let res = match ctx.spec.role {
            Role::Server => server::run(ctx.clone(), stop.clone()).await,
            Role::Client => client::run(ctx.clone(), stop.clone()).await,
        };
        trimmer.abort();
        spinner.abort();
        // Whatever ended the role, the listeners' tasks go with `stop`.
        stop.cancel();
        ctx.sessions.close();
        let grace = Duration::from_millis(self.grace_ms.load(Relaxed));
        if tokio::time::timeout(grace, ctx.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = ctx.sessions.len(),
                "drain grace expired; closing the remaining sessions"
            );
            ctx.hard_stop.cancel();
            ctx.sessions.wait().await;
        }
        res
    }
}

/// Sockets for the engine's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use tokio::net::{TcpListener, TcpStream};

    /// Both ends of a loopback TCP connection.
    pub async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }
}
