//! The three shapes a tunnel takes, started and waited for.
//!
//! - [`Mode::Reverse`]: `server://127.0.0.1:T/127.0.0.1:E?mode=1` +
//!   `client://127.0.0.1:T/<targets>?mode=2`; users connect to E at the server.
//! - [`Mode::Forward`]: `server://127.0.0.1:T/<targets>?mode=2` +
//!   `client://127.0.0.1:T/127.0.0.1:E?mode=2`; users connect to E at the client.
//! - [`Mode::Single`]: `client://127.0.0.1:E/<targets>?mode=1`, no server.
//!
//! 1. [`TunnelBuilder`] collects targets, extra params and keys.
//! 2. [`TunnelBuilder::plan`] allocates the ports and writes the URLs.
//! 3. [`Plan::start`] spawns the workers and waits for `tunnel listening`,
//!    `tunnel up` on both sides and `entrance listening`.

use std::net::SocketAddr;

use crate::worker::Worker;
use crate::{DEADLINE, free_port};

/// Which shape of tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Entrance at the server, exit at the client.
    Reverse,
    /// Entrance at the client, exit at the server.
    Forward,
    /// A single-end client forwarding directly.
    Single,
}

impl Mode {
    /// All three, for tests that check every mode.
    pub const ALL: [Mode; 3] = [Mode::Reverse, Mode::Forward, Mode::Single];
}

/// Collects what a tunnel needs; [`TunnelBuilder::plan`] fixes ports and URLs.
#[derive(Debug, Clone)]
pub struct TunnelBuilder {
    mode: Mode,
    targets: Vec<SocketAddr>,
    server_params: Vec<String>,
    client_params: Vec<String>,
    server_key: Option<String>,
    client_key: Option<String>,
    client_dials: Option<SocketAddr>,
    tunnel_port: Option<u16>,
}

/// Ports and URLs of a tunnel, not started yet.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    /// Where users connect (TCP and UDP).
    pub entrance: SocketAddr,
    /// The server's tunnel address (`None` for single-end).
    pub tunnel: Option<SocketAddr>,
    pub server_url: Option<String>,
    pub client_url: String,
}

/// A started tunnel.
pub struct Tunnel {
    pub plan: Plan,
    pub entrance: SocketAddr,
    pub server: Option<Worker>,
    pub client: Worker,
}

fn join_targets(targets: &[SocketAddr]) -> String {
    targets
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn query(mode: u8, extra: &[String]) -> String {
    let mut q = format!("mode={mode}");
    for p in extra.iter().filter(|p| !p.is_empty()) {
        q.push('&');
        q.push_str(p);
    }
    q
}

fn userinfo(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}@")).unwrap_or_default()
}

impl TunnelBuilder {
    /// A tunnel of shape `mode` whose exit dials `targets`.
    pub fn new(mode: Mode, targets: &[SocketAddr]) -> TunnelBuilder {
        assert!(!targets.is_empty(), "a tunnel needs at least one target");
        TunnelBuilder {
            mode,
            targets: targets.to_vec(),
            server_params: Vec::new(),
            client_params: Vec::new(),
            server_key: None,
            client_key: None,
            client_dials: None,
            tunnel_port: None,
        }
    }

    /// Extra query params for the server (`"tls=1&slot=2"`).
    pub fn server(mut self, params: &str) -> Self {
        self.server_params.push(params.to_string());
        self
    }

    /// Extra query params for the client.
    pub fn client(mut self, params: &str) -> Self {
        self.client_params.push(params.to_string());
        self
    }

    /// Extra query params for the entrance side (server in reverse mode,
    /// client otherwise).
    pub fn entrance(self, params: &str) -> Self {
        match self.mode {
            Mode::Reverse => self.server(params),
            Mode::Forward | Mode::Single => self.client(params),
        }
    }

    /// Extra query params for the exit side (client in reverse and single-end
    /// mode, server in forward mode).
    pub fn exit(self, params: &str) -> Self {
        match self.mode {
            Mode::Forward => self.server(params),
            Mode::Reverse | Mode::Single => self.client(params),
        }
    }

    /// The same `KEY@` on both sides.
    pub fn key(self, key: &str) -> Self {
        self.keys(key, key)
    }

    /// Different keys on each side.
    pub fn keys(mut self, server: &str, client: &str) -> Self {
        self.server_key = Some(server.to_string());
        self.client_key = Some(client.to_string());
        self
    }

    /// Makes the client dial `addr` instead of the server's tunnel port (a
    /// proxy in between). Give explicit keys: the derived key depends on the port.
    pub fn client_dials(mut self, addr: SocketAddr) -> Self {
        self.client_dials = Some(addr);
        self
    }

    /// Uses `port` (from [`crate::free_port`]) as the server's tunnel port, for
    /// tests that must know it before planning (a proxy in front of it).
    pub fn tunnel_port(mut self, port: u16) -> Self {
        self.tunnel_port = Some(port);
        self
    }

    /// Allocates ports and writes the URLs.
    pub fn plan(self) -> Plan {
        let entrance = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let targets = join_targets(&self.targets);
        if self.mode == Mode::Single {
            let client_url = format!(
                "client://{}{entrance}/{targets}?{}",
                userinfo(&self.client_key),
                query(1, &self.client_params)
            );
            return Plan {
                mode: self.mode,
                entrance,
                tunnel: None,
                server_url: None,
                client_url,
            };
        }
        let port = self.tunnel_port.unwrap_or_else(free_port);
        let tunnel = SocketAddr::from(([127, 0, 0, 1], port));
        let dial = self.client_dials.unwrap_or(tunnel);
        let (server_url, client_url) = match self.mode {
            Mode::Reverse => (
                format!(
                    "server://{}{tunnel}/{entrance}?{}",
                    userinfo(&self.server_key),
                    query(1, &self.server_params)
                ),
                format!(
                    "client://{}{dial}/{targets}?{}",
                    userinfo(&self.client_key),
                    query(2, &self.client_params)
                ),
            ),
            Mode::Forward => (
                format!(
                    "server://{}{tunnel}/{targets}?{}",
                    userinfo(&self.server_key),
                    query(2, &self.server_params)
                ),
                format!(
                    "client://{}{dial}/{entrance}?{}",
                    userinfo(&self.client_key),
                    query(2, &self.client_params)
                ),
            ),
            Mode::Single => unreachable!("handled above"),
        };
        Plan {
            mode: self.mode,
            entrance,
            tunnel: Some(tunnel),
            server_url: Some(server_url),
            client_url,
        }
    }

    /// Plans and starts, waiting until the tunnel is ready.
    pub async fn start(self) -> Tunnel {
        self.plan().start().await
    }
}

impl Plan {
    /// Starts the server (waiting for `tunnel listening`) and the client,
    /// without waiting for the tunnel to come up: for tests where it must not.
    pub async fn spawn(&self) -> Tunnel {
        let server = match &self.server_url {
            Some(url) => {
                let server = Worker::start(url);
                server.wait_for_line("tunnel listening", DEADLINE).await;
                Some(server)
            }
            None => None,
        };
        let client = Worker::start(&self.client_url);
        Tunnel {
            plan: self.clone(),
            entrance: self.entrance,
            server,
            client,
        }
    }

    /// Starts the workers and waits until users can connect.
    pub async fn start(&self) -> Tunnel {
        let tunnel = self.spawn().await;
        tunnel.wait_ready().await;
        tunnel
    }
}

impl Tunnel {
    /// Waits for `tunnel up` on both sides (dual-end) and `entrance listening`.
    pub async fn wait_ready(&self) {
        if let Some(server) = &self.server {
            self.client.wait_for_line("tunnel up", DEADLINE).await;
            server.wait_for_line("tunnel up", DEADLINE).await;
        }
        self.entrance_worker()
            .wait_for_line("entrance listening", DEADLINE)
            .await;
    }

    /// The worker users connect to.
    pub fn entrance_worker(&self) -> &Worker {
        match self.plan.mode {
            Mode::Reverse => self.server.as_ref().expect("reverse mode has a server"),
            Mode::Forward | Mode::Single => &self.client,
        }
    }

    /// The worker that dials the targets.
    pub fn exit_worker(&self) -> &Worker {
        match self.plan.mode {
            Mode::Forward => self.server.as_ref().expect("forward mode has a server"),
            Mode::Reverse | Mode::Single => &self.client,
        }
    }

    /// The server, which dual-end tunnels have.
    pub fn server(&self) -> &Worker {
        self.server
            .as_ref()
            .expect("this tunnel has no server (single-end)")
    }
}
