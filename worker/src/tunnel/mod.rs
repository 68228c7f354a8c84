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
pub mod limits;
pub mod link;
mod pool;
pub mod proxy_header;
pub mod relay;
mod server;
pub mod target;
pub mod tls;
mod udp;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use proto::spec::{Role, TunnelSpec};
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
    seq: AtomicU32,
}

impl Ctx {
    /// A number for the next session, for logs on both ends.
    pub fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Relaxed)
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
}

impl Engine {
    /// `tls_material` is the `tls=1` certificate to use (made fresh when `None`).
    pub fn new(spec: TunnelSpec, binder: Arc<dyn Binder>, tls_material: Option<tls::Material>) -> Self {
        Self {
            spec,
            binder,
            stats: Arc::new(Stats::default()),
            tls_material,
        }
    }

    /// The live counters (read them while `run` is going).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until `stop` is cancelled, then drains sessions for up to `grace`.
    /// Returns early only on a fatal error (a listener that cannot be bound,
    /// unusable TLS files).
    pub async fn run(self, stop: CancellationToken, grace: Duration) -> Result<(), TunnelError> {
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
            seq: AtomicU32::new(1),
        });
        let res = match ctx.spec.role {
            Role::Server => server::run(ctx.clone(), stop.clone()).await,
            Role::Client => client::run(ctx.clone(), stop.clone()).await,
        };
        // Whatever ended the role, the listeners' tasks go with `stop`.
        stop.cancel();
        ctx.sessions.close();
        if tokio::time::timeout(grace, ctx.sessions.wait()).await.is_err() {
            tracing::warn!(open = ctx.sessions.len(), "drain grace expired; closing the remaining sessions");
            ctx.hard_stop.cancel();
            ctx.sessions.wait().await;
        }
        res
    }
}
