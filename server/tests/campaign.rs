//! A kill -9 campaign on the real binary: cycles of concurrent writers mixing ingests,
//! deletes and session clears over several vaults, with a memtable so small (`limits.
//! memtable_records_max`) that seals and compactions run all the time and race both each
//! other and the kill. After every cycle `memoryrouter verify` must be clean, and a restarted
//! server must export every acknowledged write not acknowledged as deleted (0 lost) and none
//! acknowledged as deleted (0 resurrected).
//!
//! CI runs a few cycles; `MEMORYROUTER_CAMPAIGN_CYCLES=200 cargo test -p server --release
//! --test campaign` is the long run (`benches/scripts/crash_campaign.sh`).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Binary, admin_key, cli, json, mint};

const WRITERS: usize = 16;
const VAULTS: usize = 3;
/// Seal past 32 records: every few hundred ms of ingest seals, and every fourth seal merges.
const MEMTABLE_RECORDS_MAX: &str = "32";
const CYCLES_DEFAULT: usize = 4;

/// What the clients were told about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Ingest answered 202: it must survive.
    Stored,
    /// Delete (or a clear of its session) answered 200: it must never come back.
    Deleted,
    /// A delete was sent but the answer never came (the kill): either outcome is correct.
    Unknown,
}

/// Every message any cycle acknowledged: (vault, text) → fate.
type Ledger = Arc<Mutex<HashMap<(usize, String), Fate>>>;

/// xorshift, so a failing cycle can be replayed from its seed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn ingest(addr: &str, key: &str, session: &str, text: &str) -> Option<Vec<String>> {
    let body = format!(
        r#"{{"session_id":"{session}","messages":[{{"role":"user","content":"{text}"}}]}}"#
    );
    match common::request(addr, "POST", "/v1/memory/ingest", Some(key), &body) {
        Ok((202, body)) => Some(
            json(&body)["ids"]
                .as_array()
                .map(|ids| {
                    ids.iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => None,
    }
}

/// One writer until the server dies: ingests; every 7th acknowledged message deleted by id;
/// every 40th, a burst in a session of its own that it then clears.
fn writer(cycle: usize, w: usize, addr: String, keys: Arc<Vec<String>>, ledger: Ledger) {
    let vault = w % VAULTS;
    let key = &keys[vault];
    let set = |text: &str, fate: Fate| {
        ledger
            .lock()
            .unwrap()
            .insert((vault, text.to_owned()), fate);
    };
    for i in 0.. {
        let text = format!("cycle {cycle} writer {w} message {i}");
        let Some(ids) = ingest(&addr, key, &format!("w{w}"), &text) else {
            return;
        };
        set(&text, Fate::Stored);
        if i % 7 == 3 {
            set(&text, Fate::Unknown);
            match common::request(
                &addr,
                "DELETE",
                &format!("/v1/memory/{}", ids[0]),
                Some(key),
                "",
            ) {
                Ok((200, _)) => set(&text, Fate::Deleted),
                _ => return,
            }
        }
        if i % 40 == 20 {
            let session = format!("c{cycle}-{w}-{i}");
            let mut burst = Vec::new();
            for j in 0..5 {
                let text = format!("cycle {cycle} writer {w} burst {i} item {j}");
                if ingest(&addr, key, &session, &text).is_none() {
                    return;
                }
                set(&text, Fate::Stored);
                burst.push(text);
            }
            burst.iter().for_each(|t| set(t, Fate::Unknown));
            let path = format!("/v1/memory?session_id={session}");
            match common::request(&addr, "DELETE", &path, Some(key), "") {
                Ok((200, _)) => burst.iter().for_each(|t| set(t, Fate::Deleted)),
                _ => return,
            }
        }
    }
}

/// Exports every vault and compares with the ledger.
fn check(server: &Binary, keys: &[String], ledger: &Ledger, cycle: usize) {
    let ledger = ledger.lock().unwrap();
    for (vault, key) in keys.iter().enumerate() {
        let (status, export) = server
            .request("GET", "/v1/memory/export", Some(key), "")
            .unwrap();
        assert_eq!(status, 200, "{export}");
        let stored: std::collections::HashSet<String> = export
            .lines()
            .map(|line| json(line)["content"].as_str().unwrap().to_owned())
            .collect();
        let mut lost = Vec::new();
        let mut resurrected = Vec::new();
        for ((v, text), fate) in ledger.iter() {
            if *v != vault {
                continue;
            }
            match fate {
                Fate::Stored if !stored.contains(text) => lost.push(text.clone()),
                Fate::Deleted if stored.contains(text) => resurrected.push(text.clone()),
                _ => {}
            }
        }
        assert!(
            lost.is_empty() && resurrected.is_empty(),
            "after cycle {cycle}, vault {vault}: {} acknowledged writes lost (e.g. {:?}), {} acknowledged deletes resurrected (e.g. {:?})",
            lost.len(),
            lost.first(),
            resurrected.len(),
            resurrected.first()
        );
    }
}

#[test]
fn kill_9_cycles_with_racing_seals_and_merges_lose_nothing_and_resurrect_nothing() {
    let cycles: usize = std::env::var("MEMORYROUTER_CAMPAIGN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CYCLES_DEFAULT);
    let dir = tempfile::tempdir().unwrap();
    let env = [("MEMORYROUTER_MEMTABLE_RECORDS_MAX", MEMTABLE_RECORDS_MAX)];
    let server = Binary::serve_with_env(dir.path(), &[], &env);
    let admin = admin_key(dir.path());
    let keys: Arc<Vec<String>> = Arc::new(
        (0..VAULTS)
            .map(|v| mint(&server, &admin, &format!("vault-{v}")).1)
            .collect(),
    );
    let ledger: Ledger = Arc::default();
    let mut server = Some(server);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut acknowledged_total = 0;
    let started = std::time::Instant::now();
    for cycle in 0..cycles {
        let running = server
            .take()
            .unwrap_or_else(|| Binary::serve_with_env(dir.path(), &[], &env));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (addr, keys, ledger) =
                    (running.addr.clone(), Arc::clone(&keys), Arc::clone(&ledger));
                thread::spawn(move || writer(cycle, w, addr, keys, ledger))
            })
            .collect();
        thread::sleep(Duration::from_millis(400 + next(&mut seed) % 1600));
        running.kill();
        for w in writers {
            w.join().unwrap();
        }
        let (ok, report, stderr) = cli(&["verify", dir.path().to_str().unwrap()]);
        assert!(ok, "verify after cycle {cycle}: {stderr}");
        assert!(report.contains("every checksum matches"), "{report}");
        let restarted = Binary::serve_with_env(dir.path(), &[], &env);
        check(&restarted, &keys, &ledger, cycle);
        server = Some(restarted);
        acknowledged_total = ledger.lock().unwrap().len();
        // One line per cycle: a long run shows how far it got even if it is stopped.
        eprintln!(
            "cycle {}/{cycles}: {acknowledged_total} acknowledged so far, 0 lost, 0 resurrected, {:.0} s",
            cycle + 1,
            started.elapsed().as_secs_f64()
        );
    }
    assert!(
        acknowledged_total > cycles * WRITERS,
        "the campaign wrote too little to mean anything: {acknowledged_total}"
    );
    eprintln!(
        "{cycles} kill -9 cycles, {acknowledged_total} acknowledged messages: 0 lost, 0 resurrected"
    );
    if let Some(s) = server {
        let (status, _) = s.terminate();
        assert!(status.success());
    }
}
