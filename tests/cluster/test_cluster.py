"""Cluster mode end to end (issue 18): etcd, three nodes and nginx on loopback.

Through nginx: mint keys, ingest and search across many vaults, each vault on exactly one
node's disk; a streamed proxy answer passes through a node that forwards it; a revocation
made on one node is refused by every node within 1 s; a purge deletes the vault on its
owner whichever node receives it; a stopped node fails only its own
vaults, with a 503 naming it, while the others keep serving.

The tests share one cluster and run in file order (the last one stops a node).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from fake_provider import FakeProvider  # noqa: E402
from harness import BINARY, Cluster, start_cluster  # noqa: E402

VAULTS = 24
# The bound: a revocation reaches every node within a second.
REVOCATION_BOUND_S = 1.0


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider().start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[Cluster]:
    providers = f'[providers.local]\nkind = "openai"\nbase_url = "{fake.openai_base}"\nmodels = ["fake-model"]\n'
    running = start_cluster(tmp_path_factory.mktemp("cluster"), nodes=3, extra_toml=providers)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def users(cluster: Cluster) -> list[dict[str, Any]]:
    """VAULTS keys minted through nginx, each with a fact of its own ingested through nginx."""
    out = []
    with httpx.Client(base_url=cluster.base_url, timeout=30) as http:
        for i in range(VAULTS):
            minted = http.post("/v1/keys", headers=bearer(cluster.admin_key), json={"name": f"user:{i}"})
            assert minted.status_code == 201, minted.text
            fact = f"user {i} keeps a pet called zorblax{i}"
            stored = http.post("/v1/memory/ingest", headers=bearer(minted.json()["key"]),
                               json={"messages": [{"role": "user", "content": fact}]})
            assert stored.status_code == 202, stored.text
            out.append({"id": minted.json()["id"], "key": minted.json()["key"], "fact": fact, "i": i})
    return out


def search(base_url: str, key: str, query: str) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/memory/search", headers=bearer(key), json={"query": query}, timeout=30)


def test_many_vaults_through_nginx_each_on_exactly_one_node(cluster: Cluster, users: list[dict[str, Any]]) -> None:
    placements = cluster.placements()
    for user in users:
        found = search(cluster.base_url, user["key"], f"zorblax{user['i']}")
        assert found.status_code == 200, found.text
        texts = [m["content"] for m in found.json()["memories"]]
        assert texts == [user["fact"]], "a vault sees exactly its own memory"
        # The same answer from every node: two of them forward to the owner.
        for node in cluster.nodes:
            again = search(node.base_url, user["key"], f"zorblax{user['i']}")
            assert [m["content"] for m in again.json()["memories"]] == [user["fact"]]
        owner = placements[user["id"]]
        holders = [n.node_id for n in cluster.nodes if user["id"] in n.vaults()]
        assert holders == [owner], f"vault {user['id']} placed on {owner}, on disk at {holders}"
    owners = {placements[u["id"]] for u in users}
    assert owners == {"n1", "n2", "n3"}, f"{VAULTS} vaults should land on every node: {owners}"


def test_a_streamed_answer_passes_through_a_forwarding_node(
        cluster: Cluster, users: list[dict[str, Any]], fake: FakeProvider) -> None:
    placements = cluster.placements()
    user = next(u for u in users if placements[u["id"]] == "n2")
    body = {"model": "local/fake-model", "stream": True,
            "messages": [{"role": "user", "content": "what is my pet called?"}]}
    events = []
    with httpx.stream("POST", f"{cluster.node('n1').base_url}/v1/chat/completions",
                      headers=bearer(user["key"]), json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) > 3, "relayed event by event"
    assert events[-1] == "data: [DONE]"
    # The owner (n2) injected the vault's memory into the provider's prompt.
    assert user["fact"] in fake.last().system_text()


def test_a_revocation_reaches_every_node_within_a_second(cluster: Cluster) -> None:
    admin = bearer(cluster.admin_key)
    minted = httpx.post(f"{cluster.node('n1').base_url}/v1/keys", headers=admin, json={"name": "revoked"}).json()
    key = minted["key"]
    # The key works on every node (each has applied the key's record from etcd).
    for node in cluster.nodes:
        httpx_wait(lambda n=node: search(n.base_url, key, "x").status_code == 200, f"key on {node.node_id}")
        # (403: the key is known and valid, but listing needs the admin key)
        assert httpx.get(f"{node.base_url}/v1/keys", headers=bearer(key)).status_code == 403
    refused_after: dict[str, float] = {}

    def probe(node: Any, answered: list[float]) -> None:
        # One thread per node, so no node's probe waits for another's. The probe is a route
        # the node answers from its own copy of the catalog (a vault route would be
        # forwarded to the owner, whose copy would answer); the time is taken when the
        # refusal arrives, an upper bound of when the node learnt of the revocation.
        with httpx.Client(timeout=10) as http:
            # A warm connection, so the measurement holds no connect.
            assert http.get(f"{node.base_url}/v1/keys", headers=bearer(key)).status_code == 403
            ready.wait()
            go.wait()
            while time.monotonic() < deadline:
                if http.get(f"{node.base_url}/v1/keys", headers=bearer(key)).status_code == 401:
                    refused_after[node.node_id] = time.monotonic() - answered[0]
                    return
                time.sleep(0.005)

    answered: list[float] = []
    deadline = time.monotonic() + 30
    ready, go = threading.Barrier(len(cluster.nodes) + 1), threading.Event()
    threads = [threading.Thread(target=probe, args=(n, answered)) for n in cluster.nodes]
    for thread in threads:
        thread.start()
    ready.wait()
    revoked = httpx.delete(f"{cluster.node('n2').base_url}/v1/keys/{minted['id']}", headers=admin)
    answered.append(time.monotonic())
    go.set()
    assert revoked.status_code == 200, revoked.text
    for thread in threads:
        thread.join()
    pending = sorted({n.node_id for n in cluster.nodes} - refused_after.keys())
    assert not pending, f"still accepted after 30 s on {pending}"
    slow = {n: round(s, 3) for n, s in refused_after.items() if s > REVOCATION_BOUND_S}
    assert not slow, f"refused only after more than {REVOCATION_BOUND_S} s: {slow}"
    for node in cluster.nodes:
        assert search(node.base_url, key, "x").status_code == 401
    print(f"revocation refused after (s): { {n: round(s, 3) for n, s in refused_after.items()} }")


def test_a_purge_deletes_the_vault_on_its_owner(cluster: Cluster) -> None:
    admin = bearer(cluster.admin_key)
    minted = httpx.post(f"{cluster.base_url}/v1/keys", headers=admin, json={"name": "purged"}).json()
    stored = httpx.post(f"{cluster.base_url}/v1/memory/ingest", headers=bearer(minted["key"]),
                        json={"messages": [{"role": "user", "content": "soon gone"}]})
    assert stored.status_code == 202, stored.text
    owner = cluster.placements()[minted["id"]]
    assert minted["id"] in cluster.node(owner).vaults()
    elsewhere = next(n for n in cluster.nodes if n.node_id != owner)
    purged = httpx.delete(f"{elsewhere.base_url}/v1/keys/{minted['id']}?purge=true", headers=admin)
    assert purged.status_code == 200, purged.text
    assert purged.json()["purged"] is True
    assert minted["id"] not in cluster.node(owner).vaults(), "the owner's copy is deleted"
    assert all(minted["id"] not in n.vaults() for n in cluster.nodes)


def test_a_stopped_node_fails_only_its_vaults(cluster: Cluster, users: list[dict[str, Any]]) -> None:
    placements = cluster.placements()
    assert cluster.node("n3").stop() == 0
    lost = [u for u in users if placements[u["id"]] == "n3"]
    assert lost, "n3 owned vaults"
    for user in users:
        answer = search(cluster.base_url, user["key"], f"zorblax{user['i']}")
        if placements[user["id"]] == "n3":
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["code"] == "vault_unavailable"
            assert "node n3" in error["message"], error["message"]
            assert int(answer.headers["retry-after"]) > 0
        else:
            assert answer.status_code == 200, answer.text
            # (the streamed test added a chat exchange to one of these vaults)
            assert user["fact"] in [m["content"] for m in answer.json()["memories"]]
    # Once n3's lease has expired the refusal says it is not registered; still only its vaults.
    httpx_wait(lambda: "not registered" in search(cluster.base_url, lost[0]["key"], "x").text,
               "n3's lease to expire", timeout=15)


def httpx_wait(check: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_cluster_status_counts_each_nodes_vaults_and_says_which_are_down(cluster: Cluster) -> None:
    # Runs after the stop test: n3 is down and its lease has expired.
    etcd = cluster.etcd_url.replace("http://", "etcd://")
    out = subprocess.run([str(BINARY), "cluster", "status", "--etcd", etcd, "--json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    status = {n["node"]: n for n in json.loads(out)}
    placements = cluster.placements()
    for node in ("n1", "n2", "n3"):
        assert status[node]["vaults"] == sum(1 for owner in placements.values() if owner == node)
    assert status["n1"]["live"] and status["n2"]["live"] and not status["n3"]["live"]
    table = subprocess.run([str(BINARY), "cluster", "status", "--etcd", etcd],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"{len(placements)} vault(s); {status['n3']['vaults']} on nodes that are down" in table


def test_a_record_a_node_cannot_apply_makes_it_say_so(cluster: Cluster) -> None:
    # Last: it leaves the cluster's catalog unusable. A record of a kind this version does
    # not know (as a newer node might write) must not be skipped silently — a skipped
    # revocation would be a key that works again — so the follower stops and the node
    # reports it: /readyz 503, catalog changes refused.
    import base64

    prefix = "/memoryrouter/catalog/log/"
    seq = len(cluster.etcd_range(prefix)) + 1
    put = httpx.post(f"{cluster.etcd_url}/v3/kv/put", json={
        "key": base64.b64encode(f"{prefix}{seq:020}".encode()).decode(),
        "value": base64.b64encode(b"\xc8{}").decode()})
    assert put.status_code == 200, put.text
    for node in (cluster.node("n1"), cluster.node("n2")):
        httpx_wait(lambda n=node: httpx.get(f"{n.base_url}/readyz").status_code == 503,
                   f"{node.node_id} to report its catalog")
        minted = httpx.post(f"{node.base_url}/v1/keys", headers=bearer(cluster.admin_key), json={})
        assert minted.status_code == 503, minted.text
