//! The server's half of a vault move's fence: which vaults are fenced on this node, and how
//! many requests each has in flight here. `Node::route` is the one place every request for
//! a vault passes on its owner, so it is where requests wait while a move holds the vault
//! still (`FENCE_WAIT_MS`, then a 503 with `Retry-After`), and where each request served here
//! is counted until its handler returns. The engine's half (`engine::Engine::fence`) holds
//! the writes that do not come through a request (the proxy's outbox) and those already
//! past this gate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Longest a request waits for a vault's fence to lift before it is answered 503: a fence
/// is held for the copy of the WAL tail and one etcd transaction (milliseconds).
pub(crate) const FENCE_WAIT_MS: u64 = 2_000;
/// How often a waiting request looks at the fence again.
pub(crate) const FENCE_POLL_MS: u64 = 2;
/// `Retry-After` of a request that waited out a fence.
pub(crate) const FENCE_RETRY_AFTER_SECS: u64 = 1;
/// Longest a move waits for the requests already in flight on the vault to finish once it
/// is fenced; past it the move is abandoned (the fence lifts) rather than leave a write
/// running past the copy.
pub(crate) const FENCE_DRAIN_MS: u64 = 10_000;

#[derive(Default)]
pub(crate) struct Fences {
    /// Vaults fenced on this node.
    fenced: Mutex<HashSet<String>>,
    /// Requests being served here, by vault (absent = none).
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// A request counted as in flight on its vault until it drops (after its handler returns).
pub(crate) struct InFlight {
    vault: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.vault) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.vault);
            }
        }
    }
}

impl Fences {
    #[cfg(test)]
    pub(crate) fn is_fenced(&self, vault: &str) -> bool {
        self.fenced.lock().contains(vault)
    }

    /// Waits (up to [`FENCE_WAIT_MS`]) until `vault` is not fenced, then counts a request in
    /// flight on it. `None` = the fence did not lift in time.
    pub(crate) async fn enter(&self, vault: &str) -> Option<InFlight> {
        let deadline = Instant::now() + Duration::from_millis(FENCE_WAIT_MS);
        loop {
            {
                // Checked and counted under the fence set's lock: a move that fences right
                // after sees this request in flight and waits for it.
                let fenced = self.fenced.lock();
                if !fenced.contains(vault) {
                    *self.in_flight.lock().entry(vault.to_owned()).or_insert(0) += 1;
                    return Some(InFlight {
                        vault: vault.to_owned(),
                        counts: Arc::clone(&self.in_flight),
                    });
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(FENCE_POLL_MS)).await;
        }
    }

    /// Fences `vault` (new requests wait in [`Fences::enter`]) and waits up to
    /// [`FENCE_DRAIN_MS`] for the requests in flight on it to finish. `false` = they did
    /// not (the fence stays up; the caller lifts it).
    pub(crate) async fn fence(&self, vault: &str) -> bool {
        self.fenced.lock().insert(vault.to_owned());
        let deadline = Instant::now() + Duration::from_millis(FENCE_DRAIN_MS);
        loop {
            if !self.in_flight.lock().contains_key(vault) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(FENCE_POLL_MS)).await;
        }
    }

    pub(crate) fn lift(&self, vault: &str) {
        self.fenced.lock().remove(vault);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fence_waits_for_requests_in_flight_and_holds_new_ones() {
        let fences = Arc::new(Fences::default());
        let first = fences.enter("v").await.expect("not fenced yet");
        let f = Arc::clone(&fences);
        let fencing = tokio::spawn(async move { f.fence("v").await });
        // The move waits for the request in flight; a new request waits for the move.
        while !fences.is_fenced("v") {
            tokio::task::yield_now().await;
        }
        assert!(!fencing.is_finished());
        let f = Arc::clone(&fences);
        let second = tokio::spawn(async move { f.enter("v").await.is_some() });
        drop(first);
        assert!(fencing.await.unwrap());
        assert!(!second.is_finished());
        // Another vault is not held.
        assert!(fences.enter("w").await.is_some());
        fences.lift("v");
        assert!(second.await.unwrap());
    }
}
