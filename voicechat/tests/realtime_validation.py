"""Strict validation of server events against the official SDK's GA types."""

from typing import Any

from openai.types.realtime import RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter

_server_event = TypeAdapter(RealtimeServerEvent)


def _unknown_fields(raw: Any, model: Any, path: str) -> list[str]:
    """Dotted paths of fields in `raw` that the parsed pydantic `model` does not declare."""
    if isinstance(model, BaseModel) and isinstance(raw, dict):
        fields = type(model).model_fields
        aliases = {f.alias or name: name for name, f in fields.items()}
        found = []
        for key, value in raw.items():
            if key not in aliases:
                found.append(f"{path}.{key}")
            else:
                found += _unknown_fields(value, getattr(model, aliases[key]), f"{path}.{key}")
        return found
    if isinstance(model, list) and isinstance(raw, list):
        return [
            p for r, m in zip(raw, model, strict=False) for p in _unknown_fields(r, m, path + "[]")
        ]
    return []


def validate_server_event(raw: dict) -> BaseModel:
    """Parse one server event as a GA type; unknown types or undeclared fields fail."""
    event = _server_event.validate_python(raw)
    unknown = _unknown_fields(raw, event, raw.get("type", "?"))
    if unknown:
        raise AssertionError(f"fields unknown to the GA types: {unknown}")
    return event
