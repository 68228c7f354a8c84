//! The control messages: [`ToWorker`] (master → worker) and [`ToMaster`]
//! (worker → master).
//!
//! Each direction is one serde enum, internally tagged by `type`
//! (`{"type":"Ping","seq":7}`); a variant with more than one field wraps a
//! payload struct with a `From` impl, so senders write `Ready { .. }.into()`.
//!
//! A conversation:
//! 1. master → `Hello` (URL with the tunnel key, TLS material, settings) plus
//!    one fd per entry of `Hello::listeners`, in that order;
//! 2. worker → `Ready` once it serves; from then on `Stats` every
//!    `stats_interval_ms`, `Log` lines, `Pong` for each `Ping`;
//! 3. worker → `Bind` for a listener it discovered it needs; master →
//!    `Bound` plus the fd, or `BindError`;
//! 4. master → `Adopt` plus an accepted socket (gateway handoff); worker →
//!    `Adopted` with its `seq` once the session is under way, so the master
//!    can drop the copy it keeps (a handoff a dead worker left unanswered
//!    goes to the next worker if nothing was read from or written to it);
//! 5. master → `Shutdown`; worker drains and exits, or → `Fatal` and exits.
//!
//! Decoding ([`from_json`]) tells garbage ([`ProtoError::NotJson`]) from JSON
//! of a type this direction does not have ([`ProtoError::UnknownType`]) and
//! from a known type with bad fields; a `Hello` of another protocol version is
//! [`ProtoError::VersionMismatch`] however its fields look. Secrets (the URL's
//! key, the TLS private key) are [`Secret`]s, so `Debug` output is safe to log.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{PROTOCOL_VERSION, ProtoError, Secret};

/// What both message enums offer the framing and the channel.
pub trait Message: Serialize + DeserializeOwned + fmt::Debug + Send + 'static {
    /// Every `type` tag of this direction.
    const TYPES: &'static [&'static str];

    /// This message's `type` tag (for logs and errors).
    fn kind(&self) -> &'static str;

    /// How many file descriptors travel with this message.
    fn fd_count(&self) -> usize;

    /// Checks a decoded message beyond its shape (the protocol version).
    fn validate(&self) -> Result<(), ProtoError> {
        Ok(())
    }
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A stream socket.
    Tcp,
    /// A datagram socket.
    Udp,
}

impl Transport {
    /// `"tcp"` or `"udp"`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a passed listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerRole {
    /// The server's tunnel port, where clients connect.
    Tunnel,
    /// Where users' traffic enters the tunnel.
    Entrance,
}

/// One listener the master bound and passes with `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerInfo {
    /// The address as the URL names it (`:10101`, `0.0.0.0:8080`).
    pub addr: String,
    /// Stream or datagram socket.
    pub proto: Transport,
    /// What it is for.
    pub role: ListenerRole,
}

/// TLS certificate and key for `tls=1`/`tls=2` servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsMaterial {
    /// PEM certificate chain (public).
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: Secret,
}

/// Per-instance settings the URL does not carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// How often the worker sends `Stats`.
    pub stats_interval_ms: u64,
    /// How long a `Shutdown` without its own grace may drain.
    pub grace_ms: u64,
    /// Idle period after which the master parks the instance; `None` = never.
    pub idle_ms: Option<u64>,
}

impl Settings {
    /// [`Settings::stats_interval_ms`] as a `Duration`.
    pub fn stats_interval(&self) -> Duration {
        Duration::from_millis(self.stats_interval_ms)
    }

    /// [`Settings::grace_ms`] as a `Duration`.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    /// [`Settings::idle_ms`] as a `Duration`.
    pub fn idle(&self) -> Option<Duration> {
        self.idle_ms.map(Duration::from_millis)
    }
}

/// The first message to a worker: everything it needs to run, so nothing
/// secret goes on argv or in the environment. Carries one fd per
/// [`Hello::listeners`] entry, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`]; checked on decode.
    pub protocol: u32,
    /// The instance id.
    pub instance: String,
    /// The tunnel URL; secret because it holds the tunnel key.
    pub url: Secret,
    /// Log level (`debug`, `info`, …).
    pub log: String,
    /// Certificate and key when the URL asks for TLS with given material.
    pub tls: Option<TlsMaterial>,
    /// Listeners the master bound for this instance, one fd each.
    pub listeners: Vec<ListenerInfo>,
    /// Intervals and periods.
    pub settings: Settings,
}

/// A socket the gateway accepted, handed to the worker (carries its fd).
///
/// The socket comes non-blocking with TCP_NODELAY set, and with its peer
/// address here: the worker serves it without a syscall of its own first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopt {
    /// Stream or datagram socket.
    pub kind: Transport,
    /// The client identity the gateway routed on.
    pub client: String,
    /// The socket's peer address.
    pub peer: std::net::SocketAddr,
    /// Echoed in `Adopted`; 0 = the master keeps no copy and wants no answer.
    pub seq: u64,
}

/// The listener a `Bind` asked for (carries its fd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    /// The address as `Bind` named it.
    pub addr: String,
    /// Stream or datagram socket.
    pub proto: Transport,
}

/// Why the master could not bind what a `Bind` asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindError {
    /// The address as `Bind` named it.
    pub addr: String,
    /// Stream or datagram socket.
    pub proto: Transport,
    /// The bind error, for the worker's `Fatal` or log.
    pub reason: String,
}

/// Master → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ToWorker {
    /// Start: URL, TLS, settings; one fd per listener.
    Hello(Hello),
    /// Liveness probe; answer `Pong` with the same `seq`.
    Ping {
        /// Echoed in `Pong`.
        seq: u64,
    },
    /// Serve this accepted socket; one fd.
    Adopt(Adopt),
    /// Zero the traffic counters (API `PATCH reset`).
    ResetCounters,
    /// Stop accepting, drain for up to `grace_ms`, exit.
    Shutdown {
        /// Drain deadline.
        grace_ms: u64,
    },
    /// Answer to `Bind`; one fd.
    Bound(Bound),
    /// Answer to `Bind` when binding failed.
    BindError(BindError),
    /// To a spare worker (`--spare`): become this instance's worker. The
    /// spare re-executes itself as `--instance <instance>`; `Hello` follows.
    Become {
        /// The instance id.
        instance: String,
    },
}

impl Message for ToWorker {
    const TYPES: &'static [&'static str] = &[
        "Hello",
        "Ping",
        "Adopt",
        "ResetCounters",
        "Shutdown",
        "Bound",
        "BindError",
        "Become",
    ];

    fn kind(&self) -> &'static str {
        match self {
            ToWorker::Hello(_) => "Hello",
            ToWorker::Ping { .. } => "Ping",
            ToWorker::Adopt(_) => "Adopt",
            ToWorker::ResetCounters => "ResetCounters",
            ToWorker::Shutdown { .. } => "Shutdown",
            ToWorker::Bound(_) => "Bound",
            ToWorker::BindError(_) => "BindError",
            ToWorker::Become { .. } => "Become",
        }
    }

    fn fd_count(&self) -> usize {
        match self {
            ToWorker::Hello(hello) => hello.listeners.len(),
            ToWorker::Adopt(_) | ToWorker::Bound(_) => 1,
            ToWorker::Ping { .. }
            | ToWorker::ResetCounters
            | ToWorker::Shutdown { .. }
            | ToWorker::BindError(_)
            | ToWorker::Become { .. } => 0,
        }
    }

    fn validate(&self) -> Result<(), ProtoError> {
        match self {
            ToWorker::Hello(hello) if hello.protocol != PROTOCOL_VERSION => {
                Err(ProtoError::version_mismatch(hello.protocol))
            }
            _ => Ok(()),
        }
    }
}

/// A worker asks the master for a listener it needs (answered by `Bound`
/// or `BindError`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// `host:port` to listen on.
    pub addr: String,
    /// Stream or datagram socket.
    pub proto: Transport,
}

/// The worker serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The worker's pid (as it sees itself).
    pub pid: u32,
    /// The `127.0.0.1:<port>` entry, for instances with an entrance.
    pub entry: Option<String>,
    /// The tunnel mode the worker settled on (NodePass `mode`).
    pub mode: u8,
}

/// Traffic counters and pool state, every stats interval and on demand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The tunnel mode in effect.
    pub mode: u8,
    /// Last measured tunnel round trip, in ms.
    pub ping: u64,
    /// Idle connections in the pool.
    pub pool: u64,
    /// Open TCP connections.
    pub tcps: u64,
    /// Active UDP sessions.
    pub udps: u64,
    /// TCP bytes received.
    pub tcprx: u64,
    /// TCP bytes sent.
    pub tcptx: u64,
    /// UDP bytes received.
    pub udprx: u64,
    /// UDP bytes sent.
    pub udptx: u64,
    /// Time since the last user connection or byte, in ms.
    pub idle_ms: u64,
}

/// A log line the master re-emits under the instance's span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// The line; keep it well under [`crate::MAX_FRAME`].
    pub line: String,
}

/// Worker → master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ToMaster {
    /// Please bind this listener.
    Bind(Bind),
    /// Serving.
    Ready(Ready),
    /// Answer to `Ping`.
    Pong {
        /// The `Ping`'s `seq`.
        seq: u64,
    },
    /// Counters.
    Stats(Stats),
    /// A log line.
    Log(Log),
    /// Took the socket of the `Adopt` with this `seq`.
    Adopted {
        /// The `Adopt`'s `seq`.
        seq: u64,
    },
    /// The worker cannot go on and exits after this.
    Fatal {
        /// Why, for the operator.
        message: String,
    },
}

impl Message for ToMaster {
    const TYPES: &'static [&'static str] =
        &["Bind", "Ready", "Pong", "Stats", "Log", "Adopted", "Fatal"];

    fn kind(&self) -> &'static str {
        match self {
            ToMaster::Bind(_) => "Bind",
            ToMaster::Ready(_) => "Ready",
            ToMaster::Pong { .. } => "Pong",
            ToMaster::Stats(_) => "Stats",
            ToMaster::Log(_) => "Log",
            ToMaster::Adopted { .. } => "Adopted",
            ToMaster::Fatal { .. } => "Fatal",
        }
    }

    fn fd_count(&self) -> usize {
        0
    }
}

macro_rules! impl_from_payload {
    ($enum:ident: $($variant:ident),+) => {$(
        impl From<$variant> for $enum {
            fn from(payload: $variant) -> Self {
                $enum::$variant(payload)
            }
        }
    )+};
}

impl_from_payload!(ToWorker: Hello, Adopt, Bound, BindError);
impl_from_payload!(ToMaster: Bind, Ready, Stats, Log);

/// Encodes a message body (the JSON, without the frame header).
pub fn to_json<M: Message>(msg: &M) -> Result<Vec<u8>, ProtoError> {
    serde_json::to_vec(msg).map_err(|source| ProtoError::Encode {
        ty: msg.kind(),
        source,
    })
}

/// Decodes a message body and [validates](Message::validate) it.
pub fn from_json<M: Message>(body: &[u8]) -> Result<M, ProtoError> {
    match serde_json::from_slice::<M>(body) {
        Ok(msg) => {
            msg.validate()?;
            Ok(msg)
        }
        Err(err) if err.is_data() => Err(classify::<M>(body, err)),
        Err(err) => Err(ProtoError::NotJson(err)),
    }
}

/// Longest `type` an error repeats; the rest of a peer's string is cut.
const MAX_TYPE_ECHO: usize = 64;

/// Names what was wrong with JSON that did not fit `M` (the slow path: it
/// parses the body again).
fn classify<M: Message>(body: &[u8], err: serde_json::Error) -> ProtoError {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => return ProtoError::NotJson(err),
    };
    let Some(tag) = value.get("type") else {
        return ProtoError::UnknownType("<missing>".into());
    };
    let Some(tag) = tag.as_str() else {
        return ProtoError::UnknownType("<not a string>".into());
    };
    let Some(known) = M::TYPES.iter().find(|known| **known == tag) else {
        let mut echo = tag.to_owned();
        if echo.len() > MAX_TYPE_ECHO {
            let mut cut = MAX_TYPE_ECHO;
            while !echo.is_char_boundary(cut) {
                cut -= 1;
            }
            echo.truncate(cut);
            echo.push('…');
        }
        return ProtoError::UnknownType(echo);
    };
    // Another build may have changed Hello's fields along with the version:
    // report the version, which names the fix, not the field.
    if let Some(theirs) = value
        .get("protocol")
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        && theirs != PROTOCOL_VERSION
    {
        return ProtoError::version_mismatch(theirs);
    }
    ProtoError::InvalidMessage {
        ty: known,
        source: err,
    }
}

#[cfg(test)]
pub(crate) mod tests;
