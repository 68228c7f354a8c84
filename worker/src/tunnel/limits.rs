//! `slot` (concurrent sessions) and `rate` (Mbit/s) limits, counted on the
//! user/target sockets as NodePass does.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// At most `limit` concurrent TCP connections + UDP sessions on this side.
#[derive(Debug)]
pub struct Slots {
    limit: u32,
    used: AtomicU32,
}

/// Holds one slot until dropped.
pub struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    /// `limit == 0` means unlimited.
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU32::new(0),
        })
    }

    /// A slot, or `None` when all are taken.
    pub fn try_acquire(self: &Arc<Self>) -> Option<SlotGuard> {
        let prev = self.used.fetch_add(1, Ordering::AcqRel);
        if self.limit != 0 && prev >= self.limit {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SlotGuard(self.clone()))
    }
}

/// A token bucket shared by every session of the process, one per direction.
/// Debt-based: a caller takes what it moved and sleeps off any deficit.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `mbps` megabits per second; burst is one second's worth.
    pub fn new(mbps: u32) -> Arc<Self> {
        let bytes_per_sec = f64::from(mbps) * 125_000.0;
        Arc::new(Self {
            bytes_per_sec,
            state: Mutex::new((bytes_per_sec, Instant::now())),
        })
    }

    /// Accounts `n` bytes and waits until the bucket allows them.
    pub async fn take(&self, n: usize) {
        let wait = {
            let mut st = self.state.lock().expect("rate limiter lock poisoned");
            let now = Instant::now();
            let refill = now.duration_since(st.1).as_secs_f64() * self.bytes_per_sec;
            st.0 = (st.0 + refill).min(self.bytes_per_sec) - n as f64;
            st.1 = now;
            if st.0 < 0.0 {
                Duration::from_secs_f64(-st.0 / self.bytes_per_sec)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit holds and released slots come back.
    #[test]
    fn slots_limit() {
        let s = Slots::new(2);
        let a = s.try_acquire().unwrap();
        let _b = s.try_acquire().unwrap();
        assert!(s.try_acquire().is_none());
        drop(a);
        assert!(s.try_acquire().is_some());
        let unlimited = Slots::new(0);
        let guards: Vec<_> = (0..100).map(|_| unlimited.try_acquire().unwrap()).collect();
        assert_eq!(guards.len(), 100);
    }

    /// Taking more than the burst makes the caller wait proportionally.
    #[tokio::test(start_paused = true)]
    async fn rate_waits() {
        let r = RateLimiter::new(8); // 1 MB/s
        let t = tokio::time::Instant::now();
        r.take(1_000_000).await; // the burst
        r.take(500_000).await;
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(450), "{waited:?}");
    }
}
