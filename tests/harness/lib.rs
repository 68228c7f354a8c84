//! Harness for Drover's end-to-end tests: runs the real `drover-worker` binary
//! on loopback and checks real bytes.
//!
//! 1. [`ports`] hands out free ports, never the same one twice in a process.
//! 2. [`worker`] spawns `drover-worker "<url>"`, collects its log lines and
//!    waits for markers, signals, exits; `Drop` kills and reaps.
//! 3. [`servers`] are the backends (TCP echo, sink-and-reply, UDP echo,
//!    PROXY-header recorder) and a recording TCP proxy, all on `127.0.0.1:0`.
//! 4. [`topology`] starts a reverse pair, a forward pair or a single-end
//!    client and waits until it is ready.
//! 5. [`io`], [`data`], [`stats`], [`tls`], [`wait`]: transfer checks, payloads
//!    and SHA-256, `CHECK_POINT` parsing, test certificates, `wait_until`.
//! 6. [`master`] runs the real `drover` master with its own data dir;
//!    [`api`] talks to its REST API, [`sse`] reads `/events` byte by byte,
//!    [`procs`] checks its worker processes in `/proc`.

pub mod api;
pub mod confine;
pub mod data;
pub mod evil;
pub mod gateway;
pub mod io;
pub mod lifecycle;
pub mod master;
pub mod ports;
pub mod procs;
pub mod prom;
pub mod reaped;
pub mod servers;
pub mod sse;
pub mod stats;
pub mod tls;
pub mod tmpfs;
pub mod topology;
pub mod wait;
pub mod worker;

pub use api::{Api, KEY_ID, Resp};
pub use data::{pattern, random_bytes, sha256};
pub use master::{Master, STATS_INTERVAL};
pub use ports::{closed_recently, free_addr, free_port};
pub use servers::{
    EchoServer, ProxyHeader, ProxyHeaderServer, RecordingProxy, SinkReplyServer, UdpEchoServer,
};
pub use sse::{Event, Frame, SseStream};
pub use stats::Stats;
pub use topology::{Mode, Tunnel, TunnelBuilder};
pub use wait::{wait_for, wait_until, wait_until_async};
pub use worker::{Worker, worker_bin};

use std::time::Duration;

/// Deadline for anything that should happen promptly (a marker line, a
/// connection, an exit): generous, it only catches hangs.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Deadline for bulk transfers (8 MiB through two debug workers).
pub const TRANSFER_DEADLINE: Duration = Duration::from_secs(40);
