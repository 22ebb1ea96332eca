//! Keys: minting, listing, revocation, suffixes, header spellings, rate limiting.

use hyper::Method;
use serde_json::json;
use tests::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_gets_401_on_the_next_request() {
    let server = TestServer::start().await;
    let (id, key) = server.mint_key("user:1").await;
    assert_eq!(server.get("/v1/memory", Some(&key)).await.status, 200);
    let revoked = server
        .delete(&format!("/v1/keys/{id}"), Some(&server.admin_key))
        .await;
    assert_eq!(revoked.json()["revoked"], true);
    let code = server.get("/v1/memory", Some(&key)).await.assert_error(401);
    assert_eq!(code, "invalid_memory_key");
    server
        .ingest(&server.admin_key, "the admin key still works")
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_malformed_and_missing_keys_look_the_same() {
    let server = TestServer::start().await;
    let fake = format!("mk_{}", "A".repeat(43));
    let forged = format!("mk_{}", "A".repeat(49));
    let (_id, real) = server.mint_key("typo").await;
    // One mistyped character, and two neighbours swapped: the checksum refuses both.
    let typo: String = real
        .char_indices()
        .map(|(i, c)| match (i, c) {
            (20, 'x') => 'y',
            (20, _) => 'x',
            _ => c,
        })
        .collect();
    let swapped: String = {
        let mut chars: Vec<char> = real.chars().collect();
        let at = (3..chars.len() - 1)
            .find(|&i| chars[i] != chars[i + 1])
            .unwrap();
        chars.swap(at, at + 1);
        chars.into_iter().collect()
    };
    let mut bodies = Vec::new();
    for key in [
        None,
        Some("sk-openai-key"),
        Some(fake.as_str()),
        Some(forged.as_str()),
        Some(typo.as_str()),
        Some(swapped.as_str()),
        Some("mk_short"),
        Some(&format!("{}:sideways", server.admin_key)),
    ] {
        let response = server.get("/v1/memory", key).await;
        assert_eq!(response.assert_error(401), "invalid_memory_key");
        bodies.push(response.text());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "401 bodies must not reveal why: {bodies:?}"
    );
    server.stop().await;
}

/// CRC32 (IEEE, reflected, as zlib and secret scanners compute it), bit by bit: written
/// from the documented format, independently of the server's implementation.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// What a secret scanner does with a leaked key, offline: `mk_` + 49 base62 characters, the
/// last 6 the CRC32 of everything before them in base62 (`0-9A-Za-z`, big-endian).
fn scanner_accepts(key: &str) -> bool {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let Some(rest) = key.strip_prefix("mk_") else {
        return false;
    };
    if rest.len() != 49 || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (body, sum) = key.split_at(3 + 43);
    let value = sum.bytes().fold(0u64, |n, d| {
        n * 62 + DIGITS.iter().position(|x| *x == d).unwrap() as u64
    });
    value == u64::from(crc32(body.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_keys_carry_a_checksum_a_scanner_can_verify_offline() {
    let server = TestServer::start().await;
    assert!(scanner_accepts(&server.admin_key), "{}", server.admin_key);
    for name in ["a", "b", "c"] {
        let (_id, key) = server.mint_key(name).await;
        assert!(scanner_accepts(&key), "{key}");
        let mut typo = key.clone().into_bytes();
        typo[20] = if typo[20] == b'x' { b'y' } else { b'x' };
        assert!(!scanner_accepts(std::str::from_utf8(&typo).unwrap()));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_without_secrets_and_only_for_the_admin() {
    let server = TestServer::start().await;
    let (id, key) = server.mint_key("user:42").await;
    let minted_by_user = server.post("/v1/keys", Some(&key), &json!({})).await;
    assert_eq!(minted_by_user.status, 201, "any active key may mint");
    assert_eq!(
        server.get("/v1/keys", Some(&key)).await.assert_error(403),
        "admin_key_required"
    );

    let listed = server.get("/v1/keys", Some(&server.admin_key)).await;
    assert_eq!(listed.status, 200);
    let text = listed.text();
    assert!(
        !text.contains(&key) && !text.contains(&server.admin_key),
        "keys never listed"
    );
    let keys = listed.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 3);
    let mine = keys.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert_eq!(mine["name"], "user:42");
    assert_eq!(mine["revoked"], false);
    assert!(mine["last_used_at"].is_string(), "used above: {mine}");
    assert_eq!(mine["prefix"].as_str().unwrap(), &key[..7]);

    let long_name = json!({"name": "x".repeat(257)});
    server
        .post("/v1/keys", Some(&server.admin_key), &long_name)
        .await
        .assert_error(400);
    // A user key cannot revoke another key, and nobody learns whether it exists.
    let (other_id, _) = server.mint_key("user:43").await;
    server
        .delete(&format!("/v1/keys/{other_id}"), Some(&key))
        .await
        .assert_error(404);
    server
        .delete("/v1/keys/key_doesnotexist0000", Some(&server.admin_key))
        .await
        .assert_error(404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_spellings_and_mode_suffixes() {
    let server = TestServer::start().await;
    let (_id, key) = server.mint_key("user").await;
    let ingest =
        json!({"messages": [{"role": "user", "content": "I keep bees on the roof terrace."}]});
    let ask =
        json!({"messages": [{"role": "user", "content": "Tell me about the bees on the roof"}]});

    // `:read` stores nothing; `:off` neither stores nor retrieves.
    let read = server
        .post("/v1/memory/ingest", Some(&format!("{key}:read")), &ingest)
        .await;
    assert_eq!(read.status, 202);
    assert_eq!(read.json()["stored"], 0);
    let off = server
        .post("/v1/memory/ingest", Some(&format!("{key}:off")), &ingest)
        .await;
    assert_eq!(off.json()["stored"], 0);
    assert!(server.contents(&key).await.is_empty());

    // x-api-key and X-Memory-Key (BYOK) both authenticate; `:write` stores.
    let stored = server
        .send(
            Method::POST,
            "/v1/memory/ingest",
            None,
            &[("x-api-key", &format!("{key}:write"))],
            ingest.to_string(),
        )
        .await;
    assert_eq!(stored.json()["stored"], 1);
    let write_only = server
        .post("/v1/memory/prepare", Some(&format!("{key}:write")), &ask)
        .await
        .json();
    assert_eq!(write_only["memories_found"], 0);
    let byok = server
        .send(
            Method::POST,
            "/v1/memory/prepare",
            Some("sk-provider-key"),
            &[("x-memory-key", &key)],
            ask.to_string(),
        )
        .await;
    assert_eq!(byok.json()["memories_found"], 1);

    // Precedence: body > query > header > suffix.
    let mut overridden = ask.clone();
    overridden["memory_mode"] = json!("all");
    let body_wins = server
        .send(
            Method::POST,
            "/v1/memory/prepare?mode=off",
            Some(&format!("{key}:off")),
            &[("x-memory-mode", "none")],
            overridden.to_string(),
        )
        .await;
    assert_eq!(body_wins.json()["memories_found"], 1);
    let header_wins = server
        .send(
            Method::POST,
            "/v1/memory/prepare",
            Some(&key),
            &[("x-memory-mode", "write")],
            ask.to_string(),
        )
        .await;
    assert_eq!(header_wins.json()["memories_found"], 0);
    server
        .send(
            Method::POST,
            "/v1/memory/prepare",
            Some(&key),
            &[("x-memory-mode", "maybe")],
            ask.to_string(),
        )
        .await
        .assert_error(400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after() {
    let server = TestServer::start_with(|c| c.limits.requests_per_minute = 3).await;
    let (_id, key) = server.mint_key("user").await;
    for _ in 0..3 {
        assert_eq!(server.get("/v1/memory", Some(&key)).await.status, 200);
    }
    let limited = server.get("/v1/memory", Some(&key)).await;
    assert_eq!(limited.assert_error(429), "rate_limit_exceeded");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let (_other, other) = server.mint_key("other").await;
    assert_eq!(
        server.get("/v1/memory", Some(&other)).await.status,
        200,
        "limits are per key"
    );
    server.stop().await;
}
