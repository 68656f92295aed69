"""A WebRTC call with the OpenAI backend: made at OpenAI, followed and policed over its sideband.

The client's SDP offer goes to OpenAI's calls endpoint with the server's key and the server's
session (its defaults, with the client's own session fields as the policy allows them); the
client's media and `oai-events` data channel then go to OpenAI directly, and the server attaches
the call's sideband WebSocket (voicechat/upstream/openai.py, OpenAICall). The conversation is a
GatewayConversation whose upstream is that sideband: admission, recording (every server event of
the call arrives on the sideband), usage and cost, budgets, limits, the live monitor, staff end,
shutdown and end reasons are the WebSocket's. Its client socket here drops the relayed frames
(the client has them from OpenAI already) and hangs the call up when the conversation ends.

Policy: client events travel on the data channel straight to OpenAI, so none can be refused
before it acts. The server sees their effect on the sideband and undoes what the client's scope
forbids: a session.created or session.updated showing a field the client may not set (model,
instructions, tools, prompt, tracing, voice, transcription model, output-token cap) is answered
with a session.update setting it back (SessionGuard), and a system message a client may not add
is deleted. A response.create with forbidden inline fields cannot be stopped (README).
"""

import asyncio
import collections
import contextvars
import logging
import re
import secrets
import time
from urllib.parse import parse_qs

import orjson
from django.conf import settings

from voicechat.access.scopes import Scope
from voicechat.calls.call import (
    HTTP_STATUS_FOR_CLOSE,
    CallRefused,
    _drop_audio_formats,
    forget,
    register,
)
from voicechat.enums import Backend, EndReason
from voicechat.gateway import server_tools
from voicechat.gateway.backends import open_openai_call
from voicechat.gateway.conversation import GatewayConversation, requested_model
from voicechat.gateway.policy import ClientEventPolicy, session_defaults
from voicechat.protocol import new_event_id, peek_type
from voicechat.upstream.base import UpstreamClosed

logger = logging.getLogger(__name__)
audit = logging.getLogger("voicechat.audit")

# Session changes set back in a minute before the call is ended as abuse: a client fighting the
# policy, or a provider that never takes a value back (which would otherwise loop).
MAX_REVERTS_PER_MINUTE = 30


def merged(base: dict, update: dict) -> dict:
    """`base` with session.update semantics applied: only the fields present change; an object
    given another `type` (server_vad to semantic_vad) is replaced whole."""
    result = dict(base)
    for key, value in update.items():
        current = result.get(key)
        if (
            isinstance(value, dict)
            and isinstance(current, dict)
            and value.get("type", current.get("type")) == current.get("type")
        ):
            result[key] = merged(current, value)
        else:
            result[key] = value
    return result


class SessionGuard:
    """What of a call's session, as OpenAI reports it, the client's scope does not allow, and the
    session.update that sets it back to the server's configuration."""

    def __init__(self, scope: Scope, *, model: str, server_session: dict) -> None:
        self.scope = scope
        self.model = model
        self.server = server_session
        audio = server_session.get("audio") or {}
        # What the server set itself is always allowed back (else a revert would loop).
        self.voices = frozenset(settings.REALTIME_VOICES) | {audio["output"]["voice"]}
        self.transcription_models = scope.transcription_models | {
            audio["input"]["transcription"].get("model")
        }
        self.server_tools = server_tools.declarations(offline_engine=False)

    def revert(self, session: dict) -> dict | None:
        """The fields to set back (a session.update's `session`), or None if all are allowed.
        Only fields the event shows are judged."""
        scope, server, fix = self.scope, self.server, {}
        model = session.get("model")
        # OpenAI may name the dated snapshot behind an alias (gpt-realtime-2025-08-28).
        if isinstance(model, str) and not re.fullmatch(
            re.escape(self.model) + r"(-\d{4}-\d{2}-\d{2})?", model
        ):
            fix["model"] = self.model
        instructions = server.get("instructions", "")
        if not scope.instructions and session.get("instructions", instructions) != instructions:
            fix["instructions"] = instructions
        if not scope.prompt and session.get("prompt") is not None:
            fix["prompt"] = None
        if not scope.tracing and session.get("tracing") is not None:
            fix["tracing"] = None
        if "tools" in session:
            tools = [tool for tool in session["tools"] or () if isinstance(tool, dict)]
            names = [tool.get("name") for tool in tools]
            reserved = [tool["name"] for tool in self.server_tools]
            if not scope.tools:
                if names != [tool.get("name") for tool in server.get("tools") or ()]:
                    fix["tools"] = server.get("tools") or []
            elif not set(reserved) <= set(names):  # the server's own tools stay
                own = [tool for tool in tools if tool.get("name") not in reserved]
                fix["tools"] = [*own, *self.server_tools]
        cap = scope.max_output_tokens
        limit = session.get("max_output_tokens", cap)
        if cap and not (isinstance(limit, int) and not isinstance(limit, bool) and limit <= cap):
            fix["max_output_tokens"] = cap
        audio = session.get("audio") if isinstance(session.get("audio"), dict) else {}
        server_audio = server.get("audio") or {}
        output = audio.get("output") if isinstance(audio.get("output"), dict) else {}
        voice = output.get("voice")
        if voice is not None and not (isinstance(voice, str) and voice in self.voices):
            fix["audio"] = {"output": {"voice": server_audio["output"]["voice"]}}
        heard = audio.get("input") if isinstance(audio.get("input"), dict) else {}
        if "transcription" in heard and not (
            isinstance(heard["transcription"], dict)
            and heard["transcription"].get("model") in self.transcription_models
        ):  # switched off or another model: the transcript is the record
            fix.setdefault("audio", {})["input"] = {
                "transcription": server_audio["input"]["transcription"]
            }
        return fix or None

    def forbidden_item(self, item: dict) -> bool:
        """A conversation item the client may not add: a system message, unless it may set
        instructions (a second set of them)."""
        return not self.scope.instructions and item.get("role") == "system"


class _SidebandClient:
    """The call as its conversation's ClientSocket: the client has everything from OpenAI."""

    shortcut = None

    def __init__(self, call: "OpenAIWebRTCCall") -> None:
        self._call = call

    async def send_text(self, text: str) -> None:
        self._call.gateway_said(text)

    async def send_frame(self, text: str) -> None:
        await self._call.observe(text)

    async def close(self, code: int) -> None:
        self._call.closed_by_gateway(code)


class OpenAIWebRTCCall:
    """A call made at OpenAI for a client, from offer to hangup."""

    def __init__(
        self,
        identity,
        *,
        client_ip: str,
        user_agent: str,
        query_string: str,
        session: dict | None = None,
    ) -> None:
        self.id = f"rtc_{secrets.token_hex(12)}"
        self.user_id = identity.user.pk
        self.identity = identity
        self.model = requested_model(parse_qs(query_string))
        self.client_session = session
        self.upstream = None  # the OpenAICall, once the conversation has asked for it
        self.conversation = GatewayConversation(
            _SidebandClient(self),
            identity,
            client_ip=client_ip,
            user_agent=user_agent,
            query_string=query_string,
            upstream=self._open_upstream,
        )
        self.guard: SessionGuard | None = None
        self._offer_sdp = ""
        self._offer_session: dict = {}
        self._answered = False
        self._admitted = asyncio.Event()  # the sideband's first event came, or the gateway closed
        self._last_error: str | None = None
        self._refusal: int | None = None  # the close code, when the gateway closed before
        self._reverts: collections.deque[float] = collections.deque()
        self._finishing: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._context = contextvars.copy_context()

    # --- the offer and the answer ----------------------------------------------------------

    async def answer(self, offer_sdp: str) -> str:
        """Make the call at OpenAI and return its SDP answer; raises CallRefused."""
        self._offer_sdp = offer_sdp
        self._context = contextvars.copy_context()  # the call's own (start()), for its end
        client_update = self._check_client_session()  # refused before anything starts
        try:
            await self.conversation.open()
            if self.conversation.stored is not None:
                if client_update is not None:
                    # The client's session, after the server's defaults, as over the WebSocket.
                    await self.conversation.receive(client_update)
                await self._wait_admitted()
            if self._refusal is not None:
                raise self._refused()
        except CallRefused:
            await self.conversation.finish()
            raise
        except BaseException:
            logger.exception("call %s could not be made at OpenAI", self.id)
            await self.conversation.end(
                EndReason.SERVER_ERROR, "The gateway hit an internal error.", code="server_error"
            )
            await self._finish()
            raise
        self._answered = True
        register(self)
        audit.info(
            "call %s made at OpenAI as %s (conversation %s)",
            self.id,
            self.upstream.call_id,
            self.conversation.conversation_id,
        )
        return self.upstream.answer_sdp

    def _check_client_session(self) -> str | None:
        """The client's session configuration as its first session.update, checked by the
        policy now (over WebRTC no refusal could reach the client later); None if it gave none.
        The server's session for the offer is its defaults with these fields."""
        scope = self.identity.scope
        defaults = orjson.loads(session_defaults(scope, backend=Backend.OPENAI))["session"]
        frame = None
        if self.client_session:
            session = {k: v for k, v in self.client_session.items() if k != "model"}
            session.setdefault("type", "realtime")
            event = {"type": "session.update", "session": orjson.loads(orjson.dumps(session))}
            _drop_audio_formats(event)
            policy = ClientEventPolicy(
                scope,
                model=self.model,
                server_tools=server_tools.declarations(offline_engine=False),
            )
            verdict = policy.check(orjson.dumps(event).decode())
            if verdict.error is not None:
                error = orjson.loads(verdict.error)["error"]
                raise CallRefused(
                    400,
                    error["message"],
                    code=error["code"],
                    type=error["type"],
                    param=error.get("param"),
                )
            frame = verdict.frame
            defaults = merged(defaults, orjson.loads(frame)["session"])
        self._offer_session = {**defaults, "type": "realtime", "model": self.model}
        self.guard = SessionGuard(scope, model=self.model, server_session=self._offer_session)
        return frame

    def _open_upstream(self, model: str):
        self.upstream = open_openai_call(
            model, offer_sdp=self._offer_sdp, session=self._offer_session
        )
        return self.upstream

    async def _wait_admitted(self) -> None:
        try:
            async with asyncio.timeout(settings.REALTIME_CONNECT_TIMEOUT * 2 + 5):
                await self._admitted.wait()
        except TimeoutError:
            await self.conversation.end(
                EndReason.UPSTREAM_UNREACHABLE,
                "The AI service did not answer in time.",
                code="upstream_unreachable",
            )

    def _refused(self) -> CallRefused:
        provider = getattr(self.upstream, "refused", None)
        if provider is not None:  # OpenAI's own refusal of the offer
            error = provider.error
            return CallRefused(
                provider.status,
                error["message"],
                code=error["code"],
                type=error["type"],
                param=error.get("param"),
            )
        error = orjson.loads(self._last_error).get("error") if self._last_error else {}
        return CallRefused(
            HTTP_STATUS_FOR_CLOSE.get(self._refusal, 500),
            error.get("message") or "The call could not be started.",
            code=error.get("code") or "call_refused",
            type=error.get("type") or "server_error",
        )

    # --- the conversation's side (ClientSocket) ---------------------------------------------

    def gateway_said(self, text: str) -> None:
        """The gateway's own event for the client (why it ends, mostly): before the answer it
        explains a refusal; after it, nothing reaches a client whose events come from OpenAI
        (the call is hung up, and the reason stored)."""
        if not self._answered and peek_type(text) == "error":
            self._last_error = text
        else:
            logger.debug("call %s: not for the client: %s", self.id, text[:300])

    async def observe(self, frame: str) -> None:
        """A server event of the call, as the sideband carried it (recorded already): the
        client has it from OpenAI; the policy looks at what it says the client did."""
        self._admitted.set()
        etype = peek_type(frame)
        if etype in ("session.created", "session.updated"):
            session = orjson.loads(frame).get("session")
            fix = self.guard.revert(session) if isinstance(session, dict) else None
            if fix is not None:
                audit.warning(
                    "call %s: set back session fields the client may not set: %s",
                    self.id,
                    ", ".join(sorted(fix)),
                )
                await self._send_to_call(
                    {"type": "session.update", "session": {"type": "realtime", **fix}}
                )
        elif etype == "conversation.item.added":
            item = orjson.loads(frame).get("item") or {}
            prefix = getattr(self.conversation, "replay_prefix", None)
            if (
                isinstance(item, dict)
                and self.guard.forbidden_item(item)
                and not (prefix and str(item.get("id", "")).startswith(prefix))
            ):
                audit.warning("call %s: deleted a system message the client added", self.id)
                await self._send_to_call(
                    {"type": "conversation.item.delete", "item_id": item["id"]}
                )

    async def _send_to_call(self, event: dict) -> None:
        moment = time.monotonic()
        self._reverts.append(moment)
        while self._reverts[0] < moment - 60:
            self._reverts.popleft()
        if len(self._reverts) > MAX_REVERTS_PER_MINUTE:
            self._spawn(
                self.conversation.end(
                    EndReason.ABUSE,
                    "Too many session changes this server does not allow; the call was ended.",
                    code="too_many_invalid_events",
                )
            )
            return
        try:
            await self.conversation.upstream.send(
                orjson.dumps({**event, "event_id": new_event_id()}).decode()
            )
        except UpstreamClosed:
            pass  # the relay reports the close

    def closed_by_gateway(self, code: int) -> None:
        if not self._answered:
            self._refusal = code
            self._admitted.set()
            return
        # The conversation has ended: hang up and store it, outside the task that ended it.
        self._finish_soon()

    # --- the end -------------------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def hang_up(self) -> None:
        """The client's POST .../hangup: end the conversation and wait until it is stored."""
        await self.conversation.end(
            EndReason.CLIENT_CLOSED,
            "The call ended.",
            code="call_ended",
            detail="WebRTC: hung up by the client",
        )
        self._finish_soon()
        await asyncio.shield(self._finishing)

    def _finish_soon(self) -> None:
        """Hang up and store the conversation, in a task of the call's own context (a request's
        would hand the database writes to a thread that ends with the request)."""
        if self._finishing is None:
            self._finishing = asyncio.get_running_loop().create_task(
                self._finish(), context=self._context.copy()
            )

    async def _finish(self) -> None:
        forget(self)
        try:
            # Closing the sideband hangs the call up at OpenAI (OpenAICall.close).
            await self.conversation.finish()
        finally:
            audit.info("call %s closed", self.id)


async def start(call: OpenAIWebRTCCall, offer_sdp: str) -> str:
    """Make `call` in a context of its own (see voicechat/calls/call.py, start)."""
    return await asyncio.create_task(call.answer(offer_sdp), context=contextvars.Context())
