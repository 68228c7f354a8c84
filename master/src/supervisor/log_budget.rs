//! A token bucket over a worker's log lines: a flooding (or compromised)
//! worker must not drown the master's log or the SSE feed.

use std::time::Instant;

/// Log lines per second a worker may send before lines are dropped.
const LOG_RATE: f64 = 200.0;
/// Burst allowance of [`LOG_RATE`].
const LOG_BURST: f64 = 1000.0;

/// A token bucket over a worker's log lines.
pub struct LogBudget {
    tokens: f64,
    at: Instant,
    dropped: u64,
}

pub enum LogVerdict {
    /// Pass the line; this many were dropped before it.
    Pass(u64),
    Drop,
}

impl LogBudget {
    pub fn new() -> Self {
        Self {
            tokens: LOG_BURST,
            at: Instant::now(),
            dropped: 0,
        }
    }

    /// Accounts one line: pass it (with the count dropped before it) or drop it.
    pub fn take(&mut self) -> LogVerdict {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * LOG_RATE).min(LOG_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            LogVerdict::Pass(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            LogVerdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A flood passes the burst, then drops, and reports how many it dropped.
    #[test]
    fn log_budget_drops_a_flood() {
        let mut b = LogBudget::new();
        let passed = (0..5000)
            .filter(|_| matches!(b.take(), LogVerdict::Pass(_)))
            .count();
        assert!((1000..1100).contains(&passed), "{passed}");
        b.at -= Duration::from_secs(1);
        match b.take() {
            LogVerdict::Pass(dropped) => assert!(dropped >= 3900, "{dropped}"),
            LogVerdict::Drop => panic!("a second later a line passes"),
        }
    }
}
