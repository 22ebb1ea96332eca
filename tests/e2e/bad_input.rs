//! Bad input gets an OpenAI-shaped error with the right status: never a panic, a hang or
//! a 500.

use hyper::Method;
use proptest::prelude::*;
use serde_json::{Value, json};
use tests::TestServer;

async fn raw(
    server: &TestServer,
    key: &str,
    path: &str,
    body: impl Into<bytes::Bytes>,
) -> tests::TestResponse {
    server
        .send(
            Method::POST,
            path,
            Some(key),
            &[("content-type", "application/json")],
            body,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_request_gets_the_right_status() {
    let server = TestServer::start_with(|c| {
        c.limits.body_bytes_max = 64 * 1024;
        c.limits.message_chars_max = 10_000;
        c.limits.messages_per_request_max = 50;
    })
    .await;
    let (_id, key) = server.mint_key("user").await;
    let msg = |content: Value| json!({"messages": [{"role": "user", "content": content}]});
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "invalid JSON",
            "/v1/memory/ingest",
            b"{\"messages\": [".to_vec(),
            400,
        ),
        ("empty body", "/v1/memory/prepare", Vec::new(), 400),
        (
            "not an object",
            "/v1/memory/prepare",
            b"[1,2]".to_vec(),
            400,
        ),
        (
            "missing messages",
            "/v1/memory/prepare",
            b"{}".to_vec(),
            400,
        ),
        (
            "messages wrong type",
            "/v1/memory/ingest",
            json!({"messages": "hi"}).to_string().into(),
            400,
        ),
        (
            "empty messages",
            "/v1/memory/ingest",
            json!({"messages": []}).to_string().into(),
            400,
        ),
        (
            "unknown role",
            "/v1/memory/ingest",
            json!({"messages": [{"role": "wizard", "content": "x"}]})
                .to_string()
                .into(),
            400,
        ),
        (
            "role wrong type",
            "/v1/memory/prepare",
            json!({"messages": [{"role": 3, "content": "x"}]})
                .to_string()
                .into(),
            400,
        ),
        (
            "content wrong type",
            "/v1/memory/ingest",
            msg(json!(42)).to_string().into(),
            400,
        ),
        (
            "content part without text",
            "/v1/memory/ingest",
            msg(json!([{"type": "text"}])).to_string().into(),
            400,
        ),
        (
            "content part not an object",
            "/v1/memory/ingest",
            msg(json!([7])).to_string().into(),
            400,
        ),
        (
            "context_limit wrong type",
            "/v1/memory/prepare",
            json!({"messages": [{"role": "user", "content": "x"}], "context_limit": "ten"})
                .to_string()
                .into(),
            400,
        ),
        (
            "unknown density",
            "/v1/memory/prepare",
            json!({"messages": [{"role": "user", "content": "x"}], "density": "ultra"})
                .to_string()
                .into(),
            422,
        ),
        (
            "bad created_at",
            "/v1/memory/ingest",
            json!({"messages": [{"role": "user", "content": "x", "created_at": "last tuesday"}]})
                .to_string()
                .into(),
            400,
        ),
        (
            "invalid UTF-8",
            "/v1/memory/ingest",
            b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(),
            400,
        ),
        (
            "deep JSON",
            "/v1/memory/prepare",
            "[".repeat(20_000).into_bytes(),
            400,
        ),
        (
            "megabyte-ish string",
            "/v1/memory/ingest",
            msg(json!("a".repeat(20_000))).to_string().into(),
            413,
        ),
        (
            "too many messages",
            "/v1/memory/ingest",
            json!({"messages": vec![json!({"role": "user", "content": "x"}); 51]})
                .to_string()
                .into(),
            413,
        ),
        (
            "huge body",
            "/v1/memory/ingest",
            vec![b' '; 200 * 1024],
            413,
        ),
        (
            "session id too long",
            "/v1/memory/ingest",
            json!({"messages": [{"role": "user", "content": "x"}], "session_id": "s".repeat(300)})
                .to_string()
                .into(),
            413,
        ),
        (
            "search query wrong type",
            "/v1/memory/search",
            json!({"query": 5}).to_string().into(),
            400,
        ),
        (
            "search empty query",
            "/v1/memory/search",
            json!({"query": "  "}).to_string().into(),
            400,
        ),
        (
            "bad filters",
            "/v1/memory/search",
            json!({"query": "x", "filters": {"roles": ["wizard"]}})
                .to_string()
                .into(),
            400,
        ),
    ];
    for (name, path, body, status) in cases {
        let response = raw(&server, &key, path, body).await;
        assert_eq!(response.status, status, "{name}: {}", response.text());
        response.assert_error(status);
    }
    // Nothing above was stored.
    assert!(server.contents(&key).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    server.get("/nope", Some(&key)).await.assert_error(404);
    server
        .get("/v1/memory/does-not-exist", Some(&key))
        .await
        .assert_error(404);
    server
        .get("/v1/memory/99999", Some(&key))
        .await
        .assert_error(404);
    server
        .send(Method::PATCH, "/v1/memory/ingest", Some(&key), &[], "{}")
        .await
        .assert_error(405);
    server
        .send(Method::PUT, "/v1/keys", Some(&key), &[], "{}")
        .await
        .assert_error(405);
    server
        .send(Method::POST, "/healthz", None, &[], "")
        .await
        .assert_error(405);
    server.stop().await;
}

#[test]
fn arbitrary_json_bodies_never_get_a_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, key) = runtime.block_on(async {
        let server = TestServer::start().await;
        let (_id, key) = server.mint_key("fuzz").await;
        (server, key)
    });
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z ]{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("user"),
            Just("assistant"),
            Just("system"),
            Just("tool"),
            Just("bogus")
        ]
        .prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("messages".to_owned()),
                    Just("role".to_owned()),
                    Just("content".to_owned()),
                    Just("query".to_owned()),
                    Just("session_id".to_owned()),
                    Just("filters".to_owned()),
                    Just("created_at".to_owned()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let path = prop_oneof![
        Just("/v1/memory/prepare"),
        Just("/v1/memory/ingest"),
        Just("/v1/memory/search"),
        Just("/v1/keys")
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    runner
        .run(&(path, value), |(path, body)| {
            let response = runtime.block_on(raw(&server, &key, path, body.to_string()));
            prop_assert!(
                response.status < 500,
                "{path} {body} -> {} {}",
                response.status,
                response.text()
            );
            if response.status >= 400 {
                response.assert_error(response.status);
            }
            Ok(())
        })
        .unwrap();
    runtime.block_on(server.stop());
}

/// Sends raw bytes on a fresh connection and reads until the server closes it (or a guard
/// of 10 s passes); returns status, headers (lower-cased) and body.
async fn raw_http(server: &TestServer, request: Vec<u8>) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The server may answer and close before every byte is written (oversized heads).
    let _ = stream.write_all(&request).await;
    // Read until the server closes, or until one whole response (head and `content-length`
    // bytes of body) has arrived: a 414 answered in-process has been seen to stay open.
    let mut out = Vec::new();
    let complete = |out: &[u8]| {
        let text = String::from_utf8_lossy(out);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        head.to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length: ").map(str::trim))
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| body.len() >= n)
    };
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if complete(&out) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head_len = head.len() + 4;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = out.get(head_len..).unwrap_or_default().to_vec();
    (status, head.to_ascii_lowercase(), body)
}

/// Requests hyper cannot parse (bad header bytes, `Content-Length: -1`, oversized heads, …)
/// get the same JSON error body as every other error, not an empty one, and the connection
/// is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_carry_the_json_error_body() {
    let server = TestServer::start().await;
    // Far past hyper's ~400 KB read buffer: a head only a little larger can arrive in one
    // read together with its end and be parsed before the limit is checked (seen: a 500 KB
    // header answered 200 about one run in twelve).
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2_000_000)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "bad header bytes",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x01Name: v\r\n\r\n".to_vec(),
            400,
            "invalid_http_request",
        ),
        (
            "header value with a control byte",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec(),
            400,
            "invalid_http_request",
        ),
        (
            "negative Content-Length",
            b"POST /v1/memory/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
            "invalid_http_request",
        ),
        (
            "two Content-Lengths",
            b"POST /v1/memory/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
            400,
            "invalid_http_request",
        ),
        (
            "bad method",
            b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "invalid_http_request",
        ),
        (
            "bad version",
            b"GET /healthz HTTP/7.0\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "invalid_http_request",
        ),
        (
            "not HTTP at all",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(),
            400,
            "invalid_http_request",
        ),
        (
            "oversized header",
            big_header.into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "too many headers",
            many_headers.into_bytes(),
            431,
            "headers_too_large",
        ),
        ("URI too long", long_uri.into_bytes(), 414, "uri_too_long"),
    ];
    for (name, request, status, code) in cases {
        let (got, head, body) = raw_http(&server, request).await;
        assert_eq!(got, status, "{name}: {head}");
        assert!(
            head.contains("content-type: application/json"),
            "{name}: {head}"
        );
        let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{name}: body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&body)
            )
        });
        let error = &json["error"];
        assert_eq!(error["code"], code, "{name}: {json}");
        assert_eq!(error["type"], "invalid_request_error", "{name}: {json}");
        assert!(error["message"].is_string() && error.get("param").is_some());
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{name}: {head}"
        );
    }
    // A good request on a kept-alive connection after all that is untouched.
    let (status, head, body) = raw_http(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(
        (status, body.as_slice()),
        (200, &br#"{"status":"ok"}"#[..]),
        "{head}"
    );
    server.stop().await;
}
