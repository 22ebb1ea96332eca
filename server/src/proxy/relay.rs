//! The streaming response body: provider bytes are forwarded (or translated) frame by frame
//! as they arrive, never buffered whole.
//!
//! [`RelayBody`] is polled by the server's connection task, so it needs no task of its own:
//! when the client disconnects, hyper drops the body, which drops the upstream body and
//! closes the provider connection — the upstream call is cancelled and no further tokens are
//! paid for. When the upstream ends cleanly, the assembled answer text is handed to the
//! completion callback (which queues the exchange for ingest).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Turns upstream stream bytes into client stream bytes and remembers the answer text.
pub trait StreamTransform: Send + Unpin + 'static {
    /// Raw upstream bytes in (split anywhere); bytes for the client out (may be empty).
    /// An `Err` fails the stream with that message.
    fn on_chunk(&mut self, chunk: Bytes) -> Result<Bytes, String>;
    /// The upstream ended cleanly; returns what the client still needs (e.g. `[DONE]`).
    fn on_end(&mut self) -> Bytes;
    /// An error event in the client's stream format.
    fn error_event(&self, message: &str, code: &str) -> Bytes;
    /// Whether the stream carried a whole answer (no error event, a proper end).
    fn complete(&self) -> bool;
    /// The assistant text assembled so far.
    fn take_answer(&mut self) -> String;
}

/// Called once with the answer text after a complete stream.
pub type OnComplete = Box<dyn FnOnce(String) + Send + Sync>;

/// A response body relaying a provider stream. `B` is the upstream body (hyper's
/// `Incoming` in the server; a scripted body in tests).
pub struct RelayBody<B, T> {
    upstream: B,
    transform: T,
    provider: String,
    /// Fires when the provider has sent nothing for `idle_timeout`; reset on every chunk,
    /// so a long stream that keeps producing is never cut.
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// Set once the last frame was produced; later polls return `None`.
    finished: bool,
    /// Taken when the stream completes; still present on drop = the client went away.
    on_complete: Option<OnComplete>,
}

impl<B, T> RelayBody<B, T> {
    pub fn new(
        upstream: B,
        transform: T,
        provider: &str,
        idle_timeout: Duration,
        on_complete: OnComplete,
    ) -> Self {
        RelayBody {
            upstream,
            transform,
            provider: provider.to_owned(),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            finished: false,
            on_complete: Some(on_complete),
        }
    }
}

impl<B, T> RelayBody<B, T>
where
    T: StreamTransform,
{
    fn fail(
        &mut self,
        message: &str,
        code: &str,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        tracing::warn!(provider = %self.provider, code, "provider stream failed: {message}; exchange not stored");
        self.finished = true;
        self.on_complete = None;
        Poll::Ready(Some(Ok(Frame::data(
            self.transform.error_event(message, code),
        ))))
    }
}

impl<B, T> Body for RelayBody<B, T>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    T: StreamTransform,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // Trailers carry nothing a chat client reads.
                    };
                    let next = Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(next);
                    match this.transform.on_chunk(data) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(message) => return this.fail(&message, "bad_provider_response"),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let message = format!("provider connection failed mid-stream: {e}");
                    return this.fail(&message, "provider_unreachable");
                }
                Poll::Ready(None) => {
                    this.finished = true;
                    let tail = this.transform.on_end();
                    if let Some(done) = this.on_complete.take() {
                        if this.transform.complete() {
                            done(this.transform.take_answer());
                        } else {
                            tracing::warn!(provider = %this.provider, "provider stream ended without a whole answer; exchange not stored");
                        }
                    }
                    return if tail.is_empty() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Ok(Frame::data(tail))))
                    };
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        let ms = this.idle_timeout.as_millis();
                        let message = format!("provider sent nothing for {ms} ms");
                        return this.fail(&message, "provider_timeout");
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<B, T> Drop for RelayBody<B, T> {
    fn drop(&mut self) {
        if !self.finished && self.on_complete.is_some() {
            tracing::info!(provider = %self.provider, "client disconnected mid-stream; upstream call cancelled, exchange not stored");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A scripted upstream body: each item is one frame or a failure.
    pub(crate) struct Script(pub VecDeque<Result<Bytes, String>>);

    impl Body for Script {
        type Data = Bytes;
        type Error = String;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|r| r.map(Frame::data)))
        }
    }

    /// Upper-cases bytes; complete unless it saw "!".
    struct Upper {
        text: String,
        broken: bool,
    }

    impl StreamTransform for Upper {
        fn on_chunk(&mut self, chunk: Bytes) -> Result<Bytes, String> {
            let s = String::from_utf8_lossy(&chunk).to_uppercase();
            self.broken |= s.contains('!');
            self.text.push_str(&s);
            Ok(Bytes::from(s))
        }
        fn on_end(&mut self) -> Bytes {
            Bytes::from_static(b"<end>")
        }
        fn error_event(&self, message: &str, code: &str) -> Bytes {
            Bytes::from(format!("<error {code}: {message}>"))
        }
        fn complete(&self) -> bool {
            !self.broken
        }
        fn take_answer(&mut self) -> String {
            std::mem::take(&mut self.text)
        }
    }

    async fn run(items: Vec<Result<&'static str, &'static str>>) -> (String, Option<String>) {
        use http_body_util::BodyExt;
        let script = Script(
            items
                .into_iter()
                .map(|r| {
                    r.map(|s| Bytes::from_static(s.as_bytes()))
                        .map_err(|e| e.to_owned())
                })
                .collect(),
        );
        let answer = Arc::new(Mutex::new(None));
        let sink = answer.clone();
        let body = RelayBody::new(
            script,
            Upper {
                text: String::new(),
                broken: false,
            },
            "fake",
            Duration::from_secs(60),
            Box::new(move |text| *sink.lock().unwrap() = Some(text)),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        let answer = answer.lock().unwrap().clone();
        (String::from_utf8(bytes.to_vec()).unwrap(), answer)
    }

    #[tokio::test]
    async fn relays_every_chunk_and_reports_the_answer() {
        let (out, answer) = run(vec![Ok("ab"), Ok(""), Ok("cd")]).await;
        assert_eq!(out, "ABCD<end>");
        assert_eq!(answer.as_deref(), Some("ABCD"));
    }

    #[tokio::test]
    async fn incomplete_stream_is_not_reported() {
        let (out, answer) = run(vec![Ok("a!")]).await;
        assert_eq!(out, "A!<end>");
        assert_eq!(answer, None);
    }

    #[tokio::test]
    async fn upstream_failure_becomes_an_error_event() {
        let (out, answer) = run(vec![Ok("ab"), Err("reset"), Ok("never")]).await;
        assert!(out.starts_with("AB<error provider_unreachable: "), "{out}");
        assert!(out.contains("reset") && !out.contains("NEVER"), "{out}");
        assert_eq!(answer, None);
    }

    #[tokio::test]
    async fn dropped_body_never_reports() {
        let answer = Arc::new(Mutex::new(None::<String>));
        let sink = answer.clone();
        let body = RelayBody::new(
            Script(VecDeque::from(vec![Ok(Bytes::from_static(b"x"))])),
            Upper {
                text: String::new(),
                broken: false,
            },
            "fake",
            Duration::from_secs(60),
            Box::new(move |text| *sink.lock().unwrap() = Some(text)),
        );
        drop(body);
        assert_eq!(*answer.lock().unwrap(), None);
    }
}
