//! Memory accounting of open vaults: an estimate of each vault's heap footprint, kept current
//! as the vault changes, and summed over all open vaults for the registry's byte bound
//! (`EngineConfig::open_vaults_memory_bytes_max`).
//!
//! Counted: the memtable and frozen memtables (records, texts, contexts, metadata, vectors at
//! `dim × 4` bytes, the id index and the in-memory lexical index), the dedupe `hashes` map,
//! the `deleted` and `pending` sets, and each segment's heap side (its struct and paths, and
//! once built on first use, its session index and int8 scan codes). Not counted: the mmapped segment files (vectors,
//! records, lexical index, graph). Those pages belong to the kernel's page cache: they are
//! clean, shared with every other reader of the file, and dropped by the kernel under memory
//! pressure without closing anything, so they do not grow the process's heap and closing a
//! vault to bound them would trade reopen cost for memory the kernel can already reclaim.
//!
//! The estimate is recomputed from lengths and capacities — O(1 + frozen memtables +
//! segments), never a pass over records — under the state lock that the change itself
//! holds (ingest apply, delete apply, seal and compaction installs through
//! `State::prune_deleted`, reset), and by `Vault::memory_bytes`, which the registry calls on
//! every hand-out so that indexes built lazily by searches are picked up too. Hash tables are counted by capacity, as that is what they
//! hold; allocator overhead beyond the per-entry constants is not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::segment::Segment;

/// Heap bytes per bucket of the dedupe map (`u64` key and `u32` count padded to 16, one
/// control byte, and the 1/8 of buckets a hash table keeps empty).
const HASH_ENTRY_BYTES: u64 = 19;
/// Heap bytes per bucket of a set of ids (`u64`, one control byte, empty share).
const ID_SET_ENTRY_BYTES: u64 = 10;
/// Heap bytes of an open segment besides its maps and lazy indexes: the struct, its name
/// and four paths, the graph's level table, and the allocator's per-block overhead.
const SEGMENT_FIXED_BYTES: u64 = 1024;

/// One vault's share of the engine-wide total. Setting it moves the total by the difference;
/// dropping it (when the vault's last handle goes) takes the share back out, so the total is
/// always the sum over the vaults alive, whichever way they were closed.
pub(crate) struct MemoryGauge {
    own: AtomicU64,
    total: Arc<AtomicU64>,
}

impl MemoryGauge {
    pub fn new(total: Arc<AtomicU64>) -> Self {
        MemoryGauge {
            own: AtomicU64::new(0),
            total,
        }
    }

    /// The last estimate set.
    pub fn get(&self) -> u64 {
        self.own.load(Ordering::Acquire)
    }

    /// Replaces this vault's estimate. The swap makes concurrent setters each move the total
    /// by exactly the change they made, so the total stays the sum of the shares.
    pub fn set(&self, bytes: u64) {
        let old = self.own.swap(bytes, Ordering::AcqRel);
        if bytes >= old {
            self.total.fetch_add(bytes - old, Ordering::AcqRel);
        } else {
            self.total.fetch_sub(old - bytes, Ordering::AcqRel);
        }
    }
}

impl Drop for MemoryGauge {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Heap bytes of a vault's dedupe map (`hashes` entries of capacity) and id sets
/// (tombstones and pending hashes, `ids` entries of capacity together).
pub(crate) fn sets_bytes(hashes: usize, ids: usize) -> u64 {
    hashes as u64 * HASH_ENTRY_BYTES + ids as u64 * ID_SET_ENTRY_BYTES
}

/// Heap bytes of one segment outside its mapped files: the session index and the int8 scan
/// codes once built (both lazily, under the read lock, so they are counted from the next
/// refresh — at the latest the next request that reaches the vault through the registry).
pub(crate) fn segment_bytes(s: &Segment) -> u64 {
    SEGMENT_FIXED_BYTES + s.session_index_bytes() + s.quantized_bytes() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_sum_into_the_total_and_leave_it_when_dropped() {
        let total = Arc::new(AtomicU64::new(0));
        let a = MemoryGauge::new(Arc::clone(&total));
        let b = MemoryGauge::new(Arc::clone(&total));
        a.set(100);
        b.set(40);
        assert_eq!(total.load(Ordering::Acquire), 140);
        a.set(30);
        assert_eq!(total.load(Ordering::Acquire), 70);
        assert_eq!(a.get(), 30);
        drop(a);
        assert_eq!(total.load(Ordering::Acquire), 40);
        drop(b);
        assert_eq!(total.load(Ordering::Acquire), 0);
    }
}
