//! Process crash test: a child process (this test binary re-executed with an environment
//! variable) appends from many threads and reports every acknowledged LSN on stdout; the
//! parent kills it with SIGKILL at a random moment, reopens the log and checks that every
//! acknowledged record is present and intact. Rounds reuse the directory, so later rounds also
//! recover logs that earlier crashes left behind. Set `WAL_CRASH_SEED` to replay a failure.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use wal::{Lsn, Wal, WalOptions};

const TEST_NAME: &str = "process_crash_keeps_every_acknowledged_record";
const CHILD_DIR_ENV: &str = "WAL_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "WAL_CRASH_CHILD_SEED";
const ROUNDS: u64 = 8;
const CHILD_THREADS: u64 = 8;
/// A child that is never killed stops by itself after this many appends per thread.
const CHILD_APPENDS_MAX: u64 = 200_000;
/// The parent kills the child after reading between `KILL_AFTER_MIN` and `_MAX` acks.
const KILL_AFTER_MIN: u64 = 50;
const KILL_AFTER_MAX: u64 = 1_500;
/// The child checkpoints every this many of thread 0's appends.
const CHECKPOINT_EVERY: u64 = 150;

fn options() -> WalOptions {
    // Small segments so rotations and checkpoint deletions happen during the crash window.
    WalOptions {
        segment_bytes_max: 16 << 10,
        ..WalOptions::default()
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The record appended by `thread` as its `i`th: a kind and up to 300 seed-derived bytes.
fn record(seed: u64, thread: u64, i: u64) -> (u8, Vec<u8>) {
    let mut state = splitmix(seed ^ splitmix(thread << 32 | i));
    let len = (state % 301) as usize;
    let mut payload = Vec::with_capacity(len);
    while payload.len() < len {
        state = splitmix(state);
        payload.extend_from_slice(&state.to_le_bytes());
    }
    payload.truncate(len);
    (thread as u8, payload)
}

/// Child mode: append forever from many threads, printing `ack <lsn> <thread> <i>` after each
/// acknowledgement and `ckpt <lsn>` after each checkpoint.
fn run_child(dir: &Path, seed: u64) {
    let (log, _) = Wal::open(dir, options()).expect("child open");
    let log = Arc::new(log);
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut out = std::io::stdout();
                let mut i = 0;
                while i < CHILD_APPENDS_MAX {
                    // Every fifth call is a three-record batch, which must survive whole or not.
                    let count = if i % 5 == 4 { 3 } else { 1 };
                    let records: Vec<(u8, Vec<u8>)> =
                        (i..i + count).map(|j| record(seed, t, j)).collect();
                    let refs: Vec<(u8, &[u8])> =
                        records.iter().map(|(k, p)| (*k, p.as_slice())).collect();
                    let last = log.append_batch(&refs).expect("child append");
                    let mut lines = String::new();
                    for (n, j) in (i..i + count).enumerate() {
                        let lsn = last + 1 + n as u64 - count;
                        lines.push_str(&format!("ack {lsn} {t} {j}\n"));
                    }
                    if t == 0 && i % CHECKPOINT_EVERY == 0 && last > 100 {
                        log.checkpoint(last - 100).expect("child checkpoint");
                        lines.push_str(&format!("ckpt {}\n", last - 100));
                    }
                    // One write per acknowledgement group keeps lines whole on the pipe.
                    let mut lock = out.lock();
                    lock.write_all(lines.as_bytes()).expect("child stdout");
                    lock.flush().expect("child stdout");
                    drop(lock);
                    out = std::io::stdout();
                    i += count;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("child thread");
    }
}

struct Acked {
    /// lsn -> (seed, thread, i) of every acknowledged record.
    records: HashMap<Lsn, (u64, u64, u64)>,
    /// The highest checkpoint the child reported as done.
    checkpoint: Lsn,
}

/// One round: run a child until a random number of acks, SIGKILL it, collect every ack it
/// managed to print.
fn crash_round(dir: &Path, seed: u64, acked: &mut Acked) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn child: {e}"))?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let kill_after = KILL_AFTER_MIN + splitmix(seed) % (KILL_AFTER_MAX - KILL_AFTER_MIN);
    let mut seen = 0;
    let mut killed = false;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // A line cut short by the kill was never a complete acknowledgement report.
        let Some(line) = line.strip_suffix('\n') else {
            break;
        };
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["ack", lsn, t, i] => {
                let parse = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|e| format!("bad line {line:?}: {e}"))
                };
                acked
                    .records
                    .insert(parse(lsn)?, (seed, parse(t)?, parse(i)?));
                seen += 1;
            }
            ["ckpt", lsn] => {
                let lsn = lsn
                    .parse::<u64>()
                    .map_err(|e| format!("bad line {line:?}: {e}"))?;
                acked.checkpoint = acked.checkpoint.max(lsn);
            }
            _ => {} // libtest's own chatter.
        }
        if !killed && seen >= kill_after {
            child.kill().map_err(|e| format!("kill: {e}"))?; // SIGKILL on Unix.
            killed = true;
        }
        // Keep reading after the kill: lines already in the pipe were acknowledged.
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    if !killed {
        return Err(format!(
            "child exited on its own ({status}) after {seen} acks"
        ));
    }
    Ok(())
}

/// Reopens the log and checks every acknowledged record above the checkpoint.
fn check(dir: &Path, acked: &Acked) -> Result<(), String> {
    let (_log, recovery) = Wal::open(dir, options()).map_err(|e| format!("reopen: {e}"))?;
    if recovery.checkpoint < acked.checkpoint {
        return Err(format!(
            "checkpoint {} reported done but recovered {}",
            acked.checkpoint, recovery.checkpoint
        ));
    }
    let by_lsn: HashMap<Lsn, &wal::Record> = recovery.records.iter().map(|r| (r.lsn, r)).collect();
    let mut checked = 0;
    for (lsn, &(seed, thread, i)) in &acked.records {
        if *lsn <= recovery.checkpoint {
            continue;
        }
        let (kind, payload) = record(seed, thread, i);
        match by_lsn.get(lsn) {
            Some(r) if r.kind == kind && r.payload == payload => checked += 1,
            Some(r) => {
                return Err(format!(
                    "lsn {lsn}: kind/payload differ (got kind {})",
                    r.kind
                ));
            }
            None => return Err(format!("acknowledged lsn {lsn} missing after crash")),
        }
    }
    let lsns: Vec<Lsn> = recovery.records.iter().map(|r| r.lsn).collect();
    if !lsns.windows(2).all(|w| w[1] == w[0] + 1) {
        return Err("recovered lsns are not contiguous".into());
    }
    if lsns
        .first()
        .is_some_and(|&first| first != recovery.checkpoint + 1)
    {
        return Err("recovery does not start right after the checkpoint".into());
    }
    if checked == 0 && acked.records.keys().any(|&l| l > recovery.checkpoint) {
        return Err("nothing checked".into());
    }
    wal::verify(dir).map_err(|e| format!("verify after reopen: {e}"))?;
    Ok(())
}

#[test]
fn process_crash_keeps_every_acknowledged_record() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        let seed = std::env::var(CHILD_SEED_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("child seed");
        run_child(Path::new(&dir), seed);
        return;
    }
    let base_seed = std::env::var("WAL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            nanos as u64
        });
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut acked = Acked {
        records: HashMap::new(),
        checkpoint: 0,
    };
    for round in 0..ROUNDS {
        let seed = splitmix(base_seed.wrapping_add(round));
        let result =
            crash_round(tmp.path(), seed, &mut acked).and_then(|()| check(tmp.path(), &acked));
        if let Err(msg) = result {
            panic!("crash round {round} failed (rerun with WAL_CRASH_SEED={base_seed}): {msg}");
        }
        eprintln!(
            "crash round {round}: {} acknowledged records so far, checkpoint {} (seed {base_seed})",
            acked.records.len(),
            acked.checkpoint
        );
    }
    assert!(acked.records.len() as u64 >= ROUNDS * KILL_AFTER_MIN);
}
