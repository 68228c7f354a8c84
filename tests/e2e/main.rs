//! End-to-end tests of the tunnel engine and the master: the real
//! `drover-worker` and `drover` binaries on loopback, real sockets, real
//! bytes, a real HTTP client.
//!
//! Build the binaries first: `cargo build --workspace --bins && cargo test -p drover-e2e`.
//! The harness finds `drover-worker` and `drover` beside this test
//! executable, or at `$DROVER_WORKER_BIN` / `$DROVER_BIN`.

mod api_attack;
mod api_docs;
mod api_durability;
mod api_errors;
mod api_openapi;
mod api_persist;
mod api_prefixes;
mod api_routes;
mod api_schema;
mod api_sse;
mod api_sse_lag;
mod api_tcping;
mod api_tls;
mod api_tunnel;
mod cli;
mod compromised_worker;
mod gateway;
mod isolation;
mod metrics;
mod secrets;
mod supervision;
mod systemd;
mod tunnel_auth;
mod tunnel_congestion;
mod tunnel_memory;
mod tunnel_params;
mod tunnel_polling;
mod tunnel_resilience;
mod tunnel_reuse;
mod tunnel_stats;
mod tunnel_tcp;
mod tunnel_tls;
mod tunnel_udp;
