//! The background threads: seals, compactions (with their HNSW graph builds) and segment
//! warming run on a pool of their own whose threads run at the lowest CPU priority (nice 19),
//! so a search never waits for a core that a compaction holds.
//!
//! On a 2-core machine a compaction's graph build keeps both cores busy for seconds; at equal
//! priority the scheduler shares them with the searches, which then take several times their
//! usual time (issue 15: prepare p50 8 ms while compacting, 1.2 ms at rest). At nice 19 a
//! background thread weighs 15 against a search thread's 1024 under Linux's fair scheduler:
//! a search takes a core the moment it is runnable, and the background work uses what the
//! searches leave, so a vault under steady load still settles. Locks the background holds are
//! not a priority-inversion trap: a search blocked on one sleeps, and its core goes to the
//! lock holder.
//!
//! Work inside a background job that uses rayon (`par_iter` in `hnsw_rs`'s parallel insert)
//! runs on this pool too, since rayon runs nested parallel work on the pool of the calling
//! thread.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The nice value of background threads: the lowest priority an unprivileged process can
/// set, and one it can always set.
const BACKGROUND_NICE: i32 = 19;

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

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`]. Linux applies
/// `setpriority(PRIO_PROCESS, tid)` to the one thread. A failure (a seccomp filter, say)
/// leaves the thread at normal priority: slower searches during compaction, nothing worse.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), BACKGROUND_NICE)
    {
        tracing::warn!(error = %e, "could not lower a background thread's priority");
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
    fn background_jobs_run_at_the_lowest_priority_and_searches_do_not() {
        let caller = current_nice();
        let (tx, rx) = std::sync::mpsc::channel();
        spawn(move || {
            // Nested parallel work (a graph build) stays on the background threads too.
            use rayon::prelude::*;
            let nested: Vec<i32> = (0..4).into_par_iter().map(|_| current_nice()).collect();
            tx.send((current_nice(), nested)).expect("send");
        });
        let (nice, nested) = rx.recv().expect("the job ran");
        assert_eq!(nice, BACKGROUND_NICE);
        assert!(nested.iter().all(|&n| n == BACKGROUND_NICE), "{nested:?}");
        assert_eq!(current_nice(), caller, "the caller's priority is untouched");
    }
}
