//! The [`Wal`] handle: appends with group commit, `sync`, and `checkpoint`.
//!
//! Long (~710 lines): group commit, poisoning and the full-disk stall are one state
//! machine over one lock; split, their invariants would be read in pieces.
//!
//! # Group commit
//!
//! Appenders never fsync on their own. Each one, under the `commit` mutex, takes the next LSNs
//! and copies its records into the shared queue, then waits until `acked_lsn` covers its last
//! LSN. If no leader is active, the waiter *becomes* the leader: it takes the whole queue,
//! releases the mutex, writes the queued records with one `write(2)` and covers them with one
//! `fdatasync`, then publishes the new `acked_lsn` and wakes everyone on the condvar. Records
//! that arrive while a leader is busy pile up and go out together in the next group, so under
//! load one fsync acknowledges many appends and no thread spins. There is at most one leader,
//! which keeps the file in LSN order.
//!
//! # Failures: stall or poison
//!
//! The log is in one of three states ([`Health`]).
//!
//! **Healthy.**
//!
//! **WriteStalled**: the last write failed for lack of space (`ENOSPC`/`EDQUOT`, see
//! [`WalError::NoSpace`]). The bytes after the last acknowledged record were never
//! acknowledged, so the failure can be undone before anyone hears of it. Still holding the
//! files, the leader deletes every segment the failed group created (newest first, the
//! directory fsynced after each delete, so a crash midway leaves no gap), cuts the segment that
//! was active when the group began back to the end of its last acknowledged record (`set_len`,
//! then `fsync`), and only then fails the group's appends and every append queued behind it
//! with `NoSpace`. ("Acknowledged", not "fsynced": in Buffered mode acknowledged records may
//! not be synced yet, and they stay.) Their LSNs were never returned to anyone and no byte on
//! disk carries them, so the next appends get them again: acknowledged LSNs stay gap-free, as
//! recovery requires (frame i of a segment has LSN `first_lsn + i` and segments continue each
//! other, so a skipped LSN would be a hole that recovery refuses as damage). Before those LSNs
//! are handed out again, new appenders wait until every discarded appender has taken its error
//! (`draining`): a waiter tells its fate by comparing its last LSN with `acked_lsn`, which must
//! not move until it has looked. The log stays open; the next successful append (or
//! checkpoint) makes it Healthy again. A checkpoint that runs out of space stalls the same way:
//! only its temporary file was touched.
//!
//! **Poisoned**, for good: a failed fsync (of a segment, the directory or the checkpoint),
//! whatever its errno; a write that failed for any other reason than space; any failure while
//! undoing a stalled group. The state of the file is then unknown (a failed fsync may have
//! dropped dirty pages and cleared the error, "fsyncgate"), so retrying could acknowledge data
//! that is not on disk. Every later call returns [`WalError::Poisoned`] until the log is
//! reopened (except `sync` in Fsync mode, which has nothing acknowledged left to sync), and
//! the reopen re-reads the truth from the disk, not from the page cache (recovery drops the
//! last segment's cached pages first; see `file::drop_cache_of`).
//!
//! Why poison rather than rotate to a fresh segment when the cut itself fails: after a failed
//! write the old segment's tail is unknown (half a frame, whole unacknowledged batches), and a
//! sealed segment must end on a batch boundary and be continued by the next one, so a log
//! rotated past it would refuse to open. The reopen of a poisoned log cuts the torn tail of its
//! last segment by design.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::checkpoint;
use crate::error::WalError;
use crate::file::{FileSync, OsStorage, Storage};
use crate::record::{self, FLAG_END_OF_BATCH, FRAME_OVERHEAD_BYTES};
use crate::recovery::{self, SegmentFile};
use crate::segment::{self, ActiveSegment, SegmentHeader};
use crate::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, Durability, Health, Lsn, RECORD_BYTES_LIMIT, Recovery,
    SEGMENT_BYTES_MIN, WalOptions,
};

/// What [`Wal::probe_space`] writes to tell whether a stalled log has room again: a few
/// ingest batches' worth.
pub const SPACE_PROBE_BYTES: usize = 64 << 10;
/// The scratch file of [`Wal::probe_space`]; a `*.tmp` name, so `open` removes a leftover.
pub(crate) const SPACE_PROBE_FILE: &str = "space-probe.tmp";

/// A reused encode buffer larger than this is dropped after its group, so one huge batch
/// does not pin memory for the life of the log.
const SCRATCH_KEEP_BYTES_MAX: usize = 4 << 20;

/// A write-ahead log open for appending. `Send + Sync`: share it as `Arc<Wal>`.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    storage: Arc<dyn Storage>,
    /// Queue, LSN counters and the leader flag; see the module docs.
    commit: Mutex<Commit>,
    /// Signalled whenever a leader finishes a group (successfully or not).
    committed: Condvar,
    /// The files. Locked by the leader while it writes, and by `sync` and `checkpoint`;
    /// never while holding `commit`.
    log: Mutex<Log>,
    /// [`Health`] as a `u8`, for a lock-free [`Wal::health`]. Written under `commit`; never
    /// leaves `POISONED`.
    health: AtomicU8,
}

const HEALTHY: u8 = 0;
const WRITE_STALLED: u8 = 1;
const POISONED: u8 = 2;

/// Group-commit state, guarded by `Wal::commit`.
struct Commit {
    /// LSN the next enqueued record gets. Assigned under the lock, so queue order is LSN order.
    next_lsn: Lsn,
    /// Every LSN up to this one is acknowledged: fsynced (Fsync) or written (Buffered).
    acked_lsn: Lsn,
    /// True while a leader writes a group outside the lock. At most one leader at a time.
    leader_active: bool,
    /// Set by the first failed fsync or non-retryable write; never cleared.
    poisoned: bool,
    /// Bumped by every stalled group. An appender whose epoch changed while it waited and whose
    /// last LSN is above `acked_lsn` had its batch discarded.
    epoch: u64,
    /// Appenders whose batches the last stall discarded and that have not yet returned their
    /// error. While non-zero, nobody may take LSNs: the discarded appenders' LSNs are about to
    /// be reused, and they tell their fate by comparing them with `acked_lsn`.
    draining: usize,
    /// What the last stall failed with, to give discarded appenders their own error.
    stall: Option<Stall>,
    /// Records waiting for the next leader. Bounded: each caller blocked in `append_batch`
    /// has at most one batch in it.
    queue: Queue,
}

/// The failure of a stalled group, kept to build a [`WalError::NoSpace`] per appender.
struct Stall {
    op: &'static str,
    path: PathBuf,
    kind: io::ErrorKind,
    errno: Option<i32>,
}

impl Stall {
    fn of(err: &WalError) -> Option<Stall> {
        match err {
            WalError::NoSpace { op, path, source } => Some(Stall {
                op,
                path: path.clone(),
                kind: source.kind(),
                errno: source.raw_os_error(),
            }),
            _ => None,
        }
    }

    fn error(&self) -> WalError {
        WalError::NoSpace {
            op: self.op,
            path: self.path.clone(),
            source: self
                .errno
                .map_or_else(|| io::Error::from(self.kind), io::Error::from_raw_os_error),
        }
    }
}

/// How a leader's group ended when it did not succeed.
enum GroupError {
    /// Out of space; every file is back where the group found it. Retryable.
    Stalled(WalError),
    /// Anything else: the log poisons itself.
    Poisoned(WalError),
}

/// Queued records: payload bytes back to back, plus one entry per record.
#[derive(Default)]
struct Queue {
    /// LSN of `entries[0]`.
    first_lsn: Lsn,
    entries: Vec<Entry>,
    payloads: Vec<u8>,
}

impl Queue {
    /// Number of batches (one per waiting appender).
    fn batches(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.flags & FLAG_END_OF_BATCH != 0)
            .count()
    }
}

struct Entry {
    kind: u8,
    flags: u8,
    len: u32,
}

/// The files, guarded by `Wal::log`.
struct Log {
    active: ActiveSegment,
    /// Older segments still on disk, oldest first.
    sealed: Vec<SegmentFile>,
    /// The persisted checkpoint.
    checkpoint: Lsn,
    /// Encode buffer reused across groups.
    scratch: Vec<u8>,
}

/// Where a group began: what a stalled group is cut back to. Between groups, the active
/// segment's `bytes` and `records` describe exactly its acknowledged content.
struct Mark {
    /// `sealed.len()`: more at the end of the group means it rotated.
    sealed: usize,
    path: PathBuf,
    header: SegmentHeader,
    bytes: u64,
    records: u64,
}

impl Mark {
    fn of(log: &Log) -> Mark {
        Mark {
            sealed: log.sealed.len(),
            path: log.active.path.clone(),
            header: log.active.header,
            bytes: log.active.bytes,
            records: log.active.records,
        }
    }
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .field("last_lsn", &self.last_lsn())
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

fn validate(options: &WalOptions) -> Result<(), WalError> {
    if options.record_bytes_max > RECORD_BYTES_LIMIT {
        return Err(WalError::InvalidOptions {
            detail: "record_bytes_max exceeds RECORD_BYTES_LIMIT",
        });
    }
    if options.segment_bytes_max < SEGMENT_BYTES_MIN {
        return Err(WalError::InvalidOptions {
            detail: "segment_bytes_max is below SEGMENT_BYTES_MIN",
        });
    }
    Ok(())
}

impl Wal {
    /// Opens (creating if missing) the log in `dir` and replays it.
    ///
    /// The returned [`Recovery`] holds every record above the persisted checkpoint. A torn
    /// tail is cut off and its size reported; any other damage is an error.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovery), WalError> {
        Self::open_with(dir, options, Arc::new(OsStorage))
    }

    /// [`Wal::open`] over an injectable storage layer (tests use a faulty one).
    pub(crate) fn open_with(
        dir: &Path,
        options: WalOptions,
        storage: Arc<dyn Storage>,
    ) -> Result<(Wal, Recovery), WalError> {
        validate(&options)?;
        let replayed = recovery::replay(&*storage, dir)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            options,
            storage,
            commit: Mutex::new(Commit {
                next_lsn: replayed.next_lsn,
                acked_lsn: replayed.next_lsn - 1,
                leader_active: false,
                poisoned: false,
                epoch: 0,
                draining: 0,
                stall: None,
                queue: Queue::default(),
            }),
            committed: Condvar::new(),
            log: Mutex::new(Log {
                active: replayed.active,
                sealed: replayed.sealed,
                checkpoint: replayed.recovery.checkpoint,
                scratch: Vec::new(),
            }),
            health: AtomicU8::new(HEALTHY),
        };
        Ok((wal, replayed.recovery))
    }

    /// Appends one record; returns its LSN once it is acknowledged (see [`Durability`]).
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        self.append_batch(&[(kind, payload)])
    }

    /// Appends records that survive a crash all together or not at all; returns the LSN of
    /// the last one once the batch is acknowledged. LSNs within the batch are consecutive.
    ///
    /// After [`WalError::NoSpace`] nothing of the batch is in the log, now or after any reopen,
    /// and the call may be retried. After any other I/O error the log is poisoned and the batch
    /// may or may not be replayed by the next open (all of it or none).
    pub fn append_batch(&self, records: &[(u8, &[u8])]) -> Result<Lsn, WalError> {
        self.check_batch(records)?;
        let mut commit = self.commit.lock();
        while commit.draining > 0 && !commit.poisoned {
            self.committed.wait(&mut commit);
        }
        if commit.poisoned {
            return Err(WalError::Poisoned);
        }
        let epoch = commit.epoch;
        let count = records.len() as u64;
        let last = commit.next_lsn + count - 1;
        if commit.queue.entries.is_empty() {
            commit.queue.first_lsn = commit.next_lsn;
        }
        commit.next_lsn = last + 1;
        for (i, (kind, payload)) in records.iter().enumerate() {
            let flags = if i + 1 == records.len() {
                FLAG_END_OF_BATCH
            } else {
                0
            };
            commit.queue.payloads.extend_from_slice(payload);
            commit.queue.entries.push(Entry {
                kind: *kind,
                flags,
                len: payload.len() as u32, // Checked against record_bytes_max above.
            });
        }
        loop {
            // Sound for a discarded batch too: `acked_lsn` cannot move while it drains.
            if commit.acked_lsn >= last {
                return Ok(last);
            }
            if commit.epoch != epoch {
                // A stall discarded this batch (cut from disk already); its LSNs are reused.
                commit.draining -= 1;
                if commit.draining == 0 {
                    self.committed.notify_all();
                }
                return Err(commit
                    .stall
                    .as_ref()
                    .map_or(WalError::Poisoned, Stall::error));
            }
            if commit.poisoned {
                return Err(WalError::Poisoned);
            }
            if commit.leader_active {
                self.committed.wait(&mut commit);
                continue;
            }
            self.lead(&mut commit)?;
        }
    }

    /// Runs one group as the leader: takes the queue, writes and syncs it outside the lock,
    /// publishes the outcome and wakes the followers.
    fn lead(&self, commit: &mut MutexGuard<'_, Commit>) -> Result<(), WalError> {
        commit.leader_active = true;
        let mut group = std::mem::take(&mut commit.queue);
        let group_last = group.first_lsn + group.entries.len() as u64 - 1;
        let result = MutexGuard::unlocked(commit, || self.write_group(&group));
        commit.leader_active = false;
        // Waking everyone is right in every outcome: acknowledged followers return, the rest
        // elect the next leader, and after a failure all of them see `epoch` or `poisoned`.
        // They run only once this guard is released, after the state below is published.
        self.committed.notify_all();
        match result {
            Ok(()) => {
                commit.acked_lsn = group_last;
                self.clear_stall();
                // Hand the group's allocations back to the queue if nobody queued meanwhile.
                if commit.queue.entries.is_empty()
                    && group.payloads.capacity() <= SCRATCH_KEEP_BYTES_MAX
                {
                    group.entries.clear();
                    group.payloads.clear();
                    commit.queue = group;
                }
                Ok(())
            }
            Err(GroupError::Stalled(err)) => {
                // The files hold exactly the records up to `acked_lsn` again. Fail this group
                // and the queue (their LSNs follow the group's), and hand those LSNs out anew.
                // The leader's own batch is in the group and it returns `err` itself.
                let discarded = group.batches() + commit.queue.batches();
                commit.draining += discarded.saturating_sub(1);
                commit.queue = Queue::default();
                commit.next_lsn = commit.acked_lsn + 1;
                commit.epoch += 1;
                commit.stall = Stall::of(&err);
                self.set_stalled();
                Err(err)
            }
            Err(GroupError::Poisoned(err)) => {
                commit.poisoned = true;
                self.health.store(POISONED, Ordering::SeqCst);
                Err(err)
            }
        }
    }

    /// Writes (and in Fsync mode syncs) one group; after a write that failed for lack of
    /// space, undoes it before returning. Called by the leader only.
    fn write_group(&self, group: &Queue) -> Result<(), GroupError> {
        let mut guard = self.log.lock();
        let log = &mut *guard;
        let mark = Mark::of(log);
        match self.write_group_locked(log, group) {
            Ok(()) => Ok(()),
            Err(err) if err.is_retryable() => match self.roll_back(log, mark) {
                Ok(()) => Err(GroupError::Stalled(err)),
                Err(undo) => {
                    // The caller gets the undo's error (the batch's fate is now unknown).
                    tracing::error!(
                        write = %err,
                        undo = %undo,
                        "wal: could not undo a write that ran out of space; poisoned"
                    );
                    Err(GroupError::Poisoned(undo))
                }
            },
            Err(err) => Err(GroupError::Poisoned(err)),
        }
    }

    /// Cuts the files back to `mark` (see the module docs), durably. Any failure here poisons.
    fn roll_back(&self, log: &mut Log, mark: Mark) -> Result<(), WalError> {
        if log.sealed.len() > mark.sealed {
            // The group rotated: delete every segment it created, newest first, so a crash
            // midway never leaves a gap; then reopen the segment it began in.
            let mut created: Vec<PathBuf> = log
                .sealed
                .drain(mark.sealed + 1..)
                .map(|s| s.path)
                .collect();
            created.push(log.active.path.clone());
            for path in created.iter().rev() {
                self.storage
                    .remove(path)
                    .map_err(|e| WalError::io("remove", path, e))?;
                self.storage
                    .sync_dir(&self.dir)
                    .map_err(|e| WalError::io("fsync directory", &self.dir, e))?;
                tracing::warn!(
                    file = %path.display(),
                    "wal: deleted a segment created by a group that ran out of space"
                );
            }
            log.sealed.pop(); // The mark segment becomes the active one again.
            let file = self
                .storage
                .open_append(&mark.path)
                .map_err(|e| WalError::io("open", &mark.path, e))?;
            log.active = ActiveSegment {
                file,
                path: mark.path,
                header: mark.header,
                bytes: mark.bytes,
                records: mark.records,
            };
        }
        let active = &mut log.active;
        let was = active
            .file
            .truncate(mark.bytes)
            .map_err(|e| WalError::io("truncate", &active.path, e))?;
        active
            .file
            .sync_all()
            .map_err(|e| WalError::io("fsync", &active.path, e))?;
        active.bytes = mark.bytes;
        active.records = mark.records;
        if was > mark.bytes {
            tracing::warn!(
                file = %active.path.display(),
                offset = mark.bytes,
                bytes = was - mark.bytes,
                "wal: cut the unacknowledged tail of a write that ran out of space"
            );
        }
        Ok(())
    }

    fn set_stalled(&self) {
        let _ = self.health.compare_exchange(
            HEALTHY,
            WRITE_STALLED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    fn clear_stall(&self) {
        let _ = self.health.compare_exchange(
            WRITE_STALLED,
            HEALTHY,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Encodes and writes one group, rotating between batches as needed, then fsyncs it
    /// (Fsync mode).
    fn write_group_locked(&self, log: &mut Log, group: &Queue) -> Result<(), WalError> {
        let mut buf = std::mem::take(&mut log.scratch);
        buf.clear();
        let mut lsn = group.first_lsn;
        let mut payload_at = 0;
        let mut rest = &group.entries[..];
        while !rest.is_empty() {
            let batch_len = rest
                .iter()
                .position(|e| e.flags & FLAG_END_OF_BATCH != 0)
                .map_or(rest.len(), |i| i + 1);
            let (batch, tail) = rest.split_at(batch_len);
            rest = tail;
            let batch_bytes: u64 = batch
                .iter()
                .map(|e| u64::from(e.len) + FRAME_OVERHEAD_BYTES as u64)
                .sum();
            // A batch never spans two segments: that keeps "all or none" a property of one
            // file's tail. An oversized batch gets a segment of its own.
            if log.active.records > 0
                && log.active.bytes + batch_bytes > self.options.segment_bytes_max
            {
                write_all(&mut log.active, &buf)?;
                buf.clear();
                self.rotate(log, lsn)?;
            }
            for entry in batch {
                let end = payload_at + entry.len as usize;
                let payload = &group.payloads[payload_at..end];
                record::encode(
                    &mut buf,
                    log.active.header.seed,
                    entry.kind,
                    entry.flags,
                    payload,
                );
                payload_at = end;
            }
            log.active.bytes += batch_bytes;
            log.active.records += batch.len() as u64;
            lsn += batch.len() as u64;
        }
        write_all(&mut log.active, &buf)?;
        if self.options.durability == Durability::Fsync {
            sync_data(Target::Active(&mut log.active))?;
        }
        if buf.capacity() <= SCRATCH_KEEP_BYTES_MAX {
            log.scratch = buf;
        }
        Ok(())
    }

    /// Seals the active segment (fsync, even in Buffered mode, so only the last segment can
    /// ever be torn) and starts a new one at `first_lsn`.
    fn rotate(&self, log: &mut Log, first_lsn: Lsn) -> Result<(), WalError> {
        sync_data(Target::Active(&mut log.active))?;
        let next = segment::create(&*self.storage, &self.dir, first_lsn)?;
        let old = std::mem::replace(&mut log.active, next);
        log.sealed.push(SegmentFile {
            first_lsn: old.header.first_lsn,
            path: old.path,
        });
        Ok(())
    }

    fn check_batch(&self, records: &[(u8, &[u8])]) -> Result<(), WalError> {
        if records.is_empty() {
            return Err(WalError::EmptyBatch);
        }
        let mut bytes = 0u64;
        for (_, payload) in records {
            if payload.len() > self.options.record_bytes_max as usize {
                return Err(WalError::RecordTooLarge {
                    len: payload.len(),
                    max: self.options.record_bytes_max,
                });
            }
            bytes += payload.len() as u64;
        }
        if records.len() > BATCH_RECORDS_MAX || bytes > BATCH_BYTES_MAX {
            return Err(WalError::BatchTooLarge {
                records: records.len(),
                bytes,
            });
        }
        Ok(())
    }

    /// Records `lsn` as the checkpoint: records up to it live elsewhere and will not be
    /// replayed. Durable on return; deletes segment files that hold only such records.
    pub fn checkpoint(&self, lsn: Lsn) -> Result<(), WalError> {
        let acked = {
            let commit = self.commit.lock();
            if commit.poisoned {
                return Err(WalError::Poisoned);
            }
            commit.acked_lsn
        };
        if lsn > acked {
            return Err(WalError::CheckpointBeyondEnd { lsn, last: acked });
        }
        let mut guard = self.log.lock();
        let log = &mut *guard;
        if lsn <= log.checkpoint {
            return Ok(());
        }
        let result = match checkpoint::write(&*self.storage, &self.dir, lsn) {
            // Only the temporary file was touched: nothing to undo, no reason to poison.
            Err(err) if err.is_retryable() => {
                drop(guard);
                self.set_stalled();
                return Err(err);
            }
            other => other,
        };
        let result = result.and_then(|()| {
            log.checkpoint = lsn;
            let active_first = log.active.header.first_lsn;
            recovery::delete_covered(
                &*self.storage,
                &self.dir,
                &mut log.sealed,
                active_first,
                lsn,
            )
        });
        drop(guard);
        if result.is_ok() {
            self.clear_stall();
        }
        self.poison_on_error(result)
    }

    /// The state of the log (see the module docs), without taking a lock: cheap enough for
    /// every readiness probe. `WriteStalled` means the last write ran out of space and nothing
    /// has been written since; appends are still attempted. `Poisoned` lasts until reopen.
    pub fn health(&self) -> Health {
        match self.health.load(Ordering::SeqCst) {
            HEALTHY => Health::Healthy,
            WRITE_STALLED => Health::WriteStalled,
            _ => Health::Poisoned,
        }
    }

    /// While the log is `WriteStalled`, checks whether a write of [`SPACE_PROBE_BYTES`] fits
    /// now, by writing and deleting a scratch file (`space-probe.tmp`, never synced, so it
    /// proves nothing durable and risks no poisoning) next to the segments; if it fits the
    /// log is `Healthy` again. Returns the health after the check. Readiness calls it so that
    /// freeing space shows without waiting for a client to retry a write (a probe that
    /// answers "full" would otherwise keep clients away for good). Holds the files' lock, so
    /// it never runs beside a group's write.
    pub fn probe_space(&self) -> Health {
        if self.health() != Health::WriteStalled {
            return self.health();
        }
        let path = self.dir.join(SPACE_PROBE_FILE);
        let fits = {
            let _log = self.log.lock();
            let written = self
                .storage
                .create(&path)
                .and_then(|mut file| file.write_all(&[0; SPACE_PROBE_BYTES]));
            // Removed whatever happened (a leftover is also removed as `*.tmp` at open).
            let _ = self.storage.remove(&path);
            written.is_ok()
        };
        if fits {
            self.clear_stall();
        }
        self.health()
    }

    /// The highest acknowledged LSN (0 for an empty log).
    pub fn last_lsn(&self) -> Lsn {
        self.commit.lock().acked_lsn
    }

    /// Flushes and fsyncs the active segment: makes Buffered-mode acknowledgements durable
    /// (call it at shutdown; the proxy outbox calls it after each exchange). Cheap in Fsync
    /// mode.
    ///
    /// In Buffered mode the fdatasync runs without the `log` lock, through a second handle
    /// on the active segment ([`crate::LogFile::syncer`]) taken under the lock: appends
    /// (writes) go on meanwhile instead of queueing behind the fsync. Still covered: every
    /// record acknowledged before the call is in the segment the handle syncs, or in an older
    /// one that its rotation fsynced. Fsync mode keeps the sync under the lock: its groups
    /// fsync every append anyway, and there a failed sync must poison the log before a
    /// leader could write (and acknowledge) past it.
    ///
    /// On a poisoned log: `Ok` in Fsync mode, where every acknowledged record was covered by
    /// an fsync that succeeded, so nothing acknowledged waits for this one (a clean shutdown
    /// after a failed fsync is still clean: issue 12 saw it exit 1); `Poisoned` in Buffered
    /// mode, where acknowledged records may never reach the disk.
    pub fn sync(&self) -> Result<(), WalError> {
        if self.commit.lock().poisoned {
            return match self.options.durability {
                Durability::Fsync => Ok(()),
                Durability::Buffered => Err(WalError::Poisoned),
            };
        }
        let result = {
            let mut log = self.log.lock();
            let detached = match self.options.durability {
                Durability::Buffered => log.active.file.syncer().map(|syncer| Detached {
                    syncer,
                    path: log.active.path.clone(),
                }),
                Durability::Fsync => None,
            };
            match detached {
                Some(mut detached) => {
                    drop(log);
                    sync_data(Target::Detached(&mut detached))
                }
                None => sync_data(Target::Active(&mut log.active)),
            }
        };
        self.poison_on_error(result)
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durability the log was opened with.
    #[cfg(test)]
    pub(crate) fn durability(&self) -> Durability {
        self.options.durability
    }

    /// Records waiting for a leader (tests use it to stage a group deterministically).
    #[cfg(test)]
    pub(crate) fn queued_records(&self) -> usize {
        self.commit.lock().queue.entries.len()
    }

    fn poison_on_error(&self, result: Result<(), WalError>) -> Result<(), WalError> {
        if result.is_err() {
            self.commit.lock().poisoned = true;
            self.health.store(POISONED, Ordering::SeqCst);
            self.committed.notify_all();
        }
        result
    }
}

impl Drop for Wal {
    /// Best effort for Buffered mode: a log dropped without `sync` still gets its last writes
    /// fsynced. Errors cannot be reported from here; callers that care call `sync` first.
    fn drop(&mut self) {
        if self.options.durability == Durability::Buffered && !self.commit.get_mut().poisoned {
            let _ = self.log.get_mut().active.file.sync_data();
        }
    }
}

fn write_all(active: &mut ActiveSegment, buf: &[u8]) -> Result<(), WalError> {
    if buf.is_empty() {
        return Ok(());
    }
    active
        .file
        .write_all(buf)
        .map_err(|e| WalError::write("write", &active.path, e))
}

/// A sync-only handle on a segment, used by [`Wal::sync`] outside the `log` lock.
struct Detached {
    syncer: Box<dyn FileSync>,
    path: PathBuf,
}

/// What [`sync_data`] syncs: the active segment through its own handle (under the `log`
/// lock), or a [`Detached`] handle on it (without).
enum Target<'a> {
    Active(&'a mut ActiveSegment),
    Detached(&'a mut Detached),
}

/// The one place the log fdatasyncs a segment. The file's sync is called from this frame
/// directly: the power-loss teeth checks name their call sites by it and its caller.
fn sync_data(target: Target<'_>) -> Result<(), WalError> {
    let (result, path) = match target {
        Target::Active(active) => (active.file.sync_data(), &active.path),
        Target::Detached(detached) => (detached.syncer.sync_data(), &detached.path),
    };
    result.map_err(|e| WalError::io("fsync", path, e))
}
