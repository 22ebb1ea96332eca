//! The upstream HTTP client: one pooled hyper client with rustls (ring, webpki roots) for
//! every provider, and the timeout and error classification the proxy promises
//! (unreachable → 502, timeout → 504).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::error::ProxyError;

/// Idle pooled connections kept per provider host. Enough for a burst of concurrent
/// requests to reuse warm TLS connections; beyond it connections close after use.
pub(crate) const POOL_IDLE_PER_HOST_MAX: usize = 64;
/// How long an idle pooled connection is kept (providers close theirs after ~60-120 s).
pub(crate) const POOL_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Largest non-streaming provider answer read into memory.
pub(crate) const UPSTREAM_BODY_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Default `proxy_timeout_ms`: generous, because a long non-streamed answer from a large
/// model can take minutes; a dead provider is still noticed within this bound.
pub(crate) const TIMEOUT_MS_DEFAULT: u64 = 300_000;
/// Default `proxy_connect_timeout_ms`.
pub(crate) const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Shared by every request; cloning is cheap (the pool is behind an `Arc`).
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// `connect_timeout` bounds the TCP connect; `timeout` bounds the wait for the answer
    /// (non-streaming: the whole body; streaming: the headers and then each gap between
    /// chunks, so a long but live stream is never cut).
    pub(crate) fn new(connect_timeout: Duration, timeout: Duration) -> Result<Self, ProxyError> {
        let mut http = HttpConnector::new();
        // The TLS connector wraps this one and needs it to accept https URLs.
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| ProxyError::Tls {
                reason: e.to_string(),
            })?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST_MAX)
            .build(https);
        Ok(UpstreamClient { inner, timeout })
    }

    /// The answer timeout this client was built with.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `request` and waits for the response head until `deadline`.
    pub(crate) async fn send(
        &self,
        provider: &str,
        request: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout_at(deadline, self.inner.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(ProxyError::Unreachable {
                provider: provider.to_owned(),
                reason: describe(&e),
            }),
            Err(_) => Err(self.timed_out(provider)),
        }
    }

    /// Reads a whole (non-streaming) body until `deadline`, bounded by
    /// [`UPSTREAM_BODY_BYTES_MAX`].
    pub(crate) async fn read_body(
        &self,
        provider: &str,
        body: Incoming,
        deadline: Instant,
    ) -> Result<Bytes, ProxyError> {
        let limited = http_body_util::Limited::new(body, UPSTREAM_BODY_BYTES_MAX);
        match tokio::time::timeout_at(deadline, limited.collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) => Err(ProxyError::Unreachable {
                provider: provider.to_owned(),
                reason: format!("reading the answer failed: {e}"),
            }),
            Err(_) => Err(self.timed_out(provider)),
        }
    }

    fn timed_out(&self, provider: &str) -> ProxyError {
        ProxyError::Timeout {
            provider: provider.to_owned(),
            timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The error chain in one line: hyper-util's top-level message alone ("client error
/// (Connect)") does not say what happened. Also used for etcd and node-to-node calls.
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn post(url: &str) -> Request<Full<Bytes>> {
        Request::post(url)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    #[tokio::test]
    async fn refused_connection_is_unreachable() {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let port = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let client = UpstreamClient::new(Duration::from_secs(2), Duration::from_secs(5)).unwrap();
        let deadline = Instant::now() + client.timeout();
        let err = client
            .send(
                "fake",
                post(&format!("http://127.0.0.1:{port}/v1")),
                deadline,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Unreachable { .. }), "{err}");
        assert_eq!(err.status(), 502);
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and reads nothing: the response never comes. The deadline is already
        // past, so the test does not wait on a clock.
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(socket);
        });
        let client = UpstreamClient::new(Duration::from_secs(2), Duration::from_millis(1)).unwrap();
        let err = client
            .send(
                "fake",
                post(&format!("http://127.0.0.1:{port}/v1")),
                Instant::now(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Timeout { .. }), "{err}");
        assert_eq!(err.status(), 504);
        server.abort();
    }

    #[tokio::test]
    async fn answer_is_read_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf)
                .await
                .unwrap();
            socket
                .write_all(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n\r\nno")
                .await
                .unwrap();
        });
        let client = UpstreamClient::new(Duration::from_secs(2), Duration::from_secs(5)).unwrap();
        let deadline = Instant::now() + client.timeout();
        let response = client
            .send(
                "fake",
                post(&format!("http://127.0.0.1:{port}/v1")),
                deadline,
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        let body = client
            .read_body("fake", response.into_body(), deadline)
            .await
            .unwrap();
        assert_eq!(&body[..], b"no");
        server.await.unwrap();
    }
}
