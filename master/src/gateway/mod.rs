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
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;
use bindings::Bindings;

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

    /// Serves `listener` until `stop`: a thread of its own blocks in
    /// `accept` and runs each connection's first step; connections that have
    /// to wait go on to a single-threaded runtime on a second thread.
    ///
    /// Most handoffs are decided at once (the client's first bytes are
    /// there, the worker is up), so the common path is `accept4`, one peek
    /// and the `sendmsg` on one thread that sleeps in `accept` and nothing
    /// else: no `epoll_wait`, no second `accept4` to learn the queue is
    /// empty, and nothing between the `sendmsg` that wakes the worker and
    /// the next `accept`. (On the master's multi-threaded runtime a woken
    /// accept task also woke a second runtime thread, which then competed
    /// with the worker for the CPU the handoff needs next.) The rest of the
    /// master is reached through runtime-independent primitives (locks,
    /// channels, and the control socket's readiness, which the main runtime
    /// drives).
    ///
    /// Accepted sockets stay plain std sockets: they only pass through the
    /// master, so registering each with a runtime (and deregistering it
    /// before the handoff) would be two wasted syscalls on every
    /// connection's path. They are accepted the way the worker serves them
    /// (non-blocking, TCP_NODELAY inherited from the listener), which saves
    /// the worker those syscalls too.
    pub fn spawn(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        stop: CancellationToken,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        listener.set_nonblocking(false)?;
        socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let waiting = rt.handle().clone();
        // `stop` shuts the listener down, which wakes the blocked `accept`
        // (EINVAL) and refuses new connections from then on.
        let to_shut = listener.try_clone()?;
        let stopped = stop.clone();
        std::thread::Builder::new()
            // Thread names stop at 15 bytes.
            .name("drover-gw-wait".into())
            .spawn(move || {
                rt.block_on(stopped.cancelled());
                let _ = socket2::SockRef::from(&to_shut).shutdown(std::net::Shutdown::Read);
            })?;
        std::thread::Builder::new()
            .name("drover-gateway".into())
            .spawn(move || self.accept_loop(listener, waiting, stop))
    }

    /// Accepts until `stop`; accept errors back off instead of spinning.
    fn accept_loop(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        waiting: tokio::runtime::Handle,
        stop: CancellationToken,
    ) {
        // First steps register timers and sockets with the waiting runtime.
        let _in_rt = waiting.enter();
        let mut backoff = Duration::from_millis(10);
        loop {
            match accept(&listener) {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    self.dispatch(stream, peer, &waiting);
                }
                Err(_) if stop.is_cancelled() => return,
                // A signal, or a client gone before its turn: nothing to wait for.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    tracing::warn!(cause = %e, "gateway accept failed");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Runs the connection's first step right here and hands it to the
    /// waiting runtime only when it has to wait (client bytes not there yet,
    /// instance parked, worker busy): most handoffs finish without a task
    /// hop. Each connection still has its own deadlines, so a slow one
    /// delays nobody else.
    fn dispatch(
        self: &Arc<Self>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        waiting: &tokio::runtime::Handle,
    ) {
        let mut conn = Box::pin(AssertUnwindSafe(self.clone().handle(stream, peer)).catch_unwind());
        // A pending first step is polled again by its task, which registers
        // the task's waker wherever this one was.
        let mut cx = Context::from_waker(Waker::noop());
        match conn.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => {
                tracing::error!(%peer, "gateway: connection handler panicked; closed")
            }
            Poll::Pending => {
                waiting.spawn(async move {
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
        match self.sup.handoff(&inst, stream, &client, peer).await {
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

/// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`: see [`Gateway::spawn`].
fn accept(listener: &std::net::TcpListener) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    let (socket, addr) =
        socket2::SockRef::from(listener).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let peer = addr
        .as_socket()
        .ok_or_else(|| std::io::Error::other("accepted a socket without an IP peer address"))?;
    Ok((socket.into(), peer))
}
