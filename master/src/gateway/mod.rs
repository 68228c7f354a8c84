//! The gateway (DESIGN §1): one shared port; each accepted connection is
//! identified (see [`identify`]), looked up in the bindings (see
//! [`bindings`]), and its socket handed to its instance's worker with
//! `SCM_RIGHTS` — the master copies no payload. A parked instance is woken
//! first; the client only sees a slower first byte.
//!
//! Every connection has its own deadlines and, once it has to wait, its own
//! task, so a slow or broken client delays nobody else.

pub mod bindings;
pub mod identify;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;
use bindings::Bindings;

/// The gateway's listening socket.
///
/// Accepted sockets stay plain std sockets: they only pass through the
/// master, so registering each with the runtime (and deregistering it before
/// the handoff) would be two wasted syscalls on every connection's path.
struct Listener(AsyncFd<std::net::TcpListener>);

impl Listener {
    /// Must be called within the runtime that will poll it.
    fn new(listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        // SAFETY: the AsyncFd owns the listener, so its fd stays open and
        // the same for as long as it is registered.
        let fd = unsafe { AsyncFd::register(listener) }?;
        Ok(Self(fd))
    }
}

/// The gateway's shared state.
pub struct Gateway {
    pub bindings: Bindings,
    pub default: Option<String>,
    sup: Arc<Supervisor>,
}

impl Gateway {
    pub fn new(bindings: Bindings, default: Option<String>, sup: Arc<Supervisor>) -> Arc<Self> {
        Arc::new(Self {
            bindings,
            default,
            sup,
        })
    }

    /// Serves `listener` on a thread of its own, with a single-threaded
    /// runtime, until `stop`.
    ///
    /// On the master's multi-threaded runtime a woken accept task also woke
    /// a second runtime thread (a `futex` call on 3 of 4 handoffs, strace),
    /// which then competed with the worker for the CPU the handoff needs
    /// next. Here the accept → peek → `SCM_RIGHTS` path is one thread that
    /// sleeps in `epoll_wait` and nothing else. The rest of the master is
    /// reached through runtime-independent primitives (locks, channels, and
    /// the control socket's readiness, which the main runtime drives).
    pub fn spawn(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        stop: CancellationToken,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _in_rt = rt.enter();
            Listener::new(listener)?
        };
        std::thread::Builder::new()
            .name("drover-gateway".into())
            .spawn(move || rt.block_on(self.run(listener, stop)))
    }

    /// Accepts until `stop`; accept errors back off instead of spinning.
    async fn run(self: Arc<Self>, listener: Listener, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let mut ready = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.0.readable() => match r {
                    Ok(guard) => guard,
                    Err(e) => {
                        tracing::error!(cause = %e, "gateway listener failed; the gateway stops");
                        return;
                    }
                },
            };
            let accepted = match ready.try_io(|l| l.get_ref().accept()) {
                Ok(r) => r,
                Err(_would_block) => continue,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    self.dispatch(stream, peer).await;
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "gateway accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Runs the connection's first step right here and spawns it only when
    /// it has to wait (client bytes not there yet, instance parked, worker
    /// busy): most handoffs finish without a task hop. Each connection still
    /// has its own deadlines, so a slow one delays nobody else.
    async fn dispatch(self: &Arc<Self>, stream: std::net::TcpStream, peer: SocketAddr) {
        let mut conn = Box::pin(AssertUnwindSafe(self.clone().handle(stream, peer)).catch_unwind());
        let first = std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => {
                tracing::error!(%peer, "gateway: connection handler panicked; closed")
            }
            Poll::Pending => {
                tokio::spawn(async move {
                    if conn.await.is_err() {
                        tracing::error!(%peer, "gateway: connection handler panicked; closed");
                    }
                });
            }
        }
    }

    async fn handle(self: Arc<Self>, stream: std::net::TcpStream, peer: SocketAddr) {
        let started = Instant::now();
        let (who, stream) = match identify::identify_now(&stream, peer) {
            Some(who) => (who, stream),
            None => match identify::identify_waiting(stream, peer).await {
                Ok(both) => both,
                Err(e) => {
                    tracing::warn!(%peer, cause = %e, "gateway: cannot wait for the client's first bytes; closed");
                    return;
                }
            },
        };
        let client = who.key();
        let Some(id) = self
            .bindings
            .lookup(&client)
            .or_else(|| self.default.clone())
        else {
            tracing::info!(%peer, client, via = who.source(), "gateway: client not bound and no default instance; closed");
            return;
        };
        let Some(inst) = self.sup.get(&id) else {
            tracing::warn!(%peer, client, instance = id, "gateway: bound instance does not exist; closed");
            return;
        };
        match self.sup.handoff(&inst, stream, &client).await {
            Ok(()) => {
                self.sup.shared().metrics.observe_handoff(started.elapsed());
                tracing::debug!(%peer, client, via = who.source(), instance = id, "gateway: handed over");
            }
            Err(why) => {
                tracing::warn!(%peer, client, instance = id, why, "gateway: handoff failed; connection closed")
            }
        }
    }
}
