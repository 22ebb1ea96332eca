//! Protocol-level errors in the API's error shape.
//!
//! When hyper cannot parse a request head (bad header bytes, `Content-Length: -1`, an
//! oversized head, a bad method, version or URI) it answers by itself, before any service
//! runs, and offers no hook to shape that answer: `400`, `414` or `431` with an empty body,
//! then it closes the connection. Every other error leaves as
//! `{"error":{"message","type","param","code"}}`, so [`ErrorBodyIo`] sits between hyper and
//! the socket and replaces exactly that automatic answer with the same status carrying the
//! error body.
//!
//! How it is recognised: hyper writes it as a head alone — status 400, 414 or 431, and no
//! header but `connection: close`, `content-length: 0` and `date` — as the last bytes of the
//! connection. No response of ours looks like that: every one carries a `content-type` (JSON,
//! text, the dashboard's files) or the proxy's `x-memory-*` headers. A write is checked only
//! when it is short enough to be such a head ([`HEAD_BYTES_MAX`]), so bodies stream through
//! untouched. Tests: `recognises_only_hypers_automatic_answer` here and e2e
//! `protocol_errors_carry_the_json_error_body`, which also pins hyper's format: a hyper
//! upgrade that changes it fails that test instead of silently sending empty bodies again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ApiError;

/// Longest write that can be hyper's automatic answer (its head is about 90 bytes).
const HEAD_BYTES_MAX: usize = 256;

/// The error for an automatic answer of hyper's with `status`.
fn error_for(status: StatusCode) -> ApiError {
    match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::new(
            status,
            "invalid_request_error",
            "headers_too_large",
            "The request head is too large (more than 100 headers or about 400 KB).",
        ),
        StatusCode::URI_TOO_LONG => ApiError::new(
            status,
            "invalid_request_error",
            "uri_too_long",
            "The request URI is too long.",
        ),
        _ => ApiError::new(
            status,
            "invalid_request_error",
            "invalid_http_request",
            "The request is not valid HTTP/1.1: a malformed request line, header name or \
             value, or Content-Length.",
        ),
    }
}

/// If `bytes` is hyper's automatic answer to a request it could not parse, the same answer
/// with the JSON error body (and `date` kept); else `None`.
fn replacement(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line.strip_prefix("HTTP/1.1 ")?;
    let code: u16 = rest.get(..3)?.parse().ok()?;
    let status = StatusCode::from_u16(code).ok()?;
    if !matches!(code, 400 | 414 | 431) {
        return None;
    }
    let mut date = None;
    let mut empty_body = false;
    for line in lines {
        let (name, value) = line.split_once(": ")?;
        match (name.to_ascii_lowercase().as_str(), value) {
            ("content-length", "0") => empty_body = true,
            ("connection", "close") => {}
            ("date", value) => date = Some(value),
            _ => return None,
        }
    }
    if !empty_body {
        return None;
    }
    let body = error_for(status).body().to_string();
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(date) = date {
        out.push_str("date: ");
        out.push_str(date);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

/// A connection's socket as hyper sees it, with hyper's automatic parse-error answers given
/// the JSON error body (see the module docs). Reads pass straight through.
pub(crate) struct ErrorBodyIo<T> {
    inner: T,
    /// The replacement answer not yet written to `inner` (hyper was told it was written).
    pending: Vec<u8>,
}

impl<T> ErrorBodyIo<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> ErrorBodyIo<T> {
    /// Writes out what is pending; `Ready(Ok)` once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ErrorBodyIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ErrorBodyIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if buf.len() <= HEAD_BYTES_MAX
            && let Some(answer) = replacement(buf)
        {
            this.pending = answer;
            // Hyper's bytes count as written; ours go out now or on the next poll.
            if let Poll::Ready(Err(error)) = this.poll_pending(cx) {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total <= HEAD_BYTES_MAX {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(answer) = replacement(&joined) {
                this.pending = answer;
                if let Poll::Ready(Err(error)) = this.poll_pending(cx) {
                    return Poll::Ready(Err(error));
                }
                return Poll::Ready(Ok(total));
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Mon, 07 Dec 2026 16:55:09 GMT";

    #[test]
    fn recognises_only_hypers_automatic_answer() {
        for (status, code) in [
            (400, "invalid_http_request"),
            (414, "uri_too_long"),
            (431, "headers_too_large"),
        ] {
            let head = format!(
                "HTTP/1.1 {status} X\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n"
            );
            let answer = String::from_utf8(replacement(head.as_bytes()).unwrap()).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status} X\r\n")),
                "{head}"
            );
            assert!(head.contains("content-type: application/json"));
            assert!(head.contains(&format!("content-length: {}", body.len())));
            assert!(head.contains(DATE));
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["error"]["code"], code);
            assert_eq!(json["error"]["type"], "invalid_request_error");
        }
        let ours = [
            // A response of ours: it has a content type, a body, or another status.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-memory-retrieved: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nbody",
            "400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            "",
            "\r\n\r\n",
        ];
        for bytes in ours {
            assert!(replacement(bytes.as_bytes()).is_none(), "{bytes:?}");
        }
    }

    /// The replacement is written whole even when the socket takes a few bytes at a time,
    /// and a flush or shutdown waits for it.
    #[tokio::test]
    async fn the_answer_is_written_whole_through_short_writes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(7);
        let mut io = ErrorBodyIo::new(server);
        let head = format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{DATE}\r\n\r\n");
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut out = String::new();
            client.read_to_string(&mut out).await.unwrap();
            out
        });
        assert_eq!(io.write(head.as_bytes()).await.unwrap(), head.len());
        io.shutdown().await.unwrap();
        drop(io);
        let out = reader.await.unwrap();
        let (_, body) = out.split_once("\r\n\r\n").unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "invalid_http_request");
    }
}
