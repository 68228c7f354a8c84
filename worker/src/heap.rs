//! Gives freed heap memory back to the kernel once a burst is over.
//!
//! glibc keeps what a process frees for later allocations and returns only
//! the top of its heap. Sessions allocate their buffers (and a TLS link its
//! record buffers) at scattered places, so after a burst the free memory
//! stays resident: a `tls=1` tunnel's two workers each held ~10 MiB more
//! after 64 concurrent 4 MiB transfers than before, for good.
//! `malloc_trim(0)` hands every free page back; it runs once the worker has
//! let nothing go for [`QUIET`], so a steady stream of sessions does not
//! trim (and fault the pages back in) over and over.

use std::sync::Arc;
use std::time::Duration;

use crate::stats::Stats;

/// How long nothing must be freed before the heap is trimmed.
pub const QUIET: Duration = Duration::from_secs(1);

/// Trims the heap after each burst of frees, until dropped.
pub async fn trim_when_quiet(stats: Arc<Stats>) {
    loop {
        stats.freed().await;
        loop {
            let seen = stats.frees();
            tokio::time::sleep(QUIET).await;
            if stats.frees() == seen {
                break;
            }
        }
        trim();
    }
}

/// Returns the allocator's free pages to the kernel.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes
    // the arena locks itself and touches no memory the program owns.
    unsafe {
        libc::malloc_trim(0);
    }
}
