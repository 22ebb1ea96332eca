//! `memoryrouter models fetch` against a loopback fake hub serving files this test makes:
//! a connection dropped mid-file then resumed with `Range`, a redirect to a "CDN" path, a
//! corrupted and a truncated file (refused, nothing left under the final name), and a rerun
//! that finds everything verified. The pinned table is replaced by the hidden `--manifest`.

mod common;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::cli;

#[derive(Default)]
struct Hub {
    /// Paths (after `/resolve/REV/`) whose next answer stops halfway and closes.
    drop_once: HashSet<String>,
    /// Paths answered with one byte flipped.
    corrupt: HashSet<String>,
    /// Paths answered with their second half missing (and a matching Content-Length).
    truncate: HashSet<String>,
    /// Every request: (path, Range header).
    log: Vec<(String, Option<String>)>,
}

fn content(name: &str) -> Vec<u8> {
    match name {
        "config.json" => br#"{"model_type":"bert","hidden_size":4}"#.to_vec(),
        "tokenizer.json" => br#"{"model":{"type":"WordPiece"}}"#.to_vec(),
        // Large enough to be cut mid-body (several frames).
        _ => (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    }
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn start(hub: Arc<Mutex<Hub>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let hub = Arc::clone(&hub);
            std::thread::spawn(move || answer(stream, &hub));
        }
    });
    addr
}

fn answer(mut stream: TcpStream, hub: &Mutex<Hub>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    let mut range = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    // The hub redirects model.safetensors to its "CDN", like the real one does LFS files.
    if let Some(rest) = path.strip_prefix("/org/m/resolve/rev1/")
        && rest == "model.safetensors"
    {
        hub.lock().unwrap().log.push((path.clone(), range));
        let _ = write!(
            stream,
            "HTTP/1.1 302 Found\r\nLocation: /cdn/model.safetensors\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    let name = path
        .strip_prefix("/org/m/resolve/rev1/")
        .or_else(|| path.strip_prefix("/cdn/"))
        .unwrap_or("")
        .to_owned();
    let mut body = content(&name);
    let (cut, corrupt, truncate) = {
        let mut h = hub.lock().unwrap();
        h.log.push((path.clone(), range.clone()));
        (
            h.drop_once.remove(&name),
            h.corrupt.contains(&name),
            h.truncate.contains(&name),
        )
    };
    if name.is_empty() {
        let _ = write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    if corrupt {
        let middle = body.len() / 2;
        body[middle] ^= 0x40;
    }
    if truncate {
        body.truncate(body.len() / 2);
    }
    let from: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (status, slice) = if from > 0 {
        ("206 Partial Content", &body[from..])
    } else {
        ("200 OK", &body[..])
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        slice.len()
    );
    if cut {
        // Half the body, then the connection drops.
        let _ = stream.write_all(&slice[..slice.len() / 2]);
        let _ = stream.flush();
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    let _ = stream.write_all(slice);
}

fn manifest(dir: &Path) -> std::path::PathBuf {
    let files: Vec<serde_json::Value> = ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .map(|f| serde_json::json!({"path": f, "sha256": sha256(&content(f))}))
        .collect();
    let path = dir.join("manifest.json");
    std::fs::write(
        &path,
        serde_json::json!([{"name": "tiny", "repo": "org/m", "revision": "rev1", "files": files}])
            .to_string(),
    )
    .unwrap();
    path
}

fn fetch(dir: &Path, addr: &str, manifest: &Path) -> (bool, String, String) {
    let data = dir.join("data");
    cli(&[
        "models",
        "fetch",
        "tiny",
        "--hub",
        &format!("http://{addr}"),
        "--manifest",
        manifest.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--quiet",
    ])
}

#[test]
fn an_interrupted_download_resumes_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Arc::new(Mutex::new(Hub::default()));
    hub.lock()
        .unwrap()
        .drop_once
        .insert("model.safetensors".into());
    let addr = start(Arc::clone(&hub));
    let manifest = manifest(dir.path());
    let model_dir = dir.path().join("data/models/tiny");

    let (ok, _, stderr) = fetch(dir.path(), &addr, &manifest);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("resume"), "{stderr}");
    let part = model_dir.join("model.safetensors.part");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < 300_000, "{kept}");
    assert!(!model_dir.join("model.safetensors").exists());
    assert_eq!(
        std::fs::read(model_dir.join("config.json")).unwrap(),
        content("config.json")
    );

    let (ok, stdout, stderr) = fetch(dir.path(), &addr, &manifest);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("resuming after {kept} bytes")),
        "{stderr}"
    );
    let wanted = format!("bytes={kept}-");
    assert!(
        hub.lock()
            .unwrap()
            .log
            .iter()
            .any(|(path, range)| path == "/cdn/model.safetensors"
                && range.as_deref() == Some(&wanted)),
        "no ranged request to the redirect target"
    );
    assert_eq!(
        std::fs::read(model_dir.join("model.safetensors")).unwrap(),
        content("model.safetensors")
    );
    assert!(!part.exists());
    assert!(stdout.contains("[embedder]"), "{stdout}");
    assert!(
        stdout.contains("model_dir = ") && stdout.contains("models/tiny"),
        "{stdout}"
    );

    // Everything present and verified: nothing is downloaded again.
    let before = hub.lock().unwrap().log.len();
    let (ok, _, stderr) = fetch(dir.path(), &addr, &manifest);
    assert!(ok, "{stderr}");
    assert_eq!(hub.lock().unwrap().log.len(), before);
    assert_eq!(
        stderr.matches("present and verified").count(),
        3,
        "{stderr}"
    );
}

#[test]
fn corrupted_and_truncated_files_are_refused_and_deleted() {
    for fault in ["corrupt", "truncate"] {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(Mutex::new(Hub::default()));
        {
            let mut h = hub.lock().unwrap();
            let set = if fault == "corrupt" {
                &mut h.corrupt
            } else {
                &mut h.truncate
            };
            set.insert("tokenizer.json".into());
        }
        let addr = start(Arc::clone(&hub));
        let manifest = manifest(dir.path());
        let (ok, stdout, stderr) = fetch(dir.path(), &addr, &manifest);
        assert!(!ok, "{fault}: {stderr}");
        assert!(
            stderr.contains("does not match the pinned"),
            "{fault}: {stderr}"
        );
        assert!(!stdout.contains("[embedder]"), "{fault}");
        let model_dir = dir.path().join("data/models/tiny");
        assert!(!model_dir.join("tokenizer.json").exists(), "{fault}");
        assert!(!model_dir.join("tokenizer.json.part").exists(), "{fault}");
        // Files after the refused one are not fetched.
        assert!(!model_dir.join("model.safetensors").exists(), "{fault}");
    }
}

#[test]
fn an_unknown_name_lists_the_known_ones() {
    let (ok, _, stderr) = cli(&[
        "models",
        "fetch",
        "no-such-model",
        "--data-dir",
        "/nonexistent",
    ]);
    assert!(!ok);
    assert!(stderr.contains("all-MiniLM-L6-v2"), "{stderr}");
    let (ok, stdout, _) = cli(&["models", "list"]);
    assert!(ok);
    assert!(
        stdout.contains("sentence-transformers/all-MiniLM-L6-v2@1110a243"),
        "{stdout}"
    );
}
