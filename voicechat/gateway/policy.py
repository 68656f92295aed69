"""Which client events reach the upstream, and the session every conversation starts with.

The server owns the session's instructions and tools (they decide what the deployer's money is
spent on); a client may tune how it talks and listens, and set more where its credential's scope
(scopes.py) allows. Anything else is answered with an `error` event and not forwarded; the
socket stays open.
"""

import collections
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson
from django.conf import settings

from voicechat.access.scopes import Scope
from voicechat.enums import Backend
from voicechat.gateway import server_tools
from voicechat.protocol import error_event, new_event_id

# GA client events a client may send (output_audio_buffer.clear is WebRTC-only and harmless).
CLIENT_EVENTS = frozenset(
    {
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "conversation.item.delete",
        "response.create",
        "response.cancel",
        "output_audio_buffer.clear",
    }
)


@dataclass(frozen=True)
class JsonType:
    """A leaf of an allow-list tree: the JSON types its field may hold (`a | b` allows either).

    The upstream judges the value; the gateway checks the type first, because it hashes,
    compares and re-encodes what it lets through (a list for a voice raised TypeError).
    """

    names: tuple[str, ...]
    accepts: Callable[[object], bool]

    def __or__(self, other: "JsonType") -> "JsonType":
        return JsonType(
            self.names + other.names, lambda value: self.accepts(value) or other.accepts(value)
        )

    def problem(self, path: str, value: object) -> tuple[str, str] | None:
        """(code, message) when `value` may not be sent at `path`; None when it may."""
        if value is None or self.accepts(value):
            return None
        return "invalid_type", _wrong_type(path, self.names, value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


STRING = JsonType(("a string",), lambda value: isinstance(value, str))
INTEGER = JsonType(
    ("an integer",), lambda value: _is_number(value) and not isinstance(value, float)
)
NUMBER = JsonType(("a number",), _is_number)
OBJECT = JsonType(("an object",), lambda value: isinstance(value, dict))
ARRAY = JsonType(("an array",), lambda value: isinstance(value, list))
BOOLEAN = JsonType(("a boolean",), lambda value: isinstance(value, bool))
STRINGS = JsonType(
    ("an array of strings",),
    lambda value: isinstance(value, list) and all(isinstance(entry, str) for entry in value),
)


@dataclass(frozen=True)
class Nullable:
    """An object whose fields are in the `fields` tree, or null (which switches it off)."""

    fields: dict


@dataclass(frozen=True)
class OneOf:
    """A leaf whose values the client's scope limits (a model name): others are not theirs."""

    values: frozenset[str]

    def problem(self, path: str, value: object) -> tuple[str, str] | None:
        if value is None or (isinstance(value, str) and value in self.values):
            return None
        if not self.values:
            return "field_not_allowed", f"This server does not let clients set {path}."
        allowed = ", ".join(sorted(self.values))
        return "field_not_allowed", f"This server lets clients set {path} only to: {allowed}."


@dataclass(frozen=True)
class AtMost:
    """An output-token limit the client's scope caps: an integer up to `limit` ("inf" or null
    would lift the cap)."""

    limit: int

    def problem(self, path: str, value: object) -> tuple[str, str] | None:
        wrong_type = (INTEGER | STRING).problem(path, value)
        if wrong_type:
            return wrong_type
        if isinstance(value, int) and value <= self.limit:
            return None
        return "field_not_allowed", f"This server lets clients set {path} to at most {self.limit}."


# The session.update fields a client may set, as a tree of objects down to typed leaves
# (the GA types of openai.types.realtime). Every leaf may also be null, as in those types.
_SESSION_FIELDS: dict = {
    "type": STRING,
    "output_modalities": STRINGS,
    "max_output_tokens": INTEGER | STRING,  # or "inf"
    "tool_choice": STRING | OBJECT,
    "truncation": STRING | OBJECT,  # "auto", "disabled" or {"type": "retention_ratio", ...}
    "reasoning": Nullable({"effort": STRING}),
    "parallel_tool_calls": BOOLEAN,
    "include": STRINGS,
    "audio": {
        "input": {
            "format": OBJECT,
            # server_vad or semantic_vad (null: push-to-talk); idle_timeout_ms is server_vad's.
            "turn_detection": Nullable(
                {
                    "type": STRING,
                    "threshold": NUMBER,
                    "prefix_padding_ms": INTEGER,
                    "silence_duration_ms": INTEGER,
                    "idle_timeout_ms": INTEGER,
                    "eagerness": STRING,
                    "create_response": BOOLEAN,
                    "interrupt_response": BOOLEAN,
                }
            ),
            "noise_reduction": OBJECT,
            # The model is added per client, from its scope.
            "transcription": {
                "language": STRING,
                "languages": STRINGS,
                "prompt": STRING,
                "keywords": STRINGS,
                "delay": STRING,
            },
        },
        # An object is a custom voice ({"id": ...}): refused below, like any unlisted voice.
        "output": {"format": OBJECT, "voice": STRING | OBJECT, "speed": NUMBER},
    },
}
# The fields of an inline response.create `response` a client may set.
_RESPONSE_FIELDS: dict = {
    "output_modalities": STRINGS,
    "max_output_tokens": INTEGER | STRING,
    "tool_choice": STRING | OBJECT,
    "metadata": OBJECT,
    "conversation": STRING,
    "input": ARRAY,
    "reasoning": Nullable({"effort": STRING}),
    "parallel_tool_calls": BOOLEAN,
    "audio": {"output": {"format": OBJECT, "voice": STRING | OBJECT}},
}
# A reference to a stored prompt template, in session.update and response.create.
_PROMPT = Nullable({"id": STRING, "variables": OBJECT, "version": STRING})
# How a refusal names the type a client sent, as OpenAI's own invalid_type errors word it.
_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


@dataclass(frozen=True)
class Verdict:
    """What to do with one client frame: forward `frame` upstream, or answer with `error`.

    `abusive` is set when the client has had too many events refused: the socket should close.
    """

    frame: str | None = None
    error: str | None = None
    abusive: bool = False


# Bytes of audio per millisecond for each input format (PCM16 at 24 kHz; G.711 at 8 kHz).
_AUDIO_BYTES_PER_MS = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}


class AudioPacer:
    """A token bucket in milliseconds of audio: real time times REALTIME_AUDIO_RATE, plus a burst.

    A client streams at real time; one that sends faster is either broken or trying to run up
    the deployer's bill, and an upstream would buffer the excess without bound.
    """

    def __init__(self) -> None:
        self.rate = settings.REALTIME_AUDIO_RATE
        self.burst_ms = float(settings.REALTIME_AUDIO_BURST_MS)
        self.available_ms = self.burst_ms
        self.bytes_per_ms = _AUDIO_BYTES_PER_MS["audio/pcm"]
        self._last = time.monotonic()

    def set_format(self, format_type: str) -> None:
        self.bytes_per_ms = _AUDIO_BYTES_PER_MS.get(format_type, self.bytes_per_ms)

    def take(self, base64_chars: int) -> bool:
        """Spend the audio in a base64 payload of this length; False when it comes too fast."""
        moment = time.monotonic()
        elapsed_ms = (moment - self._last) * 1000
        self._last = moment
        self.available_ms = min(self.burst_ms, self.available_ms + elapsed_ms * self.rate)
        audio_ms = base64_chars * 3 / 4 / self.bytes_per_ms
        if audio_ms > self.available_ms:
            return False
        self.available_ms -= audio_ms
        return True


def _refuse(message: str, *, code: str, event_id=None, param: str | None = None) -> Verdict:
    return Verdict(
        error=error_event(
            message,
            code=code,
            param=param,
            event_id=event_id if isinstance(event_id, str) else None,
        )
    )


# What an audio append from the browser page or the load generator starts with (compact JSON).
_APPEND_PREFIXES = ('{"type":"input_audio_buffer.append"', '{"type": "input_audio_buffer.append"')


def _unambiguous_append(text: str) -> bool:
    """True when every JSON parser reads this frame's `type` as input_audio_buffer.append.

    Parsers disagree on duplicate keys: some keep the first, some the last. The caller has
    already parsed the frame with orjson, which keeps the last `type`, and found an append; a
    frame that also starts with a literal append `type` reads the same under either rule, so it
    can be forwarded as received. This costs a prefix test instead of a scan of the audio.
    """
    return text.startswith(_APPEND_PREFIXES)


def _refuse_fields(event: dict, key: str, allowed: dict) -> Verdict | None:
    """A refusal unless event[key] is an object of fields in the `allowed` tree, each well typed."""
    value = event.get(key)
    if not isinstance(value, dict):
        return _refuse(
            f"{event['type']} needs '{key}' to be an object.",
            code="invalid_event",
            event_id=event.get("event_id"),
            param=key,
        )
    problem = _first_problem(value, allowed, key)
    if problem:
        code, path, message = problem
        return _refuse(message, code=code, event_id=event.get("event_id"), param=path)
    return None


def _first_problem(value: dict, allowed: dict, prefix: str) -> tuple[str, str, str] | None:
    """The first field of `value` outside the `allowed` tree or of the wrong type, as
    (code, dotted path, message); None when every field is allowed."""
    for key, sub in value.items():
        rule = allowed.get(key)
        path = f"{prefix}.{key[:64]}"  # the key is the client's: echoed, so bounded
        if rule is None:
            return "field_not_allowed", path, f"This server does not let clients set {path}."
        if isinstance(rule, Nullable):
            if sub is None:
                continue
            rule = rule.fields
        if isinstance(rule, dict):
            if not isinstance(sub, dict):
                return "invalid_type", path, _wrong_type(path, ("an object",), sub)
            found = _first_problem(sub, rule, path)
            if found:
                return found
        else:
            found = rule.problem(path, sub)
            if found:
                return found[0], path, found[1]
    return None


def _wrong_type(path: str, expected: tuple[str, ...], value: object) -> str:
    got = "null" if value is None else _TYPE_NAMES.get(type(value), "another type")
    return f"Invalid type for '{path}': expected {' or '.join(expected)}, but got {got} instead."


def _reencoded(event: dict) -> Verdict:
    """Forward `event` as we parsed and checked it, so the upstream parses exactly that.

    orjson reads JSON nested up to 1,024 levels deep but writes only 254: deeper events are
    refused here rather than raising in the relay.
    """
    try:
        return Verdict(frame=orjson.dumps(event).decode())
    except orjson.JSONEncodeError:
        return _refuse(
            "The event is nested too deeply.",
            code="invalid_event",
            event_id=event.get("event_id"),
        )


def _fields_in_scope(scope: Scope, *, model: str) -> tuple[dict, dict]:
    """The session.update and response.create allow-lists for a client with this scope, in a
    session of this model (chosen when connecting, with ?model=: it decides the price)."""
    session_fields = copy.deepcopy(_SESSION_FIELDS)
    response_fields = copy.deepcopy(_RESPONSE_FIELDS)
    session_fields["model"] = OneOf(frozenset({model}))
    session_fields["audio"]["input"]["transcription"]["model"] = OneOf(scope.transcription_models)
    both = {}
    if scope.instructions:
        both["instructions"] = STRING
    if scope.tools:
        both["tools"] = ARRAY
    if scope.prompt:
        both["prompt"] = _PROMPT
    if scope.max_output_tokens:
        both["max_output_tokens"] = AtMost(scope.max_output_tokens)
    if scope.tracing:
        session_fields["tracing"] = STRING | OBJECT
    return {**session_fields, **both}, {**response_fields, **both}


class ClientEventPolicy:
    """Decides, frame by frame, what one client may send to its upstream."""

    def __init__(self, scope: Scope, *, model: str, server_tools: list[dict] = ()) -> None:
        self.scope = scope
        # The server's own tools (server_tools.py): added to tools a client sets, names reserved.
        self.server_tools = list(server_tools)
        self._session_fields, self._response_fields = _fields_in_scope(scope, model=model)
        self._voices = frozenset(settings.REALTIME_VOICES)
        self._refusals: collections.deque[float] = collections.deque()
        self.pacer = AudioPacer()
        # The session.updates let through, in order: a fresh upstream session (a recycled
        # conversation, gateway.py) gets them again. The latest ones, if a client sends many.
        self.session_updates: collections.deque[str] = collections.deque(maxlen=32)
        # A response.create let through that no response.created has answered yet: a recycle
        # waits for it (the gateway clears it when the reply starts).
        self.reply_requested = False

    def admit(self, text: str) -> str | None:
        """The frame to forward if the event is allowed; None, with nothing noted, if not.

        The relay's shortcut: a refusal is then left to check(), which explains and counts it.
        """
        return self._check(text).frame

    def check(self, text: str) -> Verdict:
        verdict = self._check(text)
        if verdict.error is not None and self._count_refusal():
            return replace(verdict, abusive=True)
        return verdict

    def _count_refusal(self) -> bool:
        """Note one refused event; True when more than the allowed number fell in a minute."""
        moment = time.monotonic()
        self._refusals.append(moment)
        while self._refusals and self._refusals[0] < moment - 60:
            self._refusals.popleft()
        return len(self._refusals) > settings.REALTIME_MAX_REFUSED_PER_MINUTE

    def _check(self, text: str) -> Verdict:
        if len(text) > settings.REALTIME_MAX_FRAME_BYTES:
            return _refuse(
                f"The frame has {len(text)} characters; the limit is "
                f"{settings.REALTIME_MAX_FRAME_BYTES}. Send audio in chunks of 20-100 ms.",
                code="frame_too_large",
            )
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return _refuse(f"The frame is not valid JSON: {exc}", code="invalid_json")
        if not isinstance(event, dict):
            return _refuse("A client event must be a JSON object.", code="invalid_event")
        etype, event_id = event.get("type"), event.get("event_id")
        if not isinstance(etype, str):
            return _refuse(
                "The event has no string 'type'.",
                code="invalid_event",
                event_id=event_id,
                param="type",
            )
        if etype not in CLIENT_EVENTS:
            return _refuse(
                f"Unknown or unsupported client event type {etype[:64]!r}.",
                code="unknown_event_type",
                event_id=event_id,
                param="type",
            )
        if etype == "session.update":
            return self._check_session_update(event)
        if etype == "response.create":
            return self._check_response_create(event)
        if etype == "conversation.item.create":
            return self._check_item_create(event)
        if etype == "input_audio_buffer.append":
            audio = event.get("audio")
            if not isinstance(audio, str):
                return _refuse(
                    "input_audio_buffer.append needs base64 'audio'.",
                    code="invalid_event",
                    event_id=event_id,
                    param="audio",
                )
            refused = self._pace(event, len(audio), "audio")
            if refused:
                return refused
        if etype == "input_audio_buffer.append" and _unambiguous_append(text):
            # Audio appends are most of the traffic: forward them as received.
            return Verdict(frame=text)
        return _reencoded(event)

    def _check_session_update(self, event: dict) -> Verdict:
        refused = _refuse_fields(event, "session", self._session_fields)
        if refused:
            return refused
        session = event["session"]
        refused = self._refuse_voice(event, session, "session")
        if refused:
            return refused
        if isinstance(session.get("tools"), list) and self.server_tools:
            refused = self._add_server_tools(event, session)
            if refused:
                return refused
        input_format = ((session.get("audio") or {}).get("input") or {}).get("format")
        if isinstance(input_format, dict) and isinstance(input_format.get("type"), str):
            self.pacer.set_format(input_format["type"])
        verdict = _reencoded(event)
        if verdict.frame is not None:
            self.session_updates.append(verdict.frame)
        return verdict

    def _add_server_tools(self, event: dict, session: dict) -> Verdict | None:
        """Keep the server's tools in a client's tool list; refuse a client tool of that name."""
        reserved = {tool["name"] for tool in self.server_tools}
        for tool in session["tools"]:
            if isinstance(tool, dict) and tool.get("name") in reserved:
                return _refuse(
                    f"The tool name {tool['name']!r} belongs to a tool this server runs itself; "
                    "choose another name.",
                    code="invalid_value",
                    event_id=event.get("event_id"),
                    param="session.tools",
                )
        session["tools"] = [*session["tools"], *self.server_tools]
        return None

    def _check_response_create(self, event: dict) -> Verdict:
        if event.get("response") is not None:
            refused = _refuse_fields(event, "response", self._response_fields)
            if refused:
                return refused
            response = event["response"]
            refused = self._refuse_voice(event, response, "response")
            if refused:
                return refused
            # An out-of-band response's own input holds conversation items, as item.create does.
            items = response.get("input") or ()
            refused = self._refuse_items(
                event, [(f"response.input[{index}]", item) for index, item in enumerate(items)]
            )
            if refused:
                return refused
        verdict = _reencoded(event)
        if verdict.frame is not None:
            self.reply_requested = True
        return verdict

    def _check_item_create(self, event: dict) -> Verdict:
        item = event.get("item")
        if not isinstance(item, dict):
            return _refuse(
                "conversation.item.create needs an 'item' object.",
                code="invalid_event",
                event_id=event.get("event_id"),
                param="item",
            )
        return self._refuse_items(event, [("item", item)]) or _reencoded(event)

    def _refuse_voice(self, event: dict, fields: dict, path: str) -> Verdict | None:
        """A refusal when `fields` (a type-checked session or response) asks for an unlisted
        voice: each voice is priced and vetted by the deployer, a custom one never is."""
        voice = ((fields.get("audio") or {}).get("output") or {}).get("voice")
        if voice is None or (isinstance(voice, str) and voice in self._voices):
            return None
        named = f"Voice {voice[:32]!r}" if isinstance(voice, str) else "A custom voice"
        return _refuse(
            f"{named} is not available here; choose one of: " + ", ".join(sorted(self._voices)),
            code="voice_not_allowed",
            event_id=event.get("event_id"),
            param=f"{path}.audio.output.voice",
        )

    def _refuse_items(self, event: dict, items: list[tuple[str, object]]) -> Verdict | None:
        """A refusal when conversation items (each with its path) hold a system message this
        client may not add, or audio faster than real time: audio sent inside an item reaches
        the model as surely as an append does, so the pacer counts it the same way."""
        audio_chars, audio_path = 0, None
        for path, item in items:
            if not isinstance(item, dict):
                continue  # the upstream refuses it; it carries nothing we meter
            refused = self._refuse_system_message(event, item, path)
            if refused:
                return refused
            content = item.get("content")
            for index, part in enumerate(content if isinstance(content, list) else ()):
                if not isinstance(part, dict) or part.get("type") != "input_audio":
                    continue
                audio, part_path = part.get("audio"), f"{path}.content[{index}].audio"
                problem = STRING.problem(part_path, audio)
                if problem:
                    code, message = problem
                    return _refuse(
                        message, code=code, event_id=event.get("event_id"), param=part_path
                    )
                if audio:
                    audio_chars += len(audio)
                    audio_path = audio_path or part_path
        return self._pace(event, audio_chars, audio_path) if audio_chars else None

    def _pace(self, event: dict, audio_chars: int, param: str) -> Verdict | None:
        """A refusal when `audio_chars` of base64 audio come faster than the pacer allows."""
        if self.pacer.take(audio_chars):
            return None
        return _refuse(
            "Audio is arriving faster than real time; this chunk was dropped.",
            code="audio_rate_exceeded",
            event_id=event.get("event_id"),
            param=param,
        )

    def _refuse_system_message(self, event: dict, item: dict, path: str) -> Verdict | None:
        """A refusal when `item` is a system message, a second set of instructions, and this
        client may not set instructions."""
        if self.scope.instructions or item.get("role") != "system":
            return None
        return _refuse(
            "This server does not let clients add system messages.",
            code="field_not_allowed",
            event_id=event.get("event_id"),
            param=f"{path}.role",
        )


# OpenAI's own default turn detection, sent explicitly so every OpenAI session starts the same.
OPENAI_TURN_DETECTION = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}


def session_defaults(scope: Scope, *, backend: Backend) -> str:
    """The session.update the gateway sends as soon as an upstream opens, for a client with
    this scope (whose output-token cap, if any, the upstream then enforces from the start).

    The offline engine keeps its own turn detection (LOCAL_TURN_DETECTION: semantic_vad, which
    it can do well offline); OpenAI sessions get OpenAI's server_vad defaults.
    """
    limits = {"max_output_tokens": scope.max_output_tokens} if scope.max_output_tokens else {}
    turn = {} if backend == Backend.LOCAL else {"turn_detection": OPENAI_TURN_DETECTION}
    tools = server_tools.declarations(offline_engine=backend == Backend.LOCAL)
    tools = {"tools": tools, "tool_choice": "auto"} if tools else {}
    return orjson.dumps(
        {
            "type": "session.update",
            "event_id": new_event_id(),
            "session": {
                "type": "realtime",
                **limits,
                "instructions": settings.REALTIME_INSTRUCTIONS,
                **tools,
                "audio": {
                    "input": {
                        "transcription": {
                            "model": settings.REALTIME_TRANSCRIPTION_MODEL,
                            "language": settings.REALTIME_LANGUAGE,
                        },
                        **turn,
                        "noise_reduction": {"type": "near_field"},
                    },
                    "output": {"voice": settings.REALTIME_VOICE},
                },
            },
        }
    ).decode()
