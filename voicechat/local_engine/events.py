"""Ids, server-event builders and client-event validation for the local engine (GA protocol)."""

import base64
import binascii
import itertools
import os
import typing
from collections.abc import Iterable
from typing import Any

import orjson
from openai.types.realtime import RealtimeClientEvent
from pydantic import BaseModel, ValidationError

_counter = itertools.count(1)
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def new_id(prefix: str) -> str:
    """A unique id shaped like OpenAI's (`item_…`, `resp_…`): random part plus a counter."""
    random_part = "".join(_ALPHABET[b % len(_ALPHABET)] for b in os.urandom(12))
    return f"{prefix}_{random_part}{next(_counter):x}"


def server_event(type: str, **fields: Any) -> dict:
    """A server event dict with `type` first (the gateway peeks at it) and a fresh event_id."""
    return {"type": type, "event_id": new_id("event"), **fields}


def dumps(event: dict) -> str:
    return orjson.dumps(event).decode()


class ClientEventError(Exception):
    """A client event the engine refuses; becomes an `error` server event, session stays open."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        param: str | None = None,
        event_id: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.event_id = event_id
        self.type = type

    def to_event(self) -> dict:
        return server_event(
            "error",
            error={
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "event_id": self.event_id,
            },
        )


def models_by_type(union: Any) -> dict[str, type[BaseModel]]:
    """Map each event type string to its SDK model, from a Union of event models."""
    while typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    models = {}
    for model in typing.get_args(union):
        (literal,) = typing.get_args(model.model_fields["type"].annotation)
        models[literal] = model
    return models


CLIENT_EVENT_MODELS = models_by_type(RealtimeClientEvent)
# WebRTC/SIP only: over a WebSocket OpenAI rejects it too.
_WEBSOCKET_UNSUPPORTED = {"output_audio_buffer.clear"}


def _param_path(loc: Iterable[Any]) -> str:
    """`('session', 'audio', 'input', 0)` -> `session.audio.input[0]`, skipping union tags."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and (part[:1].isupper() or "[" in part or "-" in part):
            continue  # pydantic names the union member it tried; not part of the client's path
        else:
            path += f".{part}" if path else part
    return path


def parse_client_event(frame: str | bytes) -> dict:
    """Decode and validate one client frame; raises ClientEventError with an OpenAI-style code."""
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ClientEventError(
            "The server could not parse the event: it is not valid JSON.", code="invalid_json"
        ) from None
    if not isinstance(event, dict):
        raise ClientEventError("The event must be a JSON object.", code="invalid_json", param=None)
    event_id = event.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise ClientEventError(
            "Invalid type for 'event_id': expected a string.", code="invalid_type", param="event_id"
        )
    kind = event.get("type")
    if not isinstance(kind, str):
        raise ClientEventError(
            "Missing or invalid 'type': every client event needs a string type.",
            code="missing_required_parameter" if kind is None else "invalid_type",
            param="type",
            event_id=event_id,
        )
    if kind == "input_audio_buffer.append":
        # The hot path (25 events a second): checked by hand, not by pydantic.
        if not isinstance(event.get("audio"), str):
            raise ClientEventError(
                "Missing or invalid 'audio': expected a base64 string.",
                code="invalid_type" if "audio" in event else "missing_required_parameter",
                param="audio",
                event_id=event_id,
            )
        return event
    model = CLIENT_EVENT_MODELS.get(kind)
    if model is None or kind in _WEBSOCKET_UNSUPPORTED:
        supported = ", ".join(sorted(set(CLIENT_EVENT_MODELS) - _WEBSOCKET_UNSUPPORTED))
        raise ClientEventError(
            f"Invalid value: '{kind}'. Supported values are: {supported}.",
            code="invalid_value",
            param="type",
            event_id=event_id,
        )
    try:
        parsed = model.model_validate(event, strict=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param_path(first["loc"])
        code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
        if first["type"].endswith(("_type", "_parsing")):
            code = "invalid_type"
        raise ClientEventError(
            f"Invalid '{param}': {first['msg']}.", code=code, param=param, event_id=event_id
        ) from None
    unknown = _unknown_fields(parsed, "")
    if unknown:
        # As OpenAI does: a misspelt field is an error, not silently ignored.
        raise ClientEventError(
            f"Unknown parameter: '{unknown[0]}'.",
            code="unknown_parameter",
            param=unknown[0],
            event_id=event_id,
        )
    return event


def _unknown_fields(value: object, path: str) -> list[str]:
    """Dotted paths of fields no SDK model declares, anywhere inside a validated event."""
    found = []
    if isinstance(value, BaseModel):
        for name in value.model_extra or {}:
            found.append(f"{path}.{name}" if path else name)
        for name in type(value).model_fields:
            child = getattr(value, name)
            found += _unknown_fields(child, f"{path}.{name}" if path else name)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _unknown_fields(child, f"{path}[{i}]")
    return found


def decode_audio(data: str, *, event_id: str | None) -> bytes:
    """Strict base64 decode of an append's audio."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ClientEventError(
            "Invalid 'audio': the value is not valid base64.",
            code="invalid_value",
            param="audio",
            event_id=event_id,
        ) from None


def encode_audio(data: bytes) -> str:
    return base64.b64encode(data).decode()
