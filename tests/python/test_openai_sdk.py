"""Proxy mode driven by the official `openai` Python SDK, unmodified: the app only changes
its base URL to MemoryRouter and uses a Memory Key as the API key.

The provider is `fake_provider.FakeProvider` on loopback; the server is the real binary
started by `conftest.start_server`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import start_server
from fake_provider import FakeProvider

PREFERENCE = "I prefer concise coaching and train at 6am"
FOLLOW_UP = "How should we adjust tomorrow?"
# Upper bound for the proxy's background ingest to land (normally a few milliseconds);
# only reached if storing is broken.
STORED_WITHIN_S = 15.0


def providers_toml(fake: FakeProvider) -> str:
    return f"""
[providers.openai]
base_url = "{fake.openai_base}"
[providers.anthropic]
base_url = "{fake.anthropic_base}"
[providers.local]
kind = "openai"
base_url = "{fake.openai_base}"
models = ["fake-model"]
"""


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider().start()
    yield provider
    provider.stop()


@pytest.fixture
def server(tmp_path: Any, fake: FakeProvider) -> Iterator[Any]:
    srv = start_server(tmp_path, extra_toml=providers_toml(fake))
    yield srv
    srv.stop()


def admin_headers(server: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {server.admin_key}"}


def new_key(server: Any, name: str) -> str:
    r = httpx.post(f"{server.base_url}/v1/keys", json={"name": name}, headers=admin_headers(server))
    assert r.status_code == 201, r.text
    return r.json()["key"]


def store_provider_key(server: Any, provider: str, api_key: str) -> None:
    r = httpx.put(f"{server.base_url}/v1/provider-keys/{provider}", json={"api_key": api_key},
                  headers=admin_headers(server))
    assert r.status_code < 300, r.text


def memories(server: Any, key: str) -> list[str]:
    r = httpx.get(f"{server.base_url}/v1/memory", params={"limit": 100}, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return [m["content"] for m in r.json()["memories"]]


def wait_stored(server: Any, key: str, text: str) -> list[str]:
    """The proxy stores an exchange right after answering, off the response path: wait for it."""
    deadline = time.monotonic() + STORED_WITHIN_S
    while True:
        texts = memories(server, key)
        if text in texts or time.monotonic() > deadline:
            return texts
        time.sleep(0.01)


def client(server: Any, api_key: str, **kwargs: Any) -> openai.OpenAI:
    # max_retries=0: the SDK would otherwise retry the 5xx answers these tests expect.
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0, **kwargs)


def test_memory_flow_non_streaming(server: Any, fake: FakeProvider) -> None:
    store_provider_key(server, "openai", "sk-stored")
    alice, bob = new_key(server, "alice"), new_key(server, "bob")
    first = client(server, alice).chat.completions.create(
        model="openai/gpt-test", messages=[{"role": "user", "content": PREFERENCE}])
    assert first.choices[0].message.content == f"Reply to: {PREFERENCE}"
    assert fake.last().headers["authorization"] == "Bearer sk-stored"
    assert fake.last().body["model"] == "gpt-test"
    assert PREFERENCE in wait_stored(server, alice, PREFERENCE)

    raw = client(server, alice).chat.completions.with_raw_response.create(
        model="openai/gpt-test", messages=[{"role": "user", "content": FOLLOW_UP}])
    system = fake.last().system_text()
    assert "6am" in system and "<memory>" in system, system
    assert int(raw.headers["x-memory-retrieved"]) >= 1
    assert float(raw.headers["x-mr-overhead-ms"]) >= 0
    assert raw.parse().choices[0].message.content == f"Reply to: {FOLLOW_UP}"

    client(server, bob).chat.completions.create(
        model="openai/gpt-test", messages=[{"role": "user", "content": FOLLOW_UP}])
    assert "6am" not in fake.last().system_text(), "another user's memory leaked"


def test_memory_flow_streaming(server: Any, fake: FakeProvider) -> None:
    key = new_key(server, "streamer")
    sdk = client(server, key)
    stream = sdk.chat.completions.create(
        model="local/fake-model", messages=[{"role": "user", "content": PREFERENCE}], stream=True)
    chunks = list(stream)
    assert len(chunks) > 3, "relayed chunk by chunk"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Reply to: {PREFERENCE}"
    assert f"Reply to: {PREFERENCE}" in wait_stored(server, key, f"Reply to: {PREFERENCE}")

    stream = sdk.chat.completions.create(
        model="local/fake-model", messages=[{"role": "user", "content": FOLLOW_UP}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == f"Reply to: {FOLLOW_UP}"
    assert "6am" in fake.last().system_text()


def test_byok(server: Any, fake: FakeProvider) -> None:
    key = new_key(server, "byok")
    sdk = client(server, "sk-provider-own", default_headers={"X-Memory-Key": key})
    sdk.chat.completions.create(model="openai/gpt-test", messages=[{"role": "user", "content": PREFERENCE}])
    assert fake.last().headers["authorization"] == "Bearer sk-provider-own"
    assert PREFERENCE in wait_stored(server, key, PREFERENCE)

    with pytest.raises(openai.BadRequestError) as missing:
        client(server, key).chat.completions.create(
            model="openai/gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert "X-Provider-Key" in str(missing.value) and "openai" in str(missing.value)


def test_key_modes(server: Any, fake: FakeProvider) -> None:
    key = new_key(server, "modes")

    def ask(suffix: str, text: str) -> None:
        client(server, key + suffix).chat.completions.create(
            model="local/fake-model", messages=[{"role": "user", "content": text}])

    ask(":write", PREFERENCE)
    assert PREFERENCE in wait_stored(server, key, PREFERENCE)
    ask(":write", FOLLOW_UP)
    assert fake.last().system_text() == "", ":write does not retrieve"
    wait_stored(server, key, f"Reply to: {FOLLOW_UP}")

    before = memories(server, key)
    ask(":read", "What time do I train, 6am?")
    assert "6am" in fake.last().system_text()
    ask(":off", "Off the record at 6am")
    assert fake.last().system_text() == ""
    # A later stored exchange proves the earlier ones had their chance to be stored.
    ask("", "Marker message")
    after = wait_stored(server, key, "Marker message")
    new = [t for t in after if t not in before]
    assert "What time do I train, 6am?" not in new and "Off the record at 6am" not in new, new


def test_anthropic_translation_through_the_openai_sdk(server: Any, fake: FakeProvider) -> None:
    store_provider_key(server, "anthropic", "sk-ant")
    key = new_key(server, "claude")
    sdk = client(server, key)
    reply = sdk.chat.completions.create(
        model="anthropic/claude-test",
        messages=[{"role": "system", "content": "You are a coach."}, {"role": "user", "content": PREFERENCE}])
    assert reply.choices[0].message.content == f"Reply to: {PREFERENCE}"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens == 15
    seen = fake.last()
    assert seen.path == "/v1/messages" and seen.headers["x-api-key"] == "sk-ant"
    assert seen.body["system"] == "You are a coach." and seen.body["max_tokens"] == 4096
    wait_stored(server, key, PREFERENCE)

    stream = sdk.chat.completions.create(
        model="anthropic/claude-test", messages=[{"role": "user", "content": FOLLOW_UP}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == f"Reply to: {FOLLOW_UP}"
    assert "6am" in fake.last().system_text()


def test_provider_errors(server: Any, fake: FakeProvider) -> None:
    key = new_key(server, "errors")
    sdk = client(server, key)
    fake.behavior = ("fail", 429, '{"error":{"message":"Rate limit reached","type":"rate_limit_error",'
                                  '"param":null,"code":"rate_limit_exceeded"}}')
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model="local/fake-model", messages=[{"role": "user", "content": "hi"}])
    assert "Rate limit reached" in str(limited.value)

    fake.behavior = ("fail", 400, '{"error":"model not found"}')
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="local/fake-model", messages=[{"role": "user", "content": "hi"}])
    assert "model not found" in str(bad.value)


def test_unreachable_and_slow_providers(tmp_path: Any, fake: FakeProvider) -> None:
    closed = FakeProvider().start()
    closed_base = closed.openai_base
    closed.stop()
    toml = f"""proxy_timeout_ms = 1500
[providers.local]
kind = "openai"
base_url = "{fake.openai_base}"
[providers.gone]
kind = "openai"
base_url = "{closed_base}"
"""
    srv = start_server(tmp_path, extra_toml=toml)
    try:
        sdk = client(srv, new_key(srv, "slow"))
        with pytest.raises(openai.APIStatusError) as unreachable:
            sdk.chat.completions.create(model="gone/m", messages=[{"role": "user", "content": "hi"}])
        assert unreachable.value.status_code == 502
        fake.behavior = "hang"
        with pytest.raises(openai.APIStatusError) as slow:
            sdk.chat.completions.create(model="local/m", messages=[{"role": "user", "content": "hi"}])
        assert slow.value.status_code == 504
    finally:
        srv.stop()


def test_models_list(server: Any) -> None:
    models = client(server, new_key(server, "lister")).models.list()
    ids = [m.id for m in models.data]
    assert "local/fake-model" in ids and any(i.startswith("openai/") for i in ids), ids


def test_native_messages_endpoint(server: Any, fake: FakeProvider) -> None:
    """Anthropic-format clients (x-api-key, /v1/messages) get memory too, against both kinds of provider."""
    store_provider_key(server, "anthropic", "sk-ant")
    key = new_key(server, "native")
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    r = httpx.post(f"{server.base_url}/v1/messages", headers=headers,
                   json={"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": PREFERENCE}]})
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == f"Reply to: {PREFERENCE}"
    assert fake.last().path == "/v1/messages" and fake.last().headers["x-api-key"] == "sk-ant"
    wait_stored(server, key, PREFERENCE)

    # Same client, an OpenAI-format provider: translated both ways.
    r = httpx.post(f"{server.base_url}/v1/messages", headers=headers,
                   json={"model": "local/fake-model", "max_tokens": 64,
                         "messages": [{"role": "user", "content": FOLLOW_UP}]})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message" and r.json()["content"][0]["text"] == f"Reply to: {FOLLOW_UP}"
    assert fake.last().path == "/v1/chat/completions"
    assert "6am" in fake.last().system_text()
