"""A fake LLM provider on loopback for the Python proxy tests (stdlib only).

Speaks OpenAI Chat Completions at ``POST /v1/chat/completions`` (base URL
``http://127.0.0.1:PORT/v1``) and Anthropic Messages at ``POST /v1/messages`` (base URL
``http://127.0.0.1:PORT``). Answers ``"Reply to: <last user text>"``, streamed when the
request says ``stream: true``. Records every request. ``behavior`` switches it to fail
with a status and body, or to hang (never answer, until ``stop()``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    def system_text(self) -> str:
        """The system prompt as the provider saw it (OpenAI system messages or Anthropic `system`)."""
        if "system" in self.body:
            return _text(self.body["system"])
        return "\n".join(_text(m.get("content")) for m in self.body.get("messages", []) if m.get("role") == "system")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return ""


@dataclass
class FakeProvider:
    requests: list[Recorded] = field(default_factory=list)
    # "answer", "hang", or ("fail", status, body_text)
    behavior: Any = "answer"
    _release: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> "FakeProvider":
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                headers = {k.lower(): v for k, v in self.headers.items()}
                provider.requests.append(Recorded(self.path, headers, body))
                anthropic = self.path == "/v1/messages"
                if self.path not in ("/v1/chat/completions", "/v1/messages"):
                    return self._send(404, {"error": {"message": "no such path", "type": "invalid_request_error"}})
                behavior = provider.behavior
                if behavior == "hang":
                    provider._release.wait(60)
                    return self._send(500, {"error": {"message": "released"}})
                if isinstance(behavior, tuple) and behavior[0] == "fail":
                    _, status, text = behavior
                    return self._send_raw(status, text.encode(), "application/json")
                reply = f"Reply to: {_last_user(body)}"
                if body.get("stream"):
                    events = _anthropic_events(body, reply) if anthropic else _openai_events(body, reply)
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("connection", "close")
                    self.end_headers()
                    for event in events:
                        self.wfile.write(event.encode())
                        self.wfile.flush()
                    return None
                if anthropic:
                    answer = {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model"),
                              "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn",
                              "usage": {"input_tokens": 11, "output_tokens": 4}}
                else:
                    answer = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": body.get("model"),
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                           "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}}
                return self._send(200, answer)

            def _send(self, status: int, value: Any) -> None:
                self._send_raw(status, json.dumps(value).encode(), "application/json")

            def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def openai_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def last(self) -> Recorded:
        assert self.requests, "the provider received no request"
        return self.requests[-1]

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _pieces(reply: str) -> list[str]:
    words = reply.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def _openai_events(body: dict[str, Any], reply: str) -> list[str]:
    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": body.get("model"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(data)}\n\n"

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": p}, None) for p in _pieces(reply)]
    events += [chunk({}, "stop"), "data: [DONE]\n\n"]
    return events


def _anthropic_events(body: dict[str, Any], reply: str) -> list[str]:
    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    events = [
        event("message_start", {"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model"), "content": [],
            "stop_reason": None, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
        event("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}),
    ]
    events += [event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": p}}) for p in _pieces(reply)]
    events += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                "usage": {"output_tokens": 4}}),
        event("message_stop", {"type": "message_stop"}),
    ]
    return events
