//! Group commit, staged deterministically: the first append's fsync is held at a gate while
//! ten more appenders queue up behind it; once released, those ten must be acknowledged by a
//! single shared fsync. No sleeps: the test waits on observable state.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use crate::file::{LogFile, OsStorage, Storage};
use crate::{Wal, WalOptions};

/// Shared by the storage and its files.
struct Gate {
    /// When set, the next file fsync blocks until a message arrives on `release`.
    armed: AtomicBool,
    /// Set while an fsync is blocked at the gate.
    held: AtomicBool,
    release: Mutex<Receiver<()>>,
    file_syncs: AtomicU64,
}

struct GatedStorage(Arc<Gate>);

struct GatedFile {
    inner: Box<dyn LogFile>,
    gate: Arc<Gate>,
}

impl LogFile for GatedFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.gate.file_syncs.fetch_add(1, Ordering::SeqCst);
        if self.gate.armed.swap(false, Ordering::SeqCst) {
            self.gate.held.store(true, Ordering::SeqCst);
            let release = self.gate.release.lock().expect("gate lock");
            release.recv().map_err(io::Error::other)?;
            self.gate.held.store(false, Ordering::SeqCst);
        }
        self.inner.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<u64> {
        self.inner.truncate(len)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.inner.sync_all()
    }
}

impl Storage for GatedStorage {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let inner = OsStorage.create(path)?;
        Ok(Box::new(GatedFile {
            inner,
            gate: Arc::clone(&self.0),
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let inner = OsStorage.open_append(path)?;
        Ok(Box::new(GatedFile {
            inner,
            gate: Arc::clone(&self.0),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsStorage.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        OsStorage.remove(path)
    }

    fn drop_cache(&self, path: &Path) -> io::Result<()> {
        OsStorage.drop_cache(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsStorage.sync_dir(dir)
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    // Bounded so a broken protocol fails instead of hanging the test run.
    for _ in 0..50_000_000u64 {
        if condition() {
            return;
        }
        std::thread::yield_now();
    }
    panic!("gave up waiting for {what}");
}

#[test]
fn appenders_queued_behind_a_leader_share_one_fsync() {
    const FOLLOWERS: usize = 10;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (release, receiver): (Sender<()>, Receiver<()>) = channel();
    let gate = Arc::new(Gate {
        armed: AtomicBool::new(false),
        held: AtomicBool::new(false),
        release: Mutex::new(receiver),
        file_syncs: AtomicU64::new(0),
    });
    let storage = Arc::new(GatedStorage(Arc::clone(&gate)));
    let (log, _) = Wal::open_with(tmp.path(), WalOptions::default(), storage).expect("open");
    let log = Arc::new(log);
    gate.armed.store(true, Ordering::SeqCst);

    let leader = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || log.append(0, b"leader").expect("leader append"))
    };
    wait_until("the leader's fsync to reach the gate", || {
        gate.held.load(Ordering::SeqCst)
    });
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|i| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || log.append(1, &[i as u8]).expect("follower append"))
        })
        .collect();
    wait_until("every follower to queue", || {
        log.queued_records() == FOLLOWERS
    });
    let syncs_before = gate.file_syncs.load(Ordering::SeqCst);
    release.send(()).expect("release the gate");

    assert_eq!(leader.join().expect("leader"), 1);
    let mut lsns: Vec<u64> = followers
        .into_iter()
        .map(|f| f.join().expect("follower"))
        .collect();
    lsns.sort_unstable();
    assert_eq!(lsns, (2..=FOLLOWERS as u64 + 1).collect::<Vec<_>>());
    assert_eq!(
        gate.file_syncs.load(Ordering::SeqCst),
        syncs_before + 1,
        "{FOLLOWERS} queued appends must be covered by exactly one fsync"
    );
    assert_eq!(log.last_lsn(), FOLLOWERS as u64 + 1);
}
