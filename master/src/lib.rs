//! The Drover master (REST API, SSE hub, sled store, supervisor of workers).
//!
//! Not built yet: this crate is a placeholder until the master issue lands.
//! Today Drover runs tunnels with `drover-worker "<url>"` on its own.

/// What the placeholder prints instead of running a master.
pub const PLACEHOLDER: &str = "drover: the master is not built yet; run a tunnel with \
drover-worker \"server://:10101/127.0.0.1:8080\" (see README.md)";
