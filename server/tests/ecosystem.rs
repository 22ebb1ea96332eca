//! What integrators and operators meet around the server, on the real binary: the served
//! OpenAPI document, the 405's `Allow` header, `health` (the container's health check),
//! `keys list --json`, and the progress bars of the long commands — drawn on a terminal,
//! absent in pipes and with `--quiet`.

mod common;

use std::io::{Read as _, Write as _};
use std::process::Command;

use common::{BIN, Binary, admin_key, cli, json, mint};

/// A raw request, returning the whole answer head and body (the common client drops headers).
fn raw(addr: &str, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn openapi_is_served_without_a_key_405_names_the_methods_and_health_follows_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(dir.path(), &[]);
    let (status, body) = server.request("GET", "/openapi.json", None, "").unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, include_str!("../../docs/openapi.json"));
    assert_eq!(json(&body)["openapi"], "3.1.0");

    let answer = raw(
        &server.addr,
        "PUT /v1/memory/search HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_lowercase().contains("\r\nallow: post\r\n"),
        "{answer}"
    );

    let url = format!("http://{}/readyz", server.addr);
    let (ok, _, stderr) = cli(&["health", "--url", &url]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&["health", "--url", &format!("http://{}/nope", server.addr)]);
    assert!(!ok && stderr.contains("404"), "{stderr}");
    let (status, _) = server.terminate();
    assert!(status.success());
    let (ok, _, stderr) = cli(&["health", "--url", &url]);
    assert!(
        !ok && stderr.contains("health check"),
        "a stopped server is unhealthy: {stderr}"
    );
}

#[test]
fn keys_list_json_is_one_array_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = cli(&["keys", "create", "--name", "json-user", "--data-dir", data]);
    assert!(ok, "{stderr}");
    let key = stdout
        .lines()
        .rfind(|l| l.starts_with("mk_"))
        .unwrap()
        .trim()
        .to_owned();
    let (ok, listing, stderr) = cli(&["keys", "list", "--json", "--data-dir", data]);
    assert!(ok, "{stderr}");
    assert!(!listing.contains(&key), "the key itself is never listed");
    let keys = json(&listing);
    let keys = keys.as_array().expect("one JSON array");
    assert_eq!(keys.len(), 2, "the admin key and the new one: {listing}");
    let user = keys.iter().find(|k| k["name"] == "json-user").unwrap();
    assert_eq!(user["admin"], false);
    assert_eq!(user["revoked"], false);
    assert_eq!(user["prefix"], &key[..7]);
    assert!(user["id"].as_str().unwrap().starts_with("key_"));
}

/// Runs the binary under `script`, so its stdout and stderr are a terminal; returns what
/// the terminal showed. `None` when `script` (util-linux) is not installed.
fn on_a_terminal(args: &[&str]) -> Option<String> {
    let which = Command::new("sh")
        .args(["-c", "command -v script"])
        .output()
        .ok()?;
    if !which.status.success() {
        return None;
    }
    let command = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("MEMORYROUTER_LOG", "warn")
        .output()
        .expect("run script");
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{shown}");
    Some(shown)
}

/// The bar's own words: its label and the ETA of its template.
fn has_bar(text: &str, label: &str) -> bool {
    text.contains(label) && text.contains("ETA")
}

/// On a terminal `export`, `import` and `verify` draw a bar with rate and ETA; with
/// `--quiet`, or when stderr is a pipe, nothing of it appears. (Broken once by ignoring
/// `--quiet`: the quiet checks went red. Forcing our terminal check to true left the pipe
/// checks green: indicatif's stderr target itself draws nothing when stderr is no terminal.)
#[test]
fn progress_bars_only_on_a_terminal_and_never_with_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let server = Binary::serve(dir.path(), &[]);
    let admin = admin_key(dir.path());
    let (id, key) = mint(&server, &admin, "progress");
    let messages: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"role":"user","content":"Progress note number {i}."}}"#))
        .collect();
    let ingest = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
    let (status, body) = server
        .request("POST", "/v1/memory/ingest", Some(&key), &ingest)
        .unwrap();
    assert_eq!(status, 202, "{body}");
    server.terminate();
    let out = dir.path().join("export.jsonl");
    let out = out.to_str().unwrap();
    let export = ["export", "--key-id", &id, "--out", out, "--data-dir", data];
    let import = ["import", "--key-id", &id, out, "--data-dir", data];
    let verify = ["verify", data];

    // Pipes: no bar, whatever the command; the summaries stay.
    let (ok, _, stderr) = cli(&export);
    assert!(ok && !stderr.contains("ETA"), "{stderr}");
    assert!(stderr.contains("exported 40 memories"), "{stderr}");
    let (ok, _, stderr) = cli(&import);
    assert!(ok && !stderr.contains("ETA"), "{stderr}");
    let (ok, stdout, stderr) = cli(&verify);
    assert!(
        ok && !stderr.contains("ETA") && !stdout.contains("ETA"),
        "{stderr}"
    );

    let Some(shown) = on_a_terminal(&export) else {
        eprintln!("SKIPPED the terminal half: `script` (util-linux) is not installed");
        return;
    };
    assert!(has_bar(&shown, "exporting"), "{shown}");
    assert!(shown.contains("40/40"), "{shown}");
    let shown = on_a_terminal(&import).unwrap();
    assert!(has_bar(&shown, "importing"), "{shown}");
    let shown = on_a_terminal(&verify).unwrap();
    assert!(has_bar(&shown, "verifying vaults"), "{shown}");
    assert!(shown.contains("every checksum matches"), "{shown}");

    for quiet in [&export[..], &import[..], &verify[..]] {
        let args: Vec<&str> = quiet.iter().copied().chain(["--quiet"]).collect();
        let shown = on_a_terminal(&args).unwrap();
        assert!(!shown.contains("ETA"), "{args:?}: {shown}");
    }
    let shown = on_a_terminal(&[&export[..], &["--quiet"]].concat()).unwrap();
    assert!(
        !shown.contains("exported"),
        "--quiet drops the summary: {shown}"
    );
}
