//! The power-loss harness (tests only, hidden): a [`Storage`] that performs every operation
//! on a real directory — so the code under test reads and maps real files — while keeping a
//! model of what the *disk* holds, and can write out the **durable image** a power cut would
//! leave at any point.
//!
//! The model follows what POSIX promises and ext4/xfs deliver:
//!
//! - a file's bytes are durable up to its last fsync; bytes appended since are lost, or reach
//!   the disk only in part (torn at a seeded offset);
//! - a directory's entries (creations, renames, removals) are durable as of its last fsync;
//!   an entry made or removed since is reverted. A new file or directory whose entry was never
//!   synced into its parent vanishes with everything in it; a removed one comes back with its
//!   durable contents.
//!
//! [`Crash::Strict`] is exactly that. [`Crash::Seeded`] also lets the disk have written back
//! some of what was not synced yet, as a real one may at any moment: each directory is
//! independently either as last synced or as it is now, and each file's unsynced tail is
//! dropped, kept whole or torn. Every image it draws is one a real disk could show.
//!
//! Any test registers a hook ([`PowerLoss::on_op`]) that runs before every operation, i.e.
//! at every point where the process could lose power; it calls [`PowerLoss::image`] to write
//! the disk's state there into a fresh directory, opens it with the ordinary file system and
//! checks that nothing acknowledged is missing. Nothing is fsynced for real (the model is the
//! disk), which keeps thousands of crash points fast.
//!
//! To show that the tests have teeth, [`PowerLoss::skip_syncs`] makes the fsyncs a given call
//! site issues do nothing in the model — the same as deleting that call from the code — and
//! the tests must then fail (see `engine/tests/it/powerloss.rs`, docs/safety.md).
//!
//! Limits: reads and maps use the real directory (reads change nothing on disk); a write
//! made outside the seam is imported the first time the seam meets it, as never synced, and
//! counted in [`PowerLoss::bypassed`]; a directory is written back whole or not at all, so
//! an fs that reorders entries *within* one directory is not modelled.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::storage::{DIR_MODE, FILE_MODE, FileSync, LogFile, Storage};

/// An operation through the seam, reported to the hook before it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// 1-based count of operations so far, this one included.
    pub index: u64,
    pub kind: OpKind,
    pub path: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Create,
    CreateNew,
    OpenAppend,
    Write,
    SyncFile,
    CreateDir,
    Rename,
    Remove,
    RemoveDirAll,
    SyncDir,
}

/// "Every write fails from operation N" ([`PowerLoss::fail_writes_from`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailFrom {
    /// The first operation (1-based, as [`Op::index`] counts) that fails.
    pub op: u64,
    /// The errno every failing operation returns. `ENOSPC` (28) is a full disk: creations,
    /// renames and writes fail (a write after writing half its buffer, as a real one may),
    /// while removals, syncs and opens keep working. Anything else (e.g. `EIO`, 5) is a
    /// dying disk: every operation fails, syncs and removals included.
    pub errno: i32,
}

impl FailFrom {
    /// The errno of a full disk.
    pub const ENOSPC: i32 = 28;
    /// The errno of an I/O error.
    pub const EIO: i32 = 5;

    fn fails(&self, index: u64, kind: OpKind) -> bool {
        if index < self.op {
            return false;
        }
        if self.errno != Self::ENOSPC {
            return true;
        }
        matches!(
            kind,
            OpKind::Create | OpKind::CreateNew | OpKind::CreateDir | OpKind::Rename | OpKind::Write
        )
    }
}

/// Which durable image to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// Only what was fsynced: files up to their last fsync, directories as last fsynced.
    Strict,
    /// What was fsynced plus, drawn from the seed, some of what was not: each directory as
    /// last synced or as it is now, each file's unsynced tail dropped, kept or torn.
    Seeded(u64),
}

/// A call site whose syncs [`PowerLoss::skip_syncs`] ignores: the sync's kind, the innermost
/// frames of the stack outside the harness (and the vault's `guard.rs` layer), in order, each as `source file:function name`
/// (e.g. `["wal/src/writer.rs:sync_data", "wal/src/writer.rs:rotate"]`: the helper that
/// issues the sync, then its caller), and a test on the synced path.
#[derive(Clone, Debug)]
pub struct SyncSite {
    pub kind: OpKind,
    pub functions: &'static [&'static str],
    pub path: fn(&Path) -> bool,
}

type Hook = Box<dyn FnMut(&PowerLoss, &Op) + Send>;

struct FileNode {
    /// Contents as the process sees them.
    data: Vec<u8>,
    /// `data[..synced]` is durable, unless `durable_old` holds what was durable before the
    /// file was truncated (and not synced since).
    synced: usize,
    durable_old: Option<Vec<u8>>,
    /// Byte ranges of `data` an fsync failed to write ("fsyncgate"): the kernel marked those
    /// pages clean without writing them, so no later fsync writes them either. The process
    /// still reads them; the disk holds zeros there (once a later sync extends the file past
    /// them) and never their bytes.
    lost: Vec<(usize, usize)>,
}

impl FileNode {
    fn durable(&self) -> Vec<u8> {
        let mut bytes = match &self.durable_old {
            Some(old) => old.clone(),
            None => self.data[..self.synced].to_vec(),
        };
        self.zero_lost(&mut bytes);
        bytes
    }

    /// Zeroes what a failed fsync never wrote, in `bytes` (a prefix of the file as the disk
    /// would show it).
    fn zero_lost(&self, bytes: &mut [u8]) {
        for &(start, end) in &self.lost {
            let end = end.min(bytes.len());
            if start < end {
                bytes[start..end].fill(0);
            }
        }
    }
}

#[derive(Default)]
struct DirNode {
    live: BTreeMap<OsString, usize>,
    durable: BTreeMap<OsString, usize>,
}

enum Node {
    File(FileNode),
    Dir(DirNode),
}

struct Model {
    root: PathBuf,
    nodes: Vec<Node>,
    ops: u64,
    bypassed: Vec<PathBuf>,
    skip: Option<SyncSite>,
    skipped: u64,
    /// Every sync fails (and syncs nothing) while set: a disk that reports an fsync error.
    fail_syncs: bool,
    /// Every write from an operation on fails while set ([`PowerLoss::fail_writes_from`]).
    fail_from: Option<FailFrom>,
    /// Bumped whenever the durable state changes (an effective sync).
    durable_version: u64,
}

struct Shared {
    model: Mutex<Model>,
    hook: Mutex<Option<Hook>>,
}

/// The recording storage. Cheap to clone (one shared model).
#[derive(Clone)]
pub struct PowerLoss(Arc<Shared>);

impl std::fmt::Debug for PowerLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerLoss")
            .field("root", &self.0.model.lock().root)
            .finish_non_exhaustive()
    }
}

const ROOT: usize = 0;

impl PowerLoss {
    /// Starts recording under `root` (which must exist). Whatever is already there counts as
    /// durable.
    pub fn attach(root: &Path) -> io::Result<PowerLoss> {
        let mut model = Model {
            root: root.to_path_buf(),
            nodes: vec![Node::Dir(DirNode::default())],
            ops: 0,
            bypassed: Vec::new(),
            skip: None,
            skipped: 0,
            fail_syncs: false,
            fail_from: None,
            durable_version: 0,
        };
        model.import_tree(ROOT, root, true)?;
        Ok(PowerLoss(Arc::new(Shared {
            model: Mutex::new(model),
            hook: Mutex::new(None),
        })))
    }

    /// Runs `hook` before every operation from now on (replacing any earlier hook). The hook
    /// must not write through this storage (such calls would not be reported to it).
    pub fn on_op(&self, hook: impl FnMut(&PowerLoss, &Op) + Send + 'static) {
        *self.0.hook.lock() = Some(Box::new(hook));
    }

    /// Removes the hook.
    pub fn clear_hook(&self) {
        *self.0.hook.lock() = None;
    }

    /// Makes every sync issued from `site` a no-op in the model (teeth checks).
    pub fn skip_syncs(&self, site: Option<SyncSite>) {
        self.0.model.lock().skip = site;
    }

    /// Makes every fsync fail (with nothing synced) while `on`: what a disk reporting EIO
    /// looks like to the code above.
    pub fn fail_syncs(&self, on: bool) {
        self.0.model.lock().fail_syncs = on;
    }

    /// From operation `fail.op` on (counted as [`Op::index`] counts, so from the next one if
    /// it is already past), every write fails with `fail.errno` ([`FailFrom`] says which
    /// operations a full disk fails); `None` stops failing (space freed, disk replaced).
    /// A failed operation changes nothing on disk or in the model, except that a failed
    /// write first writes half its buffer.
    pub fn fail_writes_from(&self, fail: Option<FailFrom>) {
        self.0.model.lock().fail_from = fail;
    }

    /// How many syncs the skipped site issued (a teeth check whose site never syncs proves
    /// nothing).
    pub fn skipped_syncs(&self) -> u64 {
        self.0.model.lock().skipped
    }

    /// Operations performed so far.
    pub fn ops(&self) -> u64 {
        self.0.model.lock().ops
    }

    /// Changes whenever what a [`Crash::Strict`] image would hold changes (a test may skip
    /// re-checking an image identical to the last one it checked).
    pub fn durable_version(&self) -> u64 {
        self.0.model.lock().durable_version
    }

    /// Paths written outside the seam and imported as never synced.
    pub fn bypassed(&self) -> Vec<PathBuf> {
        self.0.model.lock().bypassed.clone()
    }

    /// Writes into `out` (an empty, existing directory) what the disk under the root holds
    /// after a power cut now.
    pub fn image(&self, out: &Path, crash: Crash) -> io::Result<()> {
        let model = self.0.model.lock();
        let mut rng = match crash {
            Crash::Strict => None,
            Crash::Seeded(seed) => Some(SplitMix(seed ^ 0x9e37_79b9_7f4a_7c15)),
        };
        model.materialize(ROOT, out, &mut rng, 0)
    }

    /// Counts the operation, runs the hook, then fails it if writes are set to fail.
    fn before(&self, kind: OpKind, path: &Path) -> io::Result<()> {
        let index = {
            let mut model = self.0.model.lock();
            model.ops += 1;
            model.ops
        };
        // Taken out while it runs, so a hook that (wrongly) writes through this storage
        // is not re-entered.
        let hook = self.0.hook.lock().take();
        if let Some(mut hook) = hook {
            hook(
                self,
                &Op {
                    index,
                    kind,
                    path: path.to_path_buf(),
                },
            );
            let mut slot = self.0.hook.lock();
            if slot.is_none() {
                *slot = Some(hook);
            }
        }
        match self.0.model.lock().fail_from {
            Some(fail) if fail.fails(index, kind) => Err(io::Error::from_raw_os_error(fail.errno)),
            _ => Ok(()),
        }
    }

    /// Whether a sync of `kind` on `path` comes from the skipped call site; an error when
    /// syncs are set to fail.
    fn skips(&self, kind: OpKind, path: &Path) -> io::Result<bool> {
        let mut model = self.0.model.lock();
        if model.fail_syncs {
            return Err(io::Error::other("injected fsync failure"));
        }
        let Some(site) = &model.skip else {
            return Ok(false);
        };
        if site.kind != kind || !(site.path)(path) {
            return Ok(false);
        }
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        // The call site: the innermost frames outside this file, in order.
        let frames = frames(&trace);
        let outside: Vec<&(String, String)> = frames
            .iter()
            .filter(|(_, at)| {
                // This recorder, and the vault's poisoning layer: transparent to call sites.
                !at.contains("src/powerloss.rs") && !at.contains("src/guard.rs") && !at.is_empty()
            })
            .collect();
        if std::env::var_os("POWERLOSS_TRACE").is_some() {
            eprintln!("{outside:?}");
        }
        let hit = site.functions.len() <= outside.len()
            && site.functions.iter().zip(&outside).all(|(f, (n, at))| {
                let (file, name) = f.rsplit_once(':').unwrap_or(("", f));
                // Generic functions print their arguments: `write<engine::…::VaultDir>`.
                let n = n.split('<').next().unwrap_or(n);
                // A closure inside the named function is that function's call site.
                let n = n.trim_end_matches("::{{closure}}");
                (n == name || n.ends_with(&format!("::{name}"))) && same_file(at, file)
            });
        if hit {
            model.skipped += 1;
        }
        Ok(hit)
    }
}

/// Whether a backtrace location (`/abs/wal/src/file.rs:12:5`, or `./src/file.rs:12:5` for
/// the crate whose test is running) is in `file` (`wal/src/file.rs`).
fn same_file(at: &str, file: &str) -> bool {
    let at = at.split(':').next().unwrap_or(at);
    if let Some(local) = at.strip_prefix("./") {
        file.split_once('/')
            .is_some_and(|(_, in_crate)| in_crate == local)
    } else {
        at.ends_with(file)
    }
}

/// A backtrace's frames as (function name, `at` location).
fn frames(trace: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in trace.lines() {
        let line = line.trim();
        if let Some(at) = line.strip_prefix("at ") {
            if let Some(last) = out.last_mut() {
                last.1 = at.to_string();
            }
        } else if let Some((_, name)) = line.split_once(": ") {
            out.push((name.to_string(), String::new()));
        }
    }
    out
}

impl Model {
    fn dir(&mut self, node: usize) -> &mut DirNode {
        match &mut self.nodes[node] {
            Node::Dir(d) => d,
            Node::File(_) => panic!("powerloss: node {node} is a file, not a directory"),
        }
    }

    fn file(&mut self, node: usize) -> &mut FileNode {
        match &mut self.nodes[node] {
            Node::File(f) => f,
            Node::Dir(_) => panic!("powerloss: node {node} is a directory, not a file"),
        }
    }

    fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Adds what is on disk under `path` to directory node `dir`, durable or not.
    fn import_tree(&mut self, dir: usize, path: &Path, durable: bool) -> io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child = self.import(&entry.path(), durable)?;
            let d = self.dir(dir);
            d.live.insert(entry.file_name(), child);
            if durable {
                d.durable.insert(entry.file_name(), child);
            }
        }
        Ok(())
    }

    fn import(&mut self, path: &Path, durable: bool) -> io::Result<usize> {
        if std::fs::symlink_metadata(path)?.is_dir() {
            let node = self.add(Node::Dir(DirNode::default()));
            self.import_tree(node, path, durable)?;
            Ok(node)
        } else {
            let data = std::fs::read(path)?;
            let synced = if durable { data.len() } else { 0 };
            Ok(self.add(Node::File(FileNode {
                data,
                synced,
                durable_old: None,
                lost: Vec::new(),
            })))
        }
    }

    /// The path's components below the root, or `None` for a path outside it.
    fn relative(&self, path: &Path) -> Option<Vec<OsString>> {
        let rest = path.strip_prefix(&self.root).ok()?;
        rest.components()
            .map(|c| match c {
                Component::Normal(name) => Some(name.to_os_string()),
                _ => None,
            })
            .collect()
    }

    /// The node at `path`, importing (as never synced) what exists on disk but not in the
    /// model: something written outside the seam.
    fn resolve(&mut self, path: &Path) -> io::Result<Option<usize>> {
        let Some(parts) = self.relative(path) else {
            return Ok(None);
        };
        let mut node = ROOT;
        let mut real = self.root.clone();
        for part in parts {
            real.push(&part);
            let found = self.dir(node).live.get(&part).copied();
            node = match found {
                Some(child) => child,
                None => {
                    if std::fs::symlink_metadata(&real).is_err() {
                        return Ok(None);
                    }
                    self.bypassed.push(real.clone());
                    let child = self.import(&real, false)?;
                    self.dir(node).live.insert(part, child);
                    child
                }
            };
        }
        Ok(Some(node))
    }

    /// The directory node holding `path`'s entry, and the entry's name.
    fn parent_of(&mut self, path: &Path) -> io::Result<Option<(usize, OsString)>> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(None);
        };
        Ok(self.resolve(parent)?.map(|p| (p, name.to_os_string())))
    }

    fn materialize(
        &self,
        node: usize,
        out: &Path,
        rng: &mut Option<SplitMix>,
        depth: usize,
    ) -> io::Result<()> {
        assert!(depth < 64, "powerloss: directory cycle");
        let Node::Dir(dir) = &self.nodes[node] else {
            unreachable!("materialize is called on directories")
        };
        let flushed = rng.as_mut().is_some_and(|rng| rng.chance(2));
        let entries = if flushed { &dir.live } else { &dir.durable };
        for (name, &child) in entries {
            let path = out.join(name);
            match &self.nodes[child] {
                Node::Dir(_) => {
                    std::fs::DirBuilder::new().mode(DIR_MODE).create(&path)?;
                    self.materialize(child, &path, rng, depth + 1)?;
                }
                Node::File(file) => {
                    let mut durable = file.durable();
                    let tail = file.data.len().saturating_sub(durable.len());
                    let keep = match rng.as_mut() {
                        Some(rng) if file.durable_old.is_none() && tail > 0 => match rng.below(3) {
                            0 => 0,
                            1 => tail,
                            _ => rng.below(tail as u64 + 1) as usize,
                        },
                        _ => 0,
                    };
                    if keep > 0 {
                        let from = durable.len();
                        durable.extend_from_slice(&file.data[from..from + keep]);
                        file.zero_lost(&mut durable);
                    }
                    let bytes = &durable;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(FILE_MODE)
                        .open(&path)
                        .and_then(|mut f| io::Write::write_all(&mut f, bytes))?;
                }
            }
        }
        Ok(())
    }
}

/// A file opened through the harness.
struct PlFile {
    storage: PowerLoss,
    node: Option<usize>,
    path: PathBuf,
    file: std::fs::File,
}

impl LogFile for PlFile {
    /// Only the WAL's undo after a full disk truncates (`fail_writes_from`), and only what was
    /// never acknowledged, so never below the synced prefix in fsync durability: modelled as
    /// an immediate cut of the file's data (its synced prefix shrinks with it), made durable
    /// by the next `sync_all`, which syncs like `sync_data`.
    fn truncate(&mut self, len: u64) -> io::Result<u64> {
        let was = wal::truncate_file(&mut self.file, len)?;
        if let Some(node) = self.node {
            let mut model = self.storage.0.model.lock();
            let file = model.file(node);
            file.data.truncate(len as usize);
            file.synced = file.synced.min(file.data.len());
            let len = file.data.len();
            file.lost.retain_mut(|(start, end)| {
                *end = (*end).min(len);
                start < end
            });
        }
        Ok(was)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let (buf, failed) = match self.storage.before(OpKind::Write, &self.path) {
            Ok(()) => (buf, None),
            Err(e) => (&buf[..buf.len() / 2], Some(e)),
        };
        io::Write::write_all(&mut self.file, buf)?;
        if let Some(node) = self.node {
            self.storage
                .0
                .model
                .lock()
                .file(node)
                .data
                .extend_from_slice(buf);
        }
        failed.map_or(Ok(()), Err)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.storage.sync_file(self.node, &self.path)
    }

    fn syncer(&self) -> Option<Box<dyn FileSync>> {
        Some(Box::new(PlSync {
            storage: self.storage.clone(),
            node: self.node,
            path: self.path.clone(),
        }))
    }
}

/// A [`PlFile`]'s detached sync handle (`LogFile::syncer`): recorded like the file's own
/// syncs (no real fsync: the model is the disk).
struct PlSync {
    storage: PowerLoss,
    node: Option<usize>,
    path: PathBuf,
}

impl FileSync for PlSync {
    fn sync_data(&mut self) -> io::Result<()> {
        self.storage.sync_file(self.node, &self.path)
    }
}

impl PowerLoss {
    /// An fdatasync of the file `node` at `path`, through its handle or a detached one.
    fn sync_file(&self, node: Option<usize>, path: &Path) -> io::Result<()> {
        self.before(OpKind::SyncFile, path)?;
        // No real fsync: the model is the disk.
        let skipped = self.skips(OpKind::SyncFile, path);
        if skipped.is_err()
            && let Some(node) = node
        {
            // A failed fsync: what it should have written is lost for good (see `lost`).
            let mut model = self.0.model.lock();
            let file = model.file(node);
            if file.data.len() > file.synced {
                let range = (file.synced, file.data.len());
                file.lost.push(range);
            }
        }
        if skipped? {
            return Ok(());
        }
        if let Some(node) = node {
            let mut model = self.0.model.lock();
            model.durable_version += 1;
            let file = model.file(node);
            file.synced = file.data.len();
            file.durable_old = None;
        }
        Ok(())
    }
}

impl PowerLoss {
    fn open_file(&self, path: &Path, file: std::fs::File, node: Option<usize>) -> Box<dyn LogFile> {
        Box::new(PlFile {
            storage: self.clone(),
            node,
            path: path.to_path_buf(),
            file,
        })
    }

    /// A new file node entered in `path`'s parent (live only).
    fn enter_new_file(&self, path: &Path) -> io::Result<Option<usize>> {
        let mut model = self.0.model.lock();
        let Some((parent, name)) = model.parent_of(path)? else {
            return Ok(None);
        };
        let node = model.add(Node::File(FileNode {
            data: Vec::new(),
            synced: 0,
            durable_old: None,
            lost: Vec::new(),
        }));
        model.dir(parent).live.insert(name, node);
        Ok(Some(node))
    }
}

impl wal::Storage for PowerLoss {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.before(OpKind::Create, path)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(path)?;
        let existing = {
            let mut model = self.0.model.lock();
            match model.parent_of(path)? {
                Some((parent, name)) => model.dir(parent).live.get(&name).copied(),
                None => None,
            }
        };
        let node = match existing {
            Some(node) => {
                let mut model = self.0.model.lock();
                let f = model.file(node);
                if f.durable_old.is_none() && f.synced > 0 {
                    f.durable_old = Some(f.data[..f.synced].to_vec());
                }
                f.data.clear();
                f.synced = 0;
                Some(node)
            }
            None => self.enter_new_file(path)?,
        };
        Ok(self.open_file(path, file, node))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.before(OpKind::OpenAppend, path)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        let real = std::fs::read(path)?;
        let node = {
            let mut model = self.0.model.lock();
            let node = model.resolve(path)?;
            if let Some(node) = node {
                // Recovery cuts a torn tail (and fsyncs it) outside the seam: follow it.
                if model.file(node).data != real {
                    model.durable_version += 1;
                    let f = model.file(node);
                    f.data = real;
                    f.synced = f.data.len();
                    f.durable_old = None;
                }
            }
            node
        };
        Ok(self.open_file(path, file, node))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.before(OpKind::Rename, from)?;
        std::fs::rename(from, to)?;
        let mut model = self.0.model.lock();
        let (Some((from_dir, from_name)), Some((to_dir, to_name))) =
            (model.parent_of(from)?, model.parent_of(to)?)
        else {
            return Ok(());
        };
        if let Some(node) = model.dir(from_dir).live.remove(&from_name) {
            model.dir(to_dir).live.insert(to_name, node);
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.before(OpKind::Remove, path)?;
        std::fs::remove_file(path)?;
        let mut model = self.0.model.lock();
        if let Some((parent, name)) = model.parent_of(path)? {
            model.dir(parent).live.remove(&name);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.before(OpKind::SyncDir, dir)?;
        if !dir.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        if self.skips(OpKind::SyncDir, dir)? {
            return Ok(());
        }
        let mut model = self.0.model.lock();
        if let Some(node) = model.resolve(dir)? {
            model.durable_version += 1;
            let d = model.dir(node);
            d.durable = d.live.clone();
        }
        Ok(())
    }

    /// An fsync of the file (a sync like any other: it can be skipped or failed), then the
    /// page cache dropped: the real file is rewritten with what the modelled disk holds, so
    /// the next read shows the disk (zeros where a failed fsync lost bytes), as reading
    /// after `POSIX_FADV_DONTNEED` does.
    fn drop_cache(&self, path: &Path) -> io::Result<()> {
        self.before(OpKind::SyncFile, path)?;
        if self.skips(OpKind::SyncFile, path)? {
            return Ok(());
        }
        let mut model = self.0.model.lock();
        let Some(node) = model.resolve(path)? else {
            return Ok(());
        };
        model.durable_version += 1;
        let file = model.file(node);
        file.synced = file.data.len();
        file.durable_old = None;
        let disk = file.durable();
        if disk != file.data {
            std::fs::write(path, &disk)?;
            file.data = disk;
        }
        file.lost.clear();
        Ok(())
    }
}

impl Storage for PowerLoss {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.before(OpKind::CreateNew, path)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)?;
        let node = self.enter_new_file(path)?;
        Ok(self.open_file(path, file, node))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.before(OpKind::CreateDir, path)?;
        std::fs::DirBuilder::new().mode(DIR_MODE).create(path)?;
        let mut model = self.0.model.lock();
        if let Some((parent, name)) = model.parent_of(path)? {
            let node = model.add(Node::Dir(DirNode::default()));
            model.dir(parent).live.insert(name, node);
        }
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.before(OpKind::RemoveDirAll, path)?;
        std::fs::remove_dir_all(path)?;
        let mut model = self.0.model.lock();
        if let Some((parent, name)) = model.parent_of(path)? {
            model.dir(parent).live.remove(&name);
        }
        Ok(())
    }
}

/// The real file system without any fsync, for opening crash images quickly (they are
/// scratch copies, thrown away after the check).
#[derive(Debug, Default)]
pub struct NoSync;

struct NoSyncFile(std::fs::File);

impl LogFile for NoSyncFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut self.0, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<u64> {
        wal::truncate_file(&mut self.0, len)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl wal::Storage for NoSync {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Box::new(NoSyncFile(file)))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(NoSyncFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    /// Images are scratch copies whose cache holds exactly what was written to them.
    fn drop_cache(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }
}

impl Storage for NoSync {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Box::new(NoSyncFile(file)))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::DirBuilder::new().mode(DIR_MODE).create(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
}

/// A small deterministic generator (SplitMix64): the harness needs no `rand`.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True one time in `n`.
    pub fn chance(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wal::Storage as _;

    fn tree(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(base).unwrap().display().to_string();
                if e.file_type().unwrap().is_dir() {
                    out.insert(rel, None);
                    walk(base, &e.path(), out);
                } else {
                    out.insert(rel, Some(std::fs::read(e.path()).unwrap()));
                }
            }
        }
        walk(dir, dir, &mut out);
        out
    }

    fn strict(pl: &PowerLoss) -> BTreeMap<String, Option<Vec<u8>>> {
        let out = tempfile::tempdir().unwrap();
        pl.image(out.path(), Crash::Strict).unwrap();
        tree(out.path())
    }

    #[test]
    fn only_synced_bytes_and_entries_survive() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("old"), b"kept").unwrap();
        let pl = PowerLoss::attach(root.path()).unwrap();
        let d = root.path().join("d");
        pl.create_dir(&d).unwrap();
        let mut f = pl.create_new(&d.join("f")).unwrap();
        f.write_all(b"abc").unwrap();
        f.sync_data().unwrap();
        f.write_all(b"def").unwrap();
        // Neither d nor d/f has a durable entry yet.
        assert_eq!(strict(&pl).keys().collect::<Vec<_>>(), ["old"]);
        pl.sync_dir(root.path()).unwrap();
        assert_eq!(strict(&pl).get("d"), Some(&None));
        assert_eq!(strict(&pl).get("d/f"), None, "d itself was never synced");
        pl.sync_dir(&d).unwrap();
        assert_eq!(strict(&pl).get("d/f"), Some(&Some(b"abc".to_vec())));
        f.sync_data().unwrap();
        assert_eq!(strict(&pl).get("d/f"), Some(&Some(b"abcdef".to_vec())));
        // A rename and a removal are reverted until their directory is synced.
        pl.rename(&d.join("f"), &d.join("g")).unwrap();
        pl.remove(&root.path().join("old")).unwrap();
        let image = strict(&pl);
        assert!(image.contains_key("d/f") && !image.contains_key("d/g"));
        assert!(image.contains_key("old"));
        pl.sync_dir(&d).unwrap();
        pl.sync_dir(root.path()).unwrap();
        let image = strict(&pl);
        assert!(!image.contains_key("d/f") && image.contains_key("d/g"));
        assert!(!image.contains_key("old"));
        // Seeded images lie between the durable and the live state.
        for seed in 0..50 {
            let out = tempfile::tempdir().unwrap();
            pl.image(out.path(), Crash::Seeded(seed)).unwrap();
            let t = tree(out.path());
            assert_eq!(t.get("d/g"), Some(&Some(b"abcdef".to_vec())));
        }
        assert!(pl.bypassed().is_empty());
    }

    #[test]
    fn a_removed_directory_comes_back_until_its_parent_is_synced() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("v")).unwrap();
        std::fs::write(root.path().join("v/x"), b"1").unwrap();
        let pl = PowerLoss::attach(root.path()).unwrap();
        pl.remove_dir_all(&root.path().join("v")).unwrap();
        assert_eq!(strict(&pl).get("v/x"), Some(&Some(b"1".to_vec())));
        pl.sync_dir(root.path()).unwrap();
        assert!(strict(&pl).is_empty());
    }

    #[test]
    fn a_skipped_site_does_not_sync() {
        let root = tempfile::tempdir().unwrap();
        let pl = PowerLoss::attach(root.path()).unwrap();
        pl.skip_syncs(Some(SyncSite {
            kind: OpKind::SyncDir,
            // Frames in this file are not call sites; no frame to match means any stack.
            functions: &[],
            path: |_| true,
        }));
        let mut f = pl.create_new(&root.path().join("f")).unwrap();
        f.write_all(b"x").unwrap();
        f.sync_data().unwrap();
        pl.sync_dir(root.path()).unwrap();
        assert!(strict(&pl).is_empty(), "the directory sync was skipped");
        assert_eq!(pl.skipped_syncs(), 1);
    }
}
