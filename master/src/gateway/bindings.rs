//! Client → instance bindings: the sled `bindings` tree is the truth, an LRU
//! (the `lru` crate) keeps the hot ones in memory. Every change goes to the
//! store first and then replaces the cached entry, so the next connection
//! sees it; an evicted entry is simply read from the store again.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Longest client id accepted (bytes).
pub const MAX_CLIENT: usize = 256;

pub struct Bindings {
    cache: Mutex<LruCache<String, String>>,
    store: Store,
    metrics: Arc<Metrics>,
}

impl Bindings {
    pub fn new(store: Store, capacity: usize, metrics: Arc<Metrics>) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("at least 1");
        Self {
            cache: Mutex::new(LruCache::new(cap)),
            store,
            metrics,
        }
    }

    /// The instance `client` is bound to, if any.
    pub fn lookup(&self, client: &str) -> Option<String> {
        if let Some(id) = self.cache.lock().expect("lru lock").get(client) {
            self.metrics.lru_hit();
            return Some(id.clone());
        }
        self.metrics.lru_miss();
        let id = self.store.binding(client)?;
        self.remember(client, &id);
        Some(id)
    }

    fn remember(&self, client: &str, id: &str) {
        let evicted = self
            .cache
            .lock()
            .expect("lru lock")
            .push(client.to_string(), id.to_string());
        if matches!(evicted, Some((k, _)) if k != client) {
            self.metrics.lru_evicted();
        }
    }

    /// Binds `client` to `instance` (durably, then in the cache).
    pub async fn bind(&self, client: &str, instance: &str) -> Result<(), StoreError> {
        self.store.put_binding(client, instance).await?;
        self.remember(client, instance);
        Ok(())
    }

    /// Removes a binding; `false` when there was none.
    pub async fn unbind(&self, client: &str) -> Result<bool, StoreError> {
        let existed = self.store.delete_binding(client).await?;
        self.cache.lock().expect("lru lock").pop(client);
        Ok(existed)
    }

    /// Drops cached bindings to a deleted instance (the store removed its own).
    pub fn forget_instance(&self, instance: &str) {
        let mut cache = self.cache.lock().expect("lru lock");
        let stale: Vec<String> = cache
            .iter()
            .filter(|(_, v)| *v == instance)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            cache.pop(&k);
        }
    }

    /// A page of bindings in client order.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Vec<(String, String)> {
        self.store.bindings(after, limit)
    }
}
