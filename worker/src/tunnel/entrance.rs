//! The entrance: where users connect. Each accepted connection is checked
//! (`slot`, `block`), given an outbound path — the target itself
//! (single-end) or an idle pool link with a session header (tunnel) — and
//! relayed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::exit;
use super::framed;
use super::pool::{IdlePool, Lease};
use super::relay::{self, Counters};
use super::spill::Spill;
use super::wire::{Header, HeaderKind};
use crate::stats::Proto;

/// How the entrance reaches the exit.
#[derive(Clone)]
pub enum Opener {
    /// Single-end: dial the target from here.
    Direct,
    /// Dual-end: a pool link to the other tunnel end.
    Tunnel(Arc<IdlePool>),
}

impl Opener {
    /// Takes a pool link and starts a session of `kind` on it; `first`, the
    /// user's first bytes of a TCP session, goes in the same write as a frame.
    pub async fn tunnel_link(
        pool: &Arc<IdlePool>,
        kind: HeaderKind,
        session: u32,
        peer: SocketAddr,
        first: &[u8],
    ) -> Option<Lease> {
        let mut lease = pool.take().await?;
        let mut out = Header {
            kind,
            session,
            remote: peer.to_string(),
        }
        .encode();
        if !first.is_empty() {
            out.extend_from_slice(&(first.len() as u32).to_be_bytes());
            out.extend_from_slice(first);
        }
        let link = lease.link();
        let sent = async {
            link.write_all(&out).await?;
            link.flush().await
        };
        match sent.await {
            Ok(()) => Some(lease),
            Err(e) => {
                tracing::debug!(cause = %e, "pool link broke at the session header");
                None
            }
        }
    }
}

/// Accepts until `stop`; accept errors back off instead of spinning.
pub async fn serve_tcp(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    opener: Opener,
    stop: CancellationToken,
) {
    // Accepted sockets inherit TCP_NODELAY from their listener (Linux): one
    // setsockopt here instead of one per connection.
    let _ = nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::TcpNoDelay, &true);
    let tune = tunes_accepted(&listener);
    // Single-end sessions may be spread over a second thread under load.
    let spill = matches!(opener, Opener::Direct).then(Spill::new);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((user, peer)) => {
                backoff = Duration::from_millis(10);
                crate::spin::message();
                let (ctx2, opener2) = (ctx.clone(), opener.clone());
                ctx.spawn_session(handle(user, peer, tune, ctx2, opener2));
                // One queued connection at most, as the second acceptor
                // takes, so neither thread takes more than its share.
                if let Some(spill) = &spill
                    && let Some((user, peer)) = queued(&listener)
                {
                    spill.queued(&listener, &ctx, &stop);
                    ctx.spawn_session(handle(user, peer, tune, ctx.clone(), Opener::Direct));
                }
            }
            Err(e) => {
                // Out of fds or similar: keep the listener, slow down.
                tracing::warn!(cause = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The next connection if one is already waiting, without waiting for one.
/// (When there is none, this makes the `accept4` that the next
/// `accept().await` would have made to find the queue empty.)
pub(super) fn queued(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    let mut cx = Context::from_waker(Waker::noop());
    // An error comes back to the accept loop's own call, which backs off.
    match listener.poll_accept(&mut cx) {
        Poll::Ready(Ok(accepted)) => Some(accepted),
        _ => None,
    }
}

/// Serves connections adopted from the master (once per engine: the first
/// entrance to call this takes them).
pub fn serve_adopted(ctx: &Arc<Ctx>, opener: Opener, stop: &CancellationToken) {
    let Some(mut rx) = ctx.adopted.lock().expect("adopt lock").take() else {
        return;
    };
    let (ctx, stop) = (ctx.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            // Non-blocking with TCP_NODELAY already (see `proto::message::Adopt`).
            let (user, peer) = tokio::select! {
                () = stop.cancelled() => return,
                u = rx.recv() => match u {
                    Some(u) => u,
                    None => return,
                },
            };
            let (ctx2, opener) = (ctx.clone(), opener.clone());
            // The master's listener is unknown here; a user from elsewhere costs nothing.
            ctx.spawn_session(handle(user, peer, true, ctx2, opener));
        }
    });
}

/// Whether connections accepted from `listener` may need
/// [`proto::congestion::tune_loopback`]: those of a listener bound to
/// loopback inherit its choice, those of one on all interfaces do not.
pub(super) fn tunes_accepted(listener: &TcpListener) -> bool {
    listener
        .local_addr()
        .is_ok_and(|a| !a.ip().to_canonical().is_loopback())
}

/// Serves one accepted user; `tune`: see [`tunes_accepted`].
pub(super) async fn handle(
    mut user: TcpStream,
    peer: SocketAddr,
    tune: bool,
    ctx: Arc<Ctx>,
    opener: Opener,
) {
    if tune {
        proto::congestion::tune_loopback(&user, peer.ip());
    }
    let Some(_slot) = ctx.slots.try_acquire() else {
        tracing::warn!(%peer, limit = ctx.spec.params.slot, "slot limit reached; connection refused");
        return;
    };
    let block = ctx.spec.params.block;
    if block.any()
        && let Some(what) = super::block::check(&user, block).await
    {
        tracing::warn!(%peer, protocol = what, "blocked protocol on the entrance; connection refused");
        return;
    }
    let _session = ctx.stats.session(Proto::Tcp);
    let seq = ctx.next_seq();
    let (rx, tx) = ctx.stats.traffic(Proto::Tcp);
    let counters = Counters { rx, tx };
    let res = match &opener {
        Opener::Direct => match exit::connect_target(&ctx, peer).await {
            Ok(target) => {
                tracing::debug!(%peer, session = seq, "session open");
                Box::pin(relay::relay(user, target, counters, &ctx.relay)).await
            }
            Err(e) => {
                tracing::warn!(%peer, session = seq, cause = %e, "target unreachable; connection closed");
                return;
            }
        },
        Opener::Tunnel(pool) => {
            // Rate-limited bytes all go through the relay's limiter.
            let first = match ctx.relay.rate {
                None => early_bytes(&mut user),
                Some(_) => Vec::new(),
            };
            let Some(mut lease) =
                Opener::tunnel_link(pool, HeaderKind::Tcp, seq, peer, &first).await
            else {
                tracing::warn!(%peer, session = seq, "no tunnel connection available within 5 s; connection closed");
                return;
            };
            counters.rx.fetch_add(first.len() as u64, Relaxed);
            tracing::debug!(%peer, session = seq, "session open");
            let mut after = Vec::new();
            let res = Box::pin(framed::relay(
                user,
                lease.link(),
                &mut after,
                counters,
                &ctx.relay,
            ))
            .await;
            // The exit sends nothing after its end of a session.
            if matches!(res, Ok(true)) && after.is_empty() {
                lease.give_back();
            }
            res.map(|_| ())
        }
    };
    match res {
        Ok(()) => tracing::debug!(%peer, session = seq, "session closed"),
        Err(e) => tracing::debug!(%peer, session = seq, cause = %e, "session ended"),
    }
}

/// What a user who speaks first has sent already, without waiting: it goes
/// out with the session header, so the exit gets both in one read. Read
/// through tokio, so a short read clears the socket's readiness and the
/// relay's first read waits for more instead of finding nothing.
fn early_bytes(user: &mut TcpStream) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let mut read = ReadBuf::new(&mut buf);
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(user).poll_read(&mut cx, &mut read) {
        Poll::Ready(Ok(())) => read.filled().to_vec(),
        // Nothing yet (or an error, which the relay's first read meets).
        _ => Vec::new(),
    }
}
