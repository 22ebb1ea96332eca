//! An OpenAI-compatible embedding endpoint (`kind = "openai"`): `POST {base_url}/embeddings`
//! with `{"model", "input": [texts], "encoding_format": "float"}`, which OpenAI, Ollama,
//! vLLM, llama.cpp's server and Hugging Face TEI all answer.
//!
//! - **Batched and bounded**: the texts of one call (an ingest's every chunk, or one query)
//!   go in one request when they fit `batch_size_max`, else in consecutive requests of that
//!   size; the call succeeds only if every request does.
//! - **Timeouts and bounded retries**: each request has `timeout_ms` (`query_timeout_ms`
//!   for a search, whose whole call must fit in it); a 429, a 5xx, a timeout or a refused
//!   connection is retried up to `retries_max` times (a query: once) after an exponential
//!   backoff with jitter, or after the server's `Retry-After` when it asks for longer (up to
//!   [`RETRY_AFTER_MAX_MS`]; a longer wait fails the call instead of holding a request).
//! - **Answers are checked**: one vector per text (by `index`), each of `dimensions` finite
//!   floats, not all zero; they are then scaled to unit length (the engine's contract). Any
//!   other answer — HTML, not JSON, a wrong count or length, NaN — fails the call, without a
//!   retry: a server that answers garbage once will again.
//! - **Failures stop the operation**: the engine gets [`engine::Error::Embedder`], so an
//!   ingest stores nothing (503, or 502 for a garbage answer — the reason starts with
//!   [`BAD_ANSWER`]) and a search falls back to lexical-only retrieval (`api::prepare`).
//!   After the endpoint was found unreachable or timing out, queries skip it for
//!   [`DOWN_COOLDOWN_MS`] so chats do not each wait out the timeout; ingests always try.
//!
//! The HTTP runs on the proxy's client ([`UpstreamClient`]: hyper, rustls with webpki
//! roots), on a one-thread runtime of this embedder's own: the engine calls the embedder
//! synchronously on the blocking pool, which waits on a channel for the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Uri};
use http_body_util::Full;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::time::Instant;

use engine::{Embedder, EmbedderKind};

use crate::config::EmbedderSetting;
use crate::error::Error;
use crate::metrics::{RemoteMetrics, RemoteOutcome};
use crate::proxy::client::UpstreamClient;
use crate::proxy::error::ProxyError;

/// Every failure reason of an answer that arrived but cannot be used starts with this; the
/// server answers those 502 (the endpoint misbehaves) rather than 503 (it is away).
pub(crate) const BAD_ANSWER: &str = "bad answer from the embedding endpoint";
/// First backoff before a retry; doubles per attempt.
pub(crate) const BACKOFF_BASE_MS: u64 = 200;
/// Longest backoff between two attempts (before jitter).
pub(crate) const BACKOFF_MAX_MS: u64 = 5_000;
/// Longest `Retry-After` honoured; a server asking for more fails the call at once.
pub(crate) const RETRY_AFTER_MAX_MS: u64 = 10_000;
/// How long queries skip an endpoint found unreachable (they answer lexical-only meanwhile).
pub(crate) const DOWN_COOLDOWN_MS: u64 = 5_000;
/// Retries a query makes at most (it must fit `query_timeout_ms`).
pub(crate) const QUERY_RETRIES_MAX: u32 = 1;
/// Longest TCP connect.
pub(crate) const CONNECT_TIMEOUT_MS_MAX: u64 = 10_000;
/// Characters of an error answer's body quoted in the failure reason.
const EXCERPT_CHARS: usize = 200;
/// The name the proxy client's errors give the endpoint.
const ENDPOINT: &str = "embedder";

/// How hard one kind of call tries.
#[derive(Clone, Copy, Debug)]
struct Budget {
    /// Per request; a query's whole call must also fit in it.
    timeout: Duration,
    retries: u32,
    /// A query: one deadline for the whole call, and the cool-down applies.
    is_query: bool,
}

/// What the requests share (behind an `Arc`: each call's future owns a clone).
struct Shared {
    client: UpstreamClient,
    url: Uri,
    model: String,
    dim: usize,
    send_dimensions: bool,
    /// `Bearer KEY`, marked sensitive; `None` = no header.
    authorization: Option<HeaderValue>,
    batch_size_max: usize,
    store: Budget,
    query: Budget,
    metrics: Arc<RemoteMetrics>,
    /// Until when queries skip the endpoint (set when a call found it unreachable or
    /// timing out, cleared by any success).
    down_until: Mutex<Option<Instant>>,
}

/// Why one request failed.
#[derive(Debug)]
struct Failure {
    outcome: RemoteOutcome,
    reason: String,
    retry_after: Option<Duration>,
}

impl Failure {
    fn retryable(&self) -> bool {
        matches!(
            self.outcome,
            RemoteOutcome::Timeout
                | RemoteOutcome::Unreachable
                | RemoteOutcome::RateLimited
                | RemoteOutcome::ServerError
        )
    }

    fn endpoint_down(&self) -> bool {
        matches!(
            self.outcome,
            RemoteOutcome::Timeout | RemoteOutcome::Unreachable
        )
    }
}

/// The OpenAI-compatible embedder; see the module docs.
pub(crate) struct RemoteEmbedder {
    /// `openai:{model}:{dimensions}`: what vaults pin (kind, model and dimension).
    id: String,
    dim: usize,
    shared: Arc<Shared>,
    /// Runs the requests; taken and shut down without blocking on drop (the embedder may
    /// be dropped on an async worker, where a blocking shutdown would panic).
    runtime: Option<tokio::runtime::Runtime>,
}

impl RemoteEmbedder {
    /// Builds the client from a validated `[embedder]`; `env` looks up `api_key_env`,
    /// `stored_key` the stored provider key `api_key_provider` names.
    pub(crate) fn open(
        setting: &EmbedderSetting,
        env: &dyn Fn(&str) -> Option<String>,
        stored_key: &dyn Fn(&str) -> Result<Option<String>, Error>,
        metrics: Arc<RemoteMetrics>,
    ) -> Result<Self, Error> {
        let config = |field: &str, reason: String| Error::Config {
            field: format!("embedder.{field}"),
            reason,
        };
        let base = setting
            .base_url
            .as_deref()
            .ok_or_else(|| config("base_url", "is required".into()))?;
        let url: Uri = format!("{}/embeddings", base.trim_end_matches('/'))
            .parse()
            .map_err(|e| config("base_url", format!("{base:?}: {e}")))?;
        let model = setting
            .model
            .clone()
            .ok_or_else(|| config("model", "is required".into()))?;
        let dim = setting
            .dimensions
            .ok_or_else(|| config("dimensions", "is required".into()))?;
        let key = match (
            setting.api_key_env.as_deref(),
            setting.api_key_provider.as_deref(),
        ) {
            (Some(var), _) => {
                let key = env(var).filter(|k| !k.trim().is_empty()).ok_or_else(|| {
                    config(
                        "api_key_env",
                        format!("the environment variable {var} is not set"),
                    )
                })?;
                Some(("api_key_env", var, key))
            }
            (None, Some(provider)) => {
                let key = stored_key(provider)?
                    .filter(|k| !k.trim().is_empty())
                    .ok_or_else(|| {
                        config(
                            "api_key_provider",
                            format!(
                                "the first account stores no provider key {provider:?} \
                                 (PUT /v1/provider-keys/{provider})"
                            ),
                        )
                    })?;
                Some(("api_key_provider", provider, key))
            }
            (None, None) => None,
        };
        let authorization = match key {
            None => None,
            Some((field, source, key)) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
                        config(
                            field,
                            format!("{source} holds characters a header cannot carry"),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let store_timeout = Duration::from_millis(setting.timeout_ms);
        let query_timeout = Duration::from_millis(setting.query_timeout_ms);
        let connect = Duration::from_millis(
            setting
                .timeout_ms
                .max(setting.query_timeout_ms)
                .min(CONNECT_TIMEOUT_MS_MAX),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mr-embedder")
            .enable_all()
            .build()
            .map_err(|e| config("kind", format!("cannot start the embedder's runtime: {e}")))?;
        // The client's pool spawns its connection tasks on the runtime it is used in.
        let client = UpstreamClient::new(connect, store_timeout)
            .map_err(|e| config("base_url", e.to_string()))?;
        let shared = Shared {
            client,
            url,
            dim,
            send_dimensions: setting.send_dimensions,
            authorization,
            batch_size_max: setting.batch_size_max.max(1),
            store: Budget {
                timeout: store_timeout,
                retries: setting.retries_max,
                is_query: false,
            },
            query: Budget {
                timeout: query_timeout,
                retries: setting.retries_max.min(QUERY_RETRIES_MAX),
                is_query: true,
            },
            metrics,
            down_until: Mutex::new(None),
            model,
        };
        Ok(Self {
            id: format!("openai:{}:{dim}", shared.model),
            dim,
            shared: Arc::new(shared),
            runtime: Some(runtime),
        })
    }

    /// Runs one call on the embedder's runtime and waits for it on this (blocking) thread.
    fn call(&self, texts: &[&str], query: bool) -> engine::Result<Vec<Vec<f32>>> {
        let fail = |reason: String| engine::Error::Embedder {
            embedder: self.id.clone(),
            reason,
        };
        let Some(runtime) = &self.runtime else {
            return Err(fail("the embedder is shut down".into()));
        };
        // The endpoint refuses empty strings; a blank text means nothing either way.
        let texts: Vec<String> = texts
            .iter()
            .map(|t| if t.trim().is_empty() { " " } else { t }.to_owned())
            .collect();
        let shared = Arc::clone(&self.shared);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(shared.embed_all(texts, query).await);
        });
        match rx.recv() {
            Ok(result) => result.map_err(fail),
            Err(_) => Err(fail("the embedder's runtime stopped".into())),
        }
    }
}

impl Drop for RemoteEmbedder {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Embedder for RemoteEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn kind(&self) -> EmbedderKind {
        EmbedderKind::Transformer
    }

    fn embed_batch(&self, texts: &[&str]) -> engine::Result<Vec<Vec<f32>>> {
        self.call(texts, false)
    }

    fn embed_query_batch(&self, texts: &[&str]) -> engine::Result<Vec<Vec<f32>>> {
        self.call(texts, true)
    }
}

impl Shared {
    /// Every text's vector, `batch_size_max` texts per request.
    async fn embed_all(&self, texts: Vec<String>, query: bool) -> Result<Vec<Vec<f32>>, String> {
        let budget = if query { self.query } else { self.store };
        let started = Instant::now();
        if budget.is_query
            && let Some(until) = *self.down_until.lock()
            && started < until
        {
            return Err(format!(
                "the endpoint was unreachable moments ago; queries skip it for up to \
                 {DOWN_COOLDOWN_MS} ms"
            ));
        }
        // A query's whole call fits its timeout; an ingest's requests each get theirs.
        let call_deadline = budget.is_query.then(|| started + budget.timeout);
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.batch_size_max) {
            out.extend(self.embed_batch(batch, budget, call_deadline).await?);
        }
        *self.down_until.lock() = None;
        Ok(out)
    }

    /// One batch, with retries.
    async fn embed_batch(
        &self,
        texts: &[String],
        budget: Budget,
        call_deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, String> {
        let body = self.request_body(texts);
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            let mut deadline = started + budget.timeout;
            if let Some(call) = call_deadline {
                deadline = deadline.min(call);
            }
            let result = self.request(body.clone(), texts.len(), deadline).await;
            let outcome = match &result {
                Ok(_) => RemoteOutcome::Ok,
                Err(f) => f.outcome,
            };
            self.metrics.observe(outcome, started.elapsed());
            let failure = match result {
                Ok(vectors) => return Ok(vectors),
                Err(failure) => failure,
            };
            let attempts = attempt + 1;
            let give_up = |failure: Failure| {
                if failure.endpoint_down() {
                    *self.down_until.lock() =
                        Some(Instant::now() + Duration::from_millis(DOWN_COOLDOWN_MS));
                }
                let plural = if attempts == 1 { "" } else { "s" };
                match failure.outcome {
                    RemoteOutcome::BadAnswer | RemoteOutcome::Refused => failure.reason,
                    _ => format!(
                        "the embedding endpoint failed {attempts} attempt{plural}: {}",
                        failure.reason
                    ),
                }
            };
            if !failure.retryable() || attempt >= budget.retries {
                return Err(give_up(failure));
            }
            let wait = match backoff(attempt, failure.retry_after) {
                Some(wait) => wait,
                None => return Err(give_up(failure)),
            };
            if call_deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return Err(give_up(failure));
            }
            tracing::warn!(
                outcome = failure.outcome.label(),
                reason = %failure.reason,
                wait_ms = wait.as_millis() as u64,
                "embedding request failed; retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    fn request_body(&self, texts: &[String]) -> Bytes {
        let mut body = serde_json::json!({
            "model": self.model,
            "input": texts,
            "encoding_format": "float",
        });
        if self.send_dimensions {
            body["dimensions"] = serde_json::json!(self.dim);
        }
        Bytes::from(body.to_string())
    }

    /// One request, read whole and checked.
    async fn request(
        &self,
        body: Bytes,
        n: usize,
        deadline: Instant,
    ) -> Result<Vec<Vec<f32>>, Failure> {
        let mut builder = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "memoryrouter");
        if let Some(auth) = &self.authorization {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let request = builder.body(Full::new(body)).map_err(|e| Failure {
            outcome: RemoteOutcome::Refused,
            reason: format!("cannot build the request: {e}"),
            retry_after: None,
        })?;
        let timeout_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis();
        let transport = |e: ProxyError| match e {
            ProxyError::Timeout { .. } => Failure {
                outcome: RemoteOutcome::Timeout,
                reason: format!("no answer within {timeout_ms} ms"),
                retry_after: None,
            },
            other => Failure {
                outcome: RemoteOutcome::Unreachable,
                reason: other.to_string(),
                retry_after: None,
            },
        };
        let response = self
            .client
            .send(ENDPOINT, request, deadline)
            .await
            .map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = self
            .client
            .read_body(ENDPOINT, response.into_body(), deadline)
            .await
            .map_err(transport)?;
        if !status.is_success() {
            let outcome = match status.as_u16() {
                429 => RemoteOutcome::RateLimited,
                500.. => RemoteOutcome::ServerError,
                _ => RemoteOutcome::Refused,
            };
            let reason = format!("HTTP {status}: {}", excerpt(&bytes));
            return Err(Failure {
                outcome,
                reason: if outcome == RemoteOutcome::Refused {
                    format!("{BAD_ANSWER}: {reason}")
                } else {
                    reason
                },
                retry_after,
            });
        }
        parse_answer(&bytes, n, self.dim).map_err(|reason| Failure {
            outcome: RemoteOutcome::BadAnswer,
            reason: format!("{BAD_ANSWER} (HTTP {status}): {reason}"),
            retry_after: None,
        })
    }
}

/// The wait before retry `attempt + 1`: exponential from [`BACKOFF_BASE_MS`] (capped at
/// [`BACKOFF_MAX_MS`]) with equal jitter (half fixed, half random, so concurrent callers
/// spread out), or the server's `Retry-After` when longer. `None` when the server asks for
/// more than [`RETRY_AFTER_MAX_MS`].
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
    if retry_after.is_some_and(|r| r > Duration::from_millis(RETRY_AFTER_MAX_MS)) {
        return None;
    }
    let exp = BACKOFF_BASE_MS
        .saturating_mul(1u64 << attempt.min(20))
        .min(BACKOFF_MAX_MS);
    let mut random = [0u8; 8];
    // Without randomness the jitter is only lost, never the retry.
    let _ = getrandom::fill(&mut random);
    let jitter = u64::from_le_bytes(random) % (exp / 2 + 1);
    let wait = Duration::from_millis(exp / 2 + jitter);
    Some(retry_after.map_or(wait, |r| r.max(wait)))
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: Option<usize>,
    embedding: Vec<f64>,
}

/// The `n` unit vectors of an answer, in input order, or why it is unusable.
fn parse_answer(bytes: &[u8], n: usize, dim: usize) -> Result<Vec<Vec<f32>>, String> {
    let answer: Answer = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "not an embeddings answer ({e}); it begins {}",
            excerpt(bytes)
        )
    })?;
    if answer.data.len() != n {
        return Err(format!("{} vectors for {n} texts", answer.data.len()));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
    for (position, item) in answer.data.into_iter().enumerate() {
        let index = item.index.unwrap_or(position);
        if index >= n || out[index].is_some() {
            return Err(format!("index {index} is out of range or repeated"));
        }
        if item.embedding.len() != dim {
            return Err(format!(
                "a vector of length {}, not the configured dimensions = {dim}",
                item.embedding.len()
            ));
        }
        let v: Vec<f32> = item.embedding.iter().map(|&x| x as f32).collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err("a vector with a NaN or infinite value".into());
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || norm < 1e-12 {
            return Err("a zero (or overflowing) vector".into());
        }
        out[index] = Some(v.into_iter().map(|x| x / norm).collect());
    }
    // Every slot is filled: n items, each to a distinct index below n.
    Ok(out.into_iter().flatten().collect())
}

/// The start of a body, printable, for an error message.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut short: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > EXCERPT_CHARS {
        short.push('…');
    }
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_ordered_by_index_and_normalised() {
        let body = br#"{"data":[{"index":1,"embedding":[0,2]},{"index":0,"embedding":[3,4]}]}"#;
        let v = parse_answer(body, 2, 2).unwrap();
        assert_eq!(v, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
    }

    #[test]
    fn garbage_answers_are_refused_with_a_reason() {
        for (body, n, dim, says) in [
            (
                &b"<html>Bad gateway</html>"[..],
                1,
                2,
                "not an embeddings answer",
            ),
            (
                br#"{"data":[{"embedding":[1,0]}]}"#,
                2,
                2,
                "1 vectors for 2 texts",
            ),
            (br#"{"data":[{"embedding":[1,0,0]}]}"#, 1, 2, "length 3"),
            (
                br#"{"data":[{"embedding":[1e300,0]}]}"#,
                1,
                2,
                "NaN or infinite",
            ),
            (
                br#"{"data":[{"embedding":[NaN,0]}]}"#,
                1,
                2,
                "not an embeddings answer",
            ),
            (br#"{"data":[{"embedding":[0,0]}]}"#, 1, 2, "zero"),
            (
                br#"{"data":[{"index":0,"embedding":[1,0]},{"index":0,"embedding":[1,0]}]}"#,
                2,
                2,
                "repeated",
            ),
        ] {
            let err = parse_answer(body, n, dim).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn backoff_grows_jitters_and_honours_retry_after() {
        for attempt in 0..8 {
            let exp = (BACKOFF_BASE_MS << attempt).min(BACKOFF_MAX_MS);
            let wait = backoff(attempt, None).unwrap().as_millis() as u64;
            assert!((exp / 2..=exp).contains(&wait), "{attempt}: {wait}");
        }
        assert_eq!(
            backoff(0, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(backoff(0, Some(Duration::from_secs(60))), None);
    }
}
