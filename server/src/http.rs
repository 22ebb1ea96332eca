//! HTTP plumbing shared by every handler: the response body type, JSON responses, bounded
//! body reading, JSON parsing into OpenAI-shaped errors, and query strings.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;
use crate::serve::budget::Reservation;

/// Error type of streamed response bodies (proxy SSE relays can fail mid-stream).
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: a full buffer or a stream, boxed.
pub(crate) type Body = BoxBody<Bytes, BodyError>;

/// How long a client may take to send its body once the headers are in. A slow or stalled
/// upload is cut off instead of holding a connection slot forever.
pub(crate) const BODY_READ_TIMEOUT_SECS: u64 = 30;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, bytes, "application/json"),
        Err(error) => {
            tracing::error!(%error, "response serialisation failed");
            error_response(&ApiError::internal())
        }
    }
}

pub(crate) fn text_response(
    status: StatusCode,
    text: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    with_type(status, text, content_type)
}

fn with_type(
    status: StatusCode,
    bytes: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn error_response(error: &ApiError) -> Response<Body> {
    let body = error.body().to_string();
    let mut response = with_type(error.status, body, "application/json");
    if let Some(secs) = error.retry_after_secs {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// A request body read whole, and its share of the server's body budget: the share is
/// given back when this is dropped, so a handler that holds its body (or what it parsed
/// from it) counts against the budget until it ends.
#[derive(Debug)]
pub(crate) struct Buffered {
    bytes: Bytes,
    reservation: Reservation,
}

impl Buffered {
    /// The bytes and the reservation apart: a handler that has parsed the body drops the
    /// bytes and keeps the reservation while it works on what it parsed.
    pub(crate) fn into_parts(self) -> (Bytes, Reservation) {
        (self.bytes, self.reservation)
    }
}

impl std::ops::Deref for Buffered {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

/// Reads the whole body, refusing more than `body_bytes_max` bytes with 413 (checked
/// against `Content-Length` first, then while streaming for chunked bodies), and a body
/// the server's body budget has no room for with `503 server_busy` (`Retry-After`): a
/// declared length is reserved before the first byte is read, a chunked body frame by
/// frame. A refused body is read to its end and dropped (bounded by the size limit and the
/// body timeout), so the client, still sending, gets the 503 instead of a reset.
pub(crate) async fn read_body(
    state: &AppState,
    body: Incoming,
    headers: &HeaderMap,
) -> Result<Buffered, ApiError> {
    let limit = state.config.limits.body_bytes_max;
    let budget = &state.body_budget;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let declared = declared.map(|n| n as usize);
    let read = async {
        let mut body = body;
        let mut refused = None;
        let mut reservation = match declared {
            Some(n) => budget.reserve(n).unwrap_or_else(|error| {
                refused = Some(error);
                budget.empty()
            }),
            None => budget.empty(),
        };
        let mut buffer = Vec::with_capacity(if refused.is_some() {
            0
        } else {
            declared.unwrap_or(0)
        });
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map(|f| f.into_data()) else {
                return Err(ApiError::bad_request(
                    "body_read_error",
                    "The request body could not be read.",
                ));
            };
            let Ok(data) = data else { continue };
            seen += data.len();
            if seen > limit {
                return Err(too_large(limit));
            }
            if refused.is_some() {
                continue;
            }
            if declared.is_none()
                && let Err(error) = budget.grow(&mut reservation, data.len())
            {
                refused = Some(error);
                buffer = Vec::new();
                continue;
            }
            buffer.extend_from_slice(&data);
        }
        match refused {
            Some(error) => Err(error),
            None => Ok(Buffered {
                bytes: Bytes::from(buffer),
                reservation,
            }),
        }
    };
    match tokio::time::timeout(Duration::from_secs(BODY_READ_TIMEOUT_SECS), read).await {
        Err(_) => Err(ApiError::bad_request(
            "body_timeout",
            "The request body was not received in time.",
        )),
        Ok(result) => result,
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(
        "body_too_large",
        format!("Request body is larger than the limit of {limit} bytes."),
    )
}

/// Parses a JSON request body. Invalid UTF-8, syntax errors, nesting beyond serde_json's
/// recursion limit (128) and wrong types all become 400 with serde's position-bearing message.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "The request body is empty; send a JSON object.",
        ));
    }
    serde_json::from_slice(bytes).map_err(|error| {
        ApiError::bad_request("invalid_json", format!("Invalid JSON body: {error}."))
    })
}

/// Query-string parameters (percent-decoded; later duplicates win).
pub(crate) fn query_params(query: Option<&str>) -> HashMap<String, String> {
    let mut params = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(percent_decode(name), percent_decode(value));
    }
    params
}

/// Decodes `%XX` escapes and `+` as space; malformed escapes are kept literally and
/// invalid UTF-8 is replaced, so a hostile query string can never fail a request here.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs blocking engine or catalog work (fsync, file reads) on the blocking pool so it
/// never stalls the async workers that accept and parse requests.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(%error, "blocking task failed");
            Err(ApiError::internal())
        }
    }
}

/// A header's value as text, if present and visible ASCII.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries() {
        let q = query_params(Some("session_id=a%20b&limit=5&x=%zz&flag&plus=a+b&end=%4"));
        assert_eq!(q["session_id"], "a b");
        assert_eq!(q["limit"], "5");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["flag"], "");
        assert_eq!(q["plus"], "a b");
        assert_eq!(q["end"], "%4");
    }

    #[test]
    fn json_errors_are_400() {
        assert_eq!(
            parse_json::<serde_json::Value>(b"{").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse_json::<serde_json::Value>(b"  ").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse_json::<serde_json::Value>(b"\"\xff\"")
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        let deep = "[".repeat(10_000);
        assert_eq!(
            parse_json::<serde_json::Value>(deep.as_bytes())
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
    }
}
