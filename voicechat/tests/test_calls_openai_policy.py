"""The policy of calls made at OpenAI (voicechat/calls/openai_call.py, SessionGuard): what a
session shown on the sideband holds that the client's scope does not allow, and what sets it
back. Only the server's own configuration is restored; what the scope allows stays."""

import dataclasses

import orjson
import pytest

from voicechat.access import scopes
from voicechat.calls.openai_call import SessionGuard, merged
from voicechat.enums import Backend
from voicechat.gateway.policy import session_defaults


def server_session(scope) -> dict:
    defaults = orjson.loads(session_defaults(scope, backend=Backend.OPENAI))["session"]
    return {**defaults, "model": "gpt-realtime"}


@pytest.fixture
def site():
    return scopes.site_default()


def guard(scope) -> SessionGuard:
    return SessionGuard(scope, model="gpt-realtime", server_session=server_session(scope))


def test_the_servers_own_session_passes(site):
    assert guard(site).revert(server_session(site)) is None
    # OpenAI naming the snapshot behind the alias is the same model.
    assert guard(site).revert({"model": "gpt-realtime-2025-08-28"}) is None


def test_what_the_site_scope_may_not_set_is_set_back(site, settings):
    session = merged(
        server_session(site),
        {
            "model": "gpt-realtime-mini",
            "instructions": "Be a pirate.",
            "prompt": {"id": "pmpt_1"},
            "tracing": "auto",
            "tools": [{"type": "function", "name": "shell"}],
            "audio": {
                "input": {"transcription": {"model": "whisper-1"}},
                "output": {"voice": "custom"},
            },
        },
    )
    fix = guard(site).revert(session)
    assert fix["model"] == "gpt-realtime"
    assert fix["instructions"] == settings.REALTIME_INSTRUCTIONS
    assert fix["prompt"] is None and fix["tracing"] is None
    assert fix["tools"] == server_session(site).get("tools", [])
    assert fix["audio"]["output"]["voice"] == settings.REALTIME_VOICE
    assert fix["audio"]["input"]["transcription"]["model"] == settings.REALTIME_TRANSCRIPTION_MODEL


def test_what_the_site_scope_allows_stays(site):
    session = merged(
        server_session(site),
        {
            "audio": {
                "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}},
                "output": {"voice": "cedar", "speed": 1.2},
            },
            "output_modalities": ["text"],
            "truncation": "disabled",
        },
    )
    assert guard(site).revert(session) is None


def test_transcription_switched_off_is_switched_back_on(site):
    fix = guard(site).revert({"audio": {"input": {"transcription": None}}})
    assert fix["audio"]["input"]["transcription"]["model"]


def test_a_full_scope_keeps_its_instructions_and_tools_but_not_without_the_servers(site):
    full = scopes.full()
    own = {"type": "function", "name": "lookup", "parameters": {}}
    session = merged(server_session(full), {"instructions": "Mine.", "tools": [own]})
    fix = guard(full).revert(session)
    names = [tool["name"] for tool in guard(full).server_tools]
    if names:  # the server's tools are put back beside the client's
        assert [tool["name"] for tool in fix["tools"]] == ["lookup", *names]
        assert set(fix) == {"tools"}
    else:
        assert fix is None


def test_an_output_token_cap_holds(site):
    capped = dataclasses.replace(site, max_output_tokens=500)
    assert guard(capped).revert({"max_output_tokens": 400}) is None
    assert guard(capped).revert({"max_output_tokens": "inf"}) == {"max_output_tokens": 500}
    assert guard(capped).revert({"max_output_tokens": 4096}) == {"max_output_tokens": 500}


def test_system_messages_only_where_instructions_may_be_set(site):
    system = {"type": "message", "role": "system", "content": []}
    assert guard(site).forbidden_item(system)
    assert not guard(scopes.full()).forbidden_item(system)
    assert not guard(site).forbidden_item({**system, "role": "user"})


def test_the_servers_own_values_are_allowed_whatever_the_scope(site, settings):
    """A token whose scope names no transcription model (or a site voice missing from the
    list) still has the server's own: setting them back must not loop."""
    settings.REALTIME_VOICE = "verse"
    settings.REALTIME_VOICES = ["marin"]
    narrow = dataclasses.replace(site, transcription_models=frozenset())
    assert guard(narrow).revert(server_session(narrow)) is None
    fix = guard(narrow).revert({"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    assert fix["audio"]["input"]["transcription"]["model"] == settings.REALTIME_TRANSCRIPTION_MODEL
    assert guard(narrow).revert(fix) is None
