//! A second acceptor for a single-end entrance, on its own thread, started
//! only while connections queue up faster than the first thread takes them.
//!
//! A worker runs one runtime thread: at one connection at a time a second
//! thread only adds cross-thread wake-ups (−10 % connections/s measured with
//! a two-thread runtime). Under a burst of short connections one thread is
//! the limit, though. So the entrance watches its accept queue: when, after
//! an accept, the next connection is already waiting often enough, it starts
//! a current-thread runtime on a second thread that accepts from the same
//! socket. Every session stays on the thread that accepted it (no stealing,
//! no cross-thread wake-ups), and the helper retires once the queue has been
//! calm for [`RETIRE_AFTER`], so an idle worker keeps one thread.
//!
//! Only for single-end entrances: a tunnel session rides a pool link that
//! is registered with the first runtime, and would wake across threads.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Ctx;
use super::entrance::{self, Opener};

/// Accepts that found another connection queued, within one [`WINDOW`],
/// before the helper starts.
const START_AT: u32 = 32;
const WINDOW: Duration = Duration::from_secs(1);
/// The helper stops accepting after this long without a queued connection.
const RETIRE_AFTER: Duration = Duration::from_secs(10);

/// What the first acceptor and the helper share.
pub struct Spill {
    epoch: Instant,
    running: AtomicBool,
    /// Milliseconds since `epoch` of the last accept that found a queue.
    last_queued_ms: AtomicU64,
    /// Start of the current window (ms since `epoch`) and queued accepts in it.
    window: std::sync::Mutex<(u64, u32)>,
}

impl Spill {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            running: AtomicBool::new(false),
            last_queued_ms: AtomicU64::new(0),
            window: std::sync::Mutex::new((0, 0)),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records that an accept found the queue not empty; returns when.
    fn mark_queued(&self) -> u64 {
        let now = self.now_ms();
        self.last_queued_ms.store(now, Relaxed);
        now
    }

    /// Called by the first acceptor when the accept queue was not empty;
    /// starts the helper once that happened [`START_AT`] times in a window.
    pub fn queued(
        self: &Arc<Self>,
        listener: &TcpListener,
        ctx: &Arc<Ctx>,
        stop: &CancellationToken,
    ) {
        let now = self.mark_queued();
        if self.running.load(Relaxed) {
            return;
        }
        {
            let mut w = self.window.lock().expect("spill window");
            if now.saturating_sub(w.0) > WINDOW.as_millis() as u64 {
                *w = (now, 0);
            }
            w.1 += 1;
            if w.1 < START_AT {
                return;
            }
            *w = (now, 0);
        }
        if self.running.swap(true, Relaxed) {
            return;
        }
        if let Err(e) = self.start(listener, ctx, stop) {
            tracing::debug!(cause = %e, "second acceptor not started");
            self.running.store(false, Relaxed);
        }
    }

    fn start(
        self: &Arc<Self>,
        listener: &TcpListener,
        ctx: &Arc<Ctx>,
        stop: &CancellationToken,
    ) -> std::io::Result<()> {
        let fd = listener.as_fd().try_clone_to_owned()?;
        let (spill, ctx, stop) = (self.clone(), ctx.clone(), stop.clone());
        std::thread::Builder::new()
            .name("drover-accept2".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(spill.help(fd.into(), &ctx, &stop)),
                    Err(e) => {
                        tracing::debug!(cause = %e, "second acceptor has no runtime");
                        spill.running.store(false, Relaxed);
                    }
                }
            })?;
        tracing::debug!("accept queue building up; second acceptor started");
        Ok(())
    }

    /// The helper: accepts until the queue has been calm for [`RETIRE_AFTER`]
    /// (or `stop`), then lets its own sessions finish before the thread ends.
    async fn help(
        &self,
        listener: std::net::TcpListener,
        ctx: &Arc<Ctx>,
        stop: &CancellationToken,
    ) {
        let Ok(listener) = TcpListener::from_std(listener) else {
            self.running.store(false, Relaxed);
            return;
        };
        let tune = entrance::tunes_accepted(&listener);
        let mine = TaskTracker::new();
        let mut tick = tokio::time::interval(RETIRE_AFTER / 4);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {
                    let calm = self.now_ms().saturating_sub(self.last_queued_ms.load(Relaxed));
                    if calm > RETIRE_AFTER.as_millis() as u64 {
                        break;
                    }
                }
                r = listener.accept() => match r {
                    Ok(first) => {
                        let next = entrance::queued(&listener);
                        if next.is_some() {
                            self.mark_queued();
                        }
                        for (user, peer) in std::iter::once(first).chain(next) {
                            let session = entrance::handle(user, peer, tune, ctx.clone(), Opener::Direct);
                            ctx.spawn_session(mine.track_future(session));
                        }
                    }
                    // The first acceptor meets the same error and backs off.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
            }
        }
        // Queued connections stay in the shared socket for the first acceptor.
        drop(listener);
        // A new helper may start while this one's sessions finish.
        self.running.store(false, Relaxed);
        tracing::debug!("second acceptor retired");
        mine.close();
        mine.wait().await;
    }
}
