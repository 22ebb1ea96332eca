"""Schemathesis against the real binary, from the OpenAPI document the binary serves.

Every operation of `GET /openapi.json` gets generated requests — the document's examples,
its coverage cases (boundaries, each enum value, each missing or wrong field), then
property-based positive and negative data — and the stateful phase follows the document's
links: mint a key → ingest with it (`X-Memory-Key`) → get, search, delete what was stored;
mint → revoke. Fixed seed and a bounded number of examples per operation, so a run is
reproducible and takes well under a minute here.

Checks: no 5xx; every status, content type, header and body as the document says; a
request without a key is refused; a deleted resource stays gone (`use_after_free`) and a
created one is there (`ensure_resource_availability`); a method the document does not list
on a path is 405 with an `Allow` header naming the documented ones (`unsupported_method`,
`allow_header_conformance`). Not checked: `negative_data_rejection`, because the server is
lenient where the document lets it be (unknown body fields are ignored, `limit`s are
clamped rather than refused).

What it found, fixed in the server: a 405 had no `Allow` header; `TRACE /` was 404 while
`/` exists (the dashboard's paths were missing from the 405 table); `POST /mcp` echoed a
fractional JSON-RPC id instead of refusing it.

The proxy routes call a fake provider on loopback: every built-in provider is pointed at
it, so no generated `model` can reach the internet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, start_server
from fake_provider import FakeProvider

SEED = 20261207
EXAMPLES_PER_OPERATION = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
    "unsupported_method",
    "allow_header_conformance",
])
BUILT_IN_PROVIDERS = ["openai", "openrouter", "google", "ollama"]


def providers_toml(fake: FakeProvider) -> str:
    openai_like = "".join(f'[providers.{name}]\nbase_url = "{fake.openai_base}"\n' for name in BUILT_IN_PROVIDERS)
    return (
        "[limits]\nrequests_per_minute = 0\n"
        + openai_like
        + f'[providers.anthropic]\nbase_url = "{fake.anthropic_base}"\n'
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    fake = FakeProvider()
    fake.start()
    srv = start_server(tmp_path, extra_toml=providers_toml(fake))
    yield srv
    srv.stop()
    fake.stop()


def schemathesis_command() -> list[str]:
    found = shutil.which("schemathesis")
    if found:
        return [found]
    return [sys.executable, "-m", "schemathesis.cli"]


def test_the_server_conforms_to_its_openapi_document(server: Server, tmp_path: Path) -> None:
    report = tmp_path / "schemathesis"
    command = [
        *schemathesis_command(), "--no-color", "run", f"{server.base_url}/openapi.json",
        "--url", server.base_url,
        "--header", f"Authorization: Bearer {server.admin_key}",
        "--checks", CHECKS,
        "--mode", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--seed", str(SEED),
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--workers", "1",
        "--request-timeout", "30",
        "--suppress-health-check", "all",
        "--generation-database", "none",
        "--generation-with-security-parameters", "false",
        "--report", "junit",
        "--report-dir", str(report),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    output = result.stdout + result.stderr
    # The log on failure is the reproduction: each failing case is printed as a curl line.
    assert result.returncode == 0, output[-20000:]
    assert "No issues found" in output or "passed" in output, output[-5000:]
    server_log = (server.data_dir.parent / "server.log").read_text()
    assert "panicked" not in server_log, server_log[-5000:]
