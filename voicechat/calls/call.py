"""One WebRTC call the server terminates itself: a peer connection adapted to a conversation.

The GatewayConversation does everything a conversation does (admission, policy, recording,
monitor, limits, end reasons); this module only carries its frames. Towards the conversation it
is a ClientSocket: client events from the `oai-events` data channel and the microphone track (as
input_audio_buffer.append, PCM16 24 kHz) go in through receive(); server events come out through
send_frame(), where the reply audio is taken off to play on the outgoing track and the rest goes
on the data channel. Like OpenAI over WebRTC, the server then tracks playback: it reports
output_audio_buffer.started / stopped / cleared, and on barge-in truncates the assistant's item to
what was actually played, without the client's help.
"""

import asyncio
import base64
import contextlib
import contextvars
import logging
import secrets

import orjson
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from django.conf import settings

from voicechat.calls.media import ReplyTrack, microphone_chunks
from voicechat.enums import EndReason
from voicechat.gateway.conversation import GatewayConversation
from voicechat.protocol import CloseCode, error_event, new_event_id, peek_type

logger = logging.getLogger(__name__)
audit = logging.getLogger("voicechat.audit")

DATA_CHANNEL = "oai-events"
# Events for the data channel before the client's channel is open (session.created and the
# gateway's first answers); a client that never opens one does not grow this without bound.
OUTBOX_LIMIT = 500
# A call refused before it was answered: the HTTP status for each close code the conversation
# gave (voicechat/protocol.py), as OpenAI answers these (429 for limits and quota).
HTTP_STATUS_FOR_CLOSE = {
    CloseCode.RATE_LIMITED: 429,
    CloseCode.TOO_MANY_CONVERSATIONS: 429,
    CloseCode.BUDGET_EXCEEDED: 429,
    CloseCode.SERVER_SHUTDOWN: 503,
    CloseCode.NOT_CONFIGURED: 503,
    CloseCode.RESUME_NOT_ALLOWED: 403,
    CloseCode.MODEL_NOT_ALLOWED: 400,
    CloseCode.ACCESS_REVOKED: 401,
    CloseCode.UPSTREAM_UNREACHABLE: 502,
    CloseCode.UPSTREAM_REFUSED: 502,
    CloseCode.UPSTREAM_CLOSED: 502,
    CloseCode.UPSTREAM_ERROR: 502,
}

# The calls this process holds, by id: hangup finds them here (a call lives on its process).
_calls: dict[str, object] = {}


def find(call_id: str):
    """The call of this process with that id (a Call, or an OpenAIWebRTCCall), or None."""
    return _calls.get(call_id)


def register(call) -> None:
    _calls[call.id] = call


def forget(call) -> None:
    _calls.pop(call.id, None)


class CallRefused(Exception):
    """The call was not started: an HTTP status and an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        type: str = "invalid_request_error",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = {"message": message, "type": type, "param": param, "code": code}


def rtc_configuration() -> RTCConfiguration:
    """STUN servers from REALTIME_WEBRTC_ICE_SERVERS; none by default (aiortc's default is a
    public STUN server, which an offline server cannot reach and a public one does not need)."""
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=url) for url in settings.REALTIME_WEBRTC_ICE_SERVERS]
    )


async def start(call: "Call", offer_sdp: str) -> str:
    """Answer `call` in a context of its own: the call outlives the request that made it.

    Everything it starts (its tasks, the peer connection's, the conversation's) would otherwise
    inherit the request's context, and with it Django's per-request thread for sync code, which
    is shut down when the response has gone: every later database write of the conversation
    then failed ("CurrentThreadExecutor already quit").
    """
    return await asyncio.create_task(call.answer(offer_sdp), context=contextvars.Context())


def _event(etype: str, **fields) -> str:
    return orjson.dumps({"type": etype, "event_id": new_event_id(), **fields}).decode()


def _drop_audio_formats(event: dict) -> bool:
    """Take the audio formats out of a session.update; True if there were any.

    Over WebRTC the tracks carry Opus, and the call speaks PCM16 24 kHz with the engine: a
    client's audio/pcmu there would have the engine read the microphone as G.711 and the track
    play G.711 as PCM. Over WebRTC the formats describe nothing the client sends or receives.
    """
    audio = (
        event.get("session", {}).get("audio") if isinstance(event.get("session"), dict) else None
    )
    dropped = False
    for direction in ("input", "output"):
        part = audio.get(direction) if isinstance(audio, dict) else None
        if isinstance(part, dict) and "format" in part:
            del part["format"]
            dropped = True
    return dropped


class _DataChannelSocket:
    """The call as the conversation's ClientSocket."""

    shortcut = None  # no synchronous path: frames go through the general relay

    def __init__(self, call: "Call") -> None:
        self._call = call

    async def send_text(self, text: str) -> None:
        self._call.to_client(text)

    async def send_frame(self, text: str) -> None:
        self._call.from_upstream(text)

    async def close(self, code: int) -> None:
        self._call.closed_by_gateway(code)


class Call:
    """A peer connection and the conversation it carries, from offer to hangup."""

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
        self.session = session
        self.pc: RTCPeerConnection | None = None  # made by answer(), in the call's own context
        self.track = ReplyTrack(self._audio_started, self._audio_stopped)
        self.conversation = GatewayConversation(
            _DataChannelSocket(self),
            identity,
            client_ip=client_ip,
            user_agent=user_agent,
            query_string=query_string,
        )
        self.channel = None
        self._outbox: list[str] = []
        # Client frames for the conversation, in the order they came (data channel and
        # microphone), taken by one task so none overtakes another.
        self._inbox: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self._answered = False
        self._admitted = asyncio.Event()  # the upstream's first frame came, or the gateway closed
        self._refusal: tuple[str, int] | None = None  # (error event, close code) before the answer
        self._last_error = error_event("The call could not be started.", code="call_refused")
        self._connected = asyncio.Event()
        self._ended = asyncio.Event()
        self._client_gone = False  # nothing more can reach the client: frames are dropped
        self._listening = False  # microphone audio flows once the session exists
        self._interrupt = True  # the session's turn_detection.interrupt_response
        self._cut: set[str] = set()  # responses whose audio was cleared: later audio is dropped
        self._own_events: set[str] = set()  # event ids of what the call itself sent upstream
        self._closed: asyncio.Future | None = None
        self._supervisor: asyncio.Task | None = None
        self._ending: asyncio.Task | None = None

    # --- the offer and the answer ----------------------------------------------------------

    async def answer(self, offer_sdp: str) -> str:
        """Start the call and return the SDP answer; raises CallRefused, nothing left running."""
        self.pc = RTCPeerConnection(rtc_configuration())
        try:
            await self._accept_offer(offer_sdp)
            answer = await self.pc.createAnswer()
        except CallRefused:
            await self.pc.close()
            raise
        except Exception as exc:  # aiortc's parser raises whatever a malformed line makes
            logger.info("call refused: unusable SDP offer (%r)", exc)
            await self.pc.close()
            raise CallRefused(
                400, "The SDP offer could not be parsed.", code="invalid_offer"
            ) from None
        try:
            await self.conversation.open()
            if self.conversation.stored is not None:
                await self._wait_admitted()
            if self._refusal is not None:
                raise self._refused()
            await self.pc.setLocalDescription(answer)  # gathers the server's candidates
        except CallRefused:
            await self._close()
            raise
        except BaseException:
            logger.exception("call %s could not be answered", self.id)
            await self.conversation.end(
                EndReason.SERVER_ERROR, "The gateway hit an internal error.", code="server_error"
            )
            await self._close()
            raise
        self._answered = True
        _calls[self.id] = self
        for frame in self._session_update():
            self._inbox.put_nowait(frame)
        self._spawn(self._relay_client_frames())
        self._supervisor = asyncio.create_task(self._supervise())
        audit.info("call %s answered (conversation %s)", self.id, self.conversation.conversation_id)
        return self.pc.localDescription.sdp

    async def _accept_offer(self, offer_sdp: str) -> None:
        pc = self.pc

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            if channel.label != DATA_CHANNEL or self.channel is not None:
                return
            self.channel = channel
            channel.on("open", self._flush_outbox)
            channel.on("message", self._on_message)
            channel.on("close", lambda: self._lost("the client closed the data channel"))
            if channel.readyState == "open":
                self._flush_outbox()

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio":
                self._spawn(self._feed_microphone(track))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                self._connected.set()
            elif state == "failed":
                self._lost("the connection failed (ICE found no route to the peer)")
            elif state == "closed":
                # aiortc closes on a DTLS goodbye and on lost ICE consent (RFC 7675: the peer
                # stopped answering for 30 s) alike; the ICE transport tells them apart.
                ice = {t.receiver.transport.transport.state for t in pc.getTransceivers()}
                if "failed" in ice:
                    self._lost("the connection failed (the peer stopped answering: ICE consent)")
                else:
                    self._lost("the peer closed the connection")

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise CallRefused(400, "The SDP offer has no audio section.", code="invalid_offer")
        pc.addTrack(self.track)  # the offer's audio section: the reply plays on it

    async def _wait_admitted(self) -> None:
        timeout = settings.REALTIME_CONNECT_TIMEOUT + 5
        try:
            async with asyncio.timeout(timeout):
                await self._admitted.wait()
        except TimeoutError:
            await self.conversation.end(
                EndReason.UPSTREAM_UNREACHABLE,
                "The AI service did not answer in time.",
                code="upstream_unreachable",
            )

    def _refused(self) -> CallRefused:
        text, code = self._refusal
        error = orjson.loads(text).get("error") or {}
        refusal = CallRefused(
            HTTP_STATUS_FOR_CLOSE.get(code, 500),
            error.get("message") or "The call could not be started.",
            code=error.get("code") or "call_refused",
            type=error.get("type") or "server_error",
        )
        return refusal

    def _session_update(self) -> list[str]:
        """The offer's session configuration, as the client's first session.update (through
        the policy like any other)."""
        if not self.session:
            return []
        session = {k: v for k, v in self.session.items() if k != "model"}
        session.setdefault("type", "realtime")
        event = {"type": "session.update", "session": orjson.loads(orjson.dumps(session))}
        _drop_audio_formats(event)
        return [orjson.dumps(event).decode()]

    # --- the conversation's side (ClientSocket) ---------------------------------------------

    def from_upstream(self, frame: str) -> None:
        """A server frame the conversation relays: audio to the track, the rest to the client."""
        self._admitted.set()
        etype = peek_type(frame)
        if etype == "response.output_audio.delta":
            event = orjson.loads(frame)
            if event["response_id"] not in self._cut:
                self.track.write(
                    event["response_id"], event["item_id"], base64.b64decode(event["delta"])
                )
            return  # over WebRTC the audio travels on the media track only
        if etype in ("session.created", "session.updated"):
            self._note_session(frame)
        elif etype == "input_audio_buffer.speech_started" and self._interrupt:
            self.to_client(frame)
            self._clear_playback()
            return
        elif etype == "response.done":
            self.track.response_done(orjson.loads(frame)["response"]["id"])
        elif etype == "error" and self._own_events:
            caused_by = (orjson.loads(frame).get("error") or {}).get("event_id")
            if caused_by in self._own_events:
                self._own_events.discard(caused_by)
                logger.info("call %s: the engine refused a truncation: %s", self.id, frame)
                return
        self.to_client(frame)

    def to_client(self, text: str) -> None:
        if not self._answered:
            if peek_type(text) == "error":
                self._last_error = text  # says why, should the gateway close before the answer
            self._outbox.append(text)
            return
        if self._client_gone:
            return
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif len(self._outbox) < OUTBOX_LIMIT:
            self._outbox.append(text)

    def closed_by_gateway(self, code: int) -> None:
        if not self._answered:
            self._refusal = (self._last_error, code)
            self._admitted.set()
        self._ended.set()

    # --- the client's side -----------------------------------------------------------------

    def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, []
        for text in outbox:
            self.to_client(text)

    def _on_message(self, message) -> None:
        if not isinstance(message, str):
            self.to_client(
                error_event(
                    "Binary messages are not supported: send JSON text events.", code="binary_frame"
                )
            )
            return
        event = None
        with contextlib.suppress(orjson.JSONDecodeError):
            event = orjson.loads(message)
        etype = event.get("type") if isinstance(event, dict) else None
        if etype == "output_audio_buffer.clear":  # WebRTC's own: playback is the call's
            self._clear_playback()
        elif etype == "input_audio_buffer.append":
            event_id = event.get("event_id")
            self.to_client(
                error_event(
                    "Over WebRTC the microphone track carries the audio; "
                    "input_audio_buffer.append is not accepted.",
                    code="invalid_event_for_transport",
                    event_id=event_id
                    if isinstance(event_id, str) and len(event_id) <= 64
                    else None,
                )
            )
        elif etype == "session.update" and _drop_audio_formats(event):
            self._inbox.put_nowait(orjson.dumps(event).decode())
        else:  # everything else is the conversation's, through its policy
            self._inbox.put_nowait(message)

    async def _feed_microphone(self, track) -> None:
        async for pcm in microphone_chunks(track):
            if self._listening and not self._client_gone:
                audio = base64.b64encode(pcm).decode()
                self._inbox.put_nowait(f'{{"type":"input_audio_buffer.append","audio":"{audio}"}}')

    async def _relay_client_frames(self) -> None:
        try:
            while True:
                await self.conversation.receive(await self._inbox.get())
        except Exception:
            logger.exception("call %s failed", self.id)
            await self.conversation.end(
                EndReason.SERVER_ERROR, "The gateway hit an internal error.", code="server_error"
            )

    # --- playback ----------------------------------------------------------------------------

    def _note_session(self, frame: str) -> None:
        self._listening = True
        with contextlib.suppress(KeyError, TypeError, AttributeError):
            turns = orjson.loads(frame)["session"]["audio"]["input"]["turn_detection"]
            self._interrupt = bool(turns and turns.get("interrupt_response", True))

    def _audio_started(self, response_id: str) -> None:
        self.to_client(_event("output_audio_buffer.started", response_id=response_id))

    def _audio_stopped(self, response_id: str) -> None:
        self.to_client(_event("output_audio_buffer.stopped", response_id=response_id))

    def _clear_playback(self) -> None:
        """Barge-in or output_audio_buffer.clear: stop playing now, and cut the item to what
        was heard (the engine then drops the unheard part of its transcript)."""
        cut = self.track.clear()
        if cut is None:
            return
        self._cut.add(cut.response_id)  # audio of it still on its way is not played either
        self.to_client(_event("output_audio_buffer.cleared", response_id=cut.response_id))
        if cut.item_id is None:
            return
        event_id = new_event_id()
        self._own_events.add(event_id)
        self._inbox.put_nowait(
            orjson.dumps(
                {
                    "type": "conversation.item.truncate",
                    "event_id": event_id,
                    "item_id": cut.item_id,
                    "content_index": 0,
                    "audio_end_ms": cut.played_ms,
                }
            ).decode()
        )

    # --- the end -------------------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lost(self, detail: str) -> None:
        if self._closed is None and not self._client_gone:
            self._client_gone = True
            # Not one of self._tasks, which closing cancels: the end must be stored whole.
            self._ending = asyncio.create_task(self._end(detail))

    async def _end(self, detail: str) -> None:
        await self.conversation.end(
            EndReason.CLIENT_CLOSED,
            "The call ended.",
            code="call_ended",
            detail=f"WebRTC: {detail}",
        )
        self._ended.set()

    async def _supervise(self) -> None:
        """End the call when its peer never connects; close everything once it has ended."""
        connect_timeout = settings.REALTIME_WEBRTC_CONNECT_TIMEOUT
        connected = asyncio.ensure_future(self._connected.wait())
        ended = asyncio.ensure_future(self._ended.wait())
        await asyncio.wait(
            [connected, ended], timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        connected.cancel()
        ended.cancel()
        if not (self._connected.is_set() or self._ended.is_set()):
            self._lost(f"the peer did not connect within {connect_timeout} s (ICE)")
        await self._ended.wait()
        await self._close()

    async def hang_up(self) -> None:
        """The client's POST .../hangup: end the conversation and wait until it is stored."""
        self._client_gone = True
        await self._end("hung up by the client")
        await self._close()

    async def _close(self) -> None:
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close_everything())
        await asyncio.shield(self._closed)

    async def _close_everything(self) -> None:
        _calls.pop(self.id, None)
        # The gateway's last words (why it ended) reach the client before the connection goes.
        channel = self.channel
        if not self._client_gone and channel is not None and channel.readyState == "open":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    while channel.bufferedAmount:
                        await asyncio.sleep(0.02)
        self._client_gone = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        try:
            await self.conversation.finish()
        finally:
            self.track.stop()
            await self.pc.close()
            audit.info("call %s closed", self.id)
