//! A full disk, end to end, on the real binary (issue 12, item 5): the data directory on a
//! 64 MiB tmpfs, most of it taken by a filler file, and 16 concurrent writers over two
//! vaults ingesting until the disk is full. While it is full, every refused write is a 503
//! in the error shape with `Retry-After` (never a 500, a reset connection or an empty body),
//! reads, searches and prepares keep answering 200, and `/readyz` says writes are
//! unavailable and why. Deleting the filler brings writes back within 5 s, without a
//! restart (and `/readyz` back to 200 before any write succeeds). A SIGTERM then exits 0,
//! `memoryrouter verify` is clean, and a restarted server exports every write that was
//! answered 202 (0 lost).
//!
//! Needs to mount a tmpfs (root, or CAP_SYS_ADMIN); where that is refused the test says so
//! and passes without running.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Binary, admin_key, cli, json, mint};

const WRITERS: usize = 16;
const VAULTS: usize = 2;
const TMPFS_SIZE: &str = "size=64m";
/// Taken up front so the writers fill the rest in seconds; deleting it frees the disk.
const FILLER_BYTES: usize = 44 << 20;
/// Small, so seals (and their segment writes) run, and fail, while the disk fills.
const MEMTABLE_RECORDS_MAX: &str = "256";
/// Refused writes to see before the disk counts as full.
const REFUSALS_FULL: u64 = 200;
/// The issue's bound for writes to resume once space is freed.
const RESUME_WITHIN: Duration = Duration::from_secs(5);
const FILL_TIMEOUT: Duration = Duration::from_secs(180);
/// Large writes (8 messages of ~190,000 characters, ~5 MB on disk) to leave each vault's
/// last write refused; rounds until that holds.
const BIG_MESSAGES: usize = 8;
const BIG_TEXT: &str = "a long message that cannot fit on a full disk ";
const BIG_REPEAT: usize = 4000;
const BIG_ROUNDS_MAX: usize = 20;

/// Mounts a tmpfs on a fresh temp directory; unmounts it when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount(8): {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// What the writers saw.
#[derive(Default)]
struct Seen {
    /// (vault, text) of every write answered 202.
    acked: Vec<(usize, String)>,
    /// 503s, all checked to be in the error shape with `Retry-After`.
    refused: u64,
    /// Anything else: wrong status, wrong shape, no answer.
    bad: Vec<String>,
}

struct Shared {
    seen: Mutex<Seen>,
    stop: AtomicBool,
    /// Writers idle while set (the test then looks at a settled server).
    paused: AtomicBool,
    /// Milliseconds since `start` of the first 202 to a request sent after the filler was
    /// deleted; `u64::MAX` until then.
    first_ack_after_free_ms: AtomicU64,
    /// Set (to ms since `start`) when the filler is deleted; `u64::MAX` before.
    freed_at_ms: AtomicU64,
    start: Instant,
}

impl Shared {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Checks a refused write: 503 (or 507), the error shape, `Retry-After`.
fn refusal_problem(status: u16, head: &str, body: &str) -> Option<String> {
    if status != 503 && status != 507 {
        return Some(format!("status {status}: {body}"));
    }
    let has_retry_after = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("retry-after:"));
    if !has_retry_after {
        return Some(format!("{status} without Retry-After: {head}"));
    }
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => return Some(format!("{status} body is not JSON ({e}): {body:?}")),
    };
    let e = &v["error"];
    if !(e["message"].is_string() && e["type"].is_string() && e["code"].is_string()) {
        return Some(format!("{status} body not in the error shape: {body}"));
    }
    None
}

fn writer(addr: String, keys: Arc<Vec<String>>, shared: Arc<Shared>, t: usize) {
    let vault = t % VAULTS;
    let padding = "the quick brown fox jumps over the lazy dog while the disk fills up ".repeat(12);
    let mut i = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        if shared.paused.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(5));
            continue;
        }
        i += 1;
        let text = format!("writer {t} message {i}: {padding}");
        let body = format!(r#"{{"messages":[{{"role":"user","content":"{text}"}}]}}"#);
        let sent_ms = shared.ms();
        let answer = common::request_with_head(
            &addr,
            "POST",
            "/v1/memory/ingest",
            Some(&keys[vault]),
            &body,
        );
        let mut seen = shared.seen.lock().unwrap();
        match answer {
            Ok((202, _, _)) => {
                seen.acked.push((vault, text));
                if sent_ms >= shared.freed_at_ms.load(Ordering::Acquire) {
                    let at = shared.ms();
                    let _ = shared.first_ack_after_free_ms.compare_exchange(
                        u64::MAX,
                        at,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
            }
            Ok((status, head, body)) => match refusal_problem(status, &head, &body) {
                None => seen.refused += 1,
                Some(problem) => seen.bad.push(problem),
            },
            Err(e) => seen.bad.push(format!("no answer: {e}")),
        }
    }
}

/// Reads that must keep answering 200 whatever the disk does.
fn reads_answer_200(server: &Binary, key: &str) {
    for (method, path, body) in [
        ("GET", "/v1/memory?limit=5", ""),
        (
            "POST",
            "/v1/memory/search",
            r#"{"query":"quick brown fox"}"#,
        ),
        (
            "POST",
            "/v1/memory/prepare",
            r#"{"messages":[{"role":"user","content":"what about the lazy dog?"}]}"#,
        ),
        ("GET", "/v1/memory/stats", ""),
    ] {
        let (status, body) = server.request(method, path, Some(key), body).unwrap();
        assert_eq!(status, 200, "{method} {path} on a full disk: {body}");
    }
}

fn filler_path(mount: &Path) -> PathBuf {
    mount.join("filler")
}

#[test]
fn a_full_disk_refuses_writes_cleanly_and_they_resume_once_space_is_freed() {
    let tmpfs = match Tmpfs::mount() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {why}");
            return;
        }
    };
    std::fs::write(filler_path(tmpfs.path()), vec![1u8; FILLER_BYTES]).unwrap();
    let data = tmpfs.path().join("data");
    let env = [
        ("MEMORYROUTER_REQUESTS_PER_MINUTE", "0"),
        ("MEMORYROUTER_MEMTABLE_RECORDS_MAX", MEMTABLE_RECORDS_MAX),
    ];
    let server = Binary::serve_with_env(&data, &[], &env);
    let admin = admin_key(&data);
    let keys: Arc<Vec<String>> = Arc::new(
        (0..VAULTS)
            .map(|v| mint(&server, &admin, &format!("writer-{v}")).1)
            .collect(),
    );
    let shared = Arc::new(Shared {
        seen: Mutex::new(Seen::default()),
        stop: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        first_ack_after_free_ms: AtomicU64::new(u64::MAX),
        freed_at_ms: AtomicU64::new(u64::MAX),
        start: Instant::now(),
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (addr, keys, shared) = (server.addr.clone(), keys.clone(), shared.clone());
            thread::spawn(move || writer(addr, keys, shared, t))
        })
        .collect();

    // 1. Fill the disk.
    let filling = Instant::now();
    while shared.seen.lock().unwrap().refused < REFUSALS_FULL {
        assert!(
            filling.elapsed() < FILL_TIMEOUT,
            "the disk never filled: {} acknowledged, {} refused",
            shared.seen.lock().unwrap().acked.len(),
            shared.seen.lock().unwrap().refused
        );
        thread::sleep(Duration::from_millis(50));
    }
    let fill_secs = filling.elapsed().as_secs_f64();

    // 2. Full, writers still hammering: reads keep answering.
    for _ in 0..10 {
        for key in keys.iter() {
            reads_answer_200(&server, key);
        }
        thread::sleep(Duration::from_millis(100));
    }

    // 3. Settled: writers paused, then large writes (a few MB each) until one per vault is
    //    refused and the background seals they may start have given up, so that the last
    //    write of each vault failed for lack of space: readiness says why writes are
    //    unavailable.
    shared.paused.store(true, Ordering::Release);
    let mut settled = false;
    for _round in 0..BIG_ROUNDS_MAX {
        thread::sleep(Duration::from_secs(1));
        let mut all_refused = true;
        for (vault, key) in keys.iter().enumerate() {
            let texts: Vec<String> = (0..BIG_MESSAGES)
                .map(|m| format!("big {m} {}", shared.ms()) + &BIG_TEXT.repeat(BIG_REPEAT))
                .collect();
            let messages: Vec<String> = texts
                .iter()
                .map(|t| format!(r#"{{"role":"user","content":"{t}"}}"#))
                .collect();
            let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
            let (status, head, body) = common::request_with_head(
                &server.addr,
                "POST",
                "/v1/memory/ingest",
                Some(key),
                &body,
            )
            .unwrap();
            if status == 202 {
                let mut seen = shared.seen.lock().unwrap();
                seen.acked.extend(texts.into_iter().map(|t| (vault, t)));
                all_refused = false;
                continue;
            }
            assert_eq!(refusal_problem(status, &head, &body), None);
            assert_eq!(json(&body)["error"]["code"], "storage_full", "{body}");
        }
        if !all_refused {
            continue;
        }
        let readyz: Vec<(u16, String)> = (0..3)
            .map(|_| server.request("GET", "/readyz", None, "").unwrap())
            .collect();
        if readyz.iter().all(|(status, _)| *status == 503) {
            for (_, body) in &readyz {
                let message = json(body)["error"]["message"].as_str().unwrap().to_owned();
                assert!(message.contains("disk is full"), "{message}");
            }
            settled = true;
            break;
        }
    }
    assert!(settled, "readyz never said the disk was full");
    for key in keys.iter() {
        reads_answer_200(&server, key);
    }

    // 4. Free space: readiness turns back before any write, and writes resume, with no
    //    restart.
    std::fs::remove_file(filler_path(tmpfs.path())).unwrap();
    let freed = Instant::now();
    shared.freed_at_ms.store(shared.ms(), Ordering::Release);
    loop {
        let (status, body) = server.request("GET", "/readyz", None, "").unwrap();
        if status == 200 {
            break;
        }
        assert!(
            freed.elapsed() < RESUME_WITHIN,
            "readyz still {status} {} s after space was freed: {body}",
            RESUME_WITHIN.as_secs()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let ready_ms = freed.elapsed().as_millis();
    shared.paused.store(false, Ordering::Release);
    let resumed_ms = loop {
        let at = shared.first_ack_after_free_ms.load(Ordering::Acquire);
        if at != u64::MAX {
            break at - shared.freed_at_ms.load(Ordering::Acquire);
        }
        assert!(
            freed.elapsed() < RESUME_WITHIN,
            "no write acknowledged {} s after space was freed",
            RESUME_WITHIN.as_secs()
        );
        thread::sleep(Duration::from_millis(10));
    };
    thread::sleep(Duration::from_millis(500));
    shared.stop.store(true, Ordering::Release);
    for w in writers {
        w.join().unwrap();
    }

    // 5. A clean shutdown exits 0.
    let (status, _) = server.terminate();
    assert!(status.success(), "SIGTERM after a full disk: {status:?}");
    let seen = std::mem::take(&mut *shared.seen.lock().unwrap());
    assert!(
        seen.bad.is_empty(),
        "{} answers other than 202 or a well-formed 503/507, e.g. {:?}",
        seen.bad.len(),
        &seen.bad[..seen.bad.len().min(3)]
    );

    // 6. Nothing acknowledged is lost.
    let (ok, out, err) = cli(&["verify", data.to_str().unwrap()]);
    assert!(ok, "verify after a full disk: {out}{err}");
    let server = Binary::serve_with_env(&data, &[], &env);
    let mut lost = 0;
    for (vault, key) in keys.iter().enumerate() {
        let (status, export) = server
            .request("GET", "/v1/memory/export", Some(key), "")
            .unwrap();
        assert_eq!(status, 200, "{export}");
        let stored: std::collections::HashSet<String> = export
            .lines()
            .map(|line| json(line)["content"].as_str().unwrap().to_owned())
            .collect();
        lost += seen
            .acked
            .iter()
            .filter(|(v, text)| *v == vault && !stored.contains(text))
            .count();
    }
    assert_eq!(lost, 0, "acknowledged writes lost after a full disk");
    eprintln!(
        "disk full: filled in {fill_secs:.1} s; {} writes acknowledged, {} refused with 503, 0 other answers; readyz 200 {ready_ms} ms and the first write acknowledged {resumed_ms} ms after space was freed; exit 0; 0 lost",
        seen.acked.len(),
        seen.refused
    );
    let (status, _) = server.terminate();
    assert!(status.success(), "{status:?}");
}
