//! Smoke tests of the real binary: first start, restart, SIGTERM, the CLI commands.

mod common;

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
