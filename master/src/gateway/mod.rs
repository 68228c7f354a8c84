//! The gateway (DESIGN §1): one shared port; each accepted connection is
//! identified (see [`identify`]), looked up in the bindings (see
//! [`bindings`]), and its socket handed to its instance's worker with
//! `SCM_RIGHTS` — the master copies no payload. A parked instance is woken
//! first; the client only sees a slower first byte.
//!
//! Every connection is its own task with its own deadlines, so a slow or
//! broken client delays nobody else.

pub mod bindings;
pub mod identify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
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

    /// Accepts until `stop`; accept errors back off instead of spinning.
    pub async fn run(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    let gw = self.clone();
                    tokio::spawn(async move { gw.handle(stream, peer).await });
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "gateway accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn handle(&self, stream: TcpStream, peer: SocketAddr) {
        let started = Instant::now();
        let _ = stream.set_nodelay(true);
        let who = identify::identify(&stream, peer).await;
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
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, cause = %e, "gateway: cannot hand over the socket; closed");
                return;
            }
        };
        match self.sup.handoff(&inst, std, &client).await {
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
