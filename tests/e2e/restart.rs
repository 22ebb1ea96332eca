//! Restarts keep every acknowledged memory, every key and every revocation, and never
//! rotate the admin key.

use serde_json::json;
use tests::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_memories_keys_and_revocations() {
    let server = TestServer::start().await;
    let admin = server.admin_key.clone();
    let (_a_id, a) = server.mint_key("a").await;
    let (b_id, b) = server.mint_key("b").await;
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let text = format!("Acknowledged memory number {i} about gardening.");
        server.ingest(&a, &text).await;
        acknowledged.push(text);
    }
    let put = server
        .send(
            hyper::Method::PUT,
            "/v1/provider-keys/openai",
            Some(&admin),
            &[],
            json!({"api_key": "sk-test-0123456789abcdef"}).to_string(),
        )
        .await;
    assert_eq!(put.status, 200);
    server
        .delete(&format!("/v1/keys/{b_id}"), Some(&admin))
        .await;

    let server = server.restart().await;
    assert_eq!(
        server.admin_key, admin,
        "restart never rotates the admin key"
    );
    let mut stored = server.contents(&a).await;
    stored.sort();
    acknowledged.sort();
    assert_eq!(stored, acknowledged);
    server.get("/v1/memory", Some(&b)).await.assert_error(401);
    let providers = server.get("/v1/provider-keys", Some(&admin)).await.json();
    assert_eq!(providers["providers"][0]["provider"], "openai");
    assert_eq!(providers["providers"][0]["hint"], "sk-…cdef");
    // Resending the same history after the restart stores nothing twice.
    let again = server
        .ingest(&a, "Acknowledged memory number 3 about gardening.")
        .await;
    assert_eq!(again["stored"], 0);
    assert_eq!(again["skipped"], 1);
    server.stop().await;
}
