//! The Drover master: NodePass-compatible REST API, SSE hub, sled store, and
//! the supervisor that runs every instance as its own `drover-worker`.

pub mod api;
pub mod config;
pub mod gateway;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod run;
pub mod sse;
pub mod store;
pub mod supervisor;
pub mod sysinfo;
pub mod systemd;
pub mod tcping;

pub use run::run;
