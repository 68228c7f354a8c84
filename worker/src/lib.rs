//! `drover-worker`: one tunnel instance per process.
//!
//! [`tunnel::Engine`] is the tunnel engine as a library (the master drives
//! it through the control protocol); [`standalone`] runs it from a URL on
//! the command line, [`supervised`] under the master (`--instance`).

pub mod logging;
pub mod spare;
pub mod standalone;
pub mod stats;
pub mod supervised;
pub mod tunnel;

/// The worker's tokio runtime. `DROVER_WORKER_THREADS=N` picks a
/// multi-threaded runtime with N threads; the default is one thread.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    match std::env::var("DROVER_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) if n > 1 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
}
