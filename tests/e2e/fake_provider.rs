//! A fake LLM provider on loopback, speaking both wire formats the proxy calls:
//! OpenAI Chat Completions at `POST /v1/chat/completions` (base URL `http://ADDR/v1`) and
//! Anthropic Messages at `POST /v1/messages` (base URL `http://ADDR`).
//!
//! It records every request (path, headers, JSON body) and answers
//! `"Reply to: <last user text>"`, streamed when the body says `stream: true`. Tests switch
//! it to fail with a status and body, to never answer (timeouts), or to send one stream
//! chunk and then hold the stream open (client-disconnect cancellation).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// One request as the provider received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Value,
}

impl Recorded {
    /// The system prompt the provider saw: OpenAI system messages or Anthropic `system`.
    pub fn system_text(&self) -> String {
        if let Some(system) = self.body.get("system") {
            return text_of(system);
        }
        self.body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| m["role"] == "system")
                    .map(|m| text_of(&m["content"]))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

/// How the provider answers the next requests.
#[derive(Clone, Debug, Default)]
pub enum Behavior {
    #[default]
    Answer,
    /// Answer with this status and raw body.
    Fail(u16, String),
    /// Accept the request and never answer.
    Hang,
    /// Stream one chunk, then hold the stream open until the client goes away.
    StreamAndHold,
}

#[derive(Default)]
struct Shared {
    recorded: Mutex<Vec<Recorded>>,
    behavior: Mutex<Behavior>,
    /// Notified when a held stream's body is dropped (the proxy closed the connection).
    stream_dropped: Notify,
}

/// A running fake provider; it stops when the test's runtime ends.
#[derive(Clone)]
pub struct FakeProvider {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeProvider {
    pub async fn start() -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let accept_shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(shared.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeProvider { addr, shared }
    }

    /// `base_url` for an OpenAI-kind provider.
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `base_url` for an Anthropic-kind provider.
    pub fn anthropic_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, behavior: Behavior) {
        *self.shared.behavior.lock().unwrap() = behavior;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the provider received no request")
    }

    /// Resolves once a held stream was dropped by the other side.
    pub async fn stream_dropped(&self) {
        self.shared.stream_dropped.notified().await;
    }
}

type FakeBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(status: u16, body: impl Into<Bytes>, content_type: &str) -> Response<FakeBody> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(http_body_util::Full::new(body.into()).boxed())
        .unwrap()
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<FakeBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let path = parts.uri.path().to_owned();
    shared.recorded.lock().unwrap().push(Recorded {
        path: path.clone(),
        headers: parts.headers,
        body: body.clone(),
    });
    let behavior = shared.behavior.lock().unwrap().clone();
    let anthropic = path == "/v1/messages";
    if path != "/v1/chat/completions" && !anthropic {
        return Ok(full(
            404,
            r#"{"error":{"message":"no such path","type":"invalid_request_error"}}"#,
            "application/json",
        ));
    }
    let reply = format!("Reply to: {}", last_user_text(&body));
    let stream = body["stream"] == true;
    match behavior {
        Behavior::Fail(status, text) => Ok(full(status, text, "application/json")),
        Behavior::Hang => std::future::pending().await,
        Behavior::Answer if !stream => {
            let answer = if anthropic {
                json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
                       "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn",
                       "usage": {"input_tokens": 11, "output_tokens": 4}})
            } else {
                json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": body["model"],
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}})
            };
            Ok(full(200, answer.to_string(), "application/json"))
        }
        Behavior::Answer | Behavior::StreamAndHold => {
            let hold = matches!(behavior, Behavior::StreamAndHold);
            let events = if anthropic {
                anthropic_events(&body, &reply)
            } else {
                openai_events(&body, &reply)
            };
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                let count = if hold { 1 } else { events.len() };
                for event in events.into_iter().take(count) {
                    if tx.send(Bytes::from(event)).await.is_err() {
                        return;
                    }
                }
                if hold {
                    // Keep the sender alive until the receiving body is dropped.
                    tx.closed().await;
                }
            });
            let body = ChannelBody {
                rx,
                shared: hold.then_some(shared),
            };
            let response = Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(body.boxed())
                .unwrap();
            Ok(response)
        }
    }
}

/// Streams what the channel yields; a held stream reports its drop.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    shared: Option<Arc<Shared>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.stream_dropped.notify_one();
        }
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default()
}

/// The reply split into a few pieces, so the client sees several chunks.
fn pieces(reply: &str) -> Vec<String> {
    reply.split_inclusive(' ').map(str::to_owned).collect()
}

fn openai_events(body: &Value, reply: &str) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    events.extend(
        pieces(reply)
            .into_iter()
            .map(|p| chunk(json!({"content": p}), Value::Null)),
    );
    events.push(chunk(json!({}), json!("stop")));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn anthropic_events(body: &Value, reply: &str) -> Vec<String> {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant",
              "model": body["model"], "content": [], "stop_reason": null, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    events.extend(pieces(reply).into_iter().map(|p| {
        event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}))
    }));
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}})));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}
