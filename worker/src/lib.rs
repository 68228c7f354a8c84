//! `drover-worker`: one tunnel instance per process.
//!
//! [`tunnel::Engine`] is the tunnel engine as a library (the master drives
//! it through the control protocol); [`standalone`] runs it from a URL on
//! the command line, [`supervised`] under the master (`--instance`).

pub mod heap;
pub mod logging;
pub mod spare;
pub mod spin;
pub mod standalone;
pub mod stats;
pub mod supervised;
pub mod tunnel;

/// The worker's tokio runtime: one thread unless `DROVER_WORKER_THREADS=N`
/// (standalone only: supervised workers get an empty environment).
///
/// One thread, because parallelism comes from running one process per
/// instance: a second runtime thread measured no faster on 2 cores (TCP
/// throughput within noise), added ~0.4 MiB per idle worker, and cost the
/// reverse tunnel +28 µs per round trip in cross-thread wake-ups. (A
/// single-end entrance under a burst adds a second thread of its own that
/// keeps its sessions: `tunnel::spill`.)
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
