//! The background threads: seals, compactions (with their HNSW graph builds) and segment
//! warming run on a pool of their own whose threads run at a low CPU priority (nice 10), so a
//! search does not share a core with them at equal weight.
//!
//! On a 2-core machine a compaction's graph build keeps both cores busy for seconds; at equal
//! priority the scheduler shares them with the searches, which then take several times their
//! usual time (issue 15: prepare p50 8 ms while compacting, 1.2 ms at rest). Under Linux's fair
//! scheduler a nice-10 thread weighs 110 against a search thread's 1024: a search gets ~90 % of
//! a core it contends for, and the background work still gets ~10 % under a load that keeps
//! every core busy. Nice 19 (weight 15) was tried first: a closed loop of searches then
//! starved compaction almost completely (a 30k import did not settle in 15 minutes), and a
//! vault whose compaction never finishes keeps ever more unmerged segments for every search
//! to scan. Locks the background holds are not a priority-inversion trap: a search blocked on
//! one sleeps, and its core goes to the lock holder.
//!
//! Work inside a background job that uses rayon (`par_iter` in `hnsw_rs`'s parallel insert)
//! runs on this pool too, since rayon runs nested parallel work on the pool of the calling
//! thread.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The nice value of background threads (see the module docs for why not 19). Raising one's
/// own nice value needs no privilege.
const BACKGROUND_NICE: i32 = 10;

fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mr-background-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(|e| {
                tracing::warn!(error = %e, "background threads unavailable; using rayon's pool")
            })
            .ok()
    })
    .as_ref()
}

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`] (never raises it: a
/// server started at a lower priority keeps it). Linux applies `setpriority(PRIO_PROCESS,
/// tid)` to the one thread. A failure (a seccomp filter, say) leaves the thread at the
/// server's priority: slower searches during compaction, nothing worse.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = Some(rustix::thread::gettid());
        let current = rustix::process::getpriority_process(tid).unwrap_or(0);
        if let Err(e) = rustix::process::setpriority_process(tid, current.max(BACKGROUND_NICE)) {
            tracing::warn!(error = %e, "could not lower a background thread's priority");
        }
    }
}

/// Background jobs queued or running.
static JOBS: AtomicUsize = AtomicUsize::new(0);

/// Runs `job` on a background thread (hidden public for the benches' race group). When the
/// last queued job ends, the heap the jobs freed is given back to the OS.
pub fn spawn(job: impl FnOnce() + Send + 'static) {
    JOBS.fetch_add(1, Ordering::AcqRel);
    let job = move || {
        job();
        if JOBS.fetch_sub(1, Ordering::AcqRel) == 1 {
            give_back_freed_memory();
        }
    };
    match pool() {
        Some(pool) => pool.spawn(job),
        None => rayon::spawn(job),
    }
}

/// Returns the free memory at the top and in the middle of glibc's heaps to the OS.
///
/// A merge allocates its inputs' records, vectors and a graph builder's structures (hundreds
/// of MB for a 100k-record vault) and frees them when it ends; glibc's allocator keeps such
/// freed memory in its per-thread arenas, so after a bulk import had settled the server held
/// ~530 MB more than the same data after a restart (issue 15). One `malloc_trim` when the
/// background work runs out gives it back. Other allocators (musl's, mimalloc in the static
/// build) return memory on their own terms; nothing to do there.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(
        unsafe_code,
        reason = "malloc_trim is a plain libc call with no pointer arguments"
    )]
    // SAFETY: `malloc_trim` takes an integer, touches only the allocator's own state (under
    // its own locks, so concurrent allocations are fine) and cannot fail in a way that leaves
    // memory unsound; its result (whether anything was released) is not needed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The nice value of the calling thread (tests).
#[cfg(all(test, target_os = "linux"))]
fn current_nice() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn background_jobs_run_at_a_lower_priority_and_searches_do_not() {
        let caller = current_nice();
        let (tx, rx) = std::sync::mpsc::channel();
        spawn(move || {
            // Nested parallel work (a graph build) stays on the background threads too.
            use rayon::prelude::*;
            let nested: Vec<i32> = (0..4).into_par_iter().map(|_| current_nice()).collect();
            tx.send((current_nice(), nested)).expect("send");
        });
        let (nice, nested) = rx.recv().expect("the job ran");
        let expected = caller.max(BACKGROUND_NICE);
        assert_eq!(nice, expected);
        assert!(nested.iter().all(|&n| n == expected), "{nested:?}");
        assert_eq!(current_nice(), caller, "the caller's priority is untouched");
    }
}
