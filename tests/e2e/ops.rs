//! Health, readiness, metrics, and what the data directory looks like.

use std::os::unix::fs::PermissionsExt as _;

use tests::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_prometheus_metrics() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/healthz", None).await.json()["status"], "ok");
    assert_eq!(server.get("/readyz", None).await.json()["status"], "ready");
    let (_id, key) = server.mint_key("user").await;
    server.ingest(&key, "Metrics should see this ingest.").await;
    server.prepare(&key, "metrics ingest").await;
    let metrics = server.get("/metrics", None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text();
    for needle in [
        "memoryrouter_request_duration_seconds_bucket{route=\"POST /v1/memory/prepare\",le=\"+Inf\"} 1",
        "memoryrouter_request_duration_seconds_count{route=\"POST /v1/memory/ingest\"} 1",
        "memoryrouter_retrieval_duration_seconds_count 1",
        "memoryrouter_open_vaults 1",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    // The open vault holds the ingested memory: its heap estimate is counted.
    let bytes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("memoryrouter_open_vaults_memory_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no memory gauge:\n{text}"));
    assert!(bytes > 0, "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_owner_only_and_logs_of_the_catalog_hold_no_key() {
    let server = TestServer::start().await;
    for name in ["admin.key", "secret.key"] {
        let mode = std::fs::metadata(server.data_dir().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let (_id, key) = server.mint_key("user").await;
    let admin = server.admin_key.clone();
    let data = server.stop().await;
    for entry in std::fs::read_dir(data.path().join("catalog"))
        .unwrap()
        .flatten()
    {
        let bytes = std::fs::read(entry.path()).unwrap();
        for secret in [&key, &admin] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a key is stored in plaintext"
            );
        }
    }
}
