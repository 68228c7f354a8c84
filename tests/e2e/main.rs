//! End-to-end tests of the tunnel engine: the real `drover-worker` binary on
//! loopback, real sockets, real bytes.
//!
//! Build the binaries first: `cargo build --workspace --bins && cargo test -p drover-e2e`.
//! The harness finds `drover-worker` beside this test executable, or at
//! `$DROVER_WORKER_BIN`.

mod cli;
mod tunnel_auth;
mod tunnel_params;
mod tunnel_resilience;
mod tunnel_stats;
mod tunnel_tcp;
mod tunnel_tls;
mod tunnel_udp;
