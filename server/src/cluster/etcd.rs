//! A small etcd v3 client over etcd's JSON gateway (etcd 3.4: `/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/watch`, `/v3/lease/grant`, `/v3/lease/keepalive`), on the same hyper stack as the
//! proxy's client, so the cluster needs no gRPC code generation.
//!
//! The gateway speaks protobuf's JSON mapping: keys and values are base64, 64-bit numbers
//! are strings, and fields at their default (0, false, empty) are left out — a failed
//! transaction has no `succeeded` at all. [`num`] and [`Kv::from_json`] read that mapping.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::ClusterError;
use super::base64;

/// Longest wait for one unary etcd call. etcd answers in milliseconds when it has a quorum;
/// past this it has none, and the caller gets a 503 instead of hanging.
pub(crate) const CALL_TIMEOUT_MS: u64 = 5_000;
/// TCP connect timeout to etcd.
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Largest unary answer read (a range is also bounded by its `limit`).
pub(crate) const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest single message buffered from a watch stream.
pub(crate) const WATCH_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One key-value pair as etcd returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the last change of this key: the fencing token of a placement.
    pub mod_revision: i64,
    /// Changes since creation (0 = absent, which only compares use).
    pub version: i64,
}

impl Kv {
    fn from_json(value: &Value) -> Result<Self, String> {
        let field = |name: &str| -> Result<Vec<u8>, String> {
            match value.get(name).and_then(Value::as_str) {
                None => Ok(Vec::new()),
                Some(text) => base64::decode(text).ok_or_else(|| format!("`{name}` is not base64")),
            }
        };
        Ok(Kv {
            key: field("key")?,
            value: field("value")?,
            mod_revision: num(value.get("mod_revision")),
            version: num(value.get("version")),
        })
    }
}

/// A 64-bit number of the JSON mapping: a string, a number, or absent (= 0).
pub(crate) fn num(value: Option<&Value>) -> i64 {
    match value {
        Some(Value::String(text)) => text.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// What a range read returned.
#[derive(Debug)]
pub(crate) struct Range {
    pub kvs: Vec<Kv>,
    /// The store's revision when the read was served: a watch from `revision + 1` misses
    /// nothing that happened after this read.
    pub revision: i64,
    /// More keys matched than `limit`.
    pub more: bool,
    /// How many keys matched in all (whatever `limit` returned).
    pub count: i64,
}

/// One change seen by a watch.
#[derive(Debug)]
pub(crate) enum Event {
    Put(Kv),
    Delete(Kv),
}

/// How a watch stream ended.
#[derive(Debug)]
pub(crate) enum WatchEnd {
    /// etcd compacted history past the start revision: re-read, then watch again.
    Compacted { compact_revision: i64 },
    /// The stream closed (etcd restarting, connection lost).
    Closed,
}

/// A compare of a transaction.
pub(crate) enum Compare<'a> {
    /// The key's version equals this (0 = the key does not exist).
    Version(&'a [u8], i64),
    /// The key's last change was at this revision: the fencing token of a placement.
    ModRevision(&'a [u8], i64),
}

/// The client: one pooled plain-HTTP hyper client to one etcd endpoint. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Etcd {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://HOST:PORT`, without a trailing slash.
    base: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("base", &self.base).finish()
    }
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` for a prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: "\0" means "to the end of the keyspace".
    vec![0]
}

impl Etcd {
    /// `endpoint` is `etcd://HOST:PORT` or `http://HOST:PORT`.
    pub(crate) fn new(endpoint: &str) -> Result<Self, ClusterError> {
        let rest = endpoint
            .strip_prefix("etcd://")
            .or_else(|| endpoint.strip_prefix("http://"))
            .ok_or_else(|| ClusterError::Endpoint {
                endpoint: endpoint.to_owned(),
            })?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || !host.contains(':') {
            return Err(ClusterError::Endpoint {
                endpoint: endpoint.to_owned(),
            });
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(http);
        Ok(Etcd {
            client,
            base: format!("http://{host}"),
        })
    }

    fn unreachable(&self, reason: impl Into<String>) -> ClusterError {
        ClusterError::Unreachable {
            endpoint: self.base.clone(),
            reason: reason.into(),
        }
    }

    fn request(&self, path: &str, body: &Value) -> Result<Request<Full<Bytes>>, ClusterError> {
        Request::post(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| self.unreachable(e.to_string()))
    }

    /// One unary call: POST `body` to `path`, read the whole JSON answer.
    async fn call(&self, path: &str, body: Value) -> Result<Value, ClusterError> {
        let request = self.request(path, &body)?;
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| self.unreachable(describe(&e)))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| self.unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(ClusterError::Refused {
                    endpoint: self.base.clone(),
                    path: path.to_owned(),
                    status: status.as_u16(),
                    answer: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
                });
            }
            serde_json::from_slice::<Value>(&bytes).map_err(|e| ClusterError::Protocol {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        match tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), call).await {
            Ok(result) => result,
            Err(_) => Err(self.unreachable(format!("no answer to {path} in {CALL_TIMEOUT_MS} ms"))),
        }
    }

    /// Reads `key` alone (`range_end` `None`) or every key in `[key, range_end)`, at most
    /// `limit` of them (0 = no limit), in key order. Linearizable: served by the leader.
    pub(crate) async fn range(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
        limit: i64,
    ) -> Result<Range, ClusterError> {
        let mut body = json!({ "key": base64::encode(key) });
        if let Some(end) = range_end {
            body["range_end"] = json!(base64::encode(end));
        }
        if limit > 0 {
            body["limit"] = json!(limit.to_string());
        }
        let answer = self.call("/v3/kv/range", body).await?;
        let kvs = answer
            .get("kvs")
            .and_then(Value::as_array)
            .map(|kvs| kvs.iter().map(Kv::from_json).collect::<Result<Vec<_>, _>>())
            .transpose()
            .map_err(|reason| ClusterError::Protocol {
                path: "/v3/kv/range".into(),
                reason,
            })?
            .unwrap_or_default();
        Ok(Range {
            kvs,
            revision: num(answer.pointer("/header/revision")),
            more: answer.get("more").and_then(Value::as_bool).unwrap_or(false),
            count: num(answer.get("count")),
        })
    }

    /// Puts every `(key, value)` of `puts` (with `lease` when given) if every compare holds,
    /// atomically. `Ok(false)` = a compare failed and nothing was written.
    pub(crate) async fn txn(
        &self,
        compares: &[Compare<'_>],
        puts: &[(&[u8], &[u8])],
        lease: Option<i64>,
    ) -> Result<bool, ClusterError> {
        let compare: Vec<Value> = compares
            .iter()
            .map(|c| match c {
                Compare::Version(key, version) => json!({
                    "key": base64::encode(key), "target": "VERSION", "result": "EQUAL",
                    "version": version.to_string(),
                }),
                Compare::ModRevision(key, revision) => json!({
                    "key": base64::encode(key), "target": "MOD", "result": "EQUAL",
                    "mod_revision": revision.to_string(),
                }),
            })
            .collect();
        let success: Vec<Value> = puts
            .iter()
            .map(|(key, value)| {
                let mut put = json!({ "key": base64::encode(key), "value": base64::encode(value) });
                if let Some(lease) = lease {
                    put["lease"] = json!(lease.to_string());
                }
                json!({ "request_put": put })
            })
            .collect();
        let answer = self
            .call(
                "/v3/kv/txn",
                json!({ "compare": compare, "success": success }),
            )
            .await?;
        Ok(answer
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false))
    }

    /// Writes `key` only if it does not exist yet. `Ok(false)` = it existed; nothing written.
    pub(crate) async fn create(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<bool, ClusterError> {
        self.txn(&[Compare::Version(key, 0)], &[(key, value)], lease)
            .await
    }

    /// Writes `key` unconditionally (with `lease` when given).
    pub(crate) async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<(), ClusterError> {
        let mut body = json!({ "key": base64::encode(key), "value": base64::encode(value) });
        if let Some(lease) = lease {
            body["lease"] = json!(lease.to_string());
        }
        self.call("/v3/kv/put", body).await.map(|_| ())
    }

    /// Deletes `key` (absent is fine).
    pub(crate) async fn delete(&self, key: &[u8]) -> Result<(), ClusterError> {
        self.call("/v3/kv/deleterange", json!({ "key": base64::encode(key) }))
            .await
            .map(|_| ())
    }

    /// A lease of `ttl_secs`; keys written with it vanish when it is not kept alive.
    pub(crate) async fn grant(&self, ttl_secs: i64) -> Result<i64, ClusterError> {
        let answer = self
            .call("/v3/lease/grant", json!({ "TTL": ttl_secs.to_string() }))
            .await?;
        match num(answer.get("ID")) {
            0 => Err(ClusterError::Protocol {
                path: "/v3/lease/grant".into(),
                reason: format!("no lease id in {answer}"),
            }),
            id => Ok(id),
        }
    }

    /// Renews lease `id`; `Ok(false)` = it has expired (its keys are gone).
    pub(crate) async fn keep_alive(&self, id: i64) -> Result<bool, ClusterError> {
        let answer = self
            .call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))
            .await?;
        Ok(num(answer.pointer("/result/TTL")) > 0)
    }

    /// Watches `[key, range_end)` from `start_revision`, calling `on_events` with each
    /// batch of changes, until the stream ends. Runs as long as etcd keeps it open.
    pub(crate) async fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
        mut on_events: impl FnMut(Vec<Event>),
    ) -> Result<WatchEnd, ClusterError> {
        let body = json!({ "create_request": {
            "key": base64::encode(key),
            "range_end": base64::encode(range_end),
            "start_revision": start_revision.to_string(),
        }});
        let request = self.request("/v3/watch", &body)?;
        let response = tokio::time::timeout(
            Duration::from_millis(CALL_TIMEOUT_MS),
            self.client.request(request),
        )
        .await
        .map_err(|_| self.unreachable("no answer to /v3/watch"))?
        .map_err(|e| self.unreachable(describe(&e)))?;
        if response.status() != StatusCode::OK {
            return Err(ClusterError::Refused {
                endpoint: self.base.clone(),
                path: "/v3/watch".into(),
                status: response.status().as_u16(),
                answer: String::new(),
            });
        }
        let mut body = response.into_body();
        let mut buffer = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(format!("watch stream: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            // The gateway writes one JSON object per message; parse every complete one.
            let mut consumed = 0;
            let mut messages = serde_json::Deserializer::from_slice(&buffer).into_iter::<Value>();
            while let Some(Ok(message)) = messages.next() {
                consumed = messages.byte_offset();
                let result = message.get("result").unwrap_or(&message);
                let compact = num(result.get("compact_revision"));
                if compact > 0 {
                    return Ok(WatchEnd::Compacted {
                        compact_revision: compact,
                    });
                }
                let mut events = Vec::new();
                for event in result
                    .get("events")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let kv = event
                        .get("kv")
                        .map(Kv::from_json)
                        .transpose()
                        .map_err(|reason| ClusterError::Protocol {
                            path: "/v3/watch".into(),
                            reason,
                        })?;
                    let Some(kv) = kv else { continue };
                    if event.get("type").and_then(Value::as_str) == Some("DELETE") {
                        events.push(Event::Delete(kv));
                    } else {
                        events.push(Event::Put(kv));
                    }
                }
                if !events.is_empty() {
                    on_events(events);
                }
            }
            let _ = buffer.split_to(consumed);
            if buffer.len() > WATCH_MESSAGE_BYTES_MAX {
                return Err(ClusterError::Protocol {
                    path: "/v3/watch".into(),
                    reason: format!("a message longer than {WATCH_MESSAGE_BYTES_MAX} bytes"),
                });
            }
        }
        Ok(WatchEnd::Closed)
    }
}

pub(crate) use crate::proxy::client::describe;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(Etcd::new("etcd://127.0.0.1:2379").is_ok());
        assert!(Etcd::new("http://127.0.0.1:2379/").is_ok());
        assert!(Etcd::new("127.0.0.1:2379").is_err());
        assert!(Etcd::new("etcd://host/path:1").is_err());
        assert!(Etcd::new("etcd://").is_err());
    }

    #[test]
    fn the_json_mapping_is_read() {
        let kv = Kv::from_json(&json!({
            "key": "Zm9v", "value": "YmFy", "mod_revision": "12", "version": "3"
        }))
        .unwrap();
        assert_eq!(kv.key, b"foo");
        assert_eq!(kv.value, b"bar");
        assert_eq!((kv.mod_revision, kv.version), (12, 3));
        assert_eq!(num(None), 0);
        assert_eq!(num(Some(&json!(7))), 7);
        assert!(Kv::from_json(&json!({ "key": "!!" })).is_err());
    }
}
