"""Strict validation of GA Realtime server events against the openai SDK's pydantic types.

The SDK's models accept unknown fields silently (extra="allow") and the server-event union is
not discriminated, so validating with TypeAdapter alone would let typos and beta-shaped events
through. Here every event must validate, strictly, as its own type, carry no field the type
lacks, and have an event_id.
"""

from openai.types.realtime import RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter

from voicechat.local_engine.events import models_by_type

SERVER_EVENT_ADAPTER = TypeAdapter(RealtimeServerEvent)


SERVER_EVENT_MODELS = models_by_type(RealtimeServerEvent)


def _extra_fields(value: object, path: str) -> list[str]:
    """Paths of fields that no model declares, anywhere inside a validated model."""
    found = []
    if isinstance(value, BaseModel):
        for name in value.model_extra or {}:
            found.append(f"{path}.{name}")
        for name in type(value).model_fields:
            found += _extra_fields(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found += _extra_fields(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            found += _extra_fields(v, f"{path}.{k}")
    return found


def validate_server_event(event: dict) -> BaseModel:
    """Validate one server event strictly; raises AssertionError with the reason."""
    kind = event.get("type")
    assert kind in SERVER_EVENT_MODELS, f"unknown server event type {kind!r}"
    assert isinstance(event.get("event_id"), str) and event["event_id"], "missing event_id"
    SERVER_EVENT_ADAPTER.validate_python(event)  # the union as the SDK declares it
    model = SERVER_EVENT_MODELS[kind].model_validate(event, strict=True)
    extra = _extra_fields(model, kind)
    assert not extra, f"fields unknown to the SDK types: {extra}"
    return model


class EventLog:
    """Every server event of a connection, validated, with unique event ids."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._ids: set[str] = set()

    def add(self, event: dict) -> dict:
        validate_server_event(event)
        assert event["event_id"] not in self._ids, f"duplicate event_id {event['event_id']}"
        self._ids.add(event["event_id"])
        self.events.append(event)
        return event

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]
