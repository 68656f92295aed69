"""The session configuration: GA `session` object, defaults, merging session.update."""

import copy
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from voicechat.local_engine.events import ClientEventError

DEFAULT_INSTRUCTIONS = (
    "You are a friendly voice assistant running fully offline on this server. "
    "Keep answers short and conversational."
)

# OpenAI's server_vad and semantic_vad defaults (GA).
SERVER_VAD_DEFAULTS = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
# The longest semantic_vad waits in a pause, by eagerness, as OpenAI documents (auto is medium);
# a turn model decides sooner (semantic_vad.py).
SEMANTIC_MAX_WAIT_MS = {"low": 8000, "medium": 4000, "auto": 4000, "high": 2000}

FORMAT_RATES = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}


def default_turn_detection() -> dict:
    """The offline engine's turn detection until a client sets one (LOCAL_TURN_DETECTION)."""
    kind = settings.LOCAL_TURN_DETECTION
    if kind not in ("semantic_vad", "server_vad"):
        raise ImproperlyConfigured(
            f"LOCAL_TURN_DETECTION must be semantic_vad or server_vad, got {kind!r}"
        )
    return dict(SEMANTIC_VAD_DEFAULTS if kind == "semantic_vad" else SERVER_VAD_DEFAULTS)


def speculative_replies() -> bool:
    """Whether a reply starts during the user's pause, before the turn has ended
    (speculation.py). On unless LOCAL_SPECULATIVE_REPLIES is False (the benchmark compares)."""
    return getattr(settings, "LOCAL_SPECULATIVE_REPLIES", True)


def default_session(model: str) -> dict:
    """The session OpenAI reports in session.created, with local defaults."""
    return {
        "type": "realtime",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": default_turn_detection(),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "marin",
                "speed": 1.0,
            },
        },
    }


def _normalise_format(fmt: dict) -> dict:
    kind = fmt.get("type") or "audio/pcm"
    out = {"type": kind}
    if kind == "audio/pcm":
        out["rate"] = 24000
    return out


_VAD_RANGES = {
    "threshold": (0.0, 1.0),
    "prefix_padding_ms": (0, 10_000),
    "silence_duration_ms": (0, 10_000),
    "idle_timeout_ms": (0, 3_600_000),
}


def _normalise_turn_detection(td: dict | None) -> dict | None:
    if td is None:
        return None
    for key, (low, high) in _VAD_RANGES.items():
        value = td.get(key)
        if value is not None and not low <= value <= high:
            raise ClientEventError(
                f"Invalid 'session.audio.input.turn_detection.{key}': expected a value "
                f"between {low} and {high}, got {value}.",
                code="invalid_value",
                param=f"session.audio.input.turn_detection.{key}",
            )
    eagerness = td.get("eagerness")
    if td["type"] == "semantic_vad" and eagerness is not None:
        if not isinstance(eagerness, str) or eagerness not in SEMANTIC_MAX_WAIT_MS:
            raise ClientEventError(
                f"Invalid 'session.audio.input.turn_detection.eagerness': expected one of "
                f"{', '.join(SEMANTIC_MAX_WAIT_MS)}, got {eagerness!r}.",
                code="invalid_value",
                param="session.audio.input.turn_detection.eagerness",
            )
    defaults = SERVER_VAD_DEFAULTS if td["type"] == "server_vad" else SEMANTIC_VAD_DEFAULTS
    return {**defaults, **{k: v for k, v in td.items() if v is not None}}


def merge_session(current: dict, update: dict, *, voice_locked: bool) -> dict:
    """Apply the fields present in a (validated) session.update; returns the new session."""
    session = copy.deepcopy(current)
    for key in (
        "instructions",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "tracing",
        "truncation",
        "prompt",
        "output_modalities",
        "model",
        # Reported back as set: the offline engine has no reasoning effort, runs one tool
        # call at a time and has no transcription logprobs to include.
        "reasoning",
        "parallel_tool_calls",
        "include",
    ):
        if key in update:
            session[key] = update[key]
    modalities = session["output_modalities"]
    if not modalities or len(modalities) != 1:
        raise ClientEventError(
            "Invalid 'session.output_modalities': use ['audio'] or ['text'].",
            code="invalid_value",
            param="session.output_modalities",
        )
    audio = update.get("audio") or {}
    inp = audio.get("input") or {}
    out = audio.get("output") or {}
    s_in = session["audio"]["input"]
    s_out = session["audio"]["output"]
    if "format" in inp and inp["format"] is not None:
        s_in["format"] = _normalise_format(inp["format"])
    if "transcription" in inp:
        s_in["transcription"] = inp["transcription"]
    if "noise_reduction" in inp:
        s_in["noise_reduction"] = inp["noise_reduction"]
    if "turn_detection" in inp:
        s_in["turn_detection"] = _normalise_turn_detection(inp["turn_detection"])
    if "format" in out and out["format"] is not None:
        s_out["format"] = _normalise_format(out["format"])
    if out.get("voice") is not None and out["voice"] != s_out["voice"]:
        if voice_locked:
            raise ClientEventError(
                "Cannot update a conversation's voice if assistant audio is present.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
            )
        voice = out["voice"]
        s_out["voice"] = voice if isinstance(voice, str) else voice.get("id", s_out["voice"])
    if out.get("speed") is not None:
        s_out["speed"] = out["speed"]
    return session


@dataclass(frozen=True)
class TurnDetection:
    """What the engine's VAD does, derived from the session's turn_detection."""

    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool
    interrupt_response: bool
    # semantic_vad: a turn model ends the turn in a pause; silence_duration_ms is the longest wait.
    semantic: bool = False
    eagerness: str = "auto"  # semantic_vad's


def turn_detection(session: dict) -> TurnDetection | None:
    td = session["audio"]["input"]["turn_detection"]
    if td is None:
        return None
    if td["type"] == "semantic_vad":
        return TurnDetection(
            threshold=0.5,
            prefix_padding_ms=300,
            silence_duration_ms=SEMANTIC_MAX_WAIT_MS[td.get("eagerness") or "auto"],
            create_response=td.get("create_response", True),
            interrupt_response=td.get("interrupt_response", True),
            semantic=True,
            eagerness=td.get("eagerness") or "auto",
        )
    return TurnDetection(
        threshold=td["threshold"],
        prefix_padding_ms=td["prefix_padding_ms"],
        silence_duration_ms=td["silence_duration_ms"],
        create_response=td["create_response"],
        interrupt_response=td["interrupt_response"],
    )


def transcription_language(session: dict) -> str | None:
    """The language when input transcription events are on, else None."""
    tr = session["audio"]["input"]["transcription"]
    if tr is None:
        return None
    return tr.get("language") or "en"
