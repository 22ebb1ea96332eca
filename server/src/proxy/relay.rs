//! The streaming response body: provider bytes are forwarded (or translated) frame by frame
//! as they arrive, never buffered whole.
//!
//! [`RelayBody`] is polled by the server's connection task, so it needs no task of its own:
//! when the client disconnects, hyper drops the body, which drops the upstream body and
//! closes the provider connection — the upstream call is cancelled and no further tokens are
//! paid for.
//!
//! Storing before the last frame: once the stream is known to carry a whole answer — its
//! terminal event (`[DONE]`, `message_stop`) was produced, or the upstream ended cleanly —
//! the answer text goes to the completion callback, which queues the exchange and returns a
//! receiver that fires once the exchange is in the durable outbox. The terminal event (and
//! anything after it) is held back until then, so a client that has read the last frame
//! knows its exchange survives a crash. Frames before the terminal event are never held:
//! the first byte and every token arrive as early as before.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

pub(crate) use super::answer::Answer;

/// Turns upstream stream bytes into client stream bytes and remembers the answer text.
pub(crate) trait StreamTransform: Send + Unpin + 'static {
    /// Raw upstream bytes in (split anywhere); bytes for the client out (may be empty).
    /// An `Err` fails the stream with that message.
    fn on_chunk(&mut self, chunk: Bytes) -> Result<Bytes, String>;
    /// The upstream ended cleanly; returns what the client still needs (e.g. `[DONE]`).
    fn on_end(&mut self) -> Bytes;
    /// An error event in the client's stream format.
    fn error_event(&self, message: &str, code: &str) -> Bytes;
    /// Whether the stream carried a whole answer (no error event, a proper end).
    fn complete(&self) -> bool;
    /// Whether the client's terminal event (`[DONE]`, `message_stop`) is in the output
    /// produced so far. From the chunk that produced it on, output is held until the
    /// exchange is durable.
    fn ended(&self) -> bool;
    /// The assistant text assembled so far (bounded for storing) and the whole answer's size.
    fn take_answer(&mut self) -> Answer;
}

/// Fires once the exchange is in the durable outbox (or could not be put there, which is
/// logged where it happens); either way the held frames may go.
pub(crate) type Durable = oneshot::Receiver<()>;

/// Called once with the answer of a complete stream; returns when it is durable.
pub(crate) type OnComplete = Box<dyn FnOnce(Answer) -> Durable + Send + Sync>;

/// A response body relaying a provider stream. `B` is the upstream body (hyper's
/// `Incoming` in the server; a scripted body in tests).
pub(crate) struct RelayBody<B, T> {
    upstream: B,
    transform: T,
    provider: String,
    /// Fires when the provider has sent nothing for `idle_timeout`; reset on every chunk,
    /// so a long stream that keeps producing is never cut.
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// Set once the last frame was produced; later polls return `None`.
    finished: bool,
    /// Taken when the stream is known complete; still present on drop = the client went
    /// away before the answer was whole.
    on_complete: Option<OnComplete>,
    /// The outbox append of the exchange, while it runs; output is held meanwhile.
    durable: Option<Durable>,
    /// Output produced from the terminal event on, released once `durable` fires.
    held: BytesMut,
    /// The upstream has ended: the body ends once `held` is released.
    upstream_done: bool,
}

impl<B, T> RelayBody<B, T> {
    pub(crate) fn new(
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
            durable: None,
            held: BytesMut::new(),
            upstream_done: false,
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

    /// Hands a whole answer to the completion callback (once) and starts holding output
    /// until it is durable. A stream that ended without a whole answer is not stored.
    fn settle(&mut self) {
        let Some(done) = self.on_complete.take() else {
            return;
        };
        if self.transform.complete() {
            self.durable = Some(done(self.transform.take_answer()));
        } else {
            tracing::warn!(provider = %self.provider, "provider stream ended without a whole answer; exchange not stored");
        }
    }

    /// `out` for the client now, or held behind the outbox append.
    fn emit(&mut self, out: Bytes) -> Option<Bytes> {
        if self.durable.is_some() {
            self.held.extend_from_slice(&out);
            None
        } else if out.is_empty() {
            None
        } else {
            Some(out)
        }
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
            if let Some(durable) = this.durable.as_mut() {
                // The upstream is not read meanwhile: nothing after the terminal event
                // matters to the client, and the append takes milliseconds.
                if Pin::new(durable).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.durable = None;
                let held = std::mem::take(&mut this.held).freeze();
                this.finished = this.upstream_done;
                if !held.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(held))));
                }
                if this.finished {
                    return Poll::Ready(None);
                }
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // Trailers carry nothing a chat client reads.
                    };
                    let next = Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(next);
                    match this.transform.on_chunk(data) {
                        Ok(out) => {
                            if this.transform.ended() {
                                this.settle();
                            }
                            if let Some(out) = this.emit(out) {
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                        }
                        Err(message) => return this.fail(&message, "bad_provider_response"),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let message = format!("provider connection failed mid-stream: {e}");
                    return this.fail(&message, "provider_unreachable");
                }
                Poll::Ready(None) => {
                    this.upstream_done = true;
                    let tail = this.transform.on_end();
                    this.settle();
                    if let Some(tail) = this.emit(tail) {
                        this.finished = true;
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                    if this.durable.is_none() {
                        this.finished = true;
                        return Poll::Ready(None);
                    }
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

    /// Upper-cases bytes; complete unless it saw "!"; "." is its terminal event.
    #[derive(Default)]
    struct Upper {
        text: String,
        broken: bool,
        ended: bool,
    }

    impl StreamTransform for Upper {
        fn on_chunk(&mut self, chunk: Bytes) -> Result<Bytes, String> {
            let s = String::from_utf8_lossy(&chunk).to_uppercase();
            self.broken |= s.contains('!');
            self.ended |= s.contains('.');
            self.text.push_str(&s);
            Ok(Bytes::from(s))
        }
        fn ended(&self) -> bool {
            self.ended
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
        fn take_answer(&mut self) -> Answer {
            let text = std::mem::take(&mut self.text);
            Answer {
                bytes: text.len(),
                text,
            }
        }
    }

    /// A receiver that has already fired: the exchange is durable at once.
    fn durable_now() -> Durable {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(());
        rx
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
            Upper::default(),
            "fake",
            Duration::from_secs(60),
            Box::new(move |answer: Answer| {
                *sink.lock().unwrap() = Some(answer.text);
                durable_now()
            }),
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
            Upper::default(),
            "fake",
            Duration::from_secs(60),
            Box::new(move |answer: Answer| {
                *sink.lock().unwrap() = Some(answer.text);
                durable_now()
            }),
        );
        drop(body);
        assert_eq!(*answer.lock().unwrap(), None);
    }

    /// A body over `items` whose outbox append completes only when the returned sender
    /// fires, plus the answer the callback received (if it was called).
    #[allow(clippy::type_complexity)]
    fn gated(
        items: &[&'static str],
    ) -> (
        RelayBody<Script, Upper>,
        oneshot::Sender<()>,
        Arc<Mutex<Option<String>>>,
    ) {
        let (fire, durable) = oneshot::channel::<()>();
        let durable = Mutex::new(Some(durable));
        let answer = Arc::new(Mutex::new(None::<String>));
        let sink = answer.clone();
        let body = RelayBody::new(
            Script(
                items
                    .iter()
                    .map(|s| Ok(Bytes::from_static(s.as_bytes())))
                    .collect(),
            ),
            Upper::default(),
            "fake",
            Duration::from_secs(60),
            Box::new(move |answer: Answer| {
                *sink.lock().unwrap() = Some(answer.text);
                durable.lock().unwrap().take().unwrap()
            }),
        );
        (body, fire, answer)
    }

    /// One poll of `body` with a no-op waker: the next frame's bytes, the end, or pending.
    fn step(body: &mut RelayBody<Script, Upper>) -> Poll<Option<Bytes>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(frame.into_data().ok()),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Pending => Poll::Pending,
        }
    }

    fn ready(s: &'static str) -> Poll<Option<Bytes>> {
        Poll::Ready(Some(Bytes::from_static(s.as_bytes())))
    }

    /// The terminal event and what follows wait for the outbox; the frames before it do
    /// not, and the callback has the whole answer before the terminal event goes out.
    #[tokio::test]
    async fn terminal_event_waits_until_the_exchange_is_durable() {
        let (mut body, fire, answer) = gated(&["ab", "c.", "x"]);
        assert_eq!(step(&mut body), ready("AB"));
        assert_eq!(*answer.lock().unwrap(), None);
        // "C." ends the answer: it is handed over, and held until the outbox says durable.
        assert_eq!(step(&mut body), Poll::Pending);
        assert_eq!(answer.lock().unwrap().as_deref(), Some("ABC."));
        assert_eq!(step(&mut body), Poll::Pending);
        fire.send(()).unwrap();
        assert_eq!(step(&mut body), ready("C."));
        assert_eq!(step(&mut body), ready("X"));
        assert_eq!(step(&mut body), ready("<end>"));
        assert_eq!(step(&mut body), Poll::Ready(None));
    }

    /// A stream whose end is only known when the upstream closes is stored then, and the
    /// tail the client still needs waits for the outbox the same way.
    #[tokio::test]
    async fn tail_waits_for_the_outbox_when_the_end_is_only_known_at_eof() {
        let (mut body, fire, answer) = gated(&["ab", "cd"]);
        assert_eq!(step(&mut body), ready("AB"));
        assert_eq!(step(&mut body), ready("CD"));
        assert_eq!(step(&mut body), Poll::Pending);
        assert_eq!(answer.lock().unwrap().as_deref(), Some("ABCD"));
        fire.send(()).unwrap();
        assert_eq!(step(&mut body), ready("<end>"));
        assert_eq!(step(&mut body), Poll::Ready(None));
    }

    /// An outbox append that failed (its sender dropped) still releases the held frames.
    #[tokio::test]
    async fn a_failed_append_still_releases_the_end() {
        let (mut body, fire, _) = gated(&["a."]);
        assert_eq!(step(&mut body), Poll::Pending);
        drop(fire);
        assert_eq!(step(&mut body), ready("A."));
        assert_eq!(step(&mut body), ready("<end>"));
        assert_eq!(step(&mut body), Poll::Ready(None));
    }
}
