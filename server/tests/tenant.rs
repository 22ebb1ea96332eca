//! Tenant safety through the real binary (issue 14 items 1, 2, 9; issue 12 item 8's
//! catalog part): key lineage and the minting policy, the active-key cap, per-account and
//! per-key proxy limits, the audit log, and a catalog that survives one damaged file.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;

use common::{Binary, admin_key, json, mint, read_request};

/// One request with extra headers; returns (status, head, body).
fn raw(addr: &str, method: &str, path: &str, key: &str, body: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn mint_with(binary: &Binary, key: &str, name: &str) -> (u16, serde_json::Value) {
    let (status, body) = binary
        .request(
            "POST",
            "/v1/keys",
            Some(key),
            &format!("{{\"name\":\"{name}\"}}"),
        )
        .unwrap();
    (status, json(&body))
}

fn works(binary: &Binary, key: &str) -> bool {
    let (status, _) = binary
        .request("GET", "/v1/memory/stats", Some(key), "")
        .unwrap();
    assert!(status == 200 || status == 401, "{status}");
    status == 200
}

fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Every key records its minter; revoking one revokes its whole subtree (and says how many),
/// a user key may revoke what it minted but not its minter, and the rest keeps working.
#[test]
fn revoking_a_key_revokes_every_key_it_minted() {
    let dir = tempfile::tempdir().unwrap();
    let binary = Binary::serve(dir.path(), &[]);
    let admin = admin_key(dir.path());
    let (a_id, a) = mint(&binary, &admin, "a");
    let (status, b) = mint_with(&binary, &a, "b");
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["parent_id"], a_id.as_str());
    let b_key = b["key"].as_str().unwrap().to_owned();
    let (_, c) = mint_with(&binary, &b_key, "c");
    let c_key = c["key"].as_str().unwrap().to_owned();
    let (_, c2) = mint_with(&binary, &b_key, "c2");
    let (sibling_id, sibling) = mint(&binary, &admin, "sibling");

    // c cannot revoke its minter (not found, as any key outside its reach)...
    let (status, _) = binary
        .request(
            "DELETE",
            &format!("/v1/keys/{}", b["id"].as_str().unwrap()),
            Some(&c_key),
            "",
        )
        .unwrap();
    assert_eq!(status, 404);
    // ...b may revoke what it minted.
    let (status, body) = binary
        .request(
            "DELETE",
            &format!("/v1/keys/{}", c2["id"].as_str().unwrap()),
            Some(&b_key),
            "",
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["revoked_keys"], 1);

    let (status, body) = binary
        .request("DELETE", &format!("/v1/keys/{a_id}"), Some(&admin), "")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let body = json(&body);
    assert_eq!(body["revoked"], true, "the old field stays");
    assert_eq!(body["revoked_keys"], 3, "a, b and c: {body}");
    for key in [&a, &b_key, &c_key] {
        assert!(
            !works(&binary, key),
            "a key below the revoked one still works"
        );
    }
    assert!(works(&binary, &sibling) && works(&binary, &admin));
    // Revoked keys cannot mint; the list shows lineage.
    let (status, _) = mint_with(&binary, &c_key, "late");
    assert_eq!(status, 401);
    let (_, list) = binary.request("GET", "/v1/keys", Some(&admin), "").unwrap();
    let list = json(&list);
    let sibling_row = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == sibling_id.as_str())
        .unwrap();
    assert!(sibling_row["parent_id"].is_string());
    drop(binary);

    // After a restart the whole subtree stays revoked.
    let binary = Binary::serve(dir.path(), &[]);
    for key in [&a, &b_key, &c_key] {
        assert!(!works(&binary, key));
    }
    assert!(works(&binary, &sibling));
}

/// A data directory written before key lineage and the catalog's second copy (key records
/// without `parent_id`, no `catalog-mirror/`) serves as before: its keys work, list with no
/// parent, mint children and revoke; the mirror is written at the first start.
#[test]
fn a_data_directory_from_before_lineage_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    // Keys of 43 random digits (before checksums) stay valid, so a test can write them.
    let admin = format!("mk_{}", &"Ad9m".repeat(11)[..43]);
    let user = format!("mk_{}", &"Us3r".repeat(11)[..43]);
    {
        let options = wal::WalOptions {
            durability: wal::Durability::Fsync,
            ..wal::WalOptions::default()
        };
        let (log, _) = wal::Wal::open(&dir.path().join("catalog"), options).unwrap();
        log.append(1, br#"{"id":"acct_old","created_at_ms":1}"#)
            .unwrap();
        for (id, key, is_admin) in [("key_admin", &admin, true), ("key_user", &user, false)] {
            let record = format!(
                r#"{{"id":"{id}","account_id":"acct_old","name":null,"hash":"{}","hint":"{}","is_admin":{is_admin},"created_at_ms":2}}"#,
                sha256_hex(key),
                &key[..7]
            );
            log.append(2, record.as_bytes()).unwrap();
        }
    }
    assert!(!dir.path().join("catalog-mirror").exists());
    let binary = Binary::serve(dir.path(), &[]);
    assert!(
        !dir.path().join("admin.key").exists(),
        "no new admin key was minted"
    );
    assert!(works(&binary, &admin) && works(&binary, &user));
    let (_, list) = binary.request("GET", "/v1/keys", Some(&admin), "").unwrap();
    let list = json(&list);
    assert_eq!(list["keys"].as_array().unwrap().len(), 2, "{list}");
    assert!(
        list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["parent_id"].is_null())
    );
    let (status, child) = mint_with(&binary, &user, "child");
    assert_eq!(
        (status, &child["parent_id"]),
        (201, &serde_json::json!("key_user"))
    );
    let child_key = child["key"].as_str().unwrap().to_owned();
    let (status, body) = binary
        .request("DELETE", "/v1/keys/key_user", Some(&admin), "")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["revoked_keys"], 2);
    assert!(!works(&binary, &user) && !works(&binary, &child_key));
    let (status, _) = binary.terminate();
    assert!(status.success());
    assert!(dir.path().join("catalog-mirror").is_dir());
    let binary = Binary::serve(dir.path(), &[]);
    assert!(works(&binary, &admin) && !works(&binary, &user));
    let (_, metrics) = binary.request("GET", "/metrics", None, "").unwrap();
    assert!(
        metrics.contains("memoryrouter_catalog_repairs 0"),
        "writing the mirror is no repair"
    );
}

/// `[keys] mint = "admin"`: a user key's mint is a 403 in the error shape; the admin key
/// still mints. And `[keys] active_max`: past it a 409, and revoking makes room.
#[test]
fn minting_policy_and_active_key_cap() {
    let dir = tempfile::tempdir().unwrap();
    let binary = Binary::serve_with_env(
        dir.path(),
        &[],
        &[
            ("MEMORYROUTER_KEYS_MINT", "admin"),
            ("MEMORYROUTER_KEYS_ACTIVE_MAX", "3"),
        ],
    );
    let admin = admin_key(dir.path());
    let (user_id, user) = mint(&binary, &admin, "user");
    let (status, body) = mint_with(&binary, &user, "child");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["type"], "permission_error");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("mint"),
        "{body}"
    );
    mint(&binary, &admin, "second");
    // admin + user + second = 3 active keys.
    let (status, body) = mint_with(&binary, &admin, "fourth");
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_code(&body), "active_keys_max");
    let (status, _) = binary
        .request("DELETE", &format!("/v1/keys/{user_id}"), Some(&admin), "")
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = mint_with(&binary, &admin, "fourth");
    assert_eq!(status, 201, "{body}");
    drop(binary);

    // The default policy lets a user key mint (the hosted contract).
    let dir = tempfile::tempdir().unwrap();
    let binary = Binary::serve(dir.path(), &[]);
    let (_, user) = mint(&binary, &admin_key(dir.path()), "user");
    assert_eq!(mint_with(&binary, &user, "child").0, 201);
}

/// The account's limit counts every key together; the per-key limit stays per key. Both
/// answer 429 in the error shape with `Retry-After`.
#[test]
fn the_account_limit_bounds_all_its_keys_together() {
    let dir = tempfile::tempdir().unwrap();
    let binary = Binary::serve_with_env(
        dir.path(),
        &[],
        &[("MEMORYROUTER_ACCOUNT_REQUESTS_PER_MINUTE", "8")],
    );
    let admin = admin_key(dir.path());
    let (_, one) = mint(&binary, &admin, "one"); // 1 request of the account's 8
    let (_, two) = mint(&binary, &admin, "two"); // 2
    let mut statuses = Vec::new();
    for i in 0..8 {
        let key = if i % 2 == 0 { &one } else { &two };
        let (status, head, body) = raw(&binary.addr, "GET", "/v1/memory/stats", key, "");
        if status == 429 {
            assert!(head.contains("retry-after: "), "{head}");
            let body = json(&body);
            assert_eq!(body["error"]["type"], "rate_limit_error");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("account"),
                "{body}"
            );
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 429, 429],
        "4 requests per key were well under the per-key limit"
    );
}

/// A key's proxied calls are bounded in requests and in estimated tokens: one leaked key
/// cannot spend the provider account faster than its budget; other keys are unaffected.
#[test]
fn a_key_s_proxy_budget_bounds_requests_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let binary = Binary::serve_with_env(
        dir.path(),
        &[],
        &[
            ("MEMORYROUTER_PROXY_REQUESTS_PER_MINUTE", "3"),
            ("MEMORYROUTER_PROXY_TOKENS_PER_MINUTE", "2000"),
        ],
    );
    let admin = admin_key(dir.path());
    let (_, leaked) = mint(&binary, &admin, "leaked");
    let (_, other) = mint(&binary, &admin, "other");
    // The provider (a closed local port) does not matter: the budget is checked first.
    let call = |key: &str, max_tokens: u32| {
        let body = format!(
            "{{\"model\":\"ollama/llama3\",\"max_tokens\":{max_tokens},\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}"
        );
        raw(&binary.addr, "POST", "/v1/chat/completions", key, &body)
    };
    // 1,500 tokens of 2,000: admitted; the next takes the bucket into debt; the third waits.
    assert_ne!(call(&leaked, 1500).0, 429);
    assert_ne!(call(&leaked, 1500).0, 429);
    let (status, head, body) = call(&leaked, 10);
    assert_eq!(status, 429, "{body}");
    assert!(head.contains("retry-after: "), "{head}");
    assert!(body.contains("proxy_tokens_per_minute"), "{body}");
    // Requests: three small calls from another key pass, the fourth does not.
    for _ in 0..3 {
        assert_ne!(call(&other, 1).0, 429);
    }
    let (status, head, body) = call(&other, 1);
    assert_eq!(status, 429, "{body}");
    assert!(head.contains("retry-after: "), "{head}");
    assert!(body.contains("proxy_requests_per_minute"), "{body}");
    // Memory endpoints are not proxied calls: the key still works there.
    assert!(works(&binary, &other));
}

/// A fake OpenAI-format provider on a loopback port that answers every call with an
/// assistant message of `answer_chars` characters; returns its base URL.
fn long_winded_provider(answer_chars: usize) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            read_request(&mut stream);
            let body = serde_json::json!({
                "id": "c1", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "a".repeat(answer_chars)}}]
            })
            .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/v1")
}

/// An answer longer than the call declared is charged after the fact: a key that asks for
/// no `max_tokens` cannot get unbounded answers on a small estimate.
#[test]
fn a_long_answer_is_charged_to_the_key_s_token_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nproxy_tokens_per_minute = 1000\n[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\nkey_required = false\n",
            long_winded_provider(8_000)
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let binary = Binary::serve(&data, &["--config", config.to_str().unwrap()]);
    let (_, key) = mint(&binary, &admin_key(&data), "user");
    let body = r#"{"model":"fake/m","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, answer) = raw(&binary.addr, "POST", "/v1/chat/completions", &key, body);
    assert_eq!(status, 200, "{answer}");
    // About 40 tokens estimated; the 8,000-character answer costs about 2,000 more.
    let (status, head, answer) = raw(&binary.addr, "POST", "/v1/chat/completions", &key, body);
    assert_eq!(status, 429, "{}", &answer[..answer.len().min(300)]);
    assert!(head.contains("retry-after: "), "{head}");
}

/// Every account action leaves one JSON line, retrievable by the admin key only, and no
/// secret ever reaches the file: no key text, no key hash, no provider key.
#[test]
fn the_audit_log_records_account_actions_and_never_a_secret() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let binary = Binary::serve(dir.path(), &[]);
    let admin = admin_key(dir.path());
    let (user_id, user) = mint(&binary, &admin, "user:42");
    let (_, child) = mint_with(&binary, &user, "child");
    let provider_secret = "sk-live-AUDIT-never-in-the-log-123456";
    let (status, body) = binary
        .request(
            "PUT",
            "/v1/provider-keys/openai",
            Some(&admin),
            &format!("{{\"api_key\":\"{provider_secret}\"}}"),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = binary
        .request("DELETE", "/v1/provider-keys/openai", Some(&admin), "")
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = binary
        .request(
            "POST",
            "/v1/memory/import",
            Some(&user),
            "{\"content\":\"imported fact\",\"role\":\"user\"}\n",
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = binary
        .request(
            "DELETE",
            &format!("/v1/keys/{user_id}?purge=true"),
            Some(&admin),
            "",
        )
        .unwrap();
    assert_eq!(status, 200);

    let (status, body) = binary
        .request("GET", "/v1/audit", Some(&admin), "")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let body = json(&body);
    let actions: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "key.create",
            "key.create",
            "provider_key.put",
            "provider_key.delete",
            "memory.import",
            "key.revoke",
            "vault.purge"
        ]
    );
    let revoke = &body["data"][5];
    assert_eq!(revoke["target"], user_id.as_str());
    assert_eq!(revoke["detail"]["revoked_keys"], 2);
    assert_eq!(body["data"][2]["target"], "openai");
    // Paging: one at a time from a time on, with a cursor.
    let since = body["data"][2]["at_ms"].as_i64().unwrap();
    let (_, page) = binary
        .request(
            "GET",
            &format!("/v1/audit?since={since}&limit=1"),
            Some(&admin),
            "",
        )
        .unwrap();
    let page = json(&page);
    assert_eq!(page["data"][0]["action"], "provider_key.put");
    assert_eq!(page["has_more"], true);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = binary
        .request(
            "GET",
            &format!("/v1/audit?since={since}&limit=1&cursor={cursor}"),
            Some(&admin),
            "",
        )
        .unwrap();
    assert_eq!(json(&next)["data"][0]["action"], "provider_key.delete");
    // Admin only; bad parameters are 400s in the error shape.
    let (_, other) = mint(&binary, &admin, "other");
    let (status, _) = binary
        .request("GET", "/v1/audit", Some(&other), "")
        .unwrap();
    assert_eq!(status, 403);
    let (status, body) = binary
        .request("GET", "/v1/audit?limit=0", Some(&admin), "")
        .unwrap();
    assert_eq!((status, error_code(&json(&body))), (400, "invalid_limit"));
    drop(binary);

    let path = dir.path().join("audit.jsonl");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    let child_key = child["key"].as_str().unwrap();
    for secret in [admin.as_str(), user.as_str(), child_key, provider_secret] {
        assert!(!text.contains(secret), "a secret in the audit log: {text}");
        // Nor a long piece of one (a hint is the first 7 characters, by design).
        assert!(
            !text.contains(&secret[..16]),
            "part of a secret in the audit log"
        );
        let hash = sha256_hex(secret);
        assert!(!text.contains(&hash), "a key hash in the audit log");
    }
}

/// One damaged catalog file does not stop every tenant: each file of either copy, in turn,
/// damaged (a flipped byte, cut to half, deleted): the server starts with every key, no
/// revoked key comes back, the repair shows in `/metrics`, and `verify` names the damage.
#[test]
fn the_server_starts_with_every_key_whichever_catalog_file_is_damaged() {
    let pristine = tempfile::tempdir().unwrap();
    let (keys, revoked) = {
        let binary = Binary::serve(pristine.path(), &[]);
        let admin = admin_key(pristine.path());
        let mut keys = vec![admin.clone()];
        for i in 0..5 {
            keys.push(mint(&binary, &admin, &format!("user:{i}")).1);
        }
        let (gone_id, gone) = mint(&binary, &admin, "gone");
        let (status, _) = binary
            .request("DELETE", &format!("/v1/keys/{gone_id}"), Some(&admin), "")
            .unwrap();
        assert_eq!(status, 200);
        let (status, _) = binary.terminate();
        assert!(status.success());
        (keys, gone)
    };
    let mut files = Vec::new();
    for copy in ["catalog", "catalog-mirror"] {
        for entry in std::fs::read_dir(pristine.path().join(copy)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() && std::fs::metadata(&path).unwrap().len() > 0 {
                files.push(path.strip_prefix(pristine.path()).unwrap().to_owned());
            }
        }
    }
    assert!(files.len() >= 2, "one file or more per copy: {files:?}");
    for file in &files {
        for damage in ["flip", "half", "delete"] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), dir.path());
            let path = dir.path().join(file);
            let bytes = std::fs::read(&path).unwrap();
            match damage {
                "flip" => {
                    let mut bytes = bytes;
                    let middle = bytes.len() / 2;
                    bytes[middle] ^= 0x40;
                    std::fs::write(&path, bytes).unwrap();
                }
                "half" => std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap(),
                _ => std::fs::remove_file(&path).unwrap(),
            }
            let what = format!("{damage} {}", file.display());
            if damage == "flip" {
                let (ok, _, _) = common::cli(&["verify", dir.path().to_str().unwrap()]);
                assert!(!ok, "{what}: verify must report the damage");
            }
            let binary = Binary::serve(dir.path(), &[]);
            for key in &keys {
                assert!(works(&binary, key), "{what}: a key stopped working");
            }
            assert!(!works(&binary, &revoked), "{what}: a revoked key came back");
            let (_, metrics) = binary.request("GET", "/metrics", None, "").unwrap();
            assert!(
                metrics.contains("memoryrouter_catalog_repairs 1"),
                "{what}: the repair is not reported"
            );
            let (status, _) = binary.terminate();
            assert!(status.success());
            // Repaired: both copies verify again.
            let (ok, out, err) = common::cli(&["verify", dir.path().to_str().unwrap()]);
            assert!(ok, "{what}: {out}{err}");
        }
    }
}

/// The operator's offline commands leave audit lines too (actor `cli`), and no key text.
#[test]
fn offline_key_commands_and_imports_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) =
        common::cli(&["keys", "create", "--name", "ops", "--data-dir", data]);
    assert!(ok, "{stderr}");
    let key = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("mk_"))
        .unwrap()
        .to_owned();
    let id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap()
        .to_owned();
    let lines = dir.path().join("memories.jsonl");
    std::fs::write(
        &lines,
        "{\"content\":\"an imported fact\",\"role\":\"user\"}\n",
    )
    .unwrap();
    let (ok, _, stderr) = common::cli(&[
        "import",
        "--key-id",
        &id,
        lines.to_str().unwrap(),
        "--data-dir",
        data,
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = common::cli(&["keys", "revoke", &id, "--data-dir", data]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let entries: Vec<serde_json::Value> = text.lines().map(json).collect();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("cli", "key.create"),
            ("cli", "memory.import"),
            ("cli", "key.revoke")
        ]
    );
    assert!(entries.iter().all(|e| e["target"] == id.as_str()));
    assert!(!text.contains(&key) && !text.contains(&key[..16]));
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
