//! Prometheus metrics: per-route request latency histograms, retrieval latency, request
//! counts by status class, embedding time by embedder kind and remote embedding requests
//! by outcome, and gauges read at scrape time (open vaults and their heap estimate, uptime).
//!
//! Hand-rolled rather than a metrics crate: a fixed bucket layout of atomics is all that
//! Prometheus needs, costs a few nanoseconds per request, and keeps the dependency list
//! short. The same histograms give the dashboard's p50/p99 (bucket interpolation).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

/// Upper bounds of the latency buckets, in seconds (Prometheus convention). 100 µs to 10 s
/// covers a warm prepare (sub-millisecond) through a cold vault open or a slow fsync.
pub(crate) const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// A latency histogram with fixed buckets; lock-free to record.
#[derive(Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len()],
    /// Observations above the last bucket (the `+Inf` bucket minus the others).
    overflow: AtomicU64,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        match LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
        {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The `q` quantile in milliseconds, linearly interpolated inside its bucket. `None`
    /// before the first observation.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0);
        let mut seen = 0.0;
        let mut lower = 0.0;
        for (bucket, bound) in self.buckets.iter().zip(LATENCY_BUCKETS_SECONDS) {
            let n = bucket.load(Ordering::Relaxed) as f64;
            if n > 0.0 && seen + n >= rank {
                let fraction = (rank - seen) / n;
                return Some((lower + (bound - lower) * fraction) * 1000.0);
            }
            seen += n;
            lower = bound;
        }
        Some(lower * 1000.0)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bucket, bound) in self.buckets.iter().zip(LATENCY_BUCKETS_SECONDS) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Embedding time, by what it was for: storing memories (ingest, import) or a query
/// (prepare, search, the proxy).
#[derive(Default)]
pub(crate) struct EmbeddingTiming {
    pub store: Histogram,
    pub query: Histogram,
}

/// How one request to a remote embedding endpoint ended: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RemoteOutcome {
    Ok,
    /// No answer within the timeout.
    Timeout,
    /// Connection refused, reset or dropped.
    Unreachable,
    /// 429.
    RateLimited,
    /// 5xx.
    ServerError,
    /// Another non-2xx status (a wrong key, an unknown model): not retried.
    Refused,
    /// 2xx with an answer that is not what was asked for (not JSON, wrong count or length,
    /// NaN): not retried.
    BadAnswer,
}

impl RemoteOutcome {
    pub(crate) const ALL: [RemoteOutcome; 7] = [
        RemoteOutcome::Ok,
        RemoteOutcome::Timeout,
        RemoteOutcome::Unreachable,
        RemoteOutcome::RateLimited,
        RemoteOutcome::ServerError,
        RemoteOutcome::Refused,
        RemoteOutcome::BadAnswer,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            RemoteOutcome::Ok => "ok",
            RemoteOutcome::Timeout => "timeout",
            RemoteOutcome::Unreachable => "unreachable",
            RemoteOutcome::RateLimited => "rate_limited",
            RemoteOutcome::ServerError => "server_error",
            RemoteOutcome::Refused => "refused",
            RemoteOutcome::BadAnswer => "bad_answer",
        }
    }
}

/// Every request to the remote embedding endpoint (retries included), by outcome.
#[derive(Default)]
pub(crate) struct RemoteMetrics {
    requests: [Histogram; RemoteOutcome::ALL.len()],
}

impl RemoteMetrics {
    pub(crate) fn observe(&self, outcome: RemoteOutcome, elapsed: Duration) {
        self.requests[outcome as usize].observe(elapsed);
    }
}

/// The embedder's cost: time per embedding call by purpose, labelled with the embedder's
/// kind, the remote endpoint's requests, and the searches answered without vectors.
pub(crate) struct EmbedderMetrics {
    /// `builtin`, `local` or `openai` (set when the embedder is built).
    pub kind: &'static str,
    pub timing: Arc<EmbeddingTiming>,
    pub remote: Arc<RemoteMetrics>,
    /// Searches (prepare, search, proxy) answered lexical-only because the embedder failed.
    pub degraded_searches: AtomicU64,
}

impl Default for EmbedderMetrics {
    fn default() -> Self {
        Self {
            kind: "builtin",
            timing: Arc::default(),
            remote: Arc::default(),
            degraded_searches: AtomicU64::new(0),
        }
    }
}

impl EmbedderMetrics {
    fn render(&self, out: &mut String) {
        let kind = self.kind;
        out.push_str(
            "# HELP memoryrouter_embedding_duration_seconds Time to embed one batch, by embedder kind and purpose (store: ingest; query: search).\n",
        );
        out.push_str("# TYPE memoryrouter_embedding_duration_seconds histogram\n");
        for (purpose, h) in [("store", &self.timing.store), ("query", &self.timing.query)] {
            h.render(
                out,
                "memoryrouter_embedding_duration_seconds",
                &format!("kind=\"{kind}\",purpose=\"{purpose}\""),
            );
        }
        out.push_str(
            "# HELP memoryrouter_embedder_remote_request_duration_seconds Requests to the remote embedding endpoint (each retry counts), by outcome.\n",
        );
        out.push_str("# TYPE memoryrouter_embedder_remote_request_duration_seconds histogram\n");
        for outcome in RemoteOutcome::ALL {
            self.remote.requests[outcome as usize].render(
                out,
                "memoryrouter_embedder_remote_request_duration_seconds",
                &format!("outcome=\"{}\"", outcome.label()),
            );
        }
        out.push_str(
            "# HELP memoryrouter_searches_degraded_total Searches answered lexical-only because the embedder failed.\n",
        );
        out.push_str("# TYPE memoryrouter_searches_degraded_total counter\n");
        let _ = writeln!(
            out,
            "memoryrouter_searches_degraded_total {}",
            self.degraded_searches.load(Ordering::Relaxed)
        );
    }
}

/// Counters per route and status class.
#[derive(Default)]
struct RouteMetrics {
    latency: Histogram,
    status_2xx: AtomicU64,
    status_4xx: AtomicU64,
    status_5xx: AtomicU64,
}

/// All server metrics. Routes are labelled by their pattern (`GET /v1/memory/{id}`), never
/// by the raw path, so the label set stays bounded.
#[derive(Default)]
pub(crate) struct Metrics {
    routes: RwLock<BTreeMap<&'static str, Arc<RouteMetrics>>>,
    /// Time spent in the engine's search for prepare and search requests.
    pub retrieval: Histogram,
    /// Time an ingest spends until the engine acknowledges (includes the WAL fsync).
    pub ingest_durable: Histogram,
    pub memories_stored: AtomicU64,
    /// Audit lines that could not be written (the action itself was done; see `audit`).
    pub audit_write_failures: AtomicU64,
    /// Catalog copies found damaged and rebuilt from the other copy at start.
    pub catalog_repairs: AtomicU64,
    /// The embedder's time and the remote endpoint's requests.
    pub embedder: EmbedderMetrics,
}

/// Prometheus types of the single-valued samples [`Metrics::render`] writes.
const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

/// Values read at scrape time.
#[derive(Default)]
pub(crate) struct Gauges {
    pub open_vaults: usize,
    pub open_vaults_bytes: u64,
    /// Open vaults that saw a failed fsync (they refuse writes until a restart).
    pub poisoned_vaults: usize,
    /// Open vaults with a segment file that could not be read (503 until a restart).
    pub unreadable_vaults: usize,
    pub catalog_poisoned: bool,
    /// Open vaults whose last write ran out of disk space, still without room (clears by
    /// itself once space is freed).
    pub write_stalled_vaults: usize,
    /// Request bodies buffered now across connections, the budget for them
    /// (`[limits] body_buffer_bytes_max`) and the requests refused for want of room.
    pub body_buffered_bytes: usize,
    pub body_buffer_max_bytes: usize,
    pub bodies_refused: u64,
    pub uptime: Duration,
}

/// A route's count and latency quantiles, for `GET /v1/admin/overview`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RouteSummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Metrics {
    fn route(&self, route: &'static str) -> Arc<RouteMetrics> {
        if let Some(found) = self.routes.read().get(route) {
            return found.clone();
        }
        self.routes.write().entry(route).or_default().clone()
    }

    pub(crate) fn record_request(&self, route: &'static str, status: u16, elapsed: Duration) {
        let metrics = self.route(route);
        metrics.latency.observe(elapsed);
        let counter = match status {
            500.. => &metrics.status_5xx,
            400..=499 => &metrics.status_4xx,
            _ => &metrics.status_2xx,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn audit_write_failed(&self) {
        self.audit_write_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn route_summaries(&self) -> BTreeMap<String, RouteSummary> {
        self.routes
            .read()
            .iter()
            .map(|(route, m)| {
                let summary = RouteSummary {
                    count: m.latency.count(),
                    p50_ms: m.latency.quantile_ms(0.5).unwrap_or(0.0),
                    p99_ms: m.latency.quantile_ms(0.99).unwrap_or(0.0),
                };
                ((*route).to_owned(), summary)
            })
            .collect()
    }

    /// Prometheus text exposition format 0.0.4.
    pub(crate) fn render(&self, gauges: &Gauges) -> String {
        let Gauges {
            open_vaults,
            open_vaults_bytes,
            poisoned_vaults,
            unreadable_vaults,
            catalog_poisoned,
            write_stalled_vaults,
            body_buffered_bytes,
            body_buffer_max_bytes,
            bodies_refused,
            uptime,
        } = *gauges;
        let mut out = String::with_capacity(8 * 1024);
        out.push_str("# HELP memoryrouter_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE memoryrouter_request_duration_seconds histogram\n");
        let routes = self.routes.read();
        for (route, m) in routes.iter() {
            m.latency.render(
                &mut out,
                "memoryrouter_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str("# HELP memoryrouter_requests_total Requests by route and status class.\n");
        out.push_str("# TYPE memoryrouter_requests_total counter\n");
        for (route, m) in routes.iter() {
            for (class, counter) in [
                ("2xx", &m.status_2xx),
                ("4xx", &m.status_4xx),
                ("5xx", &m.status_5xx),
            ] {
                let n = counter.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "memoryrouter_requests_total{{route=\"{route}\",status=\"{class}\"}} {n}"
                );
            }
        }
        drop(routes);
        out.push_str("# HELP memoryrouter_retrieval_duration_seconds Engine search latency.\n");
        out.push_str("# TYPE memoryrouter_retrieval_duration_seconds histogram\n");
        self.retrieval
            .render(&mut out, "memoryrouter_retrieval_duration_seconds", "");
        out.push_str(
            "# HELP memoryrouter_ingest_durable_duration_seconds Ingest latency until durable.\n",
        );
        out.push_str("# TYPE memoryrouter_ingest_durable_duration_seconds histogram\n");
        self.ingest_durable
            .render(&mut out, "memoryrouter_ingest_durable_duration_seconds", "");
        // One value each: (name, type, help, value).
        let samples: [(&str, &str, &str, u64); 13] = [
            (
                "memoryrouter_memories_stored_total",
                COUNTER,
                "Memory records written by ingest.",
                self.memories_stored.load(Ordering::Relaxed),
            ),
            (
                "memoryrouter_audit_write_failures_total",
                COUNTER,
                "Account actions whose audit line could not be written.",
                self.audit_write_failures.load(Ordering::Relaxed),
            ),
            (
                "memoryrouter_catalog_repairs",
                GAUGE,
                "Damaged catalog copies rebuilt from the other copy at start (the log says which).",
                self.catalog_repairs.load(Ordering::Relaxed),
            ),
            (
                "memoryrouter_open_vaults",
                GAUGE,
                "Vaults currently open.",
                open_vaults as u64,
            ),
            (
                "memoryrouter_open_vaults_memory_bytes",
                GAUGE,
                "Heap estimate of the open vaults (idle ones are closed past limits.open_vaults_memory_mb).",
                open_vaults_bytes,
            ),
            (
                "memoryrouter_vaults_poisoned",
                GAUGE,
                "Open vaults refusing writes since an fsync failed (until a restart).",
                poisoned_vaults as u64,
            ),
            (
                "memoryrouter_vaults_unreadable",
                GAUGE,
                "Open vaults answering 503 since a segment page could not be read (until a restart).",
                unreadable_vaults as u64,
            ),
            (
                "memoryrouter_catalog_poisoned",
                GAUGE,
                "1 when the key catalog refuses changes since an fsync failed.",
                u64::from(catalog_poisoned),
            ),
            (
                "memoryrouter_vaults_write_stalled",
                GAUGE,
                "Open vaults whose last write ran out of disk space (writes answer 503 storage_full until space is freed).",
                write_stalled_vaults as u64,
            ),
            (
                "memoryrouter_request_body_buffered_bytes",
                GAUGE,
                "Request bodies buffered now, across connections.",
                body_buffered_bytes as u64,
            ),
            (
                "memoryrouter_request_body_buffer_limit_bytes",
                GAUGE,
                "The budget for buffered request bodies (limits.body_buffer_bytes_max).",
                body_buffer_max_bytes as u64,
            ),
            (
                "memoryrouter_request_bodies_refused_total",
                COUNTER,
                "Requests answered 503 server_busy because the body budget was full.",
                bodies_refused,
            ),
            (
                "memoryrouter_uptime_seconds",
                GAUGE,
                "Seconds since start.",
                uptime.as_secs(),
            ),
        ];
        for (name, kind, help, value) in samples {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        self.embedder.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_buckets() {
        let h = Histogram::default();
        for _ in 0..99 {
            h.observe(Duration::from_micros(200));
        }
        h.observe(Duration::from_millis(80));
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!(p50 > 0.1 && p50 <= 0.25, "{p50}");
        let p100 = h.quantile_ms(1.0).unwrap();
        assert!(p100 > 50.0 && p100 <= 100.0, "{p100}");
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.record_request("GET /healthz", 200, Duration::from_millis(1));
        m.record_request("GET /healthz", 404, Duration::from_millis(1));
        let text = m.render(&Gauges {
            open_vaults: 3,
            open_vaults_bytes: 4096,
            poisoned_vaults: 1,
            unreadable_vaults: 0,
            catalog_poisoned: false,
            write_stalled_vaults: 2,
            body_buffered_bytes: 8192,
            body_buffer_max_bytes: 1 << 28,
            bodies_refused: 7,
            uptime: Duration::from_secs(5),
        });
        assert!(
            text.contains("memoryrouter_request_duration_seconds_count{route=\"GET /healthz\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("memoryrouter_requests_total{route=\"GET /healthz\",status=\"4xx\"} 1")
        );
        assert!(text.contains("memoryrouter_open_vaults 3"));
        assert!(text.contains("memoryrouter_open_vaults_memory_bytes 4096"));
        assert!(text.contains("memoryrouter_vaults_poisoned 1"));
        assert!(text.contains("memoryrouter_catalog_poisoned 0"));
        assert!(text.contains("memoryrouter_vaults_write_stalled 2"));
        assert!(text.contains("memoryrouter_request_body_buffered_bytes 8192"));
        assert!(text.contains("memoryrouter_request_body_buffer_limit_bytes 268435456"));
        assert!(text.contains("memoryrouter_request_bodies_refused_total 7"));
        assert!(text.contains(
            "memoryrouter_embedding_duration_seconds_count{kind=\"builtin\",purpose=\"query\"} 0"
        ));
    }

    #[test]
    fn renders_remote_requests_by_outcome() {
        let m = Metrics::default();
        m.embedder
            .remote
            .observe(RemoteOutcome::RateLimited, Duration::from_millis(3));
        m.embedder
            .remote
            .observe(RemoteOutcome::Ok, Duration::from_millis(20));
        m.embedder
            .remote
            .observe(RemoteOutcome::Ok, Duration::from_millis(20));
        let text = m.render(&Gauges::default());
        for line in [
            "memoryrouter_embedder_remote_request_duration_seconds_count{outcome=\"ok\"} 2",
            "memoryrouter_embedder_remote_request_duration_seconds_count{outcome=\"rate_limited\"} 1",
            "memoryrouter_embedder_remote_request_duration_seconds_count{outcome=\"bad_answer\"} 0",
            "memoryrouter_searches_degraded_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
