//! Polling instead of sleeping while short messages come back to back.
//!
//! A relay that sleeps between messages pays a wake-up for each one, and on
//! a VM whose idle vCPUs halt (no cpuidle driver: waking a halted CPU is an
//! IPI and a halt exit) that is most of what a relay adds to a round trip:
//! a single-end worker +24 µs, a tunnel +50 µs, against +10 and +30 with
//! every process on one CPU. So once a short message (or a new connection)
//! comes within the window of the previous one, the runtime keeps polling
//! its sockets (`epoll_wait` with a zero timeout, a `sched_yield` before
//! each so that anything else runnable on this CPU goes first) until
//! nothing has moved for the window.
//!
//! What that costs is bounded: a message after a longer gap (a quiet or
//! slow-paced tunnel, typing, anything paced by a real network) starts no
//! polling; bulk transfers never start it (relays report only reads shorter
//! than their small buffer, `splice` reports nothing); a polling run ends
//! one window after the last message; and when a `sched_yield` shows that
//! other work wants this CPU, polling pauses for 5 ms. `DROVER_SPIN_US`
//! sets the window (0 turns polling off; the master hands its own value to
//! its workers).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use tokio::sync::Notify;

/// Microseconds the worker polls after the last short message.
const WINDOW_US: u64 = 50;
/// A `sched_yield` that returns after longer than this (µs) ran other work.
const CONTENDED_US: u64 = 100;
/// How long polling pauses once it found the CPU contended (µs).
const PAUSE_US: u64 = 5_000;

/// When messages moved and whether the poller runs.
pub struct Poller {
    epoch: Instant,
    window_us: u64,
    /// Microseconds since `epoch` (+1) of the last message; 0 = none yet.
    last_us: AtomicU64,
    polling: AtomicBool,
    /// No polling before this (µs since `epoch`): the CPU was contended.
    calm_from_us: AtomicU64,
    start: Notify,
}

impl Poller {
    pub fn new(window_us: u64) -> Self {
        Self {
            epoch: Instant::now(),
            window_us,
            last_us: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            calm_from_us: AtomicU64::new(0),
            start: Notify::new(),
        }
    }

    fn now_us(&self) -> u64 {
        // +1: no message is ever stamped 0 ("none yet").
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// A short message moved, or a connection opened.
    pub fn message(&self) {
        self.message_at(self.now_us());
    }

    /// Starts polling if the previous message came within the window (and
    /// polling is on, and not paused); returns whether this call started it.
    fn message_at(&self, now: u64) -> bool {
        let prev = self.last_us.swap(now, Relaxed);
        let start = self.window_us > 0
            && prev != 0
            && now.saturating_sub(prev) <= self.window_us
            && now >= self.calm_from_us.load(Relaxed)
            && !self.polling.swap(true, Relaxed);
        if start {
            self.start.notify_one();
        }
        start
    }

    /// Whether a polling run started at `now` goes on.
    fn keeps_polling_at(&self, now: u64) -> bool {
        now.saturating_sub(self.last_us.load(Relaxed)) <= self.window_us
    }

    /// Whether a `sched_yield` from `before` to `now` let another task run
    /// for long: then this CPU has other work, which polling would delay
    /// (and a polling worker, never asleep, loses the head start the
    /// scheduler gives a task it wakes), so polling pauses for a while.
    fn yielded_for(&self, before: u64, now: u64) -> bool {
        let contended = now.saturating_sub(before) > CONTENDED_US;
        if contended {
            self.calm_from_us.store(now + PAUSE_US, Relaxed);
        }
        contended
    }

    /// The poller: a task on the worker's runtime, asleep until a short
    /// message follows another within the window.
    pub async fn run(&self) {
        if self.window_us == 0 {
            return;
        }
        loop {
            self.start.notified().await;
            // Cleared when the run ends, also when the task is aborted in it.
            let _run = Run(&self.polling);
            while self.keeps_polling_at(self.now_us()) {
                let before = self.now_us();
                std::thread::yield_now();
                if self.yielded_for(before, self.now_us()) {
                    break;
                }
                // To the back of the queue: the runtime polls its I/O driver
                // with a zero timeout before running this task again.
                tokio::task::yield_now().await;
            }
        }
    }
}

/// A polling run: clears the flag when dropped.
struct Run<'a>(&'a AtomicBool);

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

/// The process's poller (window from `DROVER_SPIN_US`, else [`WINDOW_US`]).
pub fn poller() -> &'static Poller {
    static POLLER: OnceLock<Poller> = OnceLock::new();
    POLLER.get_or_init(|| {
        let window = std::env::var("DROVER_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(WINDOW_US);
        Poller::new(window)
    })
}

/// A short message moved, or a connection opened (see the module docs).
pub fn message() {
    poller().message();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_a_message_within_the_window_of_the_last_starts_polling() {
        let p = Poller::new(50);
        assert!(!p.message_at(1_000), "the first message");
        assert!(!p.message_at(1_051), "51 µs after the last");
        assert!(p.message_at(1_100), "49 µs after the last");
        assert!(!p.message_at(1_120), "already polling");
        assert!(p.keeps_polling_at(1_170));
        assert!(!p.keeps_polling_at(1_171));
    }

    #[test]
    fn a_contended_cpu_pauses_polling() {
        let p = Poller::new(50);
        assert!(!p.yielded_for(1_000, 1_000 + CONTENDED_US), "a short yield");
        assert!(p.yielded_for(1_000, 1_001 + CONTENDED_US), "a long yield");
        p.polling.store(false, Relaxed);
        let calm = 1_001 + CONTENDED_US + PAUSE_US;
        p.message_at(calm - 20);
        assert!(!p.message_at(calm - 10), "while paused");
        assert!(p.message_at(calm), "once the pause is over");
    }

    #[test]
    fn a_zero_window_never_polls() {
        let p = Poller::new(0);
        assert!(!p.message_at(10));
        assert!(!p.message_at(10));
    }

    /// A poller with `window_us` on this runtime, its run started by two
    /// messages back to back.
    fn started(window_us: u64) -> (&'static Poller, tokio::task::JoinHandle<()>) {
        let p: &'static Poller = Box::leak(Box::new(Poller::new(window_us)));
        let task = tokio::spawn(p.run());
        p.message();
        p.message();
        (p, task)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_aborted_poller_leaves_polling_off() {
        let (p, task) = started(10_000_000);
        // Let the run begin (it polls for 10 s), then abort it inside.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        assert!(!p.polling.load(Relaxed), "a new engine could never poll");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn polling_stops_one_window_after_the_last_message() {
        let (p, task) = started(2_000);
        assert!(p.polling.load(Relaxed));
        // Deadline only against a hang: the run ends 2 ms after the message.
        tokio::time::timeout(Duration::from_secs(10), async {
            while p.polling.load(Relaxed) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("polling never stopped");
        // Over one window after the message, or paused early because a
        // `sched_yield` found this CPU busy (parallel tests on a loaded host).
        assert!(
            !p.keeps_polling_at(p.now_us()) || p.calm_from_us.load(Relaxed) > 0,
            "the run ended inside its window with no contention"
        );
        task.abort();
    }
}
