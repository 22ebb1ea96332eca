#!/usr/bin/env python3
"""Latency of key mints and revocations over HTTP, one after another (each one is durable
catalog writes: every copy of the catalog log fsynced, plus the audit line).

    python3 benches/scripts/key_writes.py BINARY [BINARY...] [--n 300] [--rounds 2]

Each binary is started on a fresh data directory under /var/tmp (a real disk, not tmpfs:
the figure is fsync-bound); the rounds interleave the binaries so both see the same load.
"""
import argparse, http.client, json, os, statistics, subprocess, tempfile, time


def run(binary, n):
    data = tempfile.mkdtemp(dir="/var/tmp", prefix="key-writes-")
    server = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=dict(os.environ, MEMORYROUTER_LOG="error"))
    try:
        addr = next(l.strip().split("http://")[1] for l in server.stdout
                    if l.startswith("listening on http://"))
        while not os.path.exists(os.path.join(data, "admin.key")):
            time.sleep(0.05)
        admin = open(os.path.join(data, "admin.key")).read().strip()
        host, port = addr.split(":")
        conn = http.client.HTTPConnection(host, int(port))
        auth = {"Authorization": "Bearer " + admin, "Content-Type": "application/json"}

        def timed(method, path, body=None):
            started = time.perf_counter()
            conn.request(method, path, body=body, headers=auth)
            response = conn.getresponse()
            text = response.read()
            assert response.status in (200, 201), text
            return (time.perf_counter() - started) * 1000, text

        mints, ids = [], []
        for i in range(n):
            ms, text = timed("POST", "/v1/keys", json.dumps({"name": f"user:{i}"}))
            mints.append(ms)
            ids.append(json.loads(text)["id"])
        revokes = [timed("DELETE", "/v1/keys/" + key_id)[0] for key_id in ids[: n // 2]]
        return mints, revokes
    finally:
        server.terminate()
        server.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binaries", nargs="+")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    p99 = lambda xs: sorted(xs)[int(len(xs) * 0.99)]
    for _ in range(args.rounds):
        for binary in args.binaries:
            mints, revokes = run(binary, args.n)
            print(f"{binary}: mint p50 {statistics.median(mints):.2f} ms p99 {p99(mints):.2f} ms"
                  f" | revoke p50 {statistics.median(revokes):.2f} ms p99 {p99(revokes):.2f} ms",
                  flush=True)


if __name__ == "__main__":
    main()
