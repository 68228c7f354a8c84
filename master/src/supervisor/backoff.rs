//! Restart policy (DESIGN §2): a worker that ran ≥ [`HEALTHY_RUN`] restarts
//! at once; consecutive short runs back off 1 s, 2 s, 4 s … 60 s with jitter;
//! [`FAILED_AFTER`] short runs in a row mark the instance failed.

use std::time::Duration;

pub const HEALTHY_RUN: Duration = Duration::from_secs(10);
pub const FAILED_AFTER: u32 = 5;
/// A failed instance is retried this often by default (`retry_failed=`),
/// and on PATCH start/restart.
pub const FAILED_RETRY: Duration = Duration::from_secs(300);
const FIRST: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(60);

/// What to do after a worker ended unasked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    RestartNow,
    RestartAfter(Duration),
    Failed,
}

/// Counts consecutive short runs.
#[derive(Debug, Default)]
pub struct Policy {
    short_runs: u32,
}

impl Policy {
    /// Decides after a run that lasted `ran`.
    pub fn after_exit(&mut self, ran: Duration) -> Next {
        if ran >= HEALTHY_RUN {
            self.short_runs = 0;
            return Next::RestartNow;
        }
        self.short_runs += 1;
        if self.short_runs >= FAILED_AFTER {
            return Next::Failed;
        }
        let base = (FIRST * 2u32.pow(self.short_runs - 1)).min(MAX);
        Next::RestartAfter(base.mul_f64(rand::random_range(0.8..1.2)).min(MAX))
    }

    /// Forget the history (operator restarted it, or it came back healthy).
    pub fn reset(&mut self) {
        self.short_runs = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short runs back off exponentially and fail at the threshold; a
    /// healthy run resets the count.
    #[test]
    fn backs_off_then_fails() {
        let mut p = Policy::default();
        let short = Duration::from_secs(1);
        let mut waits = Vec::new();
        for _ in 0..4 {
            match p.after_exit(short) {
                Next::RestartAfter(d) => waits.push(d),
                other => panic!("{other:?}"),
            }
        }
        assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
        assert!(waits[0] >= Duration::from_millis(800) && waits[0] <= Duration::from_millis(1200));
        assert_eq!(p.after_exit(short), Next::Failed);
        assert_eq!(p.after_exit(HEALTHY_RUN), Next::RestartNow);
        assert!(matches!(p.after_exit(short), Next::RestartAfter(_)));
    }
}
