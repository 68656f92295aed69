"""Tools the gateway declares and runs itself, for users who cannot run code (the browser).

Every session starts with them declared (policy.session_defaults); a client that sets tools of
its own gets them added (a client tool may not take one of their names). When the model calls
one, ServerToolCalls runs it and, once that response is done, answers with a
function_call_output item and a response.create, as a client would: the client sees the call
and the answer go by, and the transcript stores both. Client-declared tools are left to the
client, as always.

A tool is a function decorated with @server_tool, listed by dotted path in
REALTIME_SERVER_TOOLS (a deployer adds their own the same way). It gets a ToolContext (whose
conversation and user, never an argument the model could forge) and the model's arguments, runs
in a worker thread (the ORM is fine), and returns text or JSON-able data for the model. A tool
that raises, times out (REALTIME_SERVER_TOOL_TIMEOUT) or gets unusable arguments answers the
model with an error it can explain; the conversation goes on.
"""

import asyncio
import logging
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils.module_loading import import_string

from voicechat.models import TranscriptItem

logger = logging.getLogger(__name__)

# Server events ServerToolCalls needs (the gateway passes it these only).
EVENTS = frozenset({"response.function_call_arguments.done", "response.done"})
SEARCH_RESULTS = 5
SEARCH_QUERY_LIMIT = 200


@dataclass(frozen=True)
class ToolContext:
    """Who a call is for: taken from the conversation, never from the model's arguments."""

    user: object
    conversation_id: int
    time_zone: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})
    # False: not declared to the offline engine (see the built-in tools below for why).
    for_offline_engine: bool = True

    def declaration(self) -> dict:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


def server_tool(**spec) -> Callable:
    """Make a function a server tool: @server_tool(name=..., description=..., parameters=...)."""

    def mark(function: Callable) -> Callable:
        function.server_tool = ToolSpec(**spec)
        return function

    return mark


def registry() -> dict[str, Callable]:
    """The tools REALTIME_SERVER_TOOLS lists, by name (checked at start-up: voicechat.E601)."""
    tools = {}
    for path in settings.REALTIME_SERVER_TOOLS:
        function = import_string(path)
        tools[function.server_tool.name] = function
    return tools


def declarations(*, offline_engine: bool = False) -> list[dict]:
    """The tools as a session declares them."""
    return [
        function.server_tool.declaration()
        for function in registry().values()
        if function.server_tool.for_offline_engine or not offline_engine
    ]


async def run(name: str, arguments: str, context: ToolContext) -> str:
    """Call tool `name` with the model's JSON `arguments`; the output for the model (JSON)."""
    try:
        kwargs = orjson.loads(arguments or "{}")
        if not isinstance(kwargs, dict):
            raise TypeError("the arguments are not a JSON object")
        result = await asyncio.wait_for(
            # Not the shared database thread: a slow tool must not hold up transcript writes.
            database_sync_to_async(registry()[name], thread_sensitive=False)(context, **kwargs),
            settings.REALTIME_SERVER_TOOL_TIMEOUT,
        )
    except TimeoutError:
        logger.warning("server tool %s timed out (conversation %s)", name, context.conversation_id)
        result = {"error": f"{name} took too long to answer."}
    except (orjson.JSONDecodeError, TypeError) as exc:
        result = {"error": f"{name} could not use these arguments: {exc}"}
    except Exception:
        logger.exception("server tool %s failed (conversation %s)", name, context.conversation_id)
        result = {"error": f"{name} failed."}
    return orjson.dumps(result).decode()


class ServerToolCalls:
    """The server tools' calls in one conversation: run as they come, answered once their
    response is done (a response.create during another response would be refused)."""

    def __init__(self, context: ToolContext, send: Callable[[str], Awaitable[None]]) -> None:
        self.context = context
        self._send = send
        self._calls: dict[str, list[tuple[str, asyncio.Task]]] = {}  # by response id
        self._tasks: set[asyncio.Task] = set()

    def observe(self, etype: str, frame: str) -> None:
        if etype == "response.done" and not self._calls:
            return  # the common case: no server tool was called
        event = orjson.loads(frame)
        if etype == "response.function_call_arguments.done":
            name = event.get("name")
            if isinstance(name, str) and name in registry():
                call = self._start(run(name, str(event.get("arguments") or ""), self.context))
                self._calls.setdefault(str(event.get("response_id")), []).append(
                    (str(event.get("call_id")), call)
                )
            return
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        calls = self._calls.pop(str(response.get("id")), None)
        if not calls:
            return
        if response.get("status") != "completed":  # cancelled or cut short: nobody waits
            for _, call in calls:
                call.cancel()
            return
        self._start(self._answer(calls))

    async def _answer(self, calls: list[tuple[str, asyncio.Task]]) -> None:
        for call_id, call in calls:
            output = await call
            item = {"type": "function_call_output", "call_id": call_id, "output": output}
            await self._send(
                orjson.dumps({"type": "conversation.item.create", "item": item}).decode()
            )
        await self._send(orjson.dumps({"type": "response.create"}).decode())

    def _start(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- the built-in tools -----------------------------------------------------------------------


@server_tool(
    name="get_current_time",
    description="The current date and time where the user is.",
    # The offline engine tells the time itself, in the user's time zone, without a round trip.
    for_offline_engine=False,
)
def get_current_time(context: ToolContext) -> dict:
    zone = zoneinfo.ZoneInfo(context.time_zone or settings.TIME_ZONE)
    moment = datetime.now(zone)
    return {
        "time_zone": str(zone),
        "iso": moment.isoformat(timespec="seconds"),
        "spoken": moment.strftime("%A %-d %B %Y, %H:%M"),
    }


@server_tool(
    name="search_my_conversations",
    description=(
        "Search what the user and the assistant said in the user's earlier conversations, "
        "for example to recall something the user mentioned before."
    ),
    parameters={
        "type": "object",
        "properties": {"query": {"type": "string", "description": "Words to look for."}},
        "required": ["query"],
    },
    # Offered in every turn, the embedded 1.5B model reached for it instead of answering ("What
    # is the capital of France?" got a search of past conversations); a deployer who wants it
    # there can register a copy with for_offline_engine=True.
    for_offline_engine=False,
)
def search_my_conversations(context: ToolContext, query: str = "") -> str:
    """Lines of the user's own conversations (never anyone else's: the user is the context's)."""
    query = str(query).strip()[:SEARCH_QUERY_LIMIT]
    if not query:
        return "Say what to look for."
    lines = (
        TranscriptItem.objects.filter(
            conversation__user=context.user, conversation__deleted__isnull=True
        )
        .exclude(conversation_id=context.conversation_id)
        .filter(text__icontains=query)
        .select_related("conversation")
        .order_by("-created")[:SEARCH_RESULTS]
    )
    found = [
        f"On {line.created:%d %B %Y} {'you' if line.role == 'user' else 'the assistant'} "
        f'said: "{line.text[:300]}"'
        for line in lines
    ]
    if not found:
        return f"Nothing about {query!r} in your earlier conversations."
    return " ".join(found)
