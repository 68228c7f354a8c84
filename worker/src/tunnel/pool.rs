//! Idle pool links held by the entrance side, ready to carry a session with
//! no round trip.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::Notify;

use super::link::Link;
use crate::stats::Stats;

/// How long a user connection waits for a pool link before it is dropped.
pub const POOL_GET_TIMEOUT: Duration = Duration::from_secs(5);

/// Authenticated links waiting for a session.
pub struct IdlePool {
    links: Mutex<VecDeque<Link>>,
    arrived: Notify,
    /// Woken when a link leaves the pool (the client refills on it).
    pub left: Notify,
    /// Woken when a taker found the pool empty.
    pub starved: Arc<Notify>,
    stats: Arc<Stats>,
}

impl IdlePool {
    pub fn new(stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self {
            links: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            left: Notify::new(),
            starved: Arc::new(Notify::new()),
            stats,
        })
    }

    pub fn len(&self) -> usize {
        self.links.lock().expect("pool lock").len()
    }

    fn publish(&self, len: usize) {
        self.stats.pool.store(len as u64, Relaxed);
    }

    /// Adds an authenticated link.
    pub fn push(&self, link: Link) {
        let len = {
            let mut q = self.links.lock().expect("pool lock");
            q.push_back(link);
            q.len()
        };
        self.publish(len);
        self.arrived.notify_one();
    }

    /// Takes a live link, waiting up to [`POOL_GET_TIMEOUT`].
    pub async fn take(&self) -> Option<Link> {
        let deadline = tokio::time::Instant::now() + POOL_GET_TIMEOUT;
        let mut signalled = false;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(link) = self.pop_alive() {
                return Some(link);
            }
            if !signalled {
                signalled = true;
                self.starved.notify_one();
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return None;
            }
        }
    }

    fn pop_alive(&self) -> Option<Link> {
        loop {
            let (link, len) = {
                let mut q = self.links.lock().expect("pool lock");
                // Newest first: the least likely to have been cut by a middlebox.
                let link = q.pop_back();
                (link, q.len())
            };
            self.publish(len);
            let link = link?;
            self.left.notify_one();
            if link.is_alive() {
                return Some(link);
            }
            tracing::debug!("dropped a dead idle pool link");
        }
    }

    /// Drops every idle link (session over).
    pub fn flush(&self) {
        let drained: Vec<Link> = self.links.lock().expect("pool lock").drain(..).collect();
        self.publish(0);
        drop(drained);
        self.left.notify_one();
    }
}
