"""Vault move time in cluster mode (issue 18, docs/scaling.md).

Starts etcd and two nodes on loopback (tests/cluster/harness.py), fills one vault with
MEMORIES memories (ingest batches of 500, then waits until its seals and merges are done),
then moves it back and forth MOVES times with `memoryrouter cluster move` while WRITERS
threads write to it (through the node that does not own it at the start, so every write
is forwarded, then served locally, as a client behind a balancer sees it). Prints for each
move: bytes, files, total ms, how long the fence was up and when the flip committed (each
fenced phase), how long the writes that started inside the fence waited (the figure a
client sees), that no write was acknowledged between the fence's drain and the flip, and
the writers' median and longest latency during the whole move.

    python3 benches/scripts/cluster_move.py [MEMORIES] [MOVES] [WRITERS]

Uses target/debug/memoryrouter unless MEMORYROUTER_BIN names another.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "cluster"))
from harness import BINARY, SECRET, start_cluster  # noqa: E402

MEMORIES = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
MOVES = int(sys.argv[2]) if len(sys.argv) > 2 else 2
WRITERS = int(sys.argv[3]) if len(sys.argv) > 3 else 4
BATCH = 500
# An answer's way back from the node to the writer (through the forwarding node).
TRANSIT_MARGIN_MS = 10
TOPICS = ["hiking", "cooking", "chess", "piano", "running", "gardening", "painting", "sailing"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = start_cluster(Path(tmp), nodes=2, nginx=False)
        try:
            admin = {"authorization": f"Bearer {cluster.admin_key}"}
            n1, n2 = cluster.node("n1"), cluster.node("n2")
            with httpx.Client(timeout=120) as http:
                key = http.post(f"{n1.base_url}/v1/keys", headers=admin, json={}).json()
                auth = {"authorization": f"Bearer {key['key']}"}
                started = time.monotonic()
                for start in range(0, MEMORIES, BATCH):
                    messages = [{"role": "user", "content": f"memory {i}: I spent the day {TOPICS[i % 8]} with friend {i}"}
                                for i in range(start, min(start + BATCH, MEMORIES))]
                    r = http.post(f"{n1.base_url}/v1/memory/ingest", headers=auth,
                                  json={"messages": messages, "session_id": f"s{start // 5000}"})
                    assert r.status_code == 202, r.text
                while http.get(f"{n1.base_url}/v1/memory/stats", headers=auth).json().get("compacting"):
                    time.sleep(0.5)
                stats = http.get(f"{n1.base_url}/v1/memory/stats", headers=auth).json()
                print(f"filled {stats['memories']} memories, {stats['bytes'] / 2**20:.0f} MiB on disk, "
                      f"{stats['segments']} segments in {time.monotonic() - started:.0f} s")
            for move in range(MOVES):
                owner = cluster.placements()[key["id"]]
                target = "n2" if owner == "n1" else "n1"
                front = cluster.node(os.environ.get("MOVE_FRONT", target))
                stop = threading.Event()
                latencies: list[float] = []
                spans: list[tuple[float, float]] = []
                failures: list[str] = []
                lock = threading.Lock()

                def writer(w: int, front_url: str = front.base_url, stop: threading.Event = stop,
                           latencies: list[float] = latencies,
                           spans: list[tuple[float, float]] = spans, failures: list[str] = failures,
                           lock: threading.Lock = lock, move: int = move) -> None:
                    with httpx.Client(timeout=60) as http:
                        n = 0
                        while not stop.is_set():
                            t = time.monotonic()
                            wall = time.time()
                            r = http.post(f"{front_url}/v1/memory/ingest", headers=auth,
                                          json={"messages": [{"role": "user", "content": f"move {move} writer {w} note {n}"}]})
                            with lock:
                                if r.status_code == 202:
                                    latencies.append(time.monotonic() - t)
                                    spans.append((wall, time.time()))
                                else:
                                    failures.append(str(r.status_code))
                            n += 1

                threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
                for t in threads:
                    t.start()
                time.sleep(0.5)
                with lock:
                    latencies.clear()
                t0 = time.monotonic()
                result = subprocess.run(
                    [str(BINARY), "cluster", "move", key["id"], target, "-q", "--json",
                     "--etcd", cluster.etcd_url.replace("http://", "etcd://")],
                    capture_output=True, text=True, env={**os.environ, "MEMORYROUTER_SECRET_KEY": SECRET})
                wall = time.monotonic() - t0
                with lock:
                    during = list(latencies)
                stop.set()
                for t in threads:
                    t.join()
                assert result.returncode == 0, result.stdout + result.stderr
                done = json.loads(result.stdout)
                fence_start = done["fenced_at_ms"] / 1000
                fence_end = fence_start + done["fence_ms"] / 1000
                # Writes that started inside the fence waited for it: how long, at most.
                held = [end - max(start, fence_start) for start, end in spans if fence_start <= start < fence_end]
                # Acknowledged after the requests in flight drained (plus the answer's way
                # back to the client) and before the flip: there must be none.
                drained = fence_start + (done["phases_ms"]["drained"] + TRANSIT_MARGIN_MS) / 1000
                inside = [(round((s - fence_start) * 1000), round((e - fence_start) * 1000)) for s, e in spans
                          if drained < e < fence_start + done["flip_ms"] / 1000]
                print(f"move {move + 1} {owner}->{target}: {done['bytes'] / 2**20:.1f} MiB in {done['files']} files, "
                      f"{done['elapsed_ms']} ms; fence {done['fence_ms']} ms (flip at {done['flip_ms']} ms; phases {done['phases_ms']}); "
                      f"{len(held)} writes started inside the fence, waited up to {max(held, default=0) * 1000:.0f} ms; "
                      f"acknowledged between drain and flip: {inside or 'none'} (CLI wall {wall * 1000:.0f} ms); "
                      f"{len(during)} writes during it, p50 {statistics.median(during) * 1000:.1f} ms, "
                      f"max {max(during) * 1000:.0f} ms; {len(failures)} not acknowledged ({set(failures)})")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
