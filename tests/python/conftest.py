"""Shared pytest helpers: start the real `memoryrouter` binary on a free loopback port.

`start_server(tmp_path, extra_toml="")` runs

    target/debug/memoryrouter serve --listen 127.0.0.1:0 --data-dir TMP/data --config TMP/memoryrouter.toml

reads the bound port from the `listening on http://127.0.0.1:PORT` line the binary prints
on stdout, waits until `/readyz` answers, and reads `TMP/data/admin.key`. The binary path
can be overridden with `MEMORYROUTER_BIN` (`bash tests/run.sh` builds it first).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("MEMORYROUTER_BIN", ROOT / "target" / "debug" / "memoryrouter"))
# Generous bounds that are only reached when something is broken.
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
LISTEN_PREFIX = "listening on http://"


@dataclass
class Server:
    """A running server: `base_url` (http://127.0.0.1:PORT), `admin_key`, `data_dir`."""

    base_url: str
    admin_key: str
    data_dir: Path
    process: subprocess.Popen[str]
    stdout_lines: list[str] = field(default_factory=list)

    def stop(self) -> int:
        """SIGTERM (graceful shutdown), wait, and return the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(tmp_path: Path, extra_toml: str = "") -> Server:
    """Starts `memoryrouter serve` with a fresh data directory under `tmp_path`."""
    if not BINARY.exists():
        raise RuntimeError(f"{BINARY} is missing: run `cargo build -p server` first")
    data_dir = Path(tmp_path) / "data"
    config = Path(tmp_path) / "memoryrouter.toml"
    config.write_text(extra_toml)
    log = open(Path(tmp_path) / "server.log", "w")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [str(BINARY), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "MEMORYROUTER_LOG": os.environ.get("MEMORYROUTER_LOG", "warn")},
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
        log.flush()
        raise RuntimeError(f"memoryrouter exited ({process.returncode}): {(Path(tmp_path) / 'server.log').read_text()}")

    # Keep draining stdout (the first-start banner) so the pipe never fills.
    def drain() -> None:
        assert process.stdout is not None
        for rest in process.stdout:
            lines.append(rest)

    threading.Thread(target=drain, daemon=True).start()
    # The socket is bound, so this waits in the accept queue until the server is ready.
    response = httpx.get(f"{base_url}/readyz", timeout=READY_TIMEOUT_S)
    response.raise_for_status()
    admin_key = (data_dir / "admin.key").read_text().strip()
    return Server(base_url=base_url, admin_key=admin_key, data_dir=data_dir, process=process, stdout_lines=lines)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A server with default settings, stopped after the test."""
    srv = start_server(tmp_path)
    yield srv
    srv.stop()


def bearer(key: str) -> dict[str, Any]:
    return {"authorization": f"Bearer {key}"}
