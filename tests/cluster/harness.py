"""A MemoryRouter cluster on loopback for the cluster test and the forwarding bench.

`start_cluster(tmp, nodes=3, extra_toml="")` starts, each on free 127.0.0.1 ports in its own
temp directory: one etcd (Debian `etcd-server`), `nodes` × `memoryrouter serve --cluster`
(node ids n1, n2, …; n1 first, so it is the one that creates the account and its admin
key), and nginx in front of them (round robin, unbuffered so SSE streams through). The
binary is target/debug/memoryrouter unless `MEMORYROUTER_BIN` says otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("MEMORYROUTER_BIN", ROOT / "target" / "debug" / "memoryrouter"))
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# Generous bounds that are only reached when something is broken.
START_TIMEOUT_S = 30.0
LISTEN_PREFIX = "listening on http://"
# Every node must seal provider keys with the same secret (the catalog is shared).
SECRET = "5e" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Node:
    node_id: str
    base_url: str
    data_dir: Path
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def vaults(self) -> set[str]:
        root = self.data_dir / "vaults"
        return {p.name for p in root.iterdir()} if root.is_dir() else set()


@dataclass
class Cluster:
    tmp: Path
    etcd_url: str
    etcd: subprocess.Popen[bytes]
    nodes: list[Node]
    nginx: subprocess.Popen[bytes] | None
    base_url: str
    admin_key: str

    def etcd_range(self, prefix: str) -> dict[str, str]:
        """Every key under `prefix` with its value, read from etcd."""
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        answer = httpx.post(f"{self.etcd_url}/v3/kv/range", json={
            "key": base64.b64encode(key).decode(), "range_end": base64.b64encode(end).decode()}).json()
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
                for kv in answer.get("kvs", [])}

    def placements(self) -> dict[str, str]:
        """Vault → owner node id."""
        prefix = "/memoryrouter/placement/"
        return {k[len(prefix):]: json.loads(v)["node"] for k, v in self.etcd_range(prefix).items()}

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        for process in (self.nginx, self.etcd):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=START_TIMEOUT_S)


def start_etcd(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    log = open(tmp / "etcd.log", "wb")  # noqa: SIM115 - lives as long as etcd
    process = subprocess.Popen([
        ETCD, "--name", "test", "--data-dir", str(tmp / "etcd"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"test=http://127.0.0.1:{peer}",
    ], stdout=log, stderr=log)
    wait_until("etcd", lambda: httpx.post(f"{url}/v3/kv/range", json={"key": "AA=="}).status_code == 200)
    return process, url


def start_node(tmp: Path, node_id: str, etcd_url: str, extra_toml: str = "") -> Node:
    home = tmp / node_id
    home.mkdir()
    config = home / "memoryrouter.toml"
    config.write_text(f'[cluster]\nnode_id = "{node_id}"\n{extra_toml}')
    log = open(home / "server.log", "w")  # noqa: SIM115 - lives as long as the node
    process = subprocess.Popen(
        [str(BINARY), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(home / "data"),
         "--config", str(config), "--cluster", etcd_url.replace("http://", "etcd://")],
        stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "MEMORYROUTER_SECRET_KEY": SECRET,
             "MEMORYROUTER_LOG": os.environ.get("MEMORYROUTER_LOG", "warn")},
    )
    assert process.stdout is not None
    lines: list[str] = []
    base_url = None
    for line in process.stdout:
        lines.append(line)
        if line.startswith(LISTEN_PREFIX):
            base_url = "http://" + line[len(LISTEN_PREFIX):].strip()
            break
    if base_url is None:
        process.wait()
        raise RuntimeError(f"node {node_id} exited ({process.returncode}): {(home / 'server.log').read_text()}")

    def drain() -> None:
        assert process.stdout is not None
        for rest in process.stdout:
            lines.append(rest)

    threading.Thread(target=drain, daemon=True).start()
    httpx.get(f"{base_url}/readyz", timeout=START_TIMEOUT_S).raise_for_status()
    return Node(node_id=node_id, base_url=base_url, data_dir=home / "data", process=process, lines=lines)


def start_nginx(tmp: Path, nodes: list[Node]) -> tuple[subprocess.Popen[bytes], str]:
    home = tmp / "nginx"
    (home / "logs").mkdir(parents=True)
    port = free_port()
    servers = "\n".join(f"    server {n.base_url.removeprefix('http://')} max_fails=0;" for n in nodes)
    (home / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
error_log {home}/logs/error.log warn;
pid {home}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {home}/body;
  proxy_temp_path {home}/proxy;
  fastcgi_temp_path {home}/fastcgi;
  uwsgi_temp_path {home}/uwsgi;
  scgi_temp_path {home}/scgi;
  client_max_body_size 64m;
  upstream memoryrouter {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://memoryrouter;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
""")
    process = subprocess.Popen([NGINX, "-p", str(home), "-c", str(home / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=open(home / "stderr.log", "wb"))  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    wait_until("nginx", lambda: httpx.get(f"{url}/healthz").status_code == 200)
    return process, url


def start_cluster(tmp: Path, nodes: int = 3, extra_toml: str = "", nginx: bool = True) -> Cluster:
    for what, path in (("etcd (Debian package etcd-server)", ETCD), ("nginx", NGINX), ("memoryrouter", str(BINARY))):
        if not Path(path).exists():
            raise RuntimeError(f"{what} is missing at {path}: `bash tests/run.sh` installs it")
    etcd, etcd_url = start_etcd(tmp)
    started: list[Node] = []
    try:
        # n1 alone first: it creates the account and its admin key; the others find them.
        started.append(start_node(tmp, "n1", etcd_url, extra_toml))
        admin_key = (started[0].data_dir / "admin.key").read_text().strip()
        for i in range(2, nodes + 1):
            started.append(start_node(tmp, f"n{i}", etcd_url, extra_toml))
        front, base_url = start_nginx(tmp, started) if nginx else (None, started[0].base_url)
    except BaseException:
        for node in started:
            node.stop()
        etcd.terminate()
        raise
    return Cluster(tmp=tmp, etcd_url=etcd_url, etcd=etcd, nodes=started, nginx=front,
                   base_url=base_url, admin_key=admin_key)
