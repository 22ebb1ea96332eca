//! Proxy overhead: latency of a chat completion through MemoryRouter minus a direct call to
//! the same fake provider, measured in one run with the two kinds of call interleaved so
//! both see the same machine load.
//!
//! ```text
//! cargo run -p benches --release --bin proxy_overhead [-- REQUESTS]
//! ```
//!
//! The fake provider answers a fixed non-streamed `chat.completion` at once, so what is
//! left after subtracting the direct call is MemoryRouter's own cost: authentication, body
//! parsing, retrieval and injection (when the mode retrieves), the upstream request on a
//! pooled keep-alive connection, and relaying the answer. In mode `on` the exchange is
//! written to the proxy outbox before the answer is released (a write; its fsync and the
//! vault ingest follow after the answer). Three modes are measured: `:off` (plain proxy),
//! `:read` (retrieve from a vault of `VAULT_MEMORIES` memories, store nothing) and `on`
//! (retrieve and queue the exchange for storing).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use server::AppState;
use server::Config;
use server::ProviderConfig;

/// Requests per mode (each paired with one direct call), after the warm-up.
const REQUESTS_DEFAULT: usize = 2000;
const WARMUP_REQUESTS: usize = 200;
/// Memories in the vault the retrieving modes search.
const VAULT_MEMORIES: usize = 500;
const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Sure: keep it short and train at 6am."},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29}}"#;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[tokio::main]
async fn main() -> Result<()> {
    let requests = match std::env::args().nth(1) {
        Some(n) => n.parse().context("REQUESTS must be a number")?,
        None => REQUESTS_DEFAULT,
    };
    let provider = start_fake_provider().await?;
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.limits.requests_per_minute = 0;
    // The per-key proxy budgets would throttle a benchmark that sends thousands of calls
    // through one key.
    config.limits.proxy_requests_per_minute = 0;
    config.limits.proxy_tokens_per_minute = 0;
    config.providers.insert(
        "local".into(),
        ProviderConfig {
            kind: Some(server::ProviderKind::Openai),
            base_url: Some(format!("http://{provider}/v1")),
            models: None,
            key_required: None,
        },
    );
    let opened = tokio::task::spawn_blocking(move || AppState::open(config)).await??;
    let admin = opened
        .new_admin_key
        .context("fresh data dir mints an admin key")?;
    let state = Arc::new(opened.state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let router = listener.local_addr()?;
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));

    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let key = create_key(&http, &format!("http://{router}"), &admin).await?;
    fill_vault(&http, &format!("http://{router}"), &key).await?;

    let direct_url = format!("http://{provider}/v1/chat/completions");
    let proxy_url = format!("http://{router}/v1/chat/completions");
    println!(
        "proxy overhead: {requests} requests per mode, interleaved with direct calls; vault of {VAULT_MEMORIES} memories"
    );
    println!("machine: {}", machine());
    println!(
        "{:<6} {:>12} {:>12} {:>12} {:>12} {:>14} {:>14}",
        "mode",
        "direct p50",
        "direct p99",
        "proxy p50",
        "proxy p99",
        "overhead p50",
        "overhead p99"
    );
    for (mode, suffix) in [("off", ":off"), ("read", ":read"), ("on", "")] {
        let auth = format!("Bearer {key}{suffix}");
        let mut direct = Vec::with_capacity(requests);
        let mut proxied = Vec::with_capacity(requests);
        for i in 0..WARMUP_REQUESTS + requests {
            let text = format!("How should we adjust tomorrow's session {}?", i % 50);
            let body = json!({"model": "local/m", "messages": [{"role": "user", "content": text}]})
                .to_string();
            let d = timed_post(&http, &direct_url, None, &body).await?;
            let p = timed_post(&http, &proxy_url, Some(&auth), &body).await?;
            if i >= WARMUP_REQUESTS {
                direct.push(d);
                proxied.push(p);
            }
        }
        let (d50, d99) = (percentile(&mut direct, 0.50), percentile(&mut direct, 0.99));
        let (p50, p99) = (
            percentile(&mut proxied, 0.50),
            percentile(&mut proxied, 0.99),
        );
        println!(
            "{mode:<6} {:>10.3}ms {:>10.3}ms {:>10.3}ms {:>10.3}ms {:>12.3}ms {:>12.3}ms",
            ms(d50),
            ms(d99),
            ms(p50),
            ms(p99),
            ms(p50) - ms(d50),
            ms(p99) - ms(d99)
        );
    }
    tokio::time::timeout(Duration::from_secs(60), state.proxy.settled())
        .await
        .ok();
    Ok(())
}

async fn timed_post(
    http: &HttpClient,
    url: &str,
    auth: Option<&str>,
    body: &str,
) -> Result<Duration> {
    let mut builder = Request::post(url).header("content-type", "application/json");
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    let request = builder.body(Full::new(Bytes::from(body.to_owned())))?;
    let started = Instant::now();
    let response = http.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let elapsed = started.elapsed();
    if !status.is_success() {
        bail!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(elapsed)
}

async fn create_key(http: &HttpClient, base: &str, admin: &str) -> Result<String> {
    let request = Request::post(format!("{base}/v1/keys"))
        .header("authorization", format!("Bearer {admin}"))
        .body(Full::new(Bytes::from(r#"{"name":"bench"}"#)))?;
    let response = http.request(request).await?;
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    Ok(body["key"]
        .as_str()
        .context("POST /v1/keys returned a key")?
        .to_owned())
}

/// Ingests `VAULT_MEMORIES` varied training notes so retrieval has real work to do.
async fn fill_vault(http: &HttpClient, base: &str, key: &str) -> Result<()> {
    let topics = [
        "interval run",
        "tempo ride",
        "strength session",
        "long swim",
        "rest day",
        "hill repeats",
        "mobility work",
    ];
    let times = ["6am", "noon", "7pm", "5:30am", "after work"];
    for batch in 0..VAULT_MEMORIES / 50 {
        let messages: Vec<_> = (0..50)
            .map(|i| {
                let n = batch * 50 + i;
                let text = format!(
                    "Note {n}: planned a {} at {} and felt {}",
                    topics[n % topics.len()],
                    times[n % times.len()],
                    ["great", "tired", "strong", "sore"][n % 4]
                );
                json!({"role": "user", "content": text})
            })
            .collect();
        let request = Request::post(format!("{base}/v1/memory/ingest"))
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::from(
                json!({"messages": messages}).to_string(),
            )))?;
        let status = http.request(request).await?.status();
        if !status.is_success() {
            bail!("ingest answered {status}");
        }
    }
    Ok(())
}

async fn start_fake_provider() -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    // Read the request like a real provider would before answering.
                    let _ = req.into_body().collect().await;
                    let response = Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(index).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{cpu}, {cores} cores available, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}
