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

/// Remembers which event ids (`jti`) were accepted, until the latest of their tokens expires.
///
/// Every retry of one event carries the same `jti` and a fresh token with a later `exp`. An id
/// must therefore stay recorded until the **latest** `exp` (+ leeway) seen for it, not only the
/// first one: otherwise a retry token (stolen from pg_net's queue, say) would be accepted as a new
/// event as soon as the first token expired, while it is still valid itself.
///
/// The default, [`MemoryReplayStore`], lives in one process. **Several orchestrator replicas
/// behind a load balancer each have their own**, so a request replayed to another replica is
/// accepted: give them a shared store instead (the crate README shows one in PostgreSQL and one
/// in Redis). Implementations must make [`check_and_record`](ReplayStore::check_and_record)
/// atomic: two concurrent calls with the same `jti` must not both return `true`.
pub trait ReplayStore: Send + Sync {
    /// Record that `jti` was accepted with a token valid until `expires_at` (Unix seconds,
    /// exclusive: the entry is gone once `now >= expires_at`).
    ///
    /// - Not recorded, or its entry expired by `now`: record it until `expires_at` and return
    ///   `Ok(true)` (a new event).
    /// - Recorded and unexpired: keep it until `max(existing, expires_at)` and return
    ///   `Ok(false)` (a duplicate). The extension is what keeps a later retry's token from
    ///   outliving the record of its event.
    ///
    /// `Err` makes the verifier answer 503 (the database retries later).
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

/// What a full [`MemoryReplayStore`] (every entry unexpired) does with a new event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Drop the entry that expires soonest and record the new id (the default). Deliveries
    /// never stall; the price is that the dropped event, if it is delivered again before its
    /// last token expires, is accepted and processed a second time. That entry is the one whose
    /// tokens all expire first, so the window is the shortest possible, and processing must be
    /// idempotent by event id anyway (an entry also ends at its expiry). Each eviction is
    /// counted ([`MemoryReplayStore::evictions`]): a non-zero count means the capacity is too
    /// small for the event rate.
    #[default]
    EvictSoonestExpiring,
    /// Refuse the new id with [`ReplayStoreError`] (503: the database retries it later);
    /// duplicates of recorded ids are still recognised. No event is ever processed twice
    /// because of the bound, but while the store stays full every new event is delayed, and
    /// under a sustained rate above `capacity / token lifetime` new events are never accepted
    /// (they go dead after the database's retry budget).
    RefuseNew,
}

/// An in-process, thread-safe, bounded TTL set of event ids.
///
/// Each entry expires at the latest `exp` + leeway of the tokens accepted or acknowledged for
/// its id. Expired entries are purged on every call, soonest first from an expiry index, so each
/// call costs O(log n) and memory is bounded by the ids whose tokens are still valid, and at
/// most `max_entries` (about 150 bytes each). What happens when it is full of unexpired entries
/// is [`WhenFull`]'s choice (by default the soonest-expiring entry is evicted).
///
/// Size it for `events per second × (token lifetime + leeway)` with room for retries: at 55
/// events/s and a 3600 s lifetime that is about 200,000, the default.
pub struct MemoryReplayStore {
    max_entries: usize,
    when_full: WhenFull,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    expiry_of: HashMap<Arc<str>, u64>,
    by_expiry: BTreeSet<(u64, Arc<str>)>,
    evictions: u64,
}

impl State {
    fn purge(&mut self, now: u64) {
        while let Some((expires_at, _)) = self.by_expiry.first() {
            if *expires_at > now {
                break;
            }
            self.pop_soonest();
        }
    }

    fn pop_soonest(&mut self) {
        if let Some((_, jti)) = self.by_expiry.pop_first() {
            self.expiry_of.remove(&jti);
        }
    }
}

impl MemoryReplayStore {
    /// A store of at most `max_entries` unexpired ids that evicts the soonest-expiring entry
    /// when full ([`WhenFull::EvictSoonestExpiring`]).
    pub fn new(max_entries: usize) -> Self {
        Self::with_policy(max_entries, WhenFull::default())
    }

    /// A store of at most `max_entries` unexpired ids, full according to `when_full`.
    pub fn with_policy(max_entries: usize, when_full: WhenFull) -> Self {
        Self {
            max_entries: max_entries.max(1),
            when_full,
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

    /// How many unexpired entries were evicted to make room ([`WhenFull::EvictSoonestExpiring`]).
    pub fn evictions(&self) -> u64 {
        self.lock().evictions
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
        if let Some((key, &recorded)) = state.expiry_of.get_key_value(jti) {
            if expires_at > recorded {
                let key = key.clone();
                state.by_expiry.remove(&(recorded, key.clone()));
                state.by_expiry.insert((expires_at, key.clone()));
                state.expiry_of.insert(key, expires_at);
            }
            return Ok(false);
        }
        if expires_at <= now {
            // Already expired: nothing to remember (the token check refuses such tokens anyway).
            return Ok(true);
        }
        if state.expiry_of.len() >= self.max_entries {
            match self.when_full {
                WhenFull::EvictSoonestExpiring => {
                    state.pop_soonest();
                    state.evictions += 1;
                }
                WhenFull::RefuseNew => {
                    return Err(ReplayStoreError(format!(
                        "the in-memory replay cache holds {} unexpired event ids, its capacity: \
                         new event ids are refused until some expire (raise replay_capacity, \
                         or use a shared ReplayStore)",
                        self.max_entries
                    )));
                }
            }
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
            .field("when_full", &self.when_full)
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
    fn a_later_expiry_extends_the_memory_an_earlier_one_does_not_shorten_it() {
        let store = MemoryReplayStore::new(10);
        assert!(record(&store, "a", 300, 0));
        assert!(!record(&store, "a", 600, 10), "a retry with a later exp");
        assert!(
            !record(&store, "a", 50, 301),
            "remembered past the first exp"
        );
        assert!(
            !record(&store, "a", 400, 599),
            "an earlier exp did not shorten it"
        );
        assert!(record(&store, "a", 900, 600), "gone at the latest exp");
        // the expiry index follows the extension: one entry, purged at its latest expiry
        assert!(!record(&store, "a", 1200, 700));
        assert!(record(&store, "b", 2000, 1200));
        assert_eq!(store.len(), 1, "a purged at 1200");
    }

    #[test]
    fn when_full_purges_the_expired_then_evicts_the_soonest_expiring() {
        let store = MemoryReplayStore::new(2);
        assert!(record(&store, "a", 100, 0));
        assert!(record(&store, "b", 200, 0));
        // "a" expired: it makes room, nothing unexpired is evicted
        assert!(record(&store, "c", 300, 100));
        assert_eq!((store.len(), store.evictions()), (2, 0));
        // full of unexpired ids: "b" (expires at 200, before "c") goes
        assert!(record(&store, "d", 400, 150));
        assert_eq!((store.len(), store.evictions()), (2, 1));
        assert!(!record(&store, "c", 300, 150), "c is still remembered");
        assert!(!record(&store, "d", 400, 150), "d is remembered");
        assert!(
            record(&store, "b", 200, 150),
            "b was evicted, so it is new again"
        );
    }

    #[test]
    fn refuse_new_keeps_every_unexpired_id_and_still_recognises_duplicates() {
        let store = MemoryReplayStore::with_policy(2, WhenFull::RefuseNew);
        assert!(record(&store, "a", 100, 0));
        assert!(record(&store, "b", 200, 0));
        let error = store.record("c", 300, 0).unwrap_err();
        assert!(error.0.contains("capacity"), "{error}");
        assert!(
            !record(&store, "a", 150, 0),
            "a duplicate is still a duplicate when full"
        );
        // once "a" expires (at 150 now) there is room again
        assert!(record(&store, "c", 300, 150));
        assert_eq!((store.len(), store.evictions()), (2, 0));
    }

    #[test]
    fn a_full_store_keeps_accepting_at_a_steady_rate() {
        // the incident: more ids within one token lifetime than the capacity. Every new id is
        // accepted (none refused), memory stays at the capacity.
        let store = MemoryReplayStore::new(1000);
        for second in 0..100u64 {
            for n in 0..55u64 {
                let id = format!("{second}-{n}");
                assert!(record(&store, &id, second + 3600, second), "{id} refused");
            }
        }
        assert_eq!(store.len(), 1000);
        assert_eq!(store.evictions(), 55 * 100 - 1000);
        assert!(
            !record(&store, "99-54", 3699, 99),
            "the newest are remembered"
        );
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
