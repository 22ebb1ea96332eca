"""The MCP endpoint (`POST /mcp`) end to end with the official `mcp` Python SDK client.

The real binary on loopback; the SDK's Streamable HTTP client with the Memory Key as bearer
token. Checks: the handshake and tool list, every tool called, two keys' vaults isolated,
key-mode suffixes, bad arguments answered as tool errors (never a crash), and the client
configuration the README shows.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import pytest
from conftest import ROOT, Server, bearer

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

T = TypeVar("T")
TOOLS = {"get_context", "search_memories", "add_memory", "list_memories", "get_memory", "delete_memory"}


def mint(server: Server, name: str) -> str:
    response = httpx.post(f"{server.base_url}/v1/keys", headers=bearer(server.admin_key), json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()["key"]


@asynccontextmanager
async def session(url: str, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as client:
                await client.initialize()
                yield client


def run(server: Server, key: str, body: Callable[[ClientSession], Awaitable[T]]) -> T:
    async def main() -> T:
        async with session(f"{server.base_url}/mcp", {"Authorization": f"Bearer {key}"}) as client:
            return await body(client)

    return asyncio.run(main())


def text(result: Any) -> str:
    return "\n".join(part.text for part in result.content if part.type == "text")


def test_lists_the_tools_and_calls_each(server: Server) -> None:
    key = mint(server, "mcp-user")

    async def body(client: ClientSession) -> None:
        listed = await client.list_tools()
        assert {tool.name for tool in listed.tools} == TOOLS
        for tool in listed.tools:
            assert tool.description and len(tool.description) > 20, tool.name
            assert tool.input_schema["type"] == "object", tool.name

        added = await client.call_tool("add_memory", {"content": "The user trains for a marathon at 6am.", "session_id": "run"})
        assert not added.is_error, text(added)
        memory_id = added.structured_content["ids"][0]
        again = await client.call_tool("add_memory", {"content": "The user trains for a marathon at 6am.", "session_id": "run"})
        assert not again.is_error and again.structured_content["stored"] is False, "an identical memory is not stored twice"
        await client.call_tool("add_memory", {"content": "Prefers green tea over coffee.", "role": "note"})

        found = await client.call_tool("search_memories", {"query": "marathon training", "limit": 5})
        assert not found.is_error, text(found)
        assert found.structured_content["memories"][0]["id"] == memory_id
        assert "marathon" in text(found)

        listed_memories = await client.call_tool("list_memories", {"limit": 1})
        page = listed_memories.structured_content
        assert len(page["memories"]) == 1 and page["next_cursor"] is not None
        rest = await client.call_tool("list_memories", {"cursor": page["next_cursor"]})
        assert [m["id"] for m in rest.structured_content["memories"]] == [memory_id]

        got = await client.call_tool("get_memory", {"id": memory_id})
        assert got.structured_content["content"] == "The user trains for a marathon at 6am."
        assert got.structured_content["session_id"] == "run"
        got_by_number = await client.call_tool("get_memory", {"id": int(memory_id)})
        assert got_by_number.structured_content["id"] == memory_id

        context = await client.call_tool("get_context", {"message": "When is my marathon training?", "density": "low"})
        assert not context.is_error
        assert "marathon at 6am" in text(context)
        assert context.structured_content["memories_found"] >= 1

        deleted = await client.call_tool("delete_memory", {"id": memory_id})
        assert not deleted.is_error and deleted.structured_content == {"id": memory_id, "deleted": True}
        gone = await client.call_tool("get_memory", {"id": memory_id})
        assert gone.is_error and "No memory" in text(gone)

    run(server, key, body)
    # What the tools wrote is the vault of the HTTP API: same key, same memories.
    listed = httpx.get(f"{server.base_url}/v1/memory", headers=bearer(key)).json()["memories"]
    assert [m["content"] for m in listed] == ["Prefers green tea over coffee."]
    assert listed[0]["role"] == "note"


def test_two_keys_see_only_their_own_vault(server: Server) -> None:
    alice, bob = mint(server, "alice"), mint(server, "bob")

    async def alice_adds(client: ClientSession) -> str:
        added = await client.call_tool("add_memory", {"content": "Alice's door code is 4711."})
        return added.structured_content["ids"][0]

    alice_id = run(server, alice, alice_adds)

    async def bob_looks(client: ClientSession) -> None:
        found = await client.call_tool("search_memories", {"query": "door code 4711"})
        assert found.structured_content["memories"] == []
        assert (await client.call_tool("list_memories", {})).structured_content["memories"] == []
        got = await client.call_tool("get_memory", {"id": alice_id})
        assert got.is_error and "4711" not in text(got)
        context = await client.call_tool("get_context", {"message": "What is the door code?"})
        assert "4711" not in text(context)
        deleted = await client.call_tool("delete_memory", {"id": alice_id})
        assert deleted.is_error

    run(server, bob, bob_looks)

    async def alice_still_has_it(client: ClientSession) -> None:
        got = await client.call_tool("get_memory", {"id": alice_id})
        assert got.structured_content["content"] == "Alice's door code is 4711."

    run(server, alice, alice_still_has_it)


def test_key_mode_suffixes_are_respected(server: Server) -> None:
    key = mint(server, "modes")

    async def read_only(client: ClientSession) -> None:
        refused = await client.call_tool("add_memory", {"content": "Should not be stored."})
        assert refused.is_error and ":read" in text(refused)
        assert (await client.call_tool("delete_memory", {"id": "1"})).is_error
        assert not (await client.call_tool("search_memories", {"query": "anything"})).is_error

    run(server, f"{key}:read", read_only)

    async def write_only(client: ClientSession) -> None:
        assert not (await client.call_tool("add_memory", {"content": "Written with :write."})).is_error
        refused = await client.call_tool("search_memories", {"query": "written"})
        assert refused.is_error and ":write" in text(refused)
        assert (await client.call_tool("get_context", {"message": "written"})).is_error

    run(server, f"{key}:write", write_only)

    async def off(client: ClientSession) -> None:
        for name, args in [("add_memory", {"content": "x"}), ("list_memories", {}), ("get_memory", {"id": 1})]:
            assert (await client.call_tool(name, args)).is_error, name

    run(server, f"{key}:off", off)
    contents = [m["content"] for m in httpx.get(f"{server.base_url}/v1/memory", headers=bearer(key)).json()["memories"]]
    assert contents == ["Written with :write."]


def test_bad_arguments_are_tool_errors_not_crashes(server: Server) -> None:
    key = mint(server, "bad-args")

    async def body(client: ClientSession) -> None:
        cases: list[tuple[str, dict[str, Any]]] = [
            ("add_memory", {}),
            ("add_memory", {"content": 42}),
            ("add_memory", {"content": "   "}),
            ("add_memory", {"content": "x", "role": "system"}),
            ("add_memory", {"content": "x", "session_id": "s" * 300}),
            ("add_memory", {"content": "x", "metadata": "not an object"}),
            ("add_memory", {"content": "x", "colour": "blue"}),
            ("search_memories", {"query": ""}),
            ("search_memories", {"query": "x", "limit": "ten"}),
            ("search_memories", {"query": "x", "limit": -1}),
            ("list_memories", {"cursor": "not-a-cursor"}),
            ("get_memory", {"id": "abc"}),
            ("get_memory", {"id": -5}),
            ("get_memory", {"id": 1.5}),
            ("get_memory", {"id": 99999}),
            ("delete_memory", {"id": None}),
            ("get_context", {"message": ""}),
            ("get_context", {"message": "hi", "density": "enormous"}),
            ("get_context", {}),
        ]
        for name, args in cases:
            result = await client.call_tool(name, args)
            assert result.is_error, (name, args, text(result))
            assert text(result), (name, args)
        with pytest.raises(MCPError):
            await client.call_tool("no_such_tool", {})
        # The session still works after all of that.
        assert not (await client.call_tool("list_memories", {})).is_error

    run(server, key, body)
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def test_http_level_answers(server: Server) -> None:
    key = mint(server, "raw")
    url = f"{server.base_url}/mcp"
    headers = {**bearer(key), "accept": "application/json, text/event-stream"}

    unauthorized = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                              headers={"authorization": "Bearer mk_not-a-key"})
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "invalid_memory_key"

    listed = httpx.post(url, json={"jsonrpc": "2.0", "id": "a", "method": "tools/list"}, headers=headers)
    assert listed.status_code == 200 and listed.headers["content-type"].startswith("application/json")
    assert listed.json()["id"] == "a" and len(listed.json()["result"]["tools"]) == len(TOOLS)

    note = httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert (note.status_code, note.content) == (202, b"")

    garbled = httpx.post(url, content=b"{not json", headers=headers)
    assert garbled.status_code == 400 and garbled.json()["error"]["code"] == -32700

    batch = httpx.post(url, json=[{"jsonrpc": "2.0", "id": 1, "method": "ping"}], headers=headers)
    assert batch.status_code == 400 and batch.json()["error"]["code"] == -32600

    unknown = httpx.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "resources/list"}, headers=headers)
    assert unknown.json()["error"]["code"] == -32601

    host = server.base_url.removeprefix("http://")
    foreign = httpx.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "ping"},
                         headers={**headers, "origin": "http://attacker.example"})
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed"
    own = httpx.post(url, json={"jsonrpc": "2.0", "id": 4, "method": "ping"}, headers={**headers, "origin": f"http://{host}"})
    assert own.status_code == 200 and own.json()["result"] == {}

    assert httpx.get(url, headers=headers).status_code == 405
    assert httpx.delete(url, headers=headers).status_code == 405


def test_the_readme_client_configuration_connects(server: Server) -> None:
    """The Cursor / Claude Desktop JSON in the README, with its placeholders filled in."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- mcp-config -->\s*```json\n(.*?)```", readme, re.S)
    assert block, "README has the MCP client configuration block"
    key = mint(server, "readme")
    config = json.loads(block.group(1).replace("http://127.0.0.1:8787", server.base_url).replace("mk_…", key))
    entry = config["mcpServers"]["memoryrouter"]

    async def main() -> set[str]:
        async with session(entry["url"], entry["headers"]) as client:
            return {tool.name for tool in (await client.list_tools()).tools}

    assert asyncio.run(main()) == TOOLS

