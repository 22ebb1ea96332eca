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

/// Shutdown finishes a request already in flight, then stops accepting. `Expect:
/// 100-continue` makes the server say when the handler has started reading the body, so
/// the test knows the request is in flight before it signals shutdown: no sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_then_refuses_new_ones() {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

    let mut server = TestServer::start().await;
    let (_id, key) = server.mint_key("user").await;
    let body =
        json!({"messages": [{"role": "user", "content": "Written during shutdown."}]}).to_string();
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut stream = BufReader::new(stream);
    let head = format!(
        "POST /v1/memory/ingest HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line}");
    stream.read_line(&mut line).await.unwrap();

    server.begin_shutdown();
    stream.get_mut().write_all(body.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");

    let addr = server.addr;
    let data = server.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
    let server = TestServer::start_in(data, |_| {}).await;
    assert_eq!(
        server.contents(&key).await,
        vec!["Written during shutdown.".to_owned()]
    );
    server.stop().await;
}
