"""Tools the gateway runs itself (issue 14, item 4): declared in every session, answered by the
server when the model calls them, alongside the client's own; never reaching another user's data.
"""

import asyncio
import json
import time

import pytest
from django.core.checks import run_checks

from voicechat.access.scopes import ScopeKind
from voicechat.enums import EndReason, Role
from voicechat.gateway.server_tools import search_my_conversations, server_tool
from voicechat.models import TranscriptItem
from voicechat.services import api_token_create, conversation_end, conversation_start
from voicechat.tests.conftest import db, finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)

BUILT_IN = [
    "voicechat.gateway.server_tools.get_current_time",
    "voicechat.gateway.server_tools.search_my_conversations",
]


@server_tool(name="explode", description="Always fails.")
def explode(context) -> str:
    raise RuntimeError("boom")


@server_tool(name="dawdle", description="Takes its time.")
def dawdle(context) -> str:
    time.sleep(2)
    return "late"


def said_before(user, text: str) -> None:
    conversation = conversation_start(user=user, backend="openai", model="gpt-realtime", voice="")
    TranscriptItem.objects.create(
        conversation=conversation, item_id="item_1", role=Role.USER, text=text, status="completed"
    )
    conversation_end(conversation_id=conversation.pk, reason=EndReason.CLIENT_CLOSED)


async def call(client, fake_upstream, name: str, arguments: dict | None = None) -> dict:
    """Have the model call `name`; returns the function_call_output the gateway answered with."""

    def outputs() -> list[dict]:
        return [
            e["item"]
            for e in fake_upstream.received
            if e["type"] == "conversation.item.create"
            and e["item"]["type"] == "function_call_output"
        ]

    answered, asked = len(outputs()), len(await fake_upstream.wait_for("response.create", 0))
    fake_upstream.call_function_next(name, arguments)
    await client.send({"type": "response.create"})
    # Ours, then the gateway's own after its answer.
    await fake_upstream.wait_for("response.create", count=asked + 2, timeout=10)
    [output] = outputs()[answered:]
    return output


async def test_every_session_declares_the_server_tools(fake_upstream, alice_token, connect):
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    defaults = fake_upstream.received[0]["session"]
    assert [tool["name"] for tool in defaults["tools"]] == [
        "get_current_time",
        "search_my_conversations",
    ]


async def test_the_gateway_answers_a_call_to_its_clock_in_the_users_time_zone(
    fake_upstream, alice, alice_token, connect
):
    _, client = await connect(token=alice_token, path="/v1/realtime?tz=Asia/Tokyo")
    await client.receive_until("session.updated")
    output = await call(client, fake_upstream, "get_current_time")
    assert json.loads(output["output"])["time_zone"] == "Asia/Tokyo"
    # The client sees the second response, made after the answer, and both are stored.
    events = await client.receive_until("response.done")
    while events[-1]["response"]["output"][0]["type"] == "function_call":
        events = await client.receive_until("response.done")
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)
    kinds = await db(lambda: [item.kind for item in conversation.ordered_items()])
    assert kinds == ["function_call", "function_call_output", "message"]


async def test_search_finds_only_the_users_own_conversations(
    fake_upstream, alice, alice_token, django_user_model, connect
):
    bob = await db(django_user_model.objects.create_user, "bob", password="bob-password-123")
    await db(said_before, alice, "I like sourdough bread.")
    await db(said_before, bob, "My secret word is bananas.")
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")

    found = json.loads(
        (await call(client, fake_upstream, "search_my_conversations", {"query": "sourdough"}))[
            "output"
        ]
    )
    assert "I like sourdough bread." in found
    await client.receive_until("response.done")
    await client.receive_until("response.done")
    # Bob's words are not Alice's to find, however the model asks.
    for arguments in ({"query": "bananas"}, {"query": "bananas", "user": "bob"}):
        output = await call(client, fake_upstream, "search_my_conversations", arguments)
        assert "bananas" not in output["output"].replace("'bananas'", "")
        assert "secret" not in output["output"]
        await client.receive_until("response.done")
        await client.receive_until("response.done")


async def test_a_tool_that_fails_or_dawdles_answers_with_an_error(
    fake_upstream, alice_token, connect, settings
):
    settings.REALTIME_SERVER_TOOLS = [
        *BUILT_IN,
        "voicechat.tests.test_server_tools.explode",
        "voicechat.tests.test_server_tools.dawdle",
    ]
    settings.REALTIME_SERVER_TOOL_TIMEOUT = 0.3
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    output = await call(client, fake_upstream, "explode")
    assert json.loads(output["output"]) == {"error": "explode failed."}
    await client.receive_until("response.done")
    await client.receive_until("response.done")
    output = await call(client, fake_upstream, "dawdle")
    assert json.loads(output["output"]) == {"error": "dawdle took too long to answer."}
    await client.send({"type": "input_audio_buffer.commit"})  # the conversation goes on
    await client.receive_until("input_audio_buffer.committed")


async def test_client_tools_keep_working_alongside(fake_upstream, alice, connect):
    token = await db(lambda: api_token_create(user=alice, name="t", scope_kind=ScopeKind.FULL)[1])
    _, client = await connect(token=token)
    await client.receive_until("session.updated")
    mine = {"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}
    await client.send({"type": "session.update", "session": {"tools": [mine]}})
    await client.receive_until("session.updated")
    sent = fake_upstream.received[-1]["session"]["tools"]
    assert [tool["name"] for tool in sent] == [
        "lookup_order",
        "get_current_time",
        "search_my_conversations",
    ]
    # A call to the client's own tool is the client's to answer: the gateway sends nothing.
    fake_upstream.call_function_next("lookup_order", {"id": 7})
    await client.send({"type": "response.create"})
    await client.receive_until("response.done")
    await asyncio.sleep(0.2)
    assert [e["type"] for e in fake_upstream.received].count("response.create") == 1
    # A tool of the client's may not take a server tool's name.
    clash = {"type": "function", "name": "get_current_time", "parameters": {"type": "object"}}
    await client.send({"type": "session.update", "session": {"tools": [clash]}})
    error = (await client.receive_until("error"))[-1]["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "session.tools")


@server_tool(
    name="search_my_notes",
    description="Search what the user said in earlier conversations.",
    parameters=search_my_conversations.server_tool.parameters,
    for_offline_engine=True,
)
def search_my_notes(context, query: str = "") -> str:
    return search_my_conversations(context, query)


async def test_the_offline_engine_declares_no_built_in_tool(alice_token, connect, settings):
    settings.REALTIME_BACKEND, settings.OPENAI_API_KEY = "local", ""
    _, client = await connect(token=alice_token)
    updated = (await client.receive_until("session.updated"))[-1]
    assert updated["session"].get("tools", []) == []


async def test_the_offline_assistant_calls_a_server_tool_offered_to_it(
    alice, alice_token, connect, settings
):
    settings.REALTIME_BACKEND, settings.OPENAI_API_KEY = "local", ""
    settings.REALTIME_SERVER_TOOLS = [
        *BUILT_IN,
        "voicechat.tests.test_server_tools.search_my_notes",
    ]
    await db(said_before, alice, "I like sourdough bread.")
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Search my notes about sourdough."}],
            },
        }
    )
    await client.send({"type": "response.create"})
    first = (await client.receive_until("response.done", timeout=30))[-1]["response"]
    assert first["output"][0]["name"] == "search_my_notes"
    second = (await client.receive_until("response.done", timeout=30))[-1]["response"]
    assert "I like sourdough bread." in second["output"][0]["content"][0]["transcript"]


def test_a_tool_that_cannot_be_imported_stops_the_start(settings):
    settings.REALTIME_SERVER_TOOLS = [*BUILT_IN, "voicechat.nowhere.tool", "voicechat.models.Role"]
    errors = [e for e in run_checks() if e.id == "voicechat.E601"]
    assert [e.msg.split(":")[0].split(" ")[0] for e in errors] == [
        "voicechat.nowhere.tool",
        "voicechat.models.Role",
    ]
