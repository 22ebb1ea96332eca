//! Smoke tests of the real binary: first start, restart, SIGTERM, the CLI commands, an I/O
//! error on one vault's segment, `verify` finding a lost segment.

mod common;

use std::path::{Path, PathBuf};

use common::{Binary, admin_key, cli, json, mint};

#[test]
fn first_start_prints_the_admin_key_once_and_sigterm_is_graceful() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(dir.path(), &[]);
    let admin = admin_key(dir.path());
    // `mk_`, 43 random base62 digits and a 6-digit checksum.
    assert!(admin.starts_with("mk_") && admin.len() == 52, "{admin}");
    let (status, body) = server.request("GET", "/healthz", None, "").unwrap();
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let (_id, key) = mint(&server, &admin, "user:1");
    let ingest = r#"{"messages":[{"role":"user","content":"I water the ferns on Sundays."}]}"#;
    assert_eq!(
        server
            .request("POST", "/v1/memory/ingest", Some(&key), ingest)
            .unwrap()
            .0,
        202
    );
    let (status, stdout) = server.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    assert!(
        stdout.contains(&admin),
        "first start prints the key: {stdout}"
    );

    let server = Binary::serve(dir.path(), &[]);
    assert_eq!(
        admin_key(dir.path()),
        admin,
        "restart never rotates the admin key"
    );
    let (status, body) = server.request("GET", "/v1/memory", Some(&key), "").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        json(&body)["memories"][0]["content"],
        "I water the ferns on Sundays."
    );
    let (status, stdout) = server.terminate();
    assert!(status.success());
    assert!(!stdout.contains("mk_"), "a restart prints no key: {stdout}");
}

#[test]
fn cli_keys_verify_export_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = cli(&["keys", "create", "--name", "cli-user", "--data-dir", data]);
    assert!(ok, "{stderr}");
    let key = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("mk_"))
        .unwrap()
        .to_owned();
    let (ok, listing, _) = cli(&["keys", "list", "--data-dir", data]);
    assert!(ok);
    assert!(
        listing.contains("cli-user") && !listing.contains(&key),
        "{listing}"
    );
    let id = listing
        .lines()
        .find(|l| l.contains("cli-user"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let server = Binary::serve(dir.path(), &[]);
    let ingest = r#"{"messages":[{"role":"user","content":"Exported by the CLI."},{"role":"assistant","content":"Noted."}]}"#;
    assert_eq!(
        server
            .request("POST", "/v1/memory/ingest", Some(&key), ingest)
            .unwrap()
            .0,
        202
    );
    let (ok, _, stderr) = cli(&["keys", "list", "--data-dir", data]);
    assert!(
        !ok && stderr.contains("another memoryrouter process"),
        "the data dir is locked: {stderr}"
    );
    let (status, _) = server.terminate();
    assert!(status.success());

    let (ok, report, stderr) = cli(&["verify", data]);
    assert!(ok, "{stderr}");
    assert!(report.contains("every checksum matches"), "{report}");
    let file = dir.path().join("export.jsonl");
    let (ok, _, stderr) = cli(&[
        "export",
        "--key-id",
        &id,
        "--out",
        file.to_str().unwrap(),
        "--data-dir",
        data,
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
    let (ok, stdout, _) = cli(&["keys", "create", "--data-dir", data]);
    assert!(ok);
    let (ok, listing, _) = cli(&["keys", "list", "--data-dir", data]);
    assert!(ok);
    let other = listing
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(stdout.contains("mk_") && other != id);
    let (ok, _, stderr) = cli(&[
        "import",
        "--key-id",
        &other,
        file.to_str().unwrap(),
        "--data-dir",
        data,
    ]);
    assert!(ok && stderr.contains("2 stored"), "{stderr}");
    let (ok, stdout, _) = cli(&["keys", "revoke", &id, "--data-dir", data]);
    assert!(ok && stdout.contains("revoked"));
    let (ok, _, stderr) = cli(&["keys", "revoke", "key_nope", "--data-dir", data]);
    assert!(!ok && stderr.contains("key_nope"));
}

#[test]
fn bad_configuration_is_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[limits]\nbody_bytes_maximum = 5\n").unwrap();
    let (ok, _, stderr) = cli(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("body_bytes_maximum"), "{stderr}");
    std::fs::write(&config, "durability = \"sometimes\"\n").unwrap();
    let (ok, _, stderr) = cli(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!ok && stderr.contains("sometimes"), "{stderr}");
    let (ok, _, stderr) = cli(&["serve", "--listen", "not-an-address"]);
    assert!(!ok && stderr.contains("--listen"), "{stderr}");
}

#[test]
fn verify_reports_a_flipped_byte_in_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (ok, _, stderr) = cli(&["keys", "create", "--name", "x", "--data-dir", data]);
    assert!(ok, "{stderr}");
    assert!(cli(&["verify", data]).0);
    let segment = std::fs::read_dir(dir.path().join("catalog"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .expect("a catalog segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    // Inside the first record's payload (after the segment and batch headers).
    bytes[0x30] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();
    let (ok, _, stderr) = cli(&["verify", data]);
    assert!(!ok, "a flipped byte must fail verification");
    assert!(stderr.to_lowercase().contains("checksum"), "{stderr}");
}

/// `memoryrouter repair` on a vault whose WAL is damaged before intact frames (the case open
/// refuses): it backs the log up, cuts it at the damage, says exactly what was cut, and the
/// data directory verifies and serves again.
#[test]
fn repair_cuts_a_damaged_vault_log_and_reports_what_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let server = common::Binary::serve(dir.path(), &[]);
    let admin = common::admin_key(dir.path());
    let (id, key) = common::mint(&server, &admin, "damaged");
    for text in ["first fact", "second fact", "third fact"] {
        let body = format!(r#"{{"messages":[{{"role":"user","content":"{text}"}}]}}"#);
        let (status, body) = server
            .request("POST", "/v1/memory/ingest", Some(&key), &body)
            .unwrap();
        assert_eq!(status, 202, "{body}");
    }
    let (status, _) = server.terminate();
    assert!(status.success());
    let wal_dir = dir.path().join("vaults").join(&id).join("wal");
    let segment = std::fs::read_dir(&wal_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .expect("a vault WAL segment");
    let original = std::fs::read(&segment).unwrap();
    let mut bytes = original.clone();
    bytes[0x30] ^= 0x01; // inside the first batch's payload
    std::fs::write(&segment, &bytes).unwrap();
    assert!(!cli(&["verify", data]).0, "the damage must be seen");

    let (ok, report, stderr) = cli(&["repair", data]);
    assert!(ok, "{stderr}");
    assert!(
        report.contains("cut from lsn 1 on: 2 intact record(s) after the damage lost"),
        "{report}"
    );
    let backup = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("repair-"))
        })
        .expect("a backup directory");
    let backed_up = backup
        .join("vaults")
        .join(&id)
        .join("wal")
        .join(segment.file_name().unwrap());
    assert_eq!(
        std::fs::read(backed_up).unwrap(),
        bytes,
        "backup is the damaged log"
    );
    let (ok, report, stderr) = cli(&["verify", data]);
    assert!(ok, "verify after repair: {stderr}");
    assert!(report.contains("every checksum matches"), "{report}");
    let (ok, report, _) = cli(&["repair", data]);
    assert!(ok && report.contains("nothing changed"), "{report}");
    let server = common::Binary::serve(dir.path(), &[]);
    let (status, export) = server
        .request("GET", "/v1/memory/export", Some(&key), "")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(export.lines().count(), 0, "{export}");
    let (status, _) = server.terminate();
    assert!(status.success());
}

/// Owner-only data whatever the umask (issue 12, item 9): under the usual 022 every
/// directory the server creates is 0700 and every file 0600 — `find DATA -perm /077` prints
/// nothing. Vaults, WALs and the outbox hold memories in plain text.
#[test]
fn the_data_dir_is_owner_only_under_umask_022() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Binary::serve_with_umask(&data, "022");
    let admin = admin_key(&data);
    let (id, key) = mint(&server, &admin, "user:perm");
    let ingest = r#"{"messages":[{"role":"user","content":"My locker code is 4711."}]}"#;
    let (status, _) = server
        .request("POST", "/v1/memory/ingest", Some(&key), ingest)
        .unwrap();
    assert_eq!(status, 202);
    let (status, body) = server
        .request(
            "PUT",
            "/v1/provider-keys/openai",
            Some(&admin),
            r#"{"api_key":"sk-test-owner-only"}"#,
        )
        .unwrap();
    assert!(status < 300, "{status} {body}");
    let (status, _) = server.terminate();
    assert!(status.success());
    // An export holds the memories in plain text too.
    let export = dir.path().join("export.jsonl");
    let (ok, _, stderr) = cli(&[
        "export",
        "--data-dir",
        data.to_str().unwrap(),
        "--key-id",
        &id,
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let mode = std::fs::metadata(&export).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut seen = Vec::new();
    let mut loose = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            loose.push(format!("{} {mode:o}", path.display()));
        }
        seen.push(path.strip_prefix(&data).unwrap().display().to_string());
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(loose.is_empty(), "not owner-only: {loose:#?}");
    for expected in [
        "catalog",
        "vaults",
        "proxy-outbox",
        "admin.key",
        "secret.key",
        "LOCK",
    ] {
        assert!(seen.iter().any(|p| p == expected), "{expected} in {seen:?}");
    }
    assert!(seen.iter().any(|p| p.ends_with("MANIFEST")), "{seen:?}");
    assert!(seen.iter().any(|p| p.ends_with(".wal")), "{seen:?}");
}

/// A server that seals every 8 records, and two keys whose vaults each hold 16 memories, all
/// in sealed segments (nothing unsealed). Returns the server, then (id, key) pairs.
fn two_sealed_vaults(dir: &Path) -> (Binary, Vec<(String, String)>) {
    let server = Binary::serve_with_env(dir, &[], &[("MEMORYROUTER_MEMTABLE_RECORDS_MAX", "8")]);
    let admin = admin_key(dir);
    let mut keys = Vec::new();
    for user in ["user:sick", "user:well"] {
        let (id, key) = mint(&server, &admin, user);
        let messages: Vec<String> = (0..16)
            .map(|i| format!(r#"{{"role":"user","content":"memo {i}: the trains to Lyon leave at {i} o'clock"}}"#))
            .collect();
        let body = format!(
            r#"{{"session_id":"s","messages":[{}]}}"#,
            messages.join(",")
        );
        let (status, body) = server
            .request("POST", "/v1/memory/ingest", Some(&key), &body)
            .unwrap();
        assert_eq!(status, 202, "{body}");
        // The seal runs in the background: wait (bounded) until the vault is settled.
        let mut last = String::new();
        let settled = (0..600).any(|_| {
            let (_, body) = server
                .request("GET", "/v1/memory/stats", Some(&key), "")
                .unwrap();
            let stats = json(&body);
            last = body;
            let done = stats["segments"].as_u64() >= Some(1)
                && stats["memtable"] == 0
                && stats["compacting"] == false;
            if !done {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            done
        });
        assert!(settled, "the vault of {user} never sealed: {last}");
        keys.push((id, key));
    }
    (server, keys)
}

fn segment_dirs(vault: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(vault)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// Issue 12, item 7. Truncating a mapped segment file under the running server is the
/// classic reproducible I/O error on a mapped page (SIGBUS). Without containment the first
/// search of that vault kills the process; with it, that vault answers 503
/// `vault_unavailable` on every route while the other vault, `/healthz` and the process keep
/// going, and `/readyz` and `/metrics` report it.
#[test]
fn an_io_error_on_one_vaults_segment_is_a_503_for_that_vault_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, keys) = two_sealed_vaults(dir.path());
    let [(sick_id, sick), (_, well)] = [keys[0].clone(), keys[1].clone()];
    let vault = dir.path().join("vaults").join(&sick_id);
    for seg in segment_dirs(&vault) {
        for file in std::fs::read_dir(seg).unwrap().flatten() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(file.path())
                .unwrap()
                .set_len(0)
                .unwrap();
        }
    }
    let search = r#"{"query":"trains to Lyon","limit":5}"#;
    let prepare = r#"{"messages":[{"role":"user","content":"when do the trains to Lyon leave?"}]}"#;
    let calls: [(&str, &str, &str); 6] = [
        ("POST", "/v1/memory/search", search),
        ("POST", "/v1/memory/prepare", prepare),
        ("GET", "/v1/memory", ""),
        ("GET", "/v1/memory/export", ""),
        ("GET", "/v1/memory/1", ""),
        ("POST", "/v1/memory/search", search),
    ];
    for (method, path, body) in calls {
        let (status, answer) = server.request(method, path, Some(&sick), body).unwrap();
        assert_eq!(status, 503, "{method} {path}: {answer}");
        let error = &json(&answer)["error"];
        assert_eq!(error["code"], "vault_unavailable", "{answer}");
        assert_eq!(error["type"], "server_error", "{answer}");
        assert!(error["message"].is_string() && error.get("param").is_some());
        assert!(
            !answer.contains(dir.path().to_str().unwrap()),
            "no paths: {answer}"
        );
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "the process lives"
        );
    }
    for (method, path, body) in [
        ("POST", "/v1/memory/search", search),
        ("POST", "/v1/memory/prepare", prepare),
        ("GET", "/v1/memory", ""),
    ] {
        let (status, answer) = server.request(method, path, Some(&well), body).unwrap();
        assert_eq!(status, 200, "other vault, {method} {path}: {answer}");
    }
    let (_, answer) = server
        .request("POST", "/v1/memory/search", Some(&well), search)
        .unwrap();
    assert_eq!(json(&answer)["memories"].as_array().unwrap().len(), 5);
    assert_eq!(server.request("GET", "/healthz", None, "").unwrap().0, 200);
    let (status, answer) = server.request("GET", "/readyz", None, "").unwrap();
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("1 vault(s) cannot be read"), "{answer}");
    let (_, metrics) = server.request("GET", "/metrics", None, "").unwrap();
    assert!(
        metrics.contains("memoryrouter_vaults_unreadable 1"),
        "{metrics}"
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the process lives"
    );
    let (status, _) = server.terminate();
    assert!(
        status.success(),
        "a clean shutdown still exits 0: {status:?}"
    );
}

/// A segment directory the MANIFEST lists but that is gone (a bad disk, an operator's
/// mistake) is lost data: `verify` fails and names it.
#[test]
fn verify_fails_naming_a_lost_segment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (server, keys) = two_sealed_vaults(dir.path());
    let (status, _) = server.terminate();
    assert!(status.success());
    let (ok, report, stderr) = cli(&["verify", data]);
    assert!(ok, "{report}{stderr}");
    let vault = dir.path().join("vaults").join(&keys[0].0);
    let seg = segment_dirs(&vault).pop().unwrap();
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::remove_dir_all(&seg).unwrap();
    let (ok, report, stderr) = cli(&["verify", data]);
    assert!(!ok, "verify must fail: {report}");
    let line = format!("vault {}: LOST: MANIFEST lists segment {name}", keys[0].0);
    assert!(report.contains(&line), "{report}");
    assert!(stderr.contains(&name), "the error names it: {stderr}");
}
