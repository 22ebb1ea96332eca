//! Power loss at every point of the engine's write path (issue 12).
//!
//! Every crash test before this one kept the kernel's page cache (`kill -9` keeps unsynced
//! bytes; `CrashPoint` leaves every write on disk), so none could fail because an fsync or a
//! directory sync was missing. Here every write of the engine — segment files, MANIFEST,
//! segment and vault directories, each vault's WAL — goes through the recording storage of
//! `engine::powerloss`; before each operation the test writes the *durable image* a power
//! cut there would leave (only what was fsynced; and a seeded variant where the disk also
//! wrote back part of the rest), opens a fresh engine on it and checks it against a ledger
//! of what was acknowledged: no acknowledged memory missing, no acknowledged delete undone,
//! nothing that was never written.
//!
//! The workload is seeded: ingests, deletes, clears, resets, seals, compactions (some
//! building graphs), purges, vault creation and LRU close/reopen over three vaults, with a
//! WAL small enough to rotate and drop checkpointed segments.
//!
//! `every_sync_call_site_is_needed` removes one sync call site at a time (the harness makes
//! that site's syncs no-ops, as deleting the call would) and requires the harness to fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use engine::powerloss::{Crash, NoSync, OpKind, PowerLoss, SplitMix, SyncSite};
use engine::{Engine, EngineConfig, HnswParams, Role};

use crate::common::{WordHash, msg};

const DIM: usize = 16;
const VAULTS: [&str; 3] = ["alice", "bob", "carol"];

#[derive(Default, Clone)]
struct VaultLedger {
    /// Acknowledged and not deleted: id → (session, text).
    live: BTreeMap<u64, (String, String)>,
    /// Texts whose delete (or clear, reset, purge) was acknowledged. Texts are unique.
    deleted: BTreeSet<String>,
}

#[derive(Clone, Debug)]
enum InFlight {
    /// These texts may or may not be stored.
    Ingest(Vec<String>),
    /// These texts may or may not be gone.
    Remove(Vec<String>),
    /// Seal, compaction, open: nothing acknowledged may change.
    Quiet,
}

#[derive(Default)]
struct Ledger {
    vaults: BTreeMap<String, VaultLedger>,
    in_flight: Option<(String, InFlight)>,
    /// Bumped at every change.
    version: u64,
    /// Power cuts the workload restarted from.
    restarts: u64,
    /// Cut the power before this operation (the recorder's count) ...
    cut_at: Option<u64>,
    /// ... leaving this: the next step restarts from it.
    cut: Option<Cut>,
}

/// A power cut the workload goes on from: the image and the ledger at that moment.
struct Cut {
    image: tempfile::TempDir,
    vaults: BTreeMap<String, VaultLedger>,
    in_flight: Option<(String, InFlight)>,
}

/// After a restart, settles the operation that was running at the cut by reading the vault.
fn reconcile(
    engine: &Engine,
    ledger: &Mutex<Ledger>,
    id: &str,
    op: &InFlight,
) -> Result<(), String> {
    let present: BTreeMap<String, (u64, String)> = match engine.vault(id) {
        Ok(v) => v
            .list(None, usize::MAX, None)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|m| (m.text, (m.id, m.session_id)))
            .collect(),
        Err(e) => return Err(format!("vault {id} does not open: {e}")),
    };
    let mut l = ledger.lock().unwrap();
    let book = l.vaults.entry(id.to_string()).or_default();
    match op {
        InFlight::Ingest(texts) => {
            for text in texts {
                if let Some((mid, session)) = present.get(text) {
                    book.live.insert(*mid, (session.clone(), text.clone()));
                }
            }
        }
        InFlight::Remove(texts) => {
            for text in texts {
                if !present.contains_key(text) {
                    book.live.retain(|_, (_, t)| t != text);
                    book.deleted.insert(text.clone());
                }
            }
        }
        InFlight::Quiet => {}
    }
    Ok(())
}

#[derive(Default, Debug)]
struct Outcome {
    crash_points: u64,
    images: u64,
    failures: Vec<String>,
    /// Syncs the skipped call site issued (teeth checks).
    skipped_syncs: u64,
    /// Power cuts the workload restarted from.
    restarts: u64,
}

fn config(root: &Path, storage: Arc<dyn engine::storage::Storage>) -> EngineConfig {
    let mut c = EngineConfig::new(root.join("vaults"));
    c.embedder = WordHash::shared(DIM);
    // Three vaults, two open: every few steps one is closed and later reopened (recovery
    // through the seam).
    c.open_vaults_max = 2;
    // Seals and compactions are the workload's own steps, never background jobs.
    c.memtable_records_max = 1 << 30;
    c.hnsw = HnswParams {
        min_records: 12,
        ef_construction: 16,
        ..HnswParams::default()
    };
    c.storage = storage;
    // A few ingests per WAL segment: rotation, and checkpoints that delete segments.
    c.wal_segment_bytes_max = 1024;
    c
}

/// Opens the image with the ordinary file system (no fsyncs: it is a scratch copy) and
/// checks it against the ledger.
fn check(image: &Path, ledger: &Ledger) -> Result<(), String> {
    let engine = Engine::open(config(image, Arc::new(NoSync)))
        .map_err(|e| format!("the engine does not open: {e}"))?;
    for (id, book) in &ledger.vaults {
        let in_flight = match &ledger.in_flight {
            Some((v, op)) if v == id => Some(op),
            _ => None,
        };
        let vault = engine
            .vault(id)
            .map_err(|e| format!("vault {id} does not open: {e}"))?;
        let present: BTreeMap<u64, String> = vault
            .list(None, usize::MAX, None)
            .map_err(|e| format!("vault {id}: list failed: {e}"))?
            .into_iter()
            .map(|m| (m.id, m.text))
            .collect();
        let texts: BTreeSet<&str> = present.values().map(String::as_str).collect();
        for (mid, (_, text)) in &book.live {
            let may_be_gone = matches!(in_flight, Some(InFlight::Remove(t)) if t.contains(text));
            if !may_be_gone && present.get(mid) != Some(text) {
                return Err(format!(
                    "vault {id}: acknowledged memory {mid} {text:?} lost ({} of {} present)",
                    present.len(),
                    book.live.len()
                ));
            }
        }
        if let Some(text) = book.deleted.iter().find(|t| texts.contains(t.as_str())) {
            return Err(format!("vault {id}: deleted memory {text:?} came back"));
        }
        for (mid, text) in &present {
            let acked = book.live.get(mid).is_some_and(|(_, t)| t == text);
            let maybe = matches!(in_flight, Some(InFlight::Ingest(t)) if t.contains(text));
            if !acked && !maybe {
                return Err(format!(
                    "vault {id}: memory {mid} {text:?} was never acknowledged"
                ));
            }
        }
    }
    Ok(())
}

/// The workload found an acknowledged memory missing (after a restart from a power cut that
/// lost it): reported as a failure of the run, not a panic.
fn lost(vault: &str, id: u64) -> engine::Error {
    engine::Error::InvalidArgument {
        name: "workload",
        reason: format!("vault {vault}: an acknowledged memory ({id}) was missing when deleted"),
    }
}

/// What a run checks at each crash point.
#[derive(Clone, Copy)]
struct Plan {
    seed: u64,
    steps: usize,
    /// Also write a seeded image (partial write-back) at each point.
    seeded: bool,
    /// Stop checking after the first failure (teeth checks).
    stop_at_first: bool,
}

/// A temp dir on tmpfs when there is one: images are written and opened thousands of times,
/// and on a disk most of that time is spent waiting for I/O.
fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("powerloss").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// Checks, before every operation `pl` performs, the images a power cut there would leave.
fn watch(
    pl: &PowerLoss,
    plan: Plan,
    ledger: &Arc<Mutex<Ledger>>,
    outcome: &Arc<Mutex<Outcome>>,
    scratch: &Path,
) {
    let ledger = Arc::clone(ledger);
    let outcome = Arc::clone(outcome);
    let scratch: PathBuf = scratch.to_path_buf();
    let mut rng = SplitMix(plan.seed ^ 0x5eed ^ pl.ops());
    let mut n = 0u64;
    // The strict image changes only with a sync, the verdict only with the ledger: an
    // unchanged pair was checked at the previous point already.
    let mut last_strict = None;
    pl.on_op(move |pl, op| {
        let mut out = outcome.lock().unwrap();
        if plan.stop_at_first && !out.failures.is_empty() {
            return;
        }
        out.crash_points += 1;
        let mut ledger = ledger.lock().unwrap();
        if ledger.cut_at == Some(op.index) {
            ledger.cut_at = None;
            let image = fast_tempdir();
            let crash = if rng.chance(2) {
                Crash::Strict
            } else {
                Crash::Seeded(rng.next_u64())
            };
            pl.image(image.path(), crash).unwrap();
            ledger.cut = Some(Cut {
                image,
                vaults: ledger.vaults.clone(),
                in_flight: ledger.in_flight.clone(),
            });
        }
        let mut crashes = Vec::new();
        let version = (pl.durable_version(), ledger.version);
        if last_strict != Some(version) {
            last_strict = Some(version);
            crashes.push(Crash::Strict);
        }
        if plan.seeded {
            crashes.push(Crash::Seeded(rng.next_u64()));
        }
        for crash in crashes {
            n += 1;
            let image = scratch.join(format!("{}-{n}", ledger.restarts));
            std::fs::create_dir(&image).unwrap();
            pl.image(&image, crash).unwrap();
            out.images += 1;
            if let Err(e) = check(&image, &ledger) {
                out.failures.push(format!(
                    "seed {}, after {} restarts, power lost before op {} ({:?} {}), {crash:?}: {e}",
                    plan.seed,
                    ledger.restarts,
                    op.index,
                    op.kind,
                    op.path.display()
                ));
            }
            std::fs::remove_dir_all(&image).unwrap();
        }
    });
}

fn run(plan: Plan, skip: Option<SyncSite>) -> Outcome {
    let mut root = fast_tempdir();
    let scratch = fast_tempdir();
    let mut pl = PowerLoss::attach(root.path()).unwrap();
    pl.skip_syncs(skip.clone());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    watch(&pl, plan, &ledger, &outcome, scratch.path());
    let mut skipped_before = 0;
    let mut bypassed = Vec::new();

    let begin = |vault: &str, op: InFlight| {
        let mut l = ledger.lock().unwrap();
        l.in_flight = Some((vault.to_string(), op));
        l.version += 1;
    };
    let end = || {
        let mut l = ledger.lock().unwrap();
        l.in_flight = None;
        l.version += 1;
    };
    begin("", InFlight::Quiet);
    let mut engine = Engine::open(config(root.path(), Arc::new(pl.clone()))).unwrap();
    end();
    let mut rng = SplitMix(plan.seed);
    let mut counter = 0u64;
    for _ in 0..plan.steps {
        if plan.stop_at_first && !outcome.lock().unwrap().failures.is_empty() {
            break;
        }
        let cut = ledger.lock().unwrap().cut.take();
        if let Some(cut) = cut {
            // The power was cut: restart from that image under a fresh recorder, so that
            // recovery runs through the seam and its own operations are crash points too.
            drop(std::mem::replace(
                &mut engine,
                Engine::open(config(scratch.path(), Arc::new(NoSync))).unwrap(),
            ));
            pl.clear_hook();
            skipped_before += pl.skipped_syncs();
            bypassed.extend(pl.bypassed());
            pl = PowerLoss::attach(cut.image.path()).unwrap();
            pl.skip_syncs(skip.clone());
            {
                let mut l = ledger.lock().unwrap();
                l.vaults = cut.vaults;
                l.in_flight = cut.in_flight.clone();
                l.restarts += 1;
                l.version += 1;
            }
            watch(&pl, plan, &ledger, &outcome, scratch.path());
            root = cut.image;
            engine = Engine::open(config(root.path(), Arc::new(pl.clone()))).unwrap();
            // What the interrupted operation did is what the disk says.
            if let Some((id, op)) = cut.in_flight {
                match reconcile(&engine, &ledger, &id, &op) {
                    Ok(()) => end(),
                    Err(e) => {
                        outcome
                            .lock()
                            .unwrap()
                            .failures
                            .push(format!("seed {}: after the power cut: {e}", plan.seed));
                        break;
                    }
                }
            }
        }
        let id = VAULTS[rng.below(VAULTS.len() as u64) as usize];
        let book = ledger
            .lock()
            .unwrap()
            .vaults
            .get(id)
            .cloned()
            .unwrap_or_default();
        let roll = rng.below(100);
        let texts_of = |ids: &[(u64, (String, String))]| -> Vec<String> {
            ids.iter().map(|(_, (_, t))| t.clone()).collect()
        };
        let result: Result<(), engine::Error> = match roll {
            0..=44 => {
                let batch: Vec<(String, String)> = (0..1 + rng.below(3))
                    .map(|_| {
                        counter += 1;
                        let session = format!("s{}", rng.below(2));
                        let text = format!("memo {counter} about topic {}", counter % 5);
                        (session, text)
                    })
                    .collect();
                begin(
                    id,
                    InFlight::Ingest(batch.iter().map(|(_, t)| t.clone()).collect()),
                );
                engine.vault(id).and_then(|v| {
                    let out = v.ingest(
                        batch
                            .iter()
                            .map(|(s, t)| msg(s, Role::User, t, counter as i64))
                            .collect(),
                    )?;
                    assert_eq!(out.stored.len(), batch.len(), "texts are unique");
                    let mut l = ledger.lock().unwrap();
                    let book = l.vaults.entry(id.to_string()).or_default();
                    for (mid, entry) in out.stored.iter().zip(batch) {
                        book.live.insert(*mid, entry);
                    }
                    Ok(())
                })
            }
            45..=59 if !book.live.is_empty() => {
                let pick = book
                    .live
                    .iter()
                    .nth(rng.below(book.live.len() as u64) as usize)
                    .map(|(k, v)| (*k, v.clone()))
                    .unwrap();
                begin(id, InFlight::Remove(texts_of(std::slice::from_ref(&pick))));
                engine.vault(id).and_then(|v| {
                    if !v.delete(pick.0)? {
                        return Err(lost(id, pick.0));
                    }
                    let mut l = ledger.lock().unwrap();
                    let book = l.vaults.get_mut(id).unwrap();
                    book.live.remove(&pick.0);
                    book.deleted.insert(pick.1.1);
                    Ok(())
                })
            }
            60..=63 => {
                let session = format!("s{}", rng.below(2));
                let gone: Vec<(u64, (String, String))> = book
                    .live
                    .iter()
                    .filter(|(_, (s, _))| *s == session)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
                begin(id, InFlight::Remove(texts_of(&gone)));
                engine.vault(id).and_then(|v| {
                    if v.clear(Some(&session))? != gone.len() as u64 {
                        return Err(lost(id, 0));
                    }
                    let mut l = ledger.lock().unwrap();
                    let book = l.vaults.entry(id.to_string()).or_default();
                    for (mid, (_, text)) in gone {
                        book.live.remove(&mid);
                        book.deleted.insert(text);
                    }
                    Ok(())
                })
            }
            64..=66 | 90..=91 => {
                let all: Vec<(u64, (String, String))> =
                    book.live.iter().map(|(k, v)| (*k, v.clone())).collect();
                begin(id, InFlight::Remove(texts_of(&all)));
                let purge = roll >= 90;
                let done = if purge {
                    engine.purge_vault(id)
                } else {
                    engine.vault(id).and_then(|v| v.reset())
                };
                done.map(|()| {
                    let mut l = ledger.lock().unwrap();
                    let book = l.vaults.entry(id.to_string()).or_default();
                    for (_, (_, text)) in std::mem::take(&mut book.live) {
                        book.deleted.insert(text);
                    }
                })
            }
            92..=94 => {
                // Cut the power a few operations from now, in whatever is running then; the
                // next step restarts from that image (see `restart`).
                let mut l = ledger.lock().unwrap();
                if l.cut_at.is_none() && l.cut.is_none() {
                    l.cut_at = Some(pl.ops() + 1 + rng.below(40));
                }
                Ok(())
            }
            67..=79 => {
                begin(id, InFlight::Quiet);
                engine.vault(id).and_then(|v| v.seal()).map(drop)
            }
            80..=89 => {
                begin(id, InFlight::Quiet);
                engine
                    .vault(id)
                    .and_then(|v| {
                        if roll.is_multiple_of(2) {
                            v.compact_all()
                        } else {
                            v.compact()
                        }
                    })
                    .map(drop)
            }
            _ => {
                // Open (or create) the vault and nothing else: the LRU closes another.
                begin(id, InFlight::Quiet);
                engine.vault(id).map(drop)
            }
        };
        end();
        if let Err(e) = result {
            outcome
                .lock()
                .unwrap()
                .failures
                .push(format!("seed {}: the workload failed: {e}", plan.seed));
            break;
        }
    }
    drop(engine);
    pl.clear_hook();
    bypassed.extend(pl.bypassed());
    drop(root);
    let mut out = std::mem::take(&mut *outcome.lock().unwrap());
    out.skipped_syncs = skipped_before + pl.skipped_syncs();
    out.restarts = ledger.lock().unwrap().restarts;
    if !bypassed.is_empty() {
        out.failures
            .push(format!("written outside the storage seam: {bypassed:?}"));
    }
    out
}

/// The CI run: enough seeds for at least 5,000 crash points (each checked with a strict and
/// a seeded image).
#[test]
fn no_acknowledged_write_is_lost_at_any_power_cut() {
    let started = Instant::now();
    let mut total = Outcome::default();
    for seed in 0..POWERLOSS_SEEDS {
        let out = run(
            Plan {
                seed,
                steps: 60,
                seeded: true,
                stop_at_first: false,
            },
            None,
        );
        total.crash_points += out.crash_points;
        total.images += out.images;
        total.restarts += out.restarts;
        total.failures.extend(out.failures);
    }
    eprintln!(
        "power loss: {} crash points, {} images, {} restarts from a cut, {} failures, {:.1} s",
        total.crash_points,
        total.images,
        total.restarts,
        total.failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        total.failures.is_empty(),
        "{} failures, first: {:#?}",
        total.failures.len(),
        &total.failures[..total.failures.len().min(5)]
    );
    assert!(
        total.crash_points >= 5_000,
        "only {} crash points",
        total.crash_points
    );
}

const POWERLOSS_SEEDS: u64 = 16;

/// What removing one call site does to the harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Teeth {
    /// A power cut then loses or resurrects something: the harness fails.
    Caught,
    /// Nothing observable is lost without it, in this model (the reason says why).
    Redundant(&'static str),
    /// This workload never reaches the call site (the reason says what does).
    NotReached(&'static str),
}

struct Site {
    name: &'static str,
    site: SyncSite,
    expect: Teeth,
}

/// How `segment::write` (and `write_sealed`) reach their two directory syncs, both in
/// `write_files`.
const SEGMENT_WRITE_DIR: &[&str] = &[
    "engine/src/storage.rs:sync_dir",
    "engine/src/file.rs:sync_dir",
    "engine/src/segment.rs:write_files",
];

fn sites() -> Vec<Site> {
    use OpKind::{SyncDir, SyncFile};
    let site = |kind, functions, path| SyncSite {
        kind,
        functions,
        path,
    };
    vec![
        Site {
            name: "engine file::write_new: fsync (MANIFEST.tmp, vectors/records/graph.bin)",
            site: site(SyncFile, &["engine/src/file.rs:write_new"], |_| true),
            expect: Teeth::Caught,
        },
        Site {
            name: "engine file::write_raw: fsync (lexical.bin)",
            site: site(SyncFile, &["engine/src/file.rs:write_raw"], |_| true),
            expect: Teeth::Caught,
        },
        Site {
            name: "engine segment::write: fsync seg-*.tmp/ (its files' entries)",
            site: site(SyncDir, SEGMENT_WRITE_DIR, |p| {
                p.extension().is_some_and(|e| e == "tmp")
            }),
            expect: Teeth::Caught,
        },
        Site {
            name: "engine segment::write: fsync the vault dir after the rename",
            site: site(SyncDir, SEGMENT_WRITE_DIR, |p| p.extension().is_none()),
            expect: Teeth::Redundant(
                "the MANIFEST naming the segment is renamed in the same directory and \
                 replace_atomically fsyncs it before anything depends on the segment; kept \
                 for file systems that persist one directory's entries out of order, which \
                 the model (a directory written back whole) does not represent",
            ),
        },
        Site {
            name: "engine file::replace_atomically: fsync the dir after renaming MANIFEST",
            site: site(
                SyncDir,
                &[
                    "engine/src/storage.rs:sync_dir",
                    "engine/src/file.rs:sync_dir",
                    "engine/src/file.rs:replace_atomically",
                ],
                |_| true,
            ),
            expect: Teeth::Caught,
        },
        Site {
            name: "engine segment::remove_dirs: fsync after removing merged segments",
            site: site(
                SyncDir,
                &[
                    "engine/src/storage.rs:sync_dir",
                    "engine/src/file.rs:sync_dir",
                    "engine/src/segment.rs:remove_dirs",
                ],
                |_| true,
            ),
            expect: Teeth::Redundant(
                "a removed segment that comes back is unnamed by the durable MANIFEST and \
                 is deleted as a leftover at open; the sync only returns space sooner",
            ),
        },
        Site {
            name: "engine Engine::purge_vault: fsync vaults/ after removing the vault",
            site: site(
                SyncDir,
                &[
                    "engine/src/storage.rs:sync_dir",
                    "engine/src/registry.rs:purge_vault",
                ],
                |_| true,
            ),
            expect: Teeth::Caught,
        },
        Site {
            name: "engine storage::create_dir_durably: fsync DATA after creating vaults/",
            site: site(
                SyncDir,
                &[
                    "engine/src/storage.rs:sync_dir",
                    "engine/src/storage.rs:create_dir_durably",
                ],
                |p| !p.to_string_lossy().contains("/vaults"),
            ),
            expect: Teeth::Caught,
        },
        Site {
            name: "engine storage::create_dir_durably: fsync vaults/ after creating a vault",
            site: site(
                SyncDir,
                &[
                    "engine/src/storage.rs:sync_dir",
                    "engine/src/storage.rs:create_dir_durably",
                ],
                |p| p.ends_with("vaults"),
            ),
            expect: Teeth::Caught,
        },
        Site {
            name: "engine storage::create_dir_durably: fsync the vault after creating wal/",
            site: site(
                SyncDir,
                &[
                    "engine/src/storage.rs:sync_dir",
                    "engine/src/storage.rs:create_dir_durably",
                ],
                |p| p.parent().is_some_and(|q| q.ends_with("vaults")),
            ),
            expect: Teeth::Redundant(
                "the first ingest stores the MANIFEST, fsyncing the vault directory, before \
                 its first WAL append; nothing is acknowledged before that",
            ),
        },
        Site {
            name: "wal Wal::write_group: fdatasync of each commit group",
            site: site(
                SyncFile,
                &[
                    "wal/src/writer.rs:sync_data",
                    "wal/src/writer.rs:write_group_locked",
                ],
                |_| true,
            ),
            expect: Teeth::Caught,
        },
        Site {
            name: "wal Wal::rotate: fdatasync of the segment being sealed",
            site: site(
                SyncFile,
                &["wal/src/writer.rs:sync_data", "wal/src/writer.rs:rotate"],
                |_| true,
            ),
            expect: Teeth::Redundant(
                "with one writer each group is one batch, and rotation happens before a \
                 batch, after the previous group's own fdatasync; it matters for a group \
                 whose batches span a rotation (concurrent writers) and in buffered mode",
            ),
        },
        Site {
            name: "wal Wal::sync: fdatasync of the active segment (shutdown, LRU close)",
            site: site(
                SyncFile,
                &["wal/src/writer.rs:sync_data", "wal/src/writer.rs:sync"],
                |_| true,
            ),
            expect: Teeth::Redundant(
                "in fsync durability every acknowledged append is synced already; it is what \
                 makes buffered-mode writes durable at shutdown",
            ),
        },
        Site {
            name: "wal create_durably: fdatasync of a new segment's header",
            site: site(
                SyncFile,
                &[
                    "wal/src/file.rs:create_durably",
                    "wal/src/segment.rs:create",
                ],
                |_| true,
            ),
            expect: Teeth::Caught,
        },
        Site {
            name: "wal create_durably: fsync wal/ after renaming a new segment",
            site: site(
                SyncDir,
                &[
                    "wal/src/file.rs:create_durably",
                    "wal/src/segment.rs:create",
                ],
                |_| true,
            ),
            expect: Teeth::Caught,
        },
        Site {
            name: "wal create_durably: fdatasync of checkpoint.tmp",
            site: site(
                SyncFile,
                &[
                    "wal/src/file.rs:create_durably",
                    "wal/src/checkpoint.rs:write",
                ],
                |_| true,
            ),
            expect: Teeth::Caught,
        },
        Site {
            name: "wal create_durably: fsync wal/ after renaming the checkpoint",
            site: site(
                SyncDir,
                &[
                    "wal/src/file.rs:create_durably",
                    "wal/src/checkpoint.rs:write",
                ],
                |_| true,
            ),
            expect: Teeth::Redundant(
                "the MANIFEST's checkpoint is authoritative, so an older WAL checkpoint only \
                 replays more; the segments it lets go are deleted under a later fsync of the \
                 same directory",
            ),
        },
        Site {
            name: "wal recovery::delete_covered: fsync wal/ after deleting covered segments",
            site: site(
                SyncDir,
                &[
                    "wal/src/recovery.rs:sync_dir",
                    "wal/src/recovery.rs:delete_covered",
                ],
                |_| true,
            ),
            expect: Teeth::Redundant(
                "a deleted segment that comes back holds only records at or below both \
                 checkpoints, which replay skips",
            ),
        },
        Site {
            name: "wal recovery::ensure_dir: fsync the parent of a new WAL directory",
            site: site(
                SyncDir,
                &[
                    "wal/src/recovery.rs:sync_dir",
                    "wal/src/recovery.rs:ensure_dir",
                ],
                |_| true,
            ),
            expect: Teeth::NotReached(
                "the engine creates wal/ durably itself (create_dir_durably) before the WAL opens",
            ),
        },
        Site {
            name: "wal recovery::remove_tmp_files: fsync after removing *.tmp",
            site: site(
                SyncDir,
                &[
                    "wal/src/recovery.rs:sync_dir",
                    "wal/src/recovery.rs:remove_tmp_files",
                ],
                |_| true,
            ),
            expect: Teeth::NotReached(
                "only after a crash; a removal that does not persist is redone at the next open",
            ),
        },
    ]
}

/// Removing any sync call site that matters makes the harness fail; the ones that do not are
/// listed with the reason. Run with `--nocapture` to see the table.
#[test]
fn every_sync_call_site_is_needed() {
    let started = Instant::now();
    let mut wrong = Vec::new();
    for Site { name, site, expect } in sites() {
        let mut syncs = 0;
        let mut caught = None;
        for seed in 0..TEETH_SEEDS {
            let out = run(
                Plan {
                    seed,
                    steps: 60,
                    seeded: false,
                    stop_at_first: true,
                },
                Some(site.clone()),
            );
            syncs += out.skipped_syncs;
            if let Some(first) = out.failures.into_iter().next() {
                caught = Some(first);
                break;
            }
        }
        let got = match (&caught, syncs) {
            (Some(_), _) => "caught",
            (None, 0) => "not reached",
            (None, _) => "not caught",
        };
        let want = match expect {
            Teeth::Caught => "caught",
            Teeth::Redundant(_) => "not caught",
            Teeth::NotReached(_) => "not reached",
        };
        eprintln!(
            "{got:>11} | {name} | {syncs} syncs skipped | {}",
            caught.as_deref().unwrap_or(match expect {
                Teeth::Redundant(why) | Teeth::NotReached(why) => why,
                Teeth::Caught => "",
            })
        );
        if got != want {
            wrong.push(format!("{name}: expected {want}, got {got}"));
        }
    }
    eprintln!("teeth: {:.1} s", started.elapsed().as_secs_f64());
    assert!(wrong.is_empty(), "{wrong:#?}");
}

const TEETH_SEEDS: u64 = 4;
