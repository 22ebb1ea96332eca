//! SIGKILL during concurrent ingests loses no acknowledged write: clients ingest unique
//! messages from several threads, the server is killed without warning once enough writes
//! have been acknowledged, and after a restart every acknowledged message is there.

mod common;

use std::sync::mpsc;
use std::thread;

use common::{Binary, admin_key, cli, json, mint};

const WRITERS: usize = 6;
/// Acknowledged writes before the kill; the other in-flight writes race the kill.
const ACKS_BEFORE_KILL: usize = 120;

#[test]
fn sigkill_during_concurrent_ingests_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(dir.path(), &[]);
    let admin = admin_key(dir.path());
    let (_id, key) = mint(&server, &admin, "crash");
    let (acks_tx, acks_rx) = mpsc::channel::<String>();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (addr, key, acks) = (server.addr.clone(), key.clone(), acks_tx.clone());
        writers.push(thread::spawn(move || {
            for i in 0.. {
                let text = format!("writer {writer} message {i}");
                let body = format!(r#"{{"session_id":"w{writer}","messages":[{{"role":"user","content":"{text}"}}]}}"#);
                match common::request(&addr, "POST", "/v1/memory/ingest", Some(&key), &body) {
                    Ok((202, _)) => {
                        if acks.send(text).is_err() {
                            return;
                        }
                    }
                    // The server is gone (killed mid-request): this write was never acknowledged.
                    _ => return,
                }
            }
        }));
    }
    drop(acks_tx);
    let mut acknowledged: Vec<String> = acks_rx.iter().take(ACKS_BEFORE_KILL).collect();
    server.kill();
    // Writes acknowledged between the last `take` and the kill count too.
    acknowledged.extend(acks_rx.iter());
    for writer in writers {
        writer.join().unwrap();
    }

    let (ok, report, stderr) = cli(&["verify", dir.path().to_str().unwrap()]);
    assert!(ok, "verify after SIGKILL: {stderr}");
    assert!(report.contains("every checksum matches"), "{report}");

    let server = Binary::serve(dir.path(), &[]);
    let (status, export) = server
        .request("GET", "/v1/memory/export", Some(&key), "")
        .unwrap();
    assert_eq!(status, 200);
    let stored: std::collections::HashSet<String> = export
        .lines()
        .map(|line| json(line)["content"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|t| !stored.contains(*t))
        .collect();
    assert!(acknowledged.len() >= ACKS_BEFORE_KILL);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        lost.first()
    );
    let (status, _) = server.terminate();
    assert!(status.success());
}
