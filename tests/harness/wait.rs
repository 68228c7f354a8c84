//! `wait_until`: the only way tests wait for something asynchronous.
//!
//! The probe is retried every few milliseconds until it holds or the deadline
//! passes; the deadline only catches hangs, it is never what a test waits for.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// Pause between two probes.
const POLL: Duration = Duration::from_millis(10);

/// Waits until `probe()` is true; panics naming `what` after `deadline`.
pub async fn wait_until(deadline: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if probe() {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        sleep(POLL).await;
    }
}

/// Like [`wait_until`] with an async probe (for probes that do I/O).
pub async fn wait_until_async<F, Fut>(deadline: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if probe().await {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        sleep(POLL).await;
    }
}

/// Waits until the async `probe` returns `Some(value)`; returns the value.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        sleep(POLL).await;
    }
}
