//! Counters the engine keeps (atomics, shared by every task) and their
//! snapshot, printed as NodePass's `CHECK_POINT` line in standalone mode.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use tokio::sync::Notify;

/// Live counters of one tunnel instance.
///
/// Byte counters count the non-tunnel socket of each session (the user's
/// socket at the entrance, the target socket at the exit), as NodePass does.
#[derive(Debug)]
pub struct Stats {
    pub mode: AtomicU64,
    /// Control round trip in ms (dual-end) or target connect time (single-end).
    pub ping: AtomicU64,
    /// Idle pool connections on this side.
    pub pool: AtomicU64,
    pub tcps: AtomicU64,
    pub udps: AtomicU64,
    pub tcprx: AtomicU64,
    pub tcptx: AtomicU64,
    pub udprx: AtomicU64,
    pub udptx: AtomicU64,
    /// Milliseconds since `born` when the last session ended.
    last_active_ms: AtomicU64,
    born: Instant,
    /// Times memory was let go in bulk (a session ended, pool links
    /// closed), and the wake-up for whoever gives it back ([`crate::heap`]).
    frees: AtomicU64,
    freed: Notify,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            mode: AtomicU64::new(0),
            ping: AtomicU64::new(0),
            pool: AtomicU64::new(0),
            tcps: AtomicU64::new(0),
            udps: AtomicU64::new(0),
            tcprx: AtomicU64::new(0),
            tcptx: AtomicU64::new(0),
            udprx: AtomicU64::new(0),
            udptx: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
            born: Instant::now(),
            frees: AtomicU64::new(0),
            freed: Notify::new(),
        }
    }
}

/// A copy of the counters at one moment: the control protocol's `Stats`.
pub type Snapshot = proto::message::Stats;

/// Which protocol a session carries; picks the counters it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Stats {
    /// Takes a snapshot.
    pub fn snapshot(&self) -> Snapshot {
        let (tcps, udps) = (self.tcps.load(Relaxed), self.udps.load(Relaxed));
        let idle_ms = if tcps + udps > 0 {
            0
        } else {
            self.now_ms()
                .saturating_sub(self.last_active_ms.load(Relaxed))
        };
        Snapshot {
            mode: self.mode.load(Relaxed) as u8,
            ping: self.ping.load(Relaxed),
            pool: self.pool.load(Relaxed),
            tcps,
            udps,
            tcprx: self.tcprx.load(Relaxed),
            tcptx: self.tcptx.load(Relaxed),
            udprx: self.udprx.load(Relaxed),
            udptx: self.udptx.load(Relaxed),
            idle_ms,
        }
    }

    /// Zeroes the byte counters (the master's `reset`).
    pub fn reset_traffic(&self) {
        for c in [&self.tcprx, &self.tcptx, &self.udprx, &self.udptx] {
            c.store(0, Relaxed);
        }
    }

    /// Records that memory was let go in bulk.
    pub fn note_freed(&self) {
        self.frees.fetch_add(1, Relaxed);
        self.freed.notify_one();
    }

    /// How many times memory was let go so far.
    pub fn frees(&self) -> u64 {
        self.frees.load(Relaxed)
    }

    /// Resolves after the next [`Stats::note_freed`] (or at once if one
    /// came since the last wait).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Counts one open session until the guard drops.
    pub fn session(&self, proto: Proto) -> SessionGuard<'_> {
        self.active(proto).fetch_add(1, Relaxed);
        SessionGuard { stats: self, proto }
    }

    fn active(&self, proto: Proto) -> &AtomicU64 {
        match proto {
            Proto::Tcp => &self.tcps,
            Proto::Udp => &self.udps,
        }
    }

    /// The (rx, tx) byte counters of a protocol.
    pub fn traffic(&self, proto: Proto) -> (&AtomicU64, &AtomicU64) {
        match proto {
            Proto::Tcp => (&self.tcprx, &self.tcptx),
            Proto::Udp => (&self.udprx, &self.udptx),
        }
    }
}

/// Keeps a session counted in `tcps`/`udps`.
pub struct SessionGuard<'a> {
    stats: &'a Stats,
    proto: Proto,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.stats.active(self.proto).fetch_sub(1, Relaxed);
        self.stats
            .last_active_ms
            .store(self.stats.now_ms(), Relaxed);
        self.stats.note_freed();
    }
}

/// NodePass's stats line, so existing log parsers keep working.
pub fn check_point(s: &Snapshot) -> String {
    format!(
        "CHECK_POINT|MODE={}|PING={}ms|POOL={}|TCPS={}|UDPS={}|TCPRX={}|TCPTX={}|UDPRX={}|UDPTX={}",
        s.mode, s.ping, s.pool, s.tcps, s.udps, s.tcprx, s.tcptx, s.udprx, s.udptx
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Session guards count up and down; the line has NodePass's shape.
    #[test]
    fn counts_sessions() {
        let s = Stats::default();
        {
            let _a = s.session(Proto::Tcp);
            let _b = s.session(Proto::Udp);
            assert_eq!((s.snapshot().tcps, s.snapshot().udps), (1, 1));
            assert_eq!(s.snapshot().idle_ms, 0);
        }
        s.tcprx.fetch_add(5, Relaxed);
        let snap = s.snapshot();
        assert_eq!((snap.tcps, snap.udps), (0, 0));
        assert_eq!(
            check_point(&snap),
            "CHECK_POINT|MODE=0|PING=0ms|POOL=0|TCPS=0|UDPS=0|TCPRX=5|TCPTX=0|UDPRX=0|UDPTX=0"
        );
    }
}
