//! The memory API: sessions, list/get/delete/clear, export/import, upload, warmup, stats,
//! provider keys, and the admin `?key_id=` extension.

use hyper::Method;
use serde_json::json;
use tests::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_is_idempotent_and_honours_roles_sessions_and_flags() {
    let server = TestServer::start().await;
    let (_id, key) = server.mint_key("user").await;
    let history = json!({
        "session_id": "chat-1",
        "model": "openai/gpt-test",
        "metadata": {"source": "test"},
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "My favourite colour is teal.", "created_at": "2025-01-02T03:04:05Z"},
            {"role": "assistant", "content": [{"type": "text", "text": "Teal is lovely."}]},
            {"role": "user", "content": "Do not remember this password: hunter2", "memory": false},
        ]
    });
    let first = server.post("/v1/memory/ingest", Some(&key), &history).await;
    assert_eq!(first.status, 202);
    assert_eq!(first.json()["stored"], 2);
    assert_eq!(first.json()["skipped"], 2);
    let second = server
        .post("/v1/memory/ingest", Some(&key), &history)
        .await
        .json();
    assert_eq!(
        second["stored"], 0,
        "resending the history stores nothing: {second}"
    );

    let listed = server.get("/v1/memory", Some(&key)).await.json();
    let memories = listed["memories"].as_array().unwrap();
    assert_eq!(memories.len(), 2);
    let teal = memories.iter().find(|m| m["role"] == "user").unwrap();
    assert_eq!(teal["created_at"], "2025-01-02T03:04:05.000Z");
    assert_eq!(teal["session_id"], "chat-1");
    assert_eq!(teal["model"], "openai/gpt-test");
    assert_eq!(teal["metadata"]["source"], "test");
    let everything = server.get("/v1/memory/export", Some(&key)).await.text();
    assert!(!everything.contains("hunter2") && !everything.contains("You are helpful"));

    // The header names the session when the body does not.
    let by_header = server
        .send(
            Method::POST,
            "/v1/memory/ingest",
            Some(&key),
            &[("x-session-id", "chat-2")],
            json!({"messages": [{"role": "user", "content": "Second chat fact."}]}).to_string(),
        )
        .await;
    assert_eq!(by_header.status, 202);
    let chat2 = server
        .get("/v1/memory?session_id=chat-2", Some(&key))
        .await
        .json();
    assert_eq!(chat2["memories"].as_array().unwrap().len(), 1);
    // Epoch milliseconds work for backfill too.
    let backfill = json!({"messages": [{"role": "user", "content": "Backfilled.", "created_at": 1_600_000_000_000_i64}]});
    server
        .post("/v1/memory/ingest", Some(&key), &backfill)
        .await;
    let found = server
        .post(
            "/v1/memory/search",
            Some(&key),
            &json!({"query": "Backfilled"}),
        )
        .await
        .json();
    assert_eq!(
        found["memories"][0]["created_at"],
        "2020-09-13T12:26:40.000Z"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_get_delete_and_clear() {
    let server = TestServer::start().await;
    let (_id, key) = server.mint_key("user").await;
    for i in 0..7 {
        let session = if i % 2 == 0 { "even" } else { "odd" };
        let body = json!({"session_id": session, "messages": [{"role": "user", "content": format!("Numbered fact {i} about owls.")}]});
        server.post("/v1/memory/ingest", Some(&key), &body).await;
    }
    let page1 = server.get("/v1/memory?limit=3", Some(&key)).await.json();
    assert_eq!(page1["memories"].as_array().unwrap().len(), 3);
    assert_eq!(
        page1["memories"][0]["content"], "Numbered fact 6 about owls.",
        "newest first"
    );
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let page2 = server
        .get(&format!("/v1/memory?limit=3&cursor={cursor}"), Some(&key))
        .await
        .json();
    assert_eq!(
        page2["memories"][0]["content"],
        "Numbered fact 3 about owls."
    );
    server
        .get("/v1/memory?cursor=abc", Some(&key))
        .await
        .assert_error(400);

    let id = page1["memories"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .get(&format!("/v1/memory/{id}"), Some(&key))
            .await
            .json()["content"],
        "Numbered fact 6 about owls."
    );
    assert_eq!(
        server
            .delete(&format!("/v1/memory/{id}"), Some(&key))
            .await
            .status,
        200
    );
    server
        .get(&format!("/v1/memory/{id}"), Some(&key))
        .await
        .assert_error(404);
    server
        .delete(&format!("/v1/memory/{id}"), Some(&key))
        .await
        .assert_error(404);
    let search = server
        .post(
            "/v1/memory/search",
            Some(&key),
            &json!({"query": "Numbered fact 6 owls", "limit": 10}),
        )
        .await
        .json();
    assert!(
        search["memories"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"] != id.as_str()),
        "a deleted memory never comes back"
    );

    let cleared = server
        .send(
            Method::DELETE,
            "/v1/memory",
            Some(&key),
            &[("x-session-id", "odd")],
            "",
        )
        .await
        .json();
    assert_eq!(cleared["deleted"], 3);
    assert_eq!(server.contents(&key).await.len(), 3);
    let reset = server
        .delete("/v1/memory?reset=true", Some(&key))
        .await
        .json();
    assert_eq!(reset["deleted"], 3);
    assert!(server.contents(&key).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_and_upload_round_trip() {
    let server = TestServer::start().await;
    let (_a_id, a) = server.mint_key("a").await;
    let (_b_id, b) = server.mint_key("b").await;
    for i in 0..5 {
        server
            .ingest(&a, &format!("Exported fact {i} about lighthouses."))
            .await;
    }
    let exported = server.get("/v1/memory/export", Some(&a)).await;
    assert_eq!(exported.status, 200);
    assert_eq!(exported.text().lines().count(), 5);
    let imported = server
        .send(
            Method::POST,
            "/v1/memory/import",
            Some(&b),
            &[],
            exported.body.clone(),
        )
        .await
        .json();
    assert_eq!(imported["imported"], 5);
    let mut a_contents = server.contents(&a).await;
    let mut b_contents = server.contents(&b).await;
    a_contents.sort();
    b_contents.sort();
    assert_eq!(a_contents, b_contents);

    let upload = "{\"content\":\"Uploaded one\"}\nnot json\n{\"content\":\"Uploaded two\",\"role\":\"assistant\",\"timestamp\":1700000000000}\n";
    let answer = server
        .send(
            Method::POST,
            "/v1/memory/upload",
            Some(&b),
            &[("content-type", "text/plain")],
            upload,
        )
        .await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["status"], "partial");
    assert_eq!(body["stats"]["inputItems"], 3);
    assert_eq!(body["stats"]["stored"], 2);
    assert_eq!(body["stats"]["failed"], 1);
    assert_eq!(body["errors"][0]["line"], 2);
    // The upload's X-Session-ID is held to the bound of every session id.
    let long_session = "s".repeat(300);
    server
        .send(
            Method::POST,
            "/v1/memory/upload",
            Some(&b),
            &[("x-session-id", &long_session)],
            "{\"content\":\"x\"}\n",
        )
        .await
        .assert_error(413);
    let too_many = "{\"content\":\"x\"}\n".repeat(10_001);
    server
        .send(Method::POST, "/v1/memory/upload", Some(&b), &[], too_many)
        .await
        .assert_error(413);

    let warm = server
        .post("/v1/memory/warmup", Some(&b), &json!({}))
        .await
        .json();
    assert_eq!(warm["status"], "warm");
    assert_eq!(warm["memories_loaded"], 7);
    let stats = server.get("/v1/memory/stats", Some(&b)).await.json();
    assert_eq!(stats["memories"], 7);
    assert!(stats["embedder"].is_string() && stats["dimension"].as_u64().unwrap() > 0);
    assert!(stats["last_write"].is_string());
    // Seven memories sit in the memtable: nothing to seal or compact, and a heap to count.
    assert_eq!(stats["compacting"], false, "{stats}");
    assert!(stats["memory_bytes"].as_u64().unwrap() > 0, "{stats}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_extras_and_provider_keys() {
    let server = TestServer::start().await;
    let admin = server.admin_key.clone();
    let (a_id, a) = server.mint_key("a").await;
    server.ingest(&a, "A fact for the dashboard.").await;

    let listed = server
        .get(&format!("/v1/memory?key_id={a_id}"), Some(&admin))
        .await
        .json();
    assert_eq!(
        listed["memories"][0]["content"],
        "A fact for the dashboard."
    );
    assert_eq!(
        server
            .get(&format!("/v1/memory/stats?key_id={a_id}"), Some(&admin))
            .await
            .json()["memories"],
        1
    );
    let (b_id, _b) = server.mint_key("b").await;
    server
        .get(&format!("/v1/memory?key_id={b_id}"), Some(&a))
        .await
        .assert_error(403);
    server
        .get("/v1/memory?key_id=key_0000000000000000", Some(&admin))
        .await
        .assert_error(404);

    let overview = server.get("/v1/admin/overview", Some(&admin)).await;
    assert_eq!(overview.status, 200);
    let overview = overview.json();
    assert!(overview["memories"].as_u64().unwrap() >= 1);
    assert_eq!(overview["keys"], 3);
    assert!(
        overview["requests"]["POST /v1/memory/ingest"]["count"]
            .as_u64()
            .unwrap()
            >= 1
    );
    server
        .get("/v1/admin/overview", Some(&a))
        .await
        .assert_error(403);

    let put = |provider: &str, body: serde_json::Value, key: &str| {
        let path = format!("/v1/provider-keys/{provider}");
        let key = key.to_owned();
        let server = &server;
        async move {
            server
                .send(Method::PUT, &path, Some(&key), &[], body.to_string())
                .await
        }
    };
    let stored = put(
        "openai",
        json!({"api_key": "sk-live-abcdefghijklmnop"}),
        &admin,
    )
    .await;
    assert_eq!(stored.status, 200);
    assert_eq!(stored.json()["hint"], "sk-…mnop");
    put("openai", json!({"api_key": "sk-x"}), &a)
        .await
        .assert_error(403);
    put("Bad%20Name", json!({"api_key": "sk-x"}), &admin)
        .await
        .assert_error(400);
    put(
        "vllm",
        json!({"api_key": "k", "base_url": "ftp://x"}),
        &admin,
    )
    .await
    .assert_error(400);
    let listed = server.get("/v1/provider-keys", Some(&admin)).await;
    assert!(
        !listed.text().contains("abcdefghijklmnop"),
        "listed masked: {}",
        listed.text()
    );
    assert_eq!(
        server
            .delete("/v1/provider-keys/openai", Some(&admin))
            .await
            .status,
        200
    );
    server
        .delete("/v1/provider-keys/openai", Some(&admin))
        .await
        .assert_error(404);
    for entry in walk(server.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(16).any(|w| w == b"abcdefghijklmnop"),
            "provider key in plaintext in {entry:?}"
        );
    }
    server.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
