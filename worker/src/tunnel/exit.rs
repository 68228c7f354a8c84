//! The exit: where sessions leave the tunnel for a target. A pool link
//! waits for its session header, then dials a target (with the PROXY header
//! when asked) and relays.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::framed::{self, Prefixed};
use super::link::Link;
use super::relay::Counters;
use super::wire::{Header, HeaderKind};
use super::{Ctx, TunnelError, proxy_header, udp};
use crate::stats::Proto;

/// Pool links at the exit (the client refills on `gone`).
#[derive(Default)]
pub struct Waiting {
    /// Links waiting for a session header.
    pub count: AtomicU64,
    /// Links waiting or carrying a session that may hand them back.
    pub held: AtomicU64,
    /// Woken when a link is gone for good.
    pub gone: Notify,
}

/// Dials a target for a user at `user` and sends the PROXY header if asked.
pub async fn connect_target(ctx: &Ctx, user: SocketAddr) -> Result<TcpStream, TunnelError> {
    let (mut target, addr, took) = ctx.dialer.tcp().await?;
    if ctx.stats.mode.load(Relaxed) == 1 && ctx.spec.role == proto::Role::Client {
        // Single-end: ping is the connect time to the target, as NodePass reports it.
        ctx.stats.ping.store(took.as_millis() as u64, Relaxed);
    }
    let header = match ctx.spec.params.proxy {
        1 => Some(proxy_header::v1(user, addr)),
        2 => Some(proxy_header::v2(user, addr)),
        _ => None,
    };
    if let Some(h) = header {
        target
            .write_all(&h)
            .await
            .map_err(|e| TunnelError::Target {
                addr: addr.to_string(),
                reason: format!("writing the PROXY header: {e}"),
            })?;
    }
    Ok(target)
}

/// Serves one authenticated pool link at the exit: one session after
/// another, while each ends cleanly (see `framed`).
///
/// The link counts as held from this call on, not from the future's first
/// poll: the client's pool filler reads `held` right after spawning it, and
/// counting late made it dial links it already had.
pub fn serve_link(
    mut link: Link,
    ctx: Arc<Ctx>,
    waiting: Arc<Waiting>,
    session: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    waiting.held.fetch_add(1, Relaxed);
    async move {
        // Bytes read past the end of a session: the start of the next one.
        let mut pending = Vec::new();
        loop {
            let idle = waiting.count.fetch_add(1, Relaxed) + 1;
            ctx.stats.pool.store(idle, Relaxed);
            let header = tokio::select! {
                h = Header::read(&mut link, &mut pending) => h,
                () = session.cancelled() => Err(std::io::Error::other("session over")),
            };
            let idle = waiting.count.fetch_sub(1, Relaxed) - 1;
            ctx.stats.pool.store(idle, Relaxed);
            let header = match header {
                Ok(h) => {
                    crate::spin::message();
                    h
                }
                Err(e) => {
                    tracing::debug!(cause = %e, "idle pool link closed");
                    break;
                }
            };
            // Boxed: an idle link's task is sized for its largest state, and the
            // session's (~2.2 KiB) would be paid by every idle link of the pool.
            if !Box::pin(serve_session(&mut link, &mut pending, header, &ctx)).await {
                break;
            }
        }
        waiting.held.fetch_sub(1, Relaxed);
        waiting.gone.notify_one();
    }
}

/// One session on `link`; whether the link may carry another.
async fn serve_session(link: &mut Link, pending: &mut Vec<u8>, header: Header, ctx: &Ctx) -> bool {
    let user: SocketAddr = match header.remote.parse() {
        Ok(a) => a,
        Err(_) => {
            tracing::warn!(remote = %header.remote, "session header carries a bad address; closed");
            return false;
        }
    };
    let Some(_slot) = ctx.slots.try_acquire() else {
        tracing::warn!(%user, limit = ctx.spec.params.slot, "slot limit reached; session refused");
        return false;
    };
    match header.kind {
        HeaderKind::Tcp => {
            let _s = ctx.stats.session(Proto::Tcp);
            let target = match connect_target(ctx, user).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%user, session = header.session, cause = %e, "target unreachable; session closed");
                    return false;
                }
            };
            let (rx, tx) = ctx.stats.traffic(Proto::Tcp);
            match framed::relay(target, link, pending, Counters { rx, tx }, &ctx.relay).await {
                Ok(reusable) => reusable,
                Err(e) => {
                    tracing::debug!(%user, session = header.session, cause = %e, "session ended");
                    false
                }
            }
        }
        HeaderKind::Udp => {
            let _s = ctx.stats.session(Proto::Udp);
            // Datagrams already read past the header belong to this session.
            let link = Prefixed {
                pending,
                inner: link,
            };
            udp::exit_session(link, ctx, user, header.session).await;
            false
        }
    }
}
