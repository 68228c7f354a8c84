//! Idle pool links held by the entrance side, ready to carry a session with
//! no round trip. A link that ends its session cleanly comes back (see
//! `framed`), so the pool counts the links it holds — idle or lent to a
//! session — and the client refills when one is gone, not when one is taken.

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
    state: Mutex<State>,
    arrived: Notify,
    /// Woken when a link is gone for good (the client refills on it).
    pub left: Notify,
    /// Woken when a taker found the pool empty.
    pub starved: Arc<Notify>,
    stats: Arc<Stats>,
}

struct State {
    idle: VecDeque<Link>,
    /// Idle links plus those lent to sessions of this generation.
    held: usize,
    /// How many links the client wants held; returned links beyond it close.
    target: usize,
    /// Bumped by `flush`: links lent before it do not come back.
    generation: u64,
}

/// A link lent to one session. Dropped, it is gone; [`Lease::give_back`]
/// returns it to the pool.
pub struct Lease {
    /// Taken by `give_back`.
    link: Option<Link>,
    generation: u64,
    pool: Arc<IdlePool>,
}

impl Lease {
    pub fn link(&mut self) -> &mut Link {
        self.link
            .as_mut()
            .expect("a lease holds its link until given back")
    }

    /// Returns the link for the next session (closed instead when the pool
    /// was flushed meanwhile or holds more than its target).
    pub fn give_back(mut self) {
        let Some(link) = self.link.take() else {
            return;
        };
        let kept = {
            let mut s = self.pool.state.lock().expect("pool lock");
            if s.generation != self.generation {
                false
            } else if s.held > s.target {
                s.held -= 1;
                false
            } else {
                s.idle.push_back(link);
                self.pool.publish(s.idle.len());
                true
            }
        };
        if kept {
            self.pool.arrived.notify_one();
        } else {
            self.pool.left.notify_one();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.link.take().is_none() {
            return;
        }
        {
            let mut s = self.pool.state.lock().expect("pool lock");
            if s.generation == self.generation {
                s.held = s.held.saturating_sub(1);
            }
        }
        self.pool.left.notify_one();
    }
}

impl IdlePool {
    pub fn new(stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                idle: VecDeque::new(),
                held: 0,
                target: usize::MAX,
                generation: 0,
            }),
            arrived: Notify::new(),
            left: Notify::new(),
            starved: Arc::new(Notify::new()),
            stats,
        })
    }

    /// Idle links.
    pub fn len(&self) -> usize {
        self.state.lock().expect("pool lock").idle.len()
    }

    /// Idle links plus those lent to sessions.
    pub fn held(&self) -> usize {
        self.state.lock().expect("pool lock").held
    }

    fn publish(&self, len: usize) {
        self.stats.pool.store(len as u64, Relaxed);
    }

    /// Adds a newly authenticated link.
    pub fn push(&self, link: Link) {
        {
            let mut s = self.state.lock().expect("pool lock");
            s.idle.push_back(link);
            s.held += 1;
            self.publish(s.idle.len());
        }
        self.arrived.notify_one();
    }

    /// Sets how many links to hold and closes idle ones beyond it (oldest
    /// first); links lent out close on their return while over.
    pub fn set_target(&self, target: usize) {
        let closed: Vec<Link> = {
            let mut s = self.state.lock().expect("pool lock");
            s.target = target;
            let over = s.held.saturating_sub(target).min(s.idle.len());
            s.held -= over;
            let closed = s.idle.drain(..over).collect();
            self.publish(s.idle.len());
            closed
        };
        if !closed.is_empty() {
            tracing::debug!(closed = closed.len(), target, "pool trimmed");
        }
        self.close(closed);
    }

    /// Closes links taken out of the pool (outside its lock) and tells the
    /// heap trimmer when that let memory go.
    fn close(&self, links: Vec<Link>) {
        if !links.is_empty() {
            drop(links);
            self.stats.note_freed();
        }
    }

    /// Takes a live link, waiting up to [`POOL_GET_TIMEOUT`].
    pub async fn take(self: &Arc<Self>) -> Option<Lease> {
        let deadline = tokio::time::Instant::now() + POOL_GET_TIMEOUT;
        let mut signalled = false;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(lease) = self.pop_alive() {
                return Some(lease);
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

    fn pop_alive(self: &Arc<Self>) -> Option<Lease> {
        loop {
            let (link, generation) = {
                let mut s = self.state.lock().expect("pool lock");
                // Newest first: the least likely to have been cut by a middlebox.
                let link = s.idle.pop_back();
                self.publish(s.idle.len());
                (link?, s.generation)
            };
            let mut lease = Lease {
                link: Some(link),
                generation,
                pool: self.clone(),
            };
            if lease.link().is_alive() {
                return Some(lease);
            }
            tracing::debug!("dropped a dead idle pool link");
        }
    }

    /// Drops every idle link (session over); lent links close on return.
    pub fn flush(&self) {
        let drained: Vec<Link> = {
            let mut s = self.state.lock().expect("pool lock");
            s.generation += 1;
            s.held = 0;
            s.target = usize::MAX;
            self.publish(0);
            s.idle.drain(..).collect()
        };
        self.close(drained);
        self.left.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use super::super::testing::tcp_pair;
    use super::*;

    /// A live plain link (its peer is kept so the link stays alive).
    async fn link(peers: &mut Vec<TcpStream>) -> Link {
        let (c, s) = tcp_pair().await;
        peers.push(s);
        Link::Plain(c)
    }

    /// Lent links count as held; returned ones are idle again unless the pool
    /// is over its target or was flushed meanwhile; dropped ones are gone.
    #[tokio::test]
    async fn leases_come_back_within_target_and_generation() {
        let pool = IdlePool::new(Arc::default());
        let mut peers = Vec::new();
        for _ in 0..3 {
            pool.push(link(&mut peers).await);
        }
        let lease = pool.take().await.expect("a link");
        assert_eq!((pool.len(), pool.held()), (2, 3));
        lease.give_back();
        assert_eq!((pool.len(), pool.held()), (3, 3));

        let (a, b) = (pool.take().await.unwrap(), pool.take().await.unwrap());
        pool.set_target(1);
        assert_eq!(
            (pool.len(), pool.held()),
            (0, 2),
            "idle links beyond the target closed"
        );
        a.give_back();
        assert_eq!(
            (pool.len(), pool.held()),
            (0, 1),
            "over target: closed on return"
        );
        b.give_back();
        assert_eq!((pool.len(), pool.held()), (1, 1), "within target: kept");

        let lease = pool.take().await.expect("a link");
        drop(lease);
        assert_eq!((pool.len(), pool.held()), (0, 0), "a dropped lease is gone");

        pool.push(link(&mut peers).await);
        let lease = pool.take().await.expect("a link");
        pool.flush();
        lease.give_back();
        assert_eq!(
            (pool.len(), pool.held()),
            (0, 0),
            "lent before a flush: not taken back"
        );
    }
}
