//! UDP through the tunnel. Each user source address is a session with its
//! own outbound path (a connected socket to the target, or a pool link with
//! length-framed datagrams), ended after [`UDP_IDLE`] without traffic.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::entrance::Opener;
use super::wire::{HeaderKind, udp_frame};
use super::{Ctx, TunnelError};
use crate::stats::Proto;

/// A UDP session ends after this long without a datagram either way.
pub const UDP_IDLE: Duration = Duration::from_secs(30);
/// Datagrams queued per session before new ones are dropped (UDP semantics).
const QUEUE: usize = 512;
const MAX_DATAGRAM: usize = 65_535;

type Sessions = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// Receives on the entrance socket until `stop`, fanning out to sessions.
pub async fn serve_entrance(
    sock: UdpSocket,
    ctx: Arc<Ctx>,
    opener: Opener,
    stop: CancellationToken,
) {
    let sock = Arc::new(sock);
    let sessions: Sessions = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; they are not fatal.
                    tracing::debug!(cause = %e, "udp receive error");
                    continue;
                }
            },
        };
        let datagram = buf[..n].to_vec();
        let existing = sessions
            .lock()
            .expect("udp sessions lock")
            .get(&peer)
            .cloned();
        if let Some(tx) = existing {
            match tx.try_send(datagram) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => continue,
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    start(d, peer, &sock, &sessions, &ctx, &opener)
                }
            }
        } else {
            start(datagram, peer, &sock, &sessions, &ctx, &opener);
        }
    }
}

fn start(
    first: Vec<u8>,
    peer: SocketAddr,
    sock: &Arc<UdpSocket>,
    sessions: &Sessions,
    ctx: &Arc<Ctx>,
    opener: &Opener,
) {
    let Some(slot) = ctx.slots.try_acquire() else {
        tracing::debug!(%peer, "slot limit reached; datagram dropped");
        return;
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let _ = tx.try_send(first);
    sessions.lock().expect("udp sessions lock").insert(peer, tx);
    let (sock, sessions, ctx2, opener) =
        (sock.clone(), sessions.clone(), ctx.clone(), opener.clone());
    ctx.spawn_session(async move {
        let _slot = slot;
        let _s = ctx2.stats.session(Proto::Udp);
        let seq = ctx2.next_seq();
        if let Err(e) = entrance_session(rx, peer, &sock, &ctx2, &opener, seq).await {
            tracing::warn!(%peer, session = seq, cause = %e, "udp session failed");
        }
        sessions.lock().expect("udp sessions lock").remove(&peer);
    });
}

async fn entrance_session(
    mut rx: mpsc::Receiver<Vec<u8>>,
    peer: SocketAddr,
    sock: &UdpSocket,
    ctx: &Ctx,
    opener: &Opener,
    seq: u32,
) -> Result<(), TunnelError> {
    let (urx, utx) = ctx.stats.traffic(Proto::Udp);
    let activity = Activity::default();
    match opener {
        Opener::Direct => {
            let (target, _) = ctx.dialer.udp().await?;
            let up = async {
                while let Some(d) = rx.recv().await {
                    urx.fetch_add(d.len() as u64, Relaxed);
                    activity.touch();
                    let _ = target.send(&d).await;
                }
            };
            let down = async {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let n = match target.recv(&mut buf).await {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                        Err(_) => return,
                    };
                    if sock.send_to(&buf[..n], peer).await.is_ok() {
                        utx.fetch_add(n as u64, Relaxed);
                    }
                    activity.touch();
                }
            };
            run_until_idle(up, down, &activity, &ctx.stopping).await;
        }
        Opener::Tunnel(pool) => {
            let mut lease = Opener::tunnel_link(pool, HeaderKind::Udp, seq, peer, &[])
                .await
                .ok_or_else(|| {
                    TunnelError::peer("tunnel", "no tunnel connection available within 5 s")
                })?;
            // A UDP session has no end on the link: the link goes with it.
            let (mut lr, mut lw) = tokio::io::split(lease.link());
            let up = async {
                let mut frame = Vec::with_capacity(MAX_DATAGRAM + 2);
                while let Some(d) = rx.recv().await {
                    urx.fetch_add(d.len() as u64, Relaxed);
                    activity.touch();
                    if udp_frame::write(&mut lw, &mut frame, &d).await.is_err() {
                        return;
                    }
                }
            };
            let down = async {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                while let Ok(Some(d)) = udp_frame::read(&mut lr, &mut buf).await {
                    if sock.send_to(d, peer).await.is_ok() {
                        utx.fetch_add(d.len() as u64, Relaxed);
                    }
                    activity.touch();
                }
            };
            run_until_idle(up, down, &activity, &ctx.stopping).await;
        }
    }
    Ok(())
}

/// The exit half of a tunnelled UDP session.
pub async fn exit_session(
    link: impl AsyncRead + AsyncWrite + Unpin,
    ctx: &Ctx,
    user: SocketAddr,
    seq: u32,
) {
    let (target, addr) = match ctx.dialer.udp().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(%user, session = seq, cause = %e, "udp target unusable; session closed");
            return;
        }
    };
    let (rx, tx) = ctx.stats.traffic(Proto::Udp);
    let activity = Activity::default();
    let (mut lr, mut lw) = tokio::io::split(link);
    let up = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while let Ok(Some(d)) = udp_frame::read(&mut lr, &mut buf).await {
            if target.send(d).await.is_ok() {
                tx.fetch_add(d.len() as u64, Relaxed);
            }
            activity.touch();
        }
    };
    let down = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut frame = Vec::with_capacity(MAX_DATAGRAM + 2);
        loop {
            let n = match target.recv(&mut buf).await {
                Ok(n) => n,
                // A refused datagram (target port closed) must not end the session.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(_) => return,
            };
            rx.fetch_add(n as u64, Relaxed);
            activity.touch();
            if udp_frame::write(&mut lw, &mut frame, &buf[..n])
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tracing::debug!(%user, target = %addr, session = seq, "udp session open");
    run_until_idle(up, down, &activity, &ctx.stopping).await;
}

/// Runs both directions until either ends or nothing moved for [`UDP_IDLE`].
/// Ends at once when the engine stops: a UDP session holds nothing to drain.
async fn run_until_idle(
    up: impl Future<Output = ()>,
    down: impl Future<Output = ()>,
    activity: &Activity,
    stopping: &CancellationToken,
) {
    tokio::select! {
        () = up => {}
        () = down => {}
        () = activity.idle(UDP_IDLE) => {}
        () = stopping.cancelled() => {}
    }
}

/// Last datagram time.
struct Activity {
    last: Mutex<tokio::time::Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            last: Mutex::new(tokio::time::Instant::now()),
        }
    }
}

impl Activity {
    fn touch(&self) {
        *self.last.lock().expect("activity lock") = tokio::time::Instant::now();
    }

    async fn idle(&self, limit: Duration) {
        loop {
            let deadline = *self.last.lock().expect("activity lock") + limit;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}
