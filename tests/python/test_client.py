"""A client written with `httpx`, as an outside app would use MemoryRouter's local
inference mode: mint a key per user, ingest what users say, prepare context, search."""

from __future__ import annotations

import httpx
from conftest import Server, bearer

FACT = "Remember that I prefer concise coaching and train at 6am."
QUESTION = "How should we adjust tomorrow?"


def mint(server: Server, name: str) -> str:
    r = httpx.post(f"{server.base_url}/v1/keys", json={"name": name}, headers=bearer(server.admin_key))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["key"].startswith("mk_") and body["id"].startswith("key_") and body["name"] == name
    return body["key"]


def test_seed_flow_prepare_ingest_search(server: Server) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        user_a = mint(server, "user:A")
        user_b = mint(server, "user:B")

        r = client.post("/v1/memory/ingest", headers=bearer(user_a),
                        json={"messages": [{"role": "user", "content": FACT}], "session_id": "s1"})
        assert r.status_code == 202, r.text
        assert r.json()["stored"] == 1 and len(r.json()["ids"]) == 1

        prepared = client.post("/v1/memory/prepare", headers=bearer(user_a),
                               json={"messages": [{"role": "user", "content": QUESTION}]}).json()
        assert set(prepared) >= {"context", "memories_found", "memories", "tokens"}
        assert prepared["memories_found"] == 1
        assert FACT in prepared["context"]
        memory = prepared["memories"][0]
        assert memory["content"] == FACT and memory["role"] == "user" and memory["session_id"] == "s1"
        assert 0.0 <= memory["score"] <= 1.0

        other = client.post("/v1/memory/prepare", headers=bearer(user_b),
                            json={"messages": [{"role": "user", "content": QUESTION}]}).json()
        assert other == {"context": "", "memories_found": 0, "memories": [], "tokens": 0}

        found = client.post("/v1/memory/search", headers=bearer(user_a), json={"query": "concise coaching"}).json()
        assert [m["content"] for m in found["memories"]] == [FACT]
        assert client.post("/v1/memory/search", headers=bearer(user_b),
                           json={"query": "concise coaching"}).json() == {"memories": []}


def test_resent_history_content_parts_and_deletion(server: Server) -> None:
    key = mint(server, "user:history")
    with httpx.Client(base_url=server.base_url, headers=bearer(key)) as client:
        history = {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "My dog is called Biscuit."}]},
            {"role": "assistant", "content": "What a good name!"},
        ]}
        first = client.post("/v1/memory/ingest", json=history, headers={"X-Session-ID": "walks"})
        assert first.status_code == 202 and first.json()["stored"] == 2
        again = client.post("/v1/memory/ingest", json=history, headers={"X-Session-ID": "walks"})
        assert again.json()["stored"] == 0

        hits = client.post("/v1/memory/search", json={"query": "dog Biscuit"}).json()["memories"]
        dog = next(m for m in hits if "Biscuit" in m["content"])
        assert client.get(f"/v1/memory/{dog['id']}").json()["content"] == "My dog is called Biscuit."
        assert client.delete(f"/v1/memory/{dog['id']}").status_code == 200
        hits = client.post("/v1/memory/search", json={"query": "dog Biscuit"}).json()["memories"]
        assert all(m["id"] != dog["id"] for m in hits)

        cleared = client.delete("/v1/memory", headers={"X-Session-ID": "walks"}).json()
        assert cleared["deleted"] == 1
        assert client.get("/v1/memory").json()["memories"] == []


def test_errors_have_the_openai_shape(server: Server) -> None:
    key = mint(server, "user:errors")
    with httpx.Client(base_url=server.base_url) as client:
        bad_json = client.post("/v1/memory/ingest", headers={**bearer(key), "content-type": "application/json"},
                               content=b"{not json")
        assert bad_json.status_code == 400
        error = bad_json.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"

        unknown = client.post("/v1/memory/prepare", headers=bearer("mk_" + "x" * 43),
                              json={"messages": [{"role": "user", "content": "hi"}]})
        assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "invalid_memory_key"

        role = client.post("/v1/memory/ingest", headers=bearer(key),
                           json={"messages": [{"role": "wizard", "content": "hi"}]})
        assert role.status_code == 400 and role.json()["error"]["param"] == "messages[0].role"
        assert client.get("/v1/nothing-here", headers=bearer(key)).status_code == 404
