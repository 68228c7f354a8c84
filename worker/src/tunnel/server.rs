//! The server end: listens on the tunnel port for its client.
//!
//! 1. Bind the tunnel port; pick the flow (mode 1 reverse: the entrance is
//!    here, bound on the first target; mode 2 forward: the client has it;
//!    mode 0: reverse if the target address binds).
//! 2. Every accepted connection is handshaken (bounded by HANDSHAKE_TIMEOUT):
//!    an authenticated control link becomes the session (replacing an older
//!    one, e.g. after the client restarted); pool links of the current session
//!    join the idle pool (reverse) or wait at the exit (forward).
//! 3. When the control link ends, the session's idle links go with it;
//!    sessions already carrying users finish undisturbed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::auth::{self, Purpose};
use super::control::{self, Hooks};
use super::entrance::{self, Opener};
use super::exit::{self, Waiting};
use super::link::Link;
use super::pool::IdlePool;
use super::tls::{Material, ServerTls};
use super::wire::{self, Flow, Request, SessionConfig};
use super::{Ctx, TunnelError, udp};

/// The session of the currently connected client.
struct Current {
    id: [u8; 16],
    key: [u8; auth::PROOF],
    token: CancellationToken,
}

struct Server {
    ctx: Arc<Ctx>,
    tls: Option<ServerTls>,
    flow: Flow,
    pool: Arc<IdlePool>,
    waiting: Arc<Waiting>,
    current: Mutex<Option<Current>>,
    stop: CancellationToken,
}

pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) -> Result<(), TunnelError> {
    let p = &ctx.spec.params;
    let tunnel = ctx.binder.tcp(&ctx.spec.tunnel).await?;
    let tls = match p.tls {
        0 => None,
        1 => {
            let material = match &ctx.tls_material {
                Some(m) => m.clone(),
                None => Material::self_signed()?,
            };
            Some(ServerTls::self_signed(&material)?)
        }
        _ => Some(ServerTls::files(
            p.crt.as_deref().unwrap_or_default(),
            p.key.as_deref().unwrap_or_default(),
        )?),
    };
    let (flow, entrance) = pick_flow(&ctx).await?;
    let addr = tunnel
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    match &tls {
        Some(t) => {
            tracing::info!(addr, tls = p.tls, fingerprint = %format!("sha256:{}", t.fingerprint), "tunnel listening")
        }
        None => tracing::info!(addr, tls = 0, "tunnel listening"),
    }
    let server = Arc::new(Server {
        pool: IdlePool::new(ctx.stats.clone()),
        waiting: Arc::default(),
        ctx: ctx.clone(),
        tls,
        flow,
        current: Mutex::new(None),
        stop: stop.clone(),
    });
    let (tcp, udp_sock) = entrance;
    let mut entry = None;
    if flow == Flow::Reverse {
        let opener = Opener::Tunnel(server.pool.clone());
        let listening = describe(tcp.as_ref(), udp_sock.as_ref());
        if let Some(l) = tcp {
            tokio::spawn(entrance::serve_tcp(
                l,
                ctx.clone(),
                opener.clone(),
                stop.clone(),
            ));
        }
        if let Some(s) = udp_sock {
            tokio::spawn(udp::serve_entrance(
                s,
                ctx.clone(),
                opener.clone(),
                stop.clone(),
            ));
        }
        if let Some(l) = ctx.entry_listener().filter(|_| !p.notcp) {
            entry = l.local_addr().ok();
            tokio::spawn(entrance::serve_tcp(
                l,
                ctx.clone(),
                opener.clone(),
                stop.clone(),
            ));
        }
        entrance::serve_adopted(&ctx, opener, &stop);
        tracing::info!(listening, "entrance listening");
    }
    ctx.mark_ready(if flow == Flow::Reverse { 1 } else { 2 }, entry);
    accept_loop(server, tunnel).await;
    Ok(())
}

fn describe(tcp: Option<&TcpListener>, udp: Option<&tokio::net::UdpSocket>) -> String {
    let mut parts = Vec::new();
    if let Some(a) = tcp.and_then(|l| l.local_addr().ok()) {
        parts.push(format!("tcp={a}"));
    }
    if let Some(a) = udp.and_then(|s| s.local_addr().ok()) {
        parts.push(format!("udp={a}"));
    }
    parts.join(" ")
}

type Entrance = (Option<TcpListener>, Option<tokio::net::UdpSocket>);

/// Mode 1 binds the entrance (failure is fatal); mode 0 tries it.
async fn pick_flow(ctx: &Ctx) -> Result<(Flow, Entrance), TunnelError> {
    let p = &ctx.spec.params;
    if p.mode == 2 {
        return Ok((Flow::Forward, (None, None)));
    }
    let target = &ctx.spec.targets[0];
    let bound = async {
        let tcp = if p.notcp {
            None
        } else {
            Some(ctx.binder.tcp(target).await?)
        };
        let udp = if p.noudp {
            None
        } else {
            Some(ctx.binder.udp(target).await?)
        };
        Ok::<_, TunnelError>((tcp, udp))
    }
    .await;
    match (bound, p.mode) {
        (Ok(e), _) => Ok((Flow::Reverse, e)),
        (Err(e), 1) => Err(e),
        (Err(e), _) => {
            tracing::info!(cause = %e, "target address does not bind here; running in forward mode");
            Ok((Flow::Forward, (None, None)))
        }
    }
}

async fn accept_loop(server: Arc<Server>, tunnel: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = server.stop.cancelled() => return,
            r = tunnel.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let s = server.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(
                        wire::HANDSHAKE_TIMEOUT,
                        s.clone().handshake(tcp, peer),
                    )
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(why)) => {
                            tracing::debug!(%peer, why, "connection dropped during handshake")
                        }
                        Err(_) => tracing::debug!(%peer, "handshake timed out"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(cause = %e, "tunnel accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

impl Server {
    /// Handshakes one connection. Long-lived work (control loop, exit wait)
    /// is spawned so the handshake timeout covers only the handshake.
    async fn handshake(
        self: Arc<Self>,
        mut tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), String> {
        let _ = tcp.set_nodelay(true);
        // A listener on all interfaces keeps the default; a link from this
        // host still should not pace (a link lives long: one call per link).
        proto::congestion::tune_loopback(&tcp, peer.ip());
        let tls_mode = if self.tls.is_some() {
            self.ctx.spec.params.tls
        } else {
            0
        };
        let sn = wire::server_preamble(&mut tcp, tls_mode)
            .await
            .map_err(|e| e.to_string())?;
        let mut link = match &self.tls {
            Some(t) => Link::TlsServer(Box::new(
                t.acceptor
                    .accept(tcp)
                    .await
                    .map_err(|e| format!("tls handshake: {e}"))?,
            )),
            None => Link::Plain(tcp),
        };
        let binding = link.channel_binding();
        match wire::server_request(&mut link)
            .await
            .map_err(|e| e.to_string())?
        {
            Request::Control { cn, proof } => {
                let key = self.ctx.spec.tunnel_key();
                let key = key.expose().as_bytes();
                if !auth::verify(key, Purpose::ClientControl, &[&sn, &cn, &binding], &proof) {
                    tracing::warn!(%peer, "handshake refused: the client's key proof does not match (wrong key?)");
                    let _ = link.write_all(&[wire::STATUS_BAD_KEY]).await;
                    let _ = link.shutdown().await;
                    return Ok(());
                }
                let id: [u8; 16] = rand::random();
                let p = &self.ctx.spec.params;
                let cfg = SessionConfig {
                    flow: self.flow,
                    max: p.max,
                    tcp: !p.notcp,
                    udp: !p.noudp,
                    id,
                };
                let mut reply = vec![wire::STATUS_OK];
                reply.extend_from_slice(&auth::prove(
                    key,
                    Purpose::ServerControl,
                    &[&sn, &cn, &binding],
                ));
                reply.extend_from_slice(&cfg.encode());
                link.write_all(&reply).await.map_err(|e| e.to_string())?;
                link.flush().await.map_err(|e| e.to_string())?;
                let session_key = auth::prove(key, Purpose::Session, &[&sn, &cn]);
                let token = self.install(id, session_key);
                tracing::info!(%peer, flow = ?self.flow, "tunnel up");
                tokio::spawn(self.clone().control(link, id, token, peer));
            }
            Request::Pool { session, proof } => {
                let token = {
                    let cur = self.current.lock().expect("session lock");
                    match cur.as_ref() {
                        Some(c)
                            if c.id == session
                                && auth::verify(
                                    &c.key,
                                    Purpose::Pool,
                                    &[&sn, &binding],
                                    &proof,
                                ) =>
                        {
                            Some(c.token.clone())
                        }
                        _ => None,
                    }
                };
                let Some(token) = token else {
                    tracing::debug!(%peer, "pool connection refused: unknown session or bad proof");
                    let _ = link.write_all(&[wire::STATUS_NO_SESSION]).await;
                    return Ok(());
                };
                let idle = match self.flow {
                    Flow::Reverse => self.pool.len() as u64,
                    Flow::Forward => self.waiting.count.load(Relaxed),
                };
                if idle >= u64::from(self.ctx.spec.params.max) {
                    let _ = link.write_all(&[wire::STATUS_POOL_FULL]).await;
                    return Ok(());
                }
                link.write_all(&[wire::STATUS_OK])
                    .await
                    .map_err(|e| e.to_string())?;
                link.flush().await.map_err(|e| e.to_string())?;
                match self.flow {
                    Flow::Reverse => self.pool.push(link),
                    Flow::Forward => {
                        let fut =
                            exit::serve_link(link, self.ctx.clone(), self.waiting.clone(), token);
                        self.ctx.spawn_session(fut);
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes `id` the current session, ending the previous one.
    fn install(&self, id: [u8; 16], key: [u8; auth::PROOF]) -> CancellationToken {
        let token = self.stop.child_token();
        let old = self.current.lock().expect("session lock").replace(Current {
            id,
            key,
            token: token.clone(),
        });
        if let Some(old) = old {
            tracing::info!("a new client session replaces the previous one");
            old.token.cancel();
            self.pool.flush();
        }
        token
    }

    async fn control(
        self: Arc<Self>,
        link: Link,
        id: [u8; 16],
        token: CancellationToken,
        peer: SocketAddr,
    ) {
        let reverse = self.flow == Flow::Reverse;
        let hooks = Hooks {
            send_starved: reverse.then(|| self.pool.starved.clone()),
            on_starved: None,
            send_capacity: None,
            on_capacity: reverse.then(|| self.pool.clone()),
        };
        let why = control::run(link, &self.ctx.stats, hooks, &token).await;
        let mine = {
            let mut cur = self.current.lock().expect("session lock");
            if cur.as_ref().is_some_and(|c| c.id == id) {
                cur.take();
                true
            } else {
                false
            }
        };
        token.cancel();
        if mine {
            self.pool.flush();
            self.ctx.stats.ping.store(0, Relaxed);
            if !self.stop.is_cancelled() {
                tracing::warn!(%peer, why, "tunnel down; waiting for the client to reconnect");
            }
        }
    }
}
