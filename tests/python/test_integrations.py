"""The README's "Integrations" snippets, run as written against the real binary.

The code blocks are read from README.md, their placeholders (`USER_KEY`, the
`127.0.0.1:8787` address) filled in, and run: the Anthropic SDK through `/v1/messages`, the
OpenAI SDK through `/v1/chat/completions` (Python here; the Node block when the `openai`
npm package is installed next to the dashboard test). The provider is the loopback fake.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, Server, bearer, start_server
from fake_provider import FakeProvider

README = (ROOT / "README.md").read_text()
PREFERENCE = "Remember that I train at 6am and like short answers."


def block_after(marker: str, language: str) -> str:
    """The first fenced `language` block after the line containing `marker`."""
    start = README.index(marker)
    found = re.search(rf"```{language}\n(.*?)```", README[start:], re.S)
    assert found, f"no {language} block after {marker!r}"
    return found.group(1)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture
def server(tmp_path: Path, fake: FakeProvider) -> Iterator[Server]:
    toml = (f'[providers.openai]\nbase_url = "{fake.openai_base}"\n'
            f'[providers.anthropic]\nbase_url = "{fake.anthropic_base}"\n')
    srv = start_server(tmp_path, extra_toml=toml)
    for provider in ("openai", "anthropic"):
        stored = httpx.put(f"{srv.base_url}/v1/provider-keys/{provider}", headers=bearer(srv.admin_key),
                           json={"api_key": f"sk-{provider}-stored"})
        assert stored.status_code == 200, stored.text
    yield srv
    srv.stop()


def user_with_a_memory(server: Server) -> str:
    key = httpx.post(f"{server.base_url}/v1/keys", headers=bearer(server.admin_key), json={"name": "readme"}).json()["key"]
    stored = httpx.post(f"{server.base_url}/v1/memory/ingest", headers=bearer(key),
                        json={"messages": [{"role": "user", "content": PREFERENCE}]})
    assert stored.status_code == 202, stored.text
    return key


def run_python(code: str, server: Server, key: str) -> Any:
    code = code.replace("http://127.0.0.1:8787", server.base_url)
    # The snippet's last statement is the call; keep its answer.
    lines = code.rstrip().splitlines()
    first_of_last = max(i for i, line in enumerate(lines) if not line.startswith((" ", "\t")))
    lines[first_of_last] = "answer = " + lines[first_of_last]
    scope: dict[str, Any] = {"USER_KEY": key}
    exec("\n".join(lines), scope)  # noqa: S102 - the README's own snippet
    return scope["answer"]


def test_the_anthropic_sdk_snippet(server: Server, fake: FakeProvider) -> None:
    key = user_with_a_memory(server)
    answer = run_python(block_after("**Anthropic SDK**", "python"), server, key)
    assert answer.content[0].text.startswith("Reply to: How should we adjust tomorrow?")
    request = fake.last()
    assert request.path.endswith("/v1/messages")
    assert request.headers["x-api-key"] == "sk-anthropic-stored", "the Memory Key never reaches the provider"
    assert "6am" in request.system_text(), "the user's memory was injected"


def test_the_openai_python_snippet(server: Server, fake: FakeProvider) -> None:
    key = user_with_a_memory(server)
    answer = run_python(block_after("## Proxy mode with the OpenAI SDK", "python"), server, key)
    assert answer.choices[0].message.content.startswith("Reply to: How should we adjust tomorrow?")
    assert "6am" in fake.last().system_text()


def test_the_openai_node_snippet(server: Server, fake: FakeProvider, tmp_path: Path) -> None:
    node = shutil.which("node")
    modules = ROOT / "tests" / "browser" / "node_modules"
    if node is None or not (modules / "openai").is_dir():
        pytest.skip("needs node and the `openai` npm package (`npm ci` in tests/browser)")
    key = user_with_a_memory(server)
    code = block_after("**OpenAI SDKs**", "js").replace("http://127.0.0.1:8787", server.base_url)
    script = tmp_path / "snippet.mjs"
    # Resolve `openai` from the dashboard test's node_modules; print the answer's text.
    script.write_text(code.replace('from "openai"', f'from "{(modules / "openai").as_uri()}/index.mjs"')
                      + "\nconsole.log(answer.choices[0].message.content);\n")
    result = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60,
                            env={"MEMORY_KEY": key, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Reply to: How should we adjust tomorrow?"), result.stdout
    assert "6am" in fake.last().system_text()
