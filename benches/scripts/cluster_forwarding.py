"""Forwarding overhead in cluster mode (issue 18, docs/scaling.md).

Starts etcd and two nodes on loopback (tests/cluster/harness.py), fills one vault owned by
n2 with MEMORIES memories, then times `POST /v1/memory/prepare` for that vault sent to the
owner (n2) and to the other node (n1, which forwards it), interleaved in the same run (a
distinct question per request, alternating which goes first), and prints the p50 and p99 of each and their ratio.

    python3 benches/scripts/cluster_forwarding.py [ROUNDS] [MEMORIES]

Uses target/debug/memoryrouter unless MEMORYROUTER_BIN names another (a release build gives
the production figure; the debug profile is optimised too).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "cluster"))
from harness import start_cluster  # noqa: E402

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 500
MEMORIES = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
TOPICS = ["hiking", "cooking", "chess", "piano", "running", "gardening", "painting", "sailing"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = start_cluster(Path(tmp), nodes=2, nginx=False)
        try:
            owner, other = cluster.node("n2"), cluster.node("n1")
            admin = {"authorization": f"Bearer {cluster.admin_key}"}
            with httpx.Client(timeout=60) as http:
                # Mint keys until one is placed on n2 (rendezvous decides at first use).
                while True:
                    key = http.post(f"{other.base_url}/v1/keys", headers=admin, json={}).json()
                    auth = {"authorization": f"Bearer {key['key']}"}
                    http.get(f"{owner.base_url}/v1/memory/stats", headers=auth)
                    if cluster.placements().get(key["id"]) == "n2":
                        break
                batch = 100
                for start in range(0, MEMORIES, batch):
                    messages = [{"role": "user", "content": f"memory {i}: I spent the day {TOPICS[i % 8]} with friend {i}"}
                                for i in range(start, min(start + batch, MEMORIES))]
                    r = http.post(f"{owner.base_url}/v1/memory/ingest", headers=auth,
                                  json={"messages": messages, "session_id": f"s{start}"})
                    assert r.status_code == 202, r.text
                timings: dict[str, list[float]] = {"owner": [], "forwarded": []}
                for round_ in range(ROUNDS + 20):
                    # Each request asks its own question (no cache helps either side) and
                    # the order alternates (neither side always runs second).
                    order = [("owner", owner), ("forwarded", other)]
                    for name, node in order if round_ % 2 else order[::-1]:
                        topic = TOPICS[(round_ * 3 + len(name)) % 8]
                        question = f"what did I do with friend {round_ * 7 % MEMORIES} when {topic} ({name} {round_})?"
                        body = {"messages": [{"role": "user", "content": question}]}
                        t0 = time.perf_counter()
                        r = http.post(f"{node.base_url}/v1/memory/prepare", headers=auth, json=body)
                        elapsed = time.perf_counter() - t0
                        assert r.status_code == 200, r.text
                        if round_ >= 20:  # warm-up rounds are not counted
                            timings[name].append(elapsed * 1000)
            for name, values in timings.items():
                values.sort()
                print(f"{name:>9}: p50 {statistics.median(values):.2f} ms, "
                      f"p99 {values[int(len(values) * 0.99) - 1]:.2f} ms over {len(values)} prepares")
            ratio = statistics.median(timings["forwarded"]) / statistics.median(timings["owner"])
            delta = statistics.median(timings["forwarded"]) - statistics.median(timings["owner"])
            print(f"forwarded/owner p50 ratio {ratio:.2f}x (+{delta:.2f} ms), vault of {MEMORIES} memories")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
