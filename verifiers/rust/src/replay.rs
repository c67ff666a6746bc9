//! The `jti` replay cache: a trait for shared stores and a bounded in-memory implementation.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// The future a [`ReplayStore`] returns.
pub type StoreFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, ReplayStoreError>> + Send + 'a>>;

/// A replay store could not answer. The verifier turns it into
/// [`VerifyError::ReplayStore`](crate::VerifyError::ReplayStore) (503: the database retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayStoreError(pub String);

impl fmt::Display for ReplayStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReplayStoreError {}

/// Remembers which event ids (`jti`) were accepted, until their tokens expire.
///
/// The default, [`MemoryReplayStore`], lives in one process. **Several orchestrator replicas
/// behind a load balancer each have their own**, so a request replayed to another replica is
/// accepted: give them a shared store instead, e.g. Redis `SET <prefix><jti> 1 NX EXAT
/// <expires_at>` (new when the reply is `OK`) or PostgreSQL `INSERT … ON CONFLICT DO NOTHING`
/// on a table keyed by jti with a purge of expired rows. Implementations must make
/// [`check_and_record`](ReplayStore::check_and_record) atomic: two concurrent calls with the
/// same `jti` must not both return `true`.
pub trait ReplayStore: Send + Sync {
    /// Record `jti` as seen until `expires_at` (Unix seconds, exclusive). Returns `Ok(true)` if
    /// it was not recorded (or its entry had expired by `now`), `Ok(false)` if it is a replay.
    fn check_and_record<'a>(
        &'a self,
        jti: &'a str,
        expires_at: u64,
        now: u64,
    ) -> StoreFuture<'a, bool>;

    /// Drop the record of `jti`, so the next delivery of that event is accepted again (e.g. when
    /// the handler failed to process it and answered 5xx, so that the database retries).
    fn forget<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, ()>;
}

impl<T: ReplayStore + ?Sized> ReplayStore for Arc<T> {
    fn check_and_record<'a>(
        &'a self,
        jti: &'a str,
        expires_at: u64,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        (**self).check_and_record(jti, expires_at, now)
    }

    fn forget<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, ()> {
        (**self).forget(jti)
    }
}

/// The default number of entries a [`MemoryReplayStore`] holds.
pub const DEFAULT_MAX_ENTRIES: usize = 200_000;

/// An in-process, thread-safe, bounded TTL set of event ids.
///
/// Each entry expires at the token's `exp` + leeway; expired entries are purged on every call
/// (cheapest first, from an expiry index), so memory is bounded by the number of tokens that are
/// still valid, and at most `max_entries` (about 150 bytes each). When it is full of unexpired
/// entries a new id is refused with [`ReplayStoreError`] (503, the database retries later)
/// rather than evicting an entry, which would let that event be replayed.
pub struct MemoryReplayStore {
    max_entries: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    expiry_of: HashMap<Arc<str>, u64>,
    by_expiry: BTreeSet<(u64, Arc<str>)>,
}

impl State {
    fn purge(&mut self, now: u64) {
        while let Some((expires_at, _)) = self.by_expiry.first() {
            if *expires_at > now {
                break;
            }
            let (_, jti) = self.by_expiry.pop_first().expect("first exists");
            self.expiry_of.remove(&jti);
        }
    }
}

impl MemoryReplayStore {
    /// A store of at most `max_entries` unexpired ids.
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// The number of entries held (expired ones included until the next call purges them).
    pub fn len(&self) -> usize {
        self.lock().expiry_of.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the two indexes inconsistent in a way
        // that matters (at worst an entry lives until its expiry), so go on after poisoning.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, jti: &str, expires_at: u64, now: u64) -> Result<bool, ReplayStoreError> {
        let mut state = self.lock();
        state.purge(now);
        if state.expiry_of.contains_key(jti) {
            return Ok(false);
        }
        if expires_at <= now {
            // Already expired: nothing to remember (the token check refuses such tokens anyway).
            return Ok(true);
        }
        if state.expiry_of.len() >= self.max_entries {
            return Err(ReplayStoreError(format!(
                "in-memory replay cache full ({} unexpired entries)",
                self.max_entries
            )));
        }
        let jti: Arc<str> = Arc::from(jti);
        state.expiry_of.insert(jti.clone(), expires_at);
        state.by_expiry.insert((expires_at, jti));
        Ok(true)
    }

    fn remove(&self, jti: &str) {
        let mut state = self.lock();
        if let Some((jti, expires_at)) = state.expiry_of.remove_entry(jti) {
            state.by_expiry.remove(&(expires_at, jti));
        }
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl fmt::Debug for MemoryReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReplayStore")
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish()
    }
}

impl ReplayStore for MemoryReplayStore {
    fn check_and_record<'a>(
        &'a self,
        jti: &'a str,
        expires_at: u64,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        let result = self.record(jti, expires_at, now);
        Box::pin(std::future::ready(result))
    }

    fn forget<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, ()> {
        self.remove(jti);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(store: &MemoryReplayStore, jti: &str, expires_at: u64, now: u64) -> bool {
        store.record(jti, expires_at, now).unwrap()
    }

    #[test]
    fn remembers_until_expiry_then_forgets() {
        let store = MemoryReplayStore::new(10);
        assert!(record(&store, "a", 100, 10));
        assert!(!record(&store, "a", 100, 50));
        assert!(!record(&store, "a", 100, 99));
        assert!(record(&store, "a", 200, 100), "expired at 100");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn bounded_and_fails_closed_when_full() {
        let store = MemoryReplayStore::new(2);
        assert!(record(&store, "a", 100, 0));
        assert!(record(&store, "b", 200, 0));
        assert!(store.record("c", 300, 0).is_err());
        assert!(
            !record(&store, "a", 100, 0),
            "a replay is still a replay when full"
        );
        // once "a" expires there is room again
        assert!(record(&store, "c", 300, 100));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn forget_allows_the_id_again() {
        let store = MemoryReplayStore::new(2);
        assert!(record(&store, "a", 100, 0));
        store.remove("a");
        assert!(store.is_empty());
        assert!(record(&store, "a", 100, 0));
    }

    #[test]
    fn concurrent_callers_accept_an_id_once() {
        let store = Arc::new(MemoryReplayStore::new(1000));
        let accepted: usize = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|i| store.record(&format!("id-{i}"), 1000, 0).unwrap())
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .sum();
        assert_eq!(accepted, 100);
    }
}
