//! The client end.
//!
//! - Single-end (mode 1, or mode 0 when the tunnel address binds here): the
//!   tunnel address is the entrance and targets are dialled directly.
//! - Dual-end: connect to the server, authenticate, and keep a pool of
//!   pre-dialled links so a user connection costs no tunnel round trip. The
//!   pool starts at `min`, doubles (up to the server's `max`) when the
//!   entrance had to wait, and shrinks back slowly. When the session is lost
//!   the client reconnects with backoff; the process never exits on its own.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::control::{self, Hooks};
use super::entrance::{self, Opener};
use super::exit::{self, Waiting};
use super::link::Link;
use super::pool::IdlePool;
use super::tls::ClientTls;
use super::wire::{self, Flow, SessionConfig};
use super::{Ctx, TunnelError, udp};

/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Pool links dialled at once.
const DIAL_PARALLEL: usize = 8;
/// How often an unstarved pool shrinks by a quarter (not below `min`).
const POOL_DECAY: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) -> Result<(), TunnelError> {
    let p = &ctx.spec.params;
    if p.mode != 2 {
        match bind_entrance(&ctx, &ctx.spec.tunnel, !p.notcp, !p.noudp).await {
            Ok(e) => return single_end(ctx.clone(), e, stop).await,
            Err(e) if p.mode == 1 => return Err(e),
            Err(e) => {
                tracing::info!(cause = %e, "tunnel address does not bind here; running dual-end")
            }
        }
    }
    dual_end(ctx, stop).await
}

type Entrance = (
    Option<tokio::net::TcpListener>,
    Option<tokio::net::UdpSocket>,
);

async fn bind_entrance(
    ctx: &Ctx,
    addr: &proto::spec::HostPort,
    tcp: bool,
    udp: bool,
) -> Result<Entrance, TunnelError> {
    let t = if tcp {
        Some(ctx.binder.tcp(addr).await?)
    } else {
        None
    };
    let u = if udp {
        Some(ctx.binder.udp(addr).await?)
    } else {
        None
    };
    Ok((t, u))
}

/// Serves the entrance listeners (and the entry port, if any) with `opener`
/// until `stop`; returns the entry port's address.
fn spawn_entrance(
    ctx: &Arc<Ctx>,
    (tcp, udp_sock): Entrance,
    entry: Option<tokio::net::TcpListener>,
    opener: Opener,
    stop: &CancellationToken,
) -> Option<std::net::SocketAddr> {
    let mut parts = Vec::new();
    let entry_addr = entry.as_ref().and_then(|l| l.local_addr().ok());
    entrance::serve_adopted(ctx, opener.clone(), stop);
    if let Some(l) = entry {
        tokio::spawn(entrance::serve_tcp(
            l,
            ctx.clone(),
            opener.clone(),
            stop.clone(),
        ));
    }
    if let Some(l) = tcp {
        parts.push(format!(
            "tcp={}",
            l.local_addr().map(|a| a.to_string()).unwrap_or_default()
        ));
        tokio::spawn(entrance::serve_tcp(
            l,
            ctx.clone(),
            opener.clone(),
            stop.clone(),
        ));
    }
    if let Some(s) = udp_sock {
        parts.push(format!(
            "udp={}",
            s.local_addr().map(|a| a.to_string()).unwrap_or_default()
        ));
        tokio::spawn(udp::serve_entrance(s, ctx.clone(), opener, stop.clone()));
    }
    tracing::info!(
        listening = parts.join(" "),
        targets = ctx.dialer.describe(),
        "entrance listening"
    );
    entry_addr
}

async fn single_end(
    ctx: Arc<Ctx>,
    entrance: Entrance,
    stop: CancellationToken,
) -> Result<(), TunnelError> {
    let entry = ctx.entry_listener().filter(|_| !ctx.spec.params.notcp);
    let entry = spawn_entrance(&ctx, entrance, entry, Opener::Direct, &stop);
    ctx.mark_ready(1, entry);
    stop.cancelled().await;
    Ok(())
}

/// Exponential backoff with jitter.
struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d.mul_f64(rand::random_range(0.75..1.25))
    }
}

/// Dials the server and runs through preamble and TLS.
async fn open_link(ctx: &Ctx, tls: &ClientTls) -> Result<(Link, [u8; 16]), TunnelError> {
    let server = ctx.spec.tunnel.to_string();
    let host = if ctx.spec.tunnel.host.is_empty() {
        "127.0.0.1"
    } else {
        &ctx.spec.tunnel.host
    };
    let mut tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((host, ctx.spec.tunnel.port)),
    )
    .await
    .map_err(|_| TunnelError::peer(&server, "connect timed out"))?
    .map_err(|e| TunnelError::peer(&server, format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    if let Ok(peer) = tcp.peer_addr() {
        proto::congestion::tune_loopback(&tcp, peer.ip());
    }
    let offer = tokio::time::timeout(
        wire::HANDSHAKE_TIMEOUT,
        wire::client_preamble(&mut tcp, &server),
    )
    .await
    .map_err(|_| TunnelError::peer(&server, "handshake timed out"))??;
    let want = ctx.spec.params.tls;
    if offer.tls < want {
        return Err(TunnelError::peer(
            &server,
            format!(
                "offers tls={} but this client requires tls={want}; refusing a downgrade",
                offer.tls
            ),
        ));
    }
    let link = if offer.tls == 0 {
        Link::Plain(tcp)
    } else {
        let (connector, name) = tls.connector(offer.tls)?;
        let stream = tokio::time::timeout(wire::HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| TunnelError::peer(&server, "tls handshake timed out"))?
            .map_err(|e| TunnelError::peer(&server, format!("tls handshake failed: {e}")))?;
        Link::TlsClient(Box::new(stream))
    };
    Ok((link, offer.nonce))
}

/// A session's authenticated state, shared by its pool dialers.
struct Session {
    cfg: SessionConfig,
    key: [u8; 32],
}

async fn dual_end(ctx: Arc<Ctx>, stop: CancellationToken) -> Result<(), TunnelError> {
    // The entrance (forward flow) is known only after the first session; the
    // worker is ready as soon as it runs.
    ctx.mark_ready(2, None);
    let p = &ctx.spec.params;
    let tls = ClientTls::new(
        p.fp.clone(),
        p.sni.clone(),
        p.crt.clone(),
        ctx.spec.tunnel.host.clone(),
    );
    let pool = IdlePool::new(ctx.stats.clone());
    let waiting: Arc<Waiting> = Arc::default();
    let mut entrance_up = false;
    let mut backoff = Backoff(BACKOFF_MIN);
    let server = ctx.spec.tunnel.to_string();
    while !stop.is_cancelled() {
        match connect(&ctx, &tls).await {
            Ok((control_link, session)) => {
                backoff = Backoff(BACKOFF_MIN);
                let cfg = session.cfg;
                tracing::info!(server, flow = ?cfg.flow, "tunnel up");
                if cfg.flow == Flow::Forward && !entrance_up {
                    let (tcp, udp) = (cfg.tcp && !p.notcp, cfg.udp && !p.noudp);
                    match bind_entrance(&ctx, &ctx.spec.targets[0], tcp, udp).await {
                        Ok(e) => {
                            spawn_entrance(&ctx, e, None, Opener::Tunnel(pool.clone()), &stop);
                            entrance_up = true;
                        }
                        Err(e) => tracing::error!(cause = %e, "cannot bind the entrance; retrying"),
                    }
                }
                let token = stop.child_token();
                let why = run_session(
                    &ctx,
                    &tls,
                    control_link,
                    Arc::new(session),
                    &pool,
                    &waiting,
                    &token,
                )
                .await;
                token.cancel();
                pool.flush();
                ctx.stats.ping.store(0, Relaxed);
                if stop.is_cancelled() {
                    break;
                }
                tracing::warn!(server, why, "tunnel down; reconnecting");
            }
            Err(e) => tracing::warn!(cause = %e, "tunnel connect failed"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(backoff.next()) => {}
        }
    }
    Ok(())
}

async fn connect(ctx: &Ctx, tls: &ClientTls) -> Result<(Link, Session), TunnelError> {
    let (mut link, sn) = open_link(ctx, tls).await?;
    let key = ctx.spec.tunnel_key();
    let server = ctx.spec.tunnel.to_string();
    let (cfg, key) = tokio::time::timeout(
        wire::HANDSHAKE_TIMEOUT,
        wire::client_control(&mut link, key.expose().as_bytes(), &sn, &server),
    )
    .await
    .map_err(|_| TunnelError::peer(&server, "handshake timed out"))??;
    Ok((link, Session { cfg, key }))
}

/// Runs the control link and the pool filler until either ends.
async fn run_session(
    ctx: &Arc<Ctx>,
    tls: &ClientTls,
    control_link: Link,
    session: Arc<Session>,
    pool: &Arc<IdlePool>,
    waiting: &Arc<Waiting>,
    token: &CancellationToken,
) -> String {
    let peer_starved = Arc::new(Notify::new());
    let (capacity_tx, capacity_rx) = watch::channel(0u64);
    let hooks = Hooks {
        send_starved: None,
        on_starved: Some(peer_starved.clone()),
        send_capacity: Some(capacity_rx),
        on_capacity: None,
    };
    tokio::select! {
        why = control::run(control_link, &ctx.stats, hooks, token) => why,
        why = fill(ctx, tls, &session, pool, waiting, &peer_starved, &capacity_tx, token) => why,
    }
}

/// Keeps `capacity` links dialled and authenticated: idle, or carrying a
/// session that may hand them back.
#[allow(clippy::too_many_arguments)]
async fn fill(
    ctx: &Arc<Ctx>,
    tls: &ClientTls,
    session: &Arc<Session>,
    pool: &Arc<IdlePool>,
    waiting: &Arc<Waiting>,
    peer_starved: &Notify,
    capacity_tx: &watch::Sender<u64>,
    token: &CancellationToken,
) -> String {
    let min = ctx.spec.params.min.min(session.cfg.max).max(1) as usize;
    let max = session.cfg.max.max(1) as usize;
    let mut capacity = min;
    // The entrance trims to it: our own pool (forward), the server's (reverse).
    let publish = |capacity: usize| {
        pool.set_target(capacity);
        capacity_tx.send_replace(capacity as u64);
    };
    let mut starved_recently = false;
    let mut dials: JoinSet<Result<Link, (u8, String)>> = JoinSet::new();
    let mut failures = 0u32;
    let mut decay = tokio::time::interval(POOL_DECAY);
    decay.tick().await;
    let forward = session.cfg.flow == Flow::Forward;
    loop {
        let held = if forward {
            pool.held()
        } else {
            waiting.held.load(Relaxed) as usize
        };
        while held + dials.len() < capacity && dials.len() < DIAL_PARALLEL {
            let (ctx, tls, session) = (ctx.clone(), tls.clone(), session.clone());
            dials.spawn(async move { dial_pool(&ctx, &tls, &session).await });
        }
        let grow = |capacity: &mut usize| {
            let open = ctx.stats.tcps.load(Relaxed) + ctx.stats.udps.load(Relaxed);
            let open = usize::try_from(open).unwrap_or(usize::MAX);
            let new = grown(*capacity, held, open, max);
            if new > *capacity {
                tracing::debug!(capacity = new, held, open, "pool grows");
                publish(new);
            }
            *capacity = new;
        };
        tokio::select! {
            () = token.cancelled() => return "stopped".into(),
            Some(done) = dials.join_next() => match done {
                Ok(Ok(link)) => {
                    failures = 0;
                    if forward {
                        pool.push(link);
                    } else {
                        let fut = exit::serve_link(link, ctx.clone(), waiting.clone(), token.clone());
                        ctx.spawn_session(fut);
                    }
                }
                Ok(Err((status, why))) => {
                    if status == wire::STATUS_NO_SESSION {
                        return "server no longer knows this session".into();
                    }
                    if status == wire::STATUS_POOL_FULL {
                        capacity = held.max(1);
                        publish(capacity);
                    }
                    failures += 1;
                    tracing::debug!(why, failures, "pool connection failed");
                    let pause = BACKOFF_MIN * failures.min(20);
                    tokio::select! {
                        () = token.cancelled() => return "stopped".into(),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Err(e) => return format!("pool dialer crashed: {e}"),
            },
            () = pool.left.notified(), if forward => {}
            () = pool.starved.notified(), if forward => { starved_recently = true; grow(&mut capacity); }
            () = waiting.gone.notified(), if !forward => {}
            () = peer_starved.notified() => { starved_recently = true; grow(&mut capacity); }
            _ = decay.tick() => {
                if !starved_recently && capacity > min {
                    capacity = (capacity - capacity / 4).max(min);
                    publish(capacity);
                }
                starved_recently = false;
            }
        }
    }
}

/// The pool's capacity after the entrance starved, with `held` links held
/// and `open` sessions open.
///
/// It doubles, but only up to twice the sessions open: demand, not the
/// number of starved takes, sets its size (doubling on every starved take ran
/// a pool to `max`, 1,024 TLS links and 30 MB, in a 3-s burst of 8
/// concurrent users). `max` bounds the idle links (the server refuses more),
/// so the links held may reach it plus those carrying sessions. Doubling
/// starts from the links held when that is more (links lent out when the
/// capacity decayed close only on their return): from the capacity alone, a
/// pool holding more "grew" to no more than it held and dialled nothing,
/// leaving the entrance starved.
fn grown(capacity: usize, held: usize, open: usize, max: usize) -> usize {
    (held.max(capacity).saturating_mul(2))
        .min(open.saturating_mul(2))
        .min(max.saturating_add(open))
        .max(capacity)
}

/// One pool link: connect, preamble, TLS, session proof.
async fn dial_pool(ctx: &Ctx, tls: &ClientTls, session: &Session) -> Result<Link, (u8, String)> {
    let (mut link, sn) = open_link(ctx, tls)
        .await
        .map_err(|e| (255, e.to_string()))?;
    let status = tokio::time::timeout(
        wire::HANDSHAKE_TIMEOUT,
        wire::client_pool(&mut link, &session.cfg.id, &session.key, &sn),
    )
    .await
    .map_err(|_| (255, "pool handshake timed out".to_string()))?
    .map_err(|e| (255, e.to_string()))?;
    if status == wire::STATUS_OK {
        Ok(link)
    } else {
        Err((
            status,
            format!("server refused the pool connection (status {status})"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::grown;

    /// Doubling follows demand and holds, and starts from what is held.
    #[test]
    fn pool_growth() {
        // Doubles, up to twice the open sessions.
        assert_eq!(grown(2, 2, 2, 1024), 4);
        assert_eq!(grown(4, 4, 100, 1024), 8);
        assert_eq!(grown(8, 8, 3, 1024), 8);
        // Never shrinks here; `max` idle links plus those in sessions.
        assert_eq!(grown(10, 10, 2, 1024), 10);
        assert_eq!(grown(600, 600, 1000, 1024), 1200);
        assert_eq!(grown(1500, 1500, 1500, 1024), 2524);
        // Four links held (all in sessions) while the capacity says 2: the
        // fifth user must get a new link, so the capacity exceeds what is held.
        assert_eq!(grown(2, 4, 4, 1024), 8);
    }
}
