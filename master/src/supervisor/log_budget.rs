//! What the master takes of a worker's log lines (`Log` messages and
//! stderr): a flooding (or compromised) worker must not drown the master's
//! log or the SSE feed, nor fill the master's memory.
//!
//! - [`LogBudget`]: a token bucket over the lines;
//! - [`clip`]: lines are cut to [`MAX_LINE`] bytes, so the per-instance log
//!   ring holds at most `LOG_RING` × [`MAX_LINE`] bytes.

use std::time::Instant;

/// Longest worker log line the master keeps, logs or publishes (bytes).
pub const MAX_LINE: usize = 8 * 1024;

/// `line` cut to at most [`MAX_LINE`] bytes (on a character boundary), with
/// a note of how much was cut.
pub fn clip(line: String) -> String {
    clip_more(line, 0)
}

/// [`clip`] of a line whose last `already_cut` bytes were never read.
pub fn clip_more(mut line: String, already_cut: usize) -> String {
    if line.len() <= MAX_LINE && already_cut == 0 {
        return line;
    }
    // Room for the note (at most 36 bytes).
    let mut at = line.len().min(MAX_LINE - 64);
    while !line.is_char_boundary(at) {
        at -= 1;
    }
    let cut = line.len() - at + already_cut;
    line.truncate(at);
    line.push_str(&format!("… ({cut} bytes cut)"));
    line
}

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

    /// Long lines are cut to the limit on a character boundary, saying how
    /// much went; short ones are untouched.
    #[test]
    fn clip_bounds_lines() {
        assert_eq!(clip("short".into()), "short");
        let exact = "x".repeat(MAX_LINE);
        assert_eq!(clip(exact.clone()), exact);
        for unit in ["x", "é", "€", "😀"] {
            let long = unit.repeat(MAX_LINE + 1);
            let clipped = clip(long.clone());
            assert!(clipped.len() <= MAX_LINE, "{unit}: {}", clipped.len());
            let kept = clipped.split('…').next().expect("kept part");
            assert!(long.starts_with(kept));
            assert!(clipped.ends_with(&format!("({} bytes cut)", long.len() - kept.len())));
        }
        // A line read only in part counts what was never read.
        let part = clip_more("y".repeat(MAX_LINE), 1000);
        assert!(part.len() <= MAX_LINE);
        assert!(
            part.ends_with(&format!("({} bytes cut)", 1000 + 64)),
            "{part}"
        );
        assert_eq!(clip_more("z".into(), 5), "z… (5 bytes cut)");
    }

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
