"""One conversation's life, whatever carries its client socket.

GatewayConversation admits the conversation (per-user rate limit, draining, the concurrency
limit, models and budget), stores it, opens its upstream and relays both ways through the
client-event policy; it records the transcript, publishes to the monitor, holds the limits
(length, budget, access) and ends it exactly once, storing how. It knows its client only as a
ClientSocket: the Channels consumer (voicechat/gateway/consumers.py) adapts a WebSocket to that, and
any other transport can do the same.
"""

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qs

import orjson
from channels.db import database_sync_to_async
from django.conf import settings

from voicechat import lifecycle, services
from voicechat.access import ratelimit
from voicechat.access.auth import Identity
from voicechat.access.budgets import budget_problem, watch_budget
from voicechat.access.revocation import access_watch
from voicechat.enums import Backend, EndReason
from voicechat.gateway import server_tools
from voicechat.gateway.backends import open_upstream, resolve_backend, time_zone_or_none
from voicechat.gateway.limits import TOO_MANY_CODE, DurationLimit
from voicechat.gateway.policy import ClientEventPolicy, session_defaults
from voicechat.gateway.resume import context_frames, context_item_prefix, resumable
from voicechat.gateway.server_tools import ServerToolCalls, ToolContext
from voicechat.models import Conversation
from voicechat.monitoring import logformat, metrics
from voicechat.monitoring.live import ConversationPublisher, EndRequests, end_requests
from voicechat.protocol import (
    CLOSE_CODE_FOR,
    FATAL_ERROR_CODES,
    CloseCode,
    EndConversation,
    error_event,
    peek_type,
)
from voicechat.records.recorder import TranscriptRecorder
from voicechat.records.recordings import ConversationRecorder, recording_enabled
from voicechat.redaction import redact, redact_server_frame
from voicechat.transport.server import TextShortcut
from voicechat.upstream.base import Upstream, UpstreamClosed

logger = logging.getLogger(__name__)
audit = logging.getLogger("voicechat.audit")

SHUTDOWN_MESSAGE = "The server is restarting. Please reconnect in a moment."

# Server events that start or end what a recycle waits out: (what, busy after it).
_BUSY_AFTER = {
    "response.created": ("reply", True),
    "response.done": ("reply", False),
    "input_audio_buffer.speech_started": ("speech", True),
    "input_audio_buffer.speech_stopped": ("speech", False),
}
# How often a due recycle looks for a quiet moment, and how long a fresh session may take to
# take in the configuration and transcript (on top of REALTIME_CONNECT_TIMEOUT).
RECYCLE_POLL_SECONDS = 0.2
RECYCLE_REPLAY_SECONDS = 10
# A move that failed is tried again after this long (the old session goes on meanwhile).
RECYCLE_RETRY_SECONDS = 15


class ClientSocket(Protocol):
    """The client's end of a conversation, as the transport carrying it offers it."""

    # The transport's synchronous text path, when it has one (transport.server.TextShortcut).
    shortcut: TextShortcut | None

    async def send_text(self, text: str) -> None:
        """Send a text frame; raises OSError or RuntimeError once the client is gone."""

    async def send_frame(self, text: str) -> None:
        """Send a relayed frame by the transport's cheapest path (the relay's hot path)."""

    async def close(self, code: int) -> None: ...


def requested_model(query: dict[str, list[str]]) -> str:
    """The model a connection's query string asks for (`?model=`), else the server's default."""
    return (query.get("model") or [settings.REALTIME_MODEL])[0][:64]


async def _cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel `task` and wait until it has stopped (not when it is the caller itself).

    asyncio.wait, not `await task` in suppress(CancelledError): that also swallowed a
    cancellation of the caller, which then ran on "cancelling" and was waited for forever.
    """
    if task is None or task is asyncio.current_task():
        return
    task.cancel()
    await asyncio.wait([task])


class GatewayConversation:
    stored: Conversation | None = None  # the row, once the conversation has been admitted
    conversation_id: int | None = None
    upstream: Upstream | None = None
    # The transport's synchronous text path, when it offers one (see _take_shortcut).
    client_text: TextShortcut | None = None
    relay_task: asyncio.Task | None = None
    budget_task: asyncio.Task | None = None
    end_requests: EndRequests | None = None  # where staff "End" reaches this conversation
    end_reason: EndReason | None = None
    recycle_task: asyncio.Task | None = None  # moves it to a fresh upstream session when due
    recycles = 0
    recordings: ConversationRecorder | None = None  # the audio, when recording is on
    _finished: asyncio.Future | None = None

    def __init__(
        self,
        client: ClientSocket,
        identity: Identity,
        *,
        client_ip: str,
        user_agent: str,
        query_string: str,
        upstream: Callable[[str], Upstream] | None = None,
    ) -> None:
        self.client = client
        self.identity = identity
        self.client_ip = client_ip
        self.user_agent = user_agent
        self.query_string = query_string
        # A transport whose session lives outside the gateway (a WebRTC call made at OpenAI,
        # voicechat/calls/) gives its own: upstream(model) makes it, unconnected. Such a session
        # is bound to its client, so it is never recycled; the backend's own otherwise.
        self._given_upstream = upstream

    async def open(self) -> None:
        """Start the conversation on an accepted socket: admit it, store it, open its upstream."""
        identity = self.identity
        self.user = identity.user
        logformat.bind(user_id=self.user.pk)
        if not await ratelimit.allow(
            f"user:{self.user.pk}", limit=settings.REALTIME_CONNECTS_PER_MINUTE_PER_USER
        ):
            audit.warning("socket closed: %s opened too many conversations", self.user)
            await self.end(
                EndReason.RATE_LIMITED,
                "Too many new conversations in the last minute. Wait a moment and try again.",
                code="rate_limited",
            )
            return
        query = parse_qs(self.query_string)
        self.model = requested_model(query)
        # The page's time zone, so "what time is it?" is answered in the user's own time.
        self.time_zone = time_zone_or_none((query.get("tz") or [""])[0])
        self.policy = ClientEventPolicy(
            identity.scope,
            model=self.model,
            server_tools=server_tools.declarations(
                offline_engine=resolve_backend() == Backend.LOCAL
            ),
        )
        # Client frames that arrive while the upstream is still opening, replayed in order.
        self.pending: collections.deque[str] = collections.deque()
        self.upstream_ready = False
        self.end_detail = ""
        self.last_error_code = ""
        self.budget_wake = asyncio.Event()
        # What a recycle waits out: a reply being made, the user speaking (_BUSY_AFTER).
        self.busy = {"reply": False, "speech": False}
        if lifecycle.draining():
            await self._refuse(SHUTDOWN_MESSAGE, "server_shutdown", CloseCode.SERVER_SHUTDOWN)
            return
        # A past conversation of the user's to continue: its transcript goes first (resume.py).
        resumed, resume_id = None, (query.get("resume") or [""])[0]
        if resume_id:
            resumed = await database_sync_to_async(resumable)(self.user, resume_id)
            if resumed is None:
                await self._refuse(
                    "That conversation cannot be continued: it is not one of yours.",
                    "resume_not_allowed",
                    CloseCode.RESUME_NOT_ALLOWED,
                )
                return
        self.end_requests = end_requests()
        try:
            self.stored = await database_sync_to_async(services.conversation_start)(
                user=self.user,
                backend=resolve_backend(),
                model=self.model,
                voice=settings.REALTIME_VOICE,
                # Where staff on any process reach this socket (monitor, "end conversation").
                process=lifecycle.process_id(),
                channel_name=await self.end_requests.channel_name() if self.end_requests else "",
                max_open=settings.REALTIME_MAX_CONCURRENT_PER_USER,
                auth_method=identity.method,
                client_ip=self.client_ip if self.client_ip != "unknown" else None,
                user_agent=self.user_agent,
                resumed_from=resumed,
            )
        except services.TooManyConversations as exc:
            audit.warning("socket closed: %s holds too many conversations", self.user)
            await self._refuse(str(exc), TOO_MANY_CODE, CloseCode.TOO_MANY_CONVERSATIONS)
            return
        self.conversation_id = self.stored.pk
        logformat.bind(conversation_id=self.conversation_id)
        self.meter = metrics.ConversationMeter(self.stored.backend)
        self.meter.started()
        audit.info(
            "conversation %s opened by %s (%s) from %s",
            self.stored.pk,
            self.user,
            identity.method,
            self.client_ip,
        )
        # The local engine's token counts are estimates of work done for free: never billed.
        price_model = self.model if self.stored.backend == Backend.OPENAI else ""
        self.recorder = TranscriptRecorder(conversation_id=self.stored.pk, price_model=price_model)
        self.recorder.start()
        if await database_sync_to_async(recording_enabled)(self.user):
            self.recordings = ConversationRecorder(conversation_id=self.stored.pk)
            self.recordings.start()
        # Ids of the items this conversation replays to a model (a resumed conversation's lines
        # now, its own after a recycle): stored already, so not again.
        self.replay_prefix = self.recorder.replayed_prefix = context_item_prefix()
        self.context: list[str] = []  # the resumed conversation's lines, sent before anything
        if resumed is not None:
            self.context = await database_sync_to_async(context_frames)(
                resumed, id_prefix=self.replay_prefix
            )
        self.monitor = ConversationPublisher(self.stored)
        self.monitor.start()
        self.tool_calls = ServerToolCalls(
            ToolContext(self.user, self.stored.pk, self.time_zone),
            send=lambda frame: self.upstream.send(frame),  # whichever session is current
        )
        if self.end_requests is not None:
            self.end_requests.register(self.stored.pk, self._end_by_staff)
        access_watch().watch(self, identity.access, self._end_for_revoked_access)
        self.duration_limit = DurationLimit(self._end_for_duration)
        self.duration_limit.start()
        lifecycle.register(self)
        self.relay_task = asyncio.create_task(self._relay_upstream())

    async def receive(self, text: str | None, data: bytes | None = None) -> None:
        """One client frame: a JSON text event (or a binary frame, which is refused)."""
        if self.end_reason is not None or self.stored is None:
            return
        if text is None:
            await self.client.send_text(
                error_event(
                    "Binary frames are not supported: send JSON text events.", code="binary_frame"
                )
            )
            return
        verdict = self.policy.check(text)
        if verdict.error is not None:
            metrics.refused(verdict.error)
            await self.client.send_text(verdict.error)
            if verdict.abusive:
                await self.end(
                    EndReason.ABUSE,
                    "Too many invalid events in the last minute; the connection was closed.",
                    code="too_many_invalid_events",
                )
        elif self.upstream_ready:
            self.meter.to_upstream(verdict.frame)
            if self.recordings is not None:
                self.recordings.client_frame(verdict.frame)
            with contextlib.suppress(UpstreamClosed):  # the relay task reports the close
                await self.upstream.send(verdict.frame)
        elif len(self.pending) < settings.REALTIME_PENDING_FRAMES:
            self.meter.to_upstream(verdict.frame)
            if self.recordings is not None:
                self.recordings.client_frame(verdict.frame)
            self.pending.append(verdict.frame)
        else:
            await self.client.send_text(
                error_event(
                    "The AI service is still connecting and too many events are waiting; "
                    "this one was dropped.",
                    code="upstream_not_ready",
                    type="server_error",
                )
            )

    async def finish(self) -> None:
        """Close the upstream, store the transcript and the end reason; runs once, completely."""
        if self.stored is None:
            return  # refused before it began: nothing was opened or stored
        if self._finished is None:
            self._finished = asyncio.ensure_future(self._close_everything())
        # Shielded: a server that cancels the consumer (daphne at shutdown) must not cut the
        # transcript flush short.
        await asyncio.shield(self._finished)

    async def _close_everything(self) -> None:
        # Closed by the server while it shuts down (not our own graceful path): say so.
        reason = self.end_reason or (
            EndReason.SERVER_SHUTDOWN if lifecycle.draining() else EndReason.CLIENT_CLOSED
        )
        # Each step runs whatever the one before it raised: cleanup that stopped at the first
        # surprise (uvicorn's RuntimeError for a send after the close) left the upstream open,
        # the transcript unflushed and the end unstored (issue 13).
        with self._cleanup_step("cancel the length limit"):
            self.duration_limit.cancel()
        with self._cleanup_step("stop watching its access"):
            access_watch().forget(self)
        with self._cleanup_step("stop the relay"):
            await _cancel_and_wait(self.recycle_task)
            await _cancel_and_wait(self.relay_task)
        with self._cleanup_step("stop the budget guard"):
            await _cancel_and_wait(self.budget_task)
        with self._cleanup_step("stop the server tools"):
            await self.tool_calls.close()
        with self._cleanup_step("close the upstream"):
            if self.upstream is not None:
                await self.upstream.close()
        with self._cleanup_step("store the transcript"):
            await self.recorder.close()
        with self._cleanup_step("store the recordings"):
            if self.recordings is not None:
                await self.recordings.close()
        with self._cleanup_step("store the end"):
            await database_sync_to_async(services.conversation_end)(
                conversation_id=self.stored.pk,
                reason=reason,
                detail=self.recorder.end_detail(self.end_detail),
            )
            audit.info("conversation %s ended: %s", self.stored.pk, reason)
        with self._cleanup_step("tell the monitor"):
            if self.end_requests is not None:
                await self.end_requests.unregister(self.stored.pk)
            await self.monitor.close(reason=reason)
        with self._cleanup_step("count the end"):
            self.meter.ended(reason)
        lifecycle.unregister(self)

    @contextlib.contextmanager
    def _cleanup_step(self, what: str):
        """One step of ending the conversation: a failure is logged, and the next step runs."""
        try:
            yield
        except Exception:
            logger.exception("could not %s (conversation %s)", what, self.conversation_id)

    # --- ends decided outside the relay: staff, shutdown, length limit -------------------

    async def _end_by_staff(self, by: str) -> None:
        """A staff member's "End", from the monitor on any process (monitor.EndRequests)."""
        await self.end(
            EndReason.ENDED_BY_STAFF,
            "A staff member ended this conversation.",
            code="ended_by_staff",
            detail=f"ended by {by}",
        )

    async def end_for_shutdown(self) -> None:
        """Called by lifecycle on SIGTERM: tell the client, then store everything before exit."""
        await self.end(EndReason.SERVER_SHUTDOWN, SHUTDOWN_MESSAGE, code="server_shutdown")
        await self.finish()

    async def _end_for_revoked_access(self, message: str) -> None:
        audit.warning("conversation %s ended: %s", self.conversation_id, message)
        await self.end(EndReason.ACCESS_REVOKED, message, code="access_revoked")

    async def _end_for_duration(self) -> None:
        limit = self.duration_limit
        await self.end(limit.reason, limit.message, code=limit.code)

    async def _refuse(self, message: str, code: str, close_code: int) -> None:
        """Explain why no conversation was started, then close (nothing was opened)."""
        await self.client.send_text(error_event(message, code=code, type="server_error"))
        await self.client.close(int(close_code))

    async def _relay_upstream(self) -> None:
        """Admit the conversation, open the upstream, replay what the client sent meanwhile,
        then relay until the upstream ends."""
        try:
            await self._admit()
            if self._given_upstream is not None:
                self.upstream = self._given_upstream(self.model)
            else:
                self.upstream = open_upstream(self.model, time_zone=self.time_zone)
            with self.meter.connecting():
                await self.upstream.connect()
            await self.upstream.send(
                session_defaults(self.policy.scope, backend=self.upstream.backend)
            )
            for frame in self.context:
                await self.upstream.send(frame)
            while self.pending:
                await self.upstream.send(self.pending.popleft())
            self.upstream_ready = True
            self._take_shortcut()
            if settings.REALTIME_RECYCLE_AFTER_SECONDS and self._given_upstream is None:
                self.recycle_task = asyncio.create_task(self._recycle_when_due())
            while True:
                upstream = self.upstream
                async for frame in upstream:
                    try:
                        await self.client.send_frame(self._observe(frame))
                    except OSError:
                        # The client has gone (ASGI servers raise an OSError for that): its
                        # disconnect ends the conversation as client_closed, not as our error.
                        return
                if self.upstream is upstream:
                    break  # the session ended; a recycled one goes on with its successor
        except EndConversation as end:
            await self.end(end.reason, end.message, code=end.code)
            return
        except UpstreamClosed:
            pass  # closed while we were sending: reported below like any upstream close
        except Exception:
            logger.exception("gateway relay failed (conversation %s)", self.stored.pk)
            await self.end(
                EndReason.SERVER_ERROR, "The gateway hit an internal error.", code="server_error"
            )
            return
        await self._end_for_upstream_close()

    def _observe(self, frame: str) -> str:
        """Note what a server frame means for this conversation; returns the frame to relay."""
        etype = peek_type(frame)
        # Before anything reads it: what is relayed, stored and monitored never holds the key.
        frame = redact_server_frame(etype, frame)
        if etype == "error":
            self._note_fatal_error(frame)
        elif etype == "response.done":
            self.budget_wake.set()
        if etype in server_tools.EVENTS:
            self.tool_calls.observe(etype, frame)
        busy = _BUSY_AFTER.get(etype)
        if busy is not None:  # a reply or the user's speech began or ended
            self.busy[busy[0]] = busy[1]
            if etype == "response.created":  # the reply asked for has begun
                self.policy.reply_requested = False
        self.recorder.observe(etype, frame)
        if self.recordings is not None:
            self.recordings.server_event(etype, frame)
        self.monitor.observe(etype, frame)
        latency = self.meter.to_client(etype, frame)
        if latency is not None:  # the first reply audio of a turn
            self.recorder.reply_latency(frame, latency)
        return frame

    # --- the shortcut: the common case relayed without a task switch ----------------------

    def _take_shortcut(self) -> None:
        """Relay frames synchronously as they are read, where both sockets allow it.

        receive() and the relay loop above each wake a task per frame; under the gateway's own
        server protocol (voicechat/transport/server.py) a frame that needs nothing but the
        policy check and a write skips that. Anything else (a refusal, a full socket, the end)
        still goes the general way, in order: the handlers below decline it.
        """
        self.client_text = self.client.shortcut
        if self.client_text is None:
            return  # daphne, runserver, a test communicator: the general path only
        self.client_text.on_text(self._relay_client_frame_now)
        self.upstream.on_text(self._relay_server_frame_now)

    def _relay_client_frame_now(self, text: str) -> bool:
        if (
            self.end_reason is not None
            or not self.upstream_ready  # moving to a fresh upstream session: frames wait
            or not self.upstream.can_send_now()
        ):
            return False
        frame = self.policy.admit(text)
        if frame is None:
            return False  # refused: receive() tells the client why and counts it
        self.upstream.send_now(frame)
        self.meter.to_upstream(frame)
        if self.recordings is not None:
            self.recordings.client_frame(frame)
        return True

    def _relay_server_frame_now(self, frame: str) -> bool:
        if self.end_reason is not None or not self.client_text.can_send():
            return False
        self.client_text.send(self._observe(frame))
        return True

    # --- recycling: the conversation outlives its upstream session -------------------------

    async def _recycle_when_due(self) -> None:
        """Move to a fresh upstream session REALTIME_RECYCLE_AFTER_SECONDS into this one, at a
        quiet moment (no reply being made, the user not speaking), or after the grace period
        regardless: the provider would otherwise end the conversation at its limit."""
        wait = settings.REALTIME_RECYCLE_AFTER_SECONDS
        while True:
            await asyncio.sleep(wait)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + settings.REALTIME_RECYCLE_GRACE_SECONDS
            while not self._quiet() and loop.time() < deadline:
                await asyncio.sleep(RECYCLE_POLL_SECONDS)
            moved = await self._recycle(forced=not self._quiet())
            # A failed move is tried again soon: the current session will not last.
            wait = settings.REALTIME_RECYCLE_AFTER_SECONDS if moved else RECYCLE_RETRY_SECONDS

    def _quiet(self) -> bool:
        """No reply asked for or under way, the user not speaking: a move goes unnoticed."""
        return not (self.policy.reply_requested or any(self.busy.values()))

    async def _recycle(self, *, forced: bool) -> bool:
        """Open a fresh upstream session with this one's configuration and transcript, then
        relay through it; the client's socket stays open and sees none of it. The old session
        relays on while the new one is prepared: client frames wait only for the switch itself.
        True once moved; False if the new session could not be prepared, or (unless `forced`)
        the moment stopped being quiet meanwhile: the conversation goes on with the old one."""
        old = self.upstream
        new = None
        try:
            new = open_upstream(self.model, time_zone=self.time_zone)
            async with asyncio.timeout(settings.REALTIME_CONNECT_TIMEOUT + RECYCLE_REPLAY_SECONDS):
                configured = await self._prepare_successor(new)
        except (EndConversation, UpstreamClosed, OSError, TimeoutError):
            logger.warning(
                "could not move conversation %s to a fresh upstream session; it goes on with "
                "the current one",
                self.conversation_id,
                exc_info=True,
            )
            if new is not None:
                await new.close()
            return False
        except asyncio.CancelledError:  # the conversation ended meanwhile
            if new is not None:
                await new.close()
            raise
        if not (forced or self._quiet()):
            await new.close()  # the user spoke up or a reply began: the transcript moved on
            return False
        self.upstream_ready = False  # the switch: client frames wait in `pending`
        for frame in self.policy.session_updates:  # any the client sent while it was prepared
            if not any(frame is sent for sent in configured):
                await new.send(frame)
        self.upstream = new
        self.busy = dict.fromkeys(self.busy, False)  # nothing is under way in a fresh session
        old.on_text(None)
        await self._resume_relay()
        await old.close()  # ends the relay loop's pass over it: it goes on with `new`
        self.recycles += 1
        audit.info("conversation %s moved to a fresh upstream session", self.conversation_id)
        await database_sync_to_async(services.conversation_recycled)(
            conversation_id=self.conversation_id
        )
        return True

    async def _prepare_successor(self, new: Upstream) -> list[str]:
        """Connect `new` and give it this session's configuration and transcript, swallowing
        its answers: the client already has a session, and these items are not news to it.
        Returns the client's session.updates it was given."""
        await new.connect()
        await new.send(session_defaults(self.policy.scope, backend=new.backend))
        configured = list(self.policy.session_updates)
        for frame in configured:
            await new.send(frame)
        await self.recorder.flushed(timeout=RECYCLE_REPLAY_SECONDS / 2)
        context = await database_sync_to_async(context_frames)(
            self.stored, id_prefix=f"{self.replay_prefix}r{self.recycles}_"
        )
        for frame in context:
            await new.send(frame)
        # Events are answered in order: once this one is, everything before it has been.
        await new.send(orjson.dumps({"type": "input_audio_buffer.clear"}).decode())
        frames = aiter(new)
        while peek_type(await anext(frames)) != "input_audio_buffer.cleared":
            pass
        return configured

    async def _resume_relay(self) -> None:
        """Send what the client sent meanwhile, then relay its frames as they come again."""
        while self.pending:
            await self.upstream.send(self.pending.popleft())
        self.upstream_ready = True
        self._take_shortcut()

    async def _admit(self) -> None:
        """Raise EndConversation unless this conversation may start; then guard its budget."""
        # The scope's models are among the site's (REALTIME_ALLOWED_MODELS).
        models = self.policy.scope.realtime_models
        if self.model not in models:
            raise EndConversation(
                EndReason.MODEL_NOT_ALLOWED,
                f"Model {self.model!r} is not available here; choose one of: "
                + ", ".join(sorted(models)),
                code="model_not_allowed",
            )
        if self.stored.backend == Backend.OPENAI and services.unpriced_models([self.model]):
            # Only when the start-up checks were skipped (voicechat.E201): never billed as free.
            raise EndConversation(
                EndReason.MODEL_NOT_ALLOWED,
                f"Model {self.model!r} has no price configured here, so it cannot be used.",
                code="model_not_allowed",
            )
        problem = await budget_problem(self.user, exclude_conversation=self.stored.pk)
        if problem:
            raise EndConversation(EndReason.BUDGET_EXCEEDED, problem, code="budget_exceeded")
        self.budget_task = asyncio.create_task(self._guard_budget())

    async def _guard_budget(self) -> None:
        problem = await watch_budget(
            self.user,
            conversation_id=self.stored.pk,
            live_cost=lambda: self.recorder.cost_usd,
            wake=self.budget_wake,
        )
        await self.end(EndReason.BUDGET_EXCEEDED, problem, code="budget_exceeded")

    def _note_fatal_error(self, frame: str) -> None:
        """Remember a fatal error's code, to say why the provider then ends the session."""
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
            code = orjson.loads(frame)["error"].get("code")
            if code in FATAL_ERROR_CODES:
                self.last_error_code = code

    async def _end_for_upstream_close(self) -> None:
        code = getattr(self.upstream, "close_code", None)
        reason = redact(getattr(self.upstream, "close_reason", "") or "")
        detail = f"upstream closed ({code} {reason})".strip()
        if "maximum duration" in reason.lower():
            await self.end(
                EndReason.TIME_LIMIT,
                "The session reached the AI service's time limit. Start a new conversation.",
                code="session_time_limit",
                detail=detail,
            )
        elif self.last_error_code:
            await self.end(
                EndReason.UPSTREAM_ERROR,
                f"The AI service ended the session ({self.last_error_code}).",
                code=self.last_error_code,
                detail=detail,
            )
        else:
            await self.end(
                EndReason.UPSTREAM_CLOSED,
                "The AI service closed the connection unexpectedly.",
                code="upstream_closed",
                detail=detail,
            )

    async def end(self, reason: EndReason, message: str, *, code: str, detail: str = "") -> None:
        """Stop relaying, tell the client why in an `error` event, then close with the reason's
        close code. The first end decides; the rest of the ending is finish()'s."""
        if self.end_reason is not None:
            return
        self.end_reason, self.end_detail = reason, detail or message
        # Stop relaying first, so nothing is sent to the client after the close.
        await _cancel_and_wait(self.relay_task)
        # The client may have gone in the meantime (uvicorn then raises ClientDisconnected, an
        # OSError; or RuntimeError, for a send after a close or before the accept): the reason
        # is recorded all the same, and there is no one left to tell.
        with contextlib.suppress(OSError, RuntimeError):
            await self.client.send_text(error_event(message, code=code, type="server_error"))
            # A plain int: daphne hands the code to autobahn, which refuses anything whose type
            # is not exactly int (an IntEnum included), and the socket then never closes.
            await self.client.close(int(CLOSE_CODE_FOR[reason]))
