#!/usr/bin/env python3
"""Peak RSS of memoryrouter under N concurrent ingests (issue 14 item 3).

Usage: python3 benches/scripts/ingest_memory.py BINARY N MESSAGES MESSAGE_BYTES [MEMORYROUTER_X=value ...]
e.g. `python3 benches/scripts/ingest_memory.py target/release/memoryrouter 16 1000 8000` (the
issue's 16 concurrent ingests of 1,000 x 8 KB messages). Starts the binary on 127.0.0.1 with a
temporary data directory, mints one key per client (one vault each), sends the bodies at
once and samples /proc/PID/status every 10 ms; prints the peak (VmHWM, and its anonymous
and file-backed parts at the sampled peak), the RSS 1 s and 5 s after the last answer, the
server's CPU seconds, and the peak over the bodies' bytes. A body refused with 503 (the
server's body budget, `Retry-After`) is sent again a second later, so every body ends up
stored: `python3 benches/scripts/ingest_memory.py target/debug/memoryrouter 64 1000 8300` is
issue 14's "64 concurrent 8 MiB bodies" (7.96 MiB each, under the default 8 MiB
`body_bytes_max`), all stored (`retries` counts the 503s).
WRAP="heaptrack -o FILE" runs the server under heaptrack to see where the peak is.
"""
import json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request
BIN = sys.argv[1]; N = int(sys.argv[2]); MSGS = int(sys.argv[3]); MSG_BYTES = int(sys.argv[4])
extra_env = dict(a.split("=",1) for a in sys.argv[5:])
d = tempfile.mkdtemp()
env = dict(os.environ, MEMORYROUTER_LOG="warn", **extra_env)
p = subprocess.Popen(os.environ.get("WRAP","").split() + [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", d], stdout=subprocess.PIPE, env=env, text=True)
addr = None
for line in p.stdout:
    if line.strip().startswith("listening on http://"):
        addr = line.strip()[len("listening on http://"):]; break
threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
for _ in range(500):
    if os.path.exists(os.path.join(d, "admin.key")): break
    time.sleep(0.02)
time.sleep(0.2)
admin = open(os.path.join(d, "admin.key")).read().strip()
def req(method, path, key, body, timeout=600):
    r = urllib.request.Request(f"http://{addr}{path}", data=body, method=method, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp: return resp.status, resp.read()
    except urllib.error.HTTPError as e: return e.code, e.read()
    except (urllib.error.URLError, OSError) as e: return 0, str(e).encode()  # e.g. a body over body_bytes_max
keys = []
for i in range(N):
    s, b = req("POST", "/v1/keys", admin, json.dumps({"name": f"k{i}"}).encode()); keys.append(json.loads(b)["key"])
def status(field):
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith(field): return int(l.split()[1]) // 1024
base = status("VmRSS:")
import random
# Distinct words: 20 x VOCAB (env VOCAB, default 100000: most words are new to a vault, the
# worst case for a term dictionary; chat text repeats its words far more).
VOCAB = int(os.environ.get("VOCAB", "100000"))
words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon".split()
def body(seed):
    rnd = random.Random(seed)
    msgs = []
    for j in range(MSGS):
        t = []
        n = 0
        while n < MSG_BYTES:
            w = rnd.choice(words) + str(rnd.randrange(VOCAB)); t.append(w); n += len(w) + 1
        msgs.append({"role": "user" if j % 2 == 0 else "assistant", "content": " ".join(t)})
    return json.dumps({"session_id": f"s{seed}", "messages": msgs}).encode()
bodies = [body(i) for i in range(N)]
total = sum(len(b) for b in bodies)
results = []
retries = [0]
def go(i):
    t = time.time()
    while True:
        s, b = req("POST", "/v1/memory/ingest", keys[i], bodies[i])
        if s != 503: break
        retries[0] += 1; time.sleep(1.0)
    results.append((s, time.time() - t, b[:200]))
def cpu_s():
    f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
peak = [0]; peak_parts = [0, 0]; stop = [False]
def watch():
    while not stop[0]:
        rss = status("VmRSS:")
        if rss > peak[0]:
            peak[0] = rss; peak_parts[:] = [status("RssAnon:"), status("RssFile:")]
        time.sleep(0.01)
w = threading.Thread(target=watch); w.start()
cpu0 = cpu_s(); t0 = time.time()
ts = [threading.Thread(target=go, args=(i,)) for i in range(N)]
[t.start() for t in ts]; [t.join() for t in ts]
el = time.time() - t0
cpu = cpu_s() - cpu0
time.sleep(1); after = (status("VmRSS:"), status("RssAnon:"))
time.sleep(4); after5 = (status("VmRSS:"), status("RssAnon:")); cpu5 = cpu_s() - cpu0; stop[0] = True; w.join()
codes = {}
for s, _, b in results: codes[s] = codes.get(s, 0) + 1
print(f"bodies {N} x {len(bodies[0])/2**20:.2f} MiB = {total/2**20:.0f} MiB; codes {codes}; retries {retries[0]}; elapsed {el:.1f}s; server CPU {cpu:.1f}s until the last answer, {cpu5:.1f}s 5 s later")
print(f"rss base {base} MiB, peak(sampled) {peak[0]} MiB (anon {peak_parts[0]}, file {peak_parts[1]}), VmHWM {status('VmHWM:')} MiB, "
      f"after 1 s {after[0]} MiB (anon {after[1]}), after 5 s {after5[0]} MiB (anon {after5[1]}); peak-base per body byte {(peak[0]-base)*2**20/total:.1f}x")
for s, _, b in results:
    if s != 202: print(s, b); break
p.terminate(); p.wait()
import shutil; shutil.rmtree(d, ignore_errors=True)
