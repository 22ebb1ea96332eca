//! End-to-end test harness: starts the real server in-process on `127.0.0.1:0` with a
//! temporary data directory (through `server::run`, exactly as `main` does), and a small
//! HTTP/1.1 client over loopback.
//!
//! ```no_run
//! # async fn example() {
//! let server = tests::TestServer::start().await;
//! let (_id, key) = server.mint_key("user:1").await;
//! let response = server.post("/v1/memory/ingest", Some(&key), &serde_json::json!({
//!     "messages": [{"role": "user", "content": "I like tea"}]
//! })).await;
//! assert_eq!(response.status, 202);
//! server.stop().await;
//! # }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use server::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the OpenAI error shape and the status; returns the error's `code`.
    pub fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        let body = self.json();
        let error = &body["error"];
        assert!(error["message"].is_string(), "no message: {body}");
        assert!(error["type"].is_string(), "no type: {body}");
        assert!(error.get("param").is_some(), "no param: {body}");
        assert!(error["code"].is_string(), "no code: {body}");
        error["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// A loopback HTTP client bound to one server.
#[derive(Clone)]
pub struct TestClient {
    pub base_url: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base_url: format!("http://{addr}"),
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request; `key` becomes `Authorization: Bearer`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_url));
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(body.into()))
            .expect("request builds");
        let response = self
            .http
            .request(request)
            .await
            .expect("request reaches the server");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body reads").to_bytes();
        TestResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub base_url: String,
    pub admin_key: String,
    pub client: TestClient,
    /// Kept alive for as long as any server uses it; restarts reuse it.
    pub data: Arc<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), server::Error>>>,
}

impl TestServer {
    /// A fresh server on a new temporary data directory with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A fresh server whose config `tweak` may change (limits, durability…).
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let data = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::start_in(data, tweak).await
    }

    /// A server on an existing data directory (restarts).
    pub async fn start_in(data: Arc<tempfile::TempDir>, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            data_dir: data.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(listener, config, async move {
            let _ = rx.await;
        }));
        let client = TestClient::new(addr);
        // The listener is bound, so this request waits in the accept queue until the server
        // has opened its data directory and serves: no polling, no sleeps.
        let ready = client
            .send(Method::GET, "/readyz", None, &[], Bytes::new())
            .await;
        assert_eq!(ready.status, 200, "server not ready: {}", ready.text());
        let admin_key = std::fs::read_to_string(data.path().join("admin.key"))
            .expect("admin.key written")
            .trim()
            .to_owned();
        Self {
            addr,
            base_url: client.base_url.clone(),
            admin_key,
            client,
            data,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Graceful shutdown; returns the data directory for a restart.
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        self.shutdown_and_wait().await;
        self.data.clone()
    }

    /// Signals shutdown without waiting (the graceful-shutdown test drives the rest).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    async fn shutdown_and_wait(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task")
                .expect("server exits cleanly");
        }
    }

    /// Stops and starts again on the same data directory.
    pub async fn restart(self) -> TestServer {
        let data = self.stop().await;
        TestServer::start_in(data, |_| {}).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        self.client.send(method, path, key, headers, body).await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> TestResponse {
        self.send(Method::GET, path, key, &[], Bytes::new()).await
    }

    pub async fn delete(&self, path: &str, key: Option<&str>) -> TestResponse {
        self.send(Method::DELETE, path, key, &[], Bytes::new())
            .await
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> TestResponse {
        self.send(
            Method::POST,
            path,
            key,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    /// Mints a key with the admin key; returns `(id, key)`.
    pub async fn mint_key(&self, name: &str) -> (String, String) {
        let response = self
            .post(
                "/v1/keys",
                Some(&self.admin_key),
                &serde_json::json!({"name": name}),
            )
            .await;
        assert_eq!(response.status, 201, "{}", response.text());
        let body = response.json();
        (
            body["id"].as_str().expect("id").to_owned(),
            body["key"].as_str().expect("key").to_owned(),
        )
    }

    /// Ingests one user message; asserts 202.
    pub async fn ingest(&self, key: &str, text: &str) -> Value {
        let body = serde_json::json!({"messages": [{"role": "user", "content": text}]});
        let response = self.post("/v1/memory/ingest", Some(key), &body).await;
        assert_eq!(response.status, 202, "{}", response.text());
        response.json()
    }

    /// Prepares for one user message; asserts 200.
    pub async fn prepare(&self, key: &str, text: &str) -> Value {
        let body = serde_json::json!({"messages": [{"role": "user", "content": text}]});
        let response = self.post("/v1/memory/prepare", Some(key), &body).await;
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()
    }

    /// Every memory content of the key's vault (all pages of `GET /v1/memory`).
    pub async fn contents(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self
                .get(&format!("/v1/memory?limit=1000&cursor={cursor}"), Some(key))
                .await;
            assert_eq!(page.status, 200, "{}", page.text());
            let body = page.json();
            for memory in body["memories"].as_array().expect("memories") {
                out.push(memory["content"].as_str().expect("content").to_owned());
            }
            match body["next_cursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => return out,
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that panics before `stop` still tells the server to go away.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Path of a file in the data directory.
pub fn data_file(server: &TestServer, name: &str) -> PathBuf {
    server.data_dir().join(name)
}
