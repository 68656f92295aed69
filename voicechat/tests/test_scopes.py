"""Scopes per credential: what an API token's holder (or a browser session) may set."""

import io

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from openai import AsyncOpenAI

from voicechat.access.scopes import ScopeKind
from voicechat.models import ApiToken
from voicechat.services import api_token_create
from voicechat.tests.conftest import db, session_cookie
from voicechat.tests.realtime_validation import validate_server_event

pytestmark = pytest.mark.django_db(transaction=True)

# What OpenAI's examples (and the Agents SDK) send first: the held-out style session.
STYLE_SESSION = {
    "type": "realtime",
    "instructions": "You are a patient tutor. Speak slowly.",
    "audio": {
        "input": {
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
        },
        "output": {"voice": "cedar"},
    },
}


def token_for(user, **scope) -> str:
    return api_token_create(user=user, name="tests", **scope)[1]


async def test_the_sdk_with_a_full_scope_token_sets_the_whole_session(
    fake_upstream, gateway_server, alice
):
    token = await db(token_for, alice, scope_kind=ScopeKind.FULL)
    sdk = AsyncOpenAI(
        api_key=token,
        base_url=f"http://{gateway_server}/v1",
        websocket_base_url=f"ws://{gateway_server}/v1",
    )
    async with sdk.realtime.connect(model="gpt-realtime-2.1") as connection:
        await connection.session.update(session=STYLE_SESSION)
        async for event in connection:
            frame = event.to_dict()
            validate_server_event(frame)
            assert event.type != "error", frame
            # The gateway's own defaults are answered first (realtime-protocol.md, "Drop-in
            # transparency": not yet hidden); the client's update is the one with its instructions.
            if (
                event.type == "session.updated"
                and event.session.instructions == (STYLE_SESSION["instructions"])
            ):
                break
    session = event.session
    assert session.audio.input.transcription.model == "gpt-4o-transcribe"
    assert session.audio.input.transcription.language == "en"
    assert session.audio.input.turn_detection.type == "semantic_vad"
    assert session.audio.input.turn_detection.eagerness == "low"
    assert session.audio.output.voice == "cedar"
    assert fake_upstream.received[-1]["session"] == STYLE_SESSION
    assert fake_upstream.request_paths[0].endswith("model=gpt-realtime-2.1")


async def test_the_site_default_refuses_the_sdk_update_a_token_scope_allows(
    fake_upstream, alice, connect, settings
):
    # The report of issue 14: refused even with instructions allowed site-wide.
    settings.REALTIME_CLIENT_MAY_SET_INSTRUCTIONS = True
    update = {"type": "session.update", "event_id": "evt_s", "session": STYLE_SESSION}
    plain = await db(token_for, alice)
    _, client = await connect(token=plain)
    await client.receive_until("session.updated")
    await client.send(update)
    error = (await client.receive())["error"]
    assert (error["code"], error["param"]) == (
        "field_not_allowed",
        "session.audio.input.transcription.model",
    )
    assert "gpt-4o-mini-transcribe" in error["message"]  # the server's own model may be set

    scoped = await db(
        token_for,
        alice,
        scope_kind=ScopeKind.CUSTOM,
        may_set_instructions=True,
        transcription_models=["gpt-4o-transcribe"],
        realtime_models=["gpt-realtime"],
    )
    _, client = await connect(token=scoped)
    await client.receive_until("session.updated")
    await client.send(update)
    updated = await client.receive()
    assert updated["type"] == "session.updated"
    assert updated["session"]["audio"]["input"]["transcription"]["model"] == "gpt-4o-transcribe"


# Each part of a scope, refused where the credential lacks it.
REFUSALS = [
    ({"instructions": "Be rude."}, "session.instructions"),
    ({"tools": [{"type": "function", "name": "wire_money"}]}, "session.tools"),
    ({"prompt": {"id": "pmpt_1"}}, "session.prompt"),
    ({"tracing": "auto"}, "session.tracing"),
    (
        {"audio": {"input": {"transcription": {"model": "whisper-1"}}}},
        "session.audio.input.transcription.model",
    ),
    ({"max_output_tokens": 500}, "session.max_output_tokens"),
    ({"max_output_tokens": "inf"}, "session.max_output_tokens"),
    ({"model": "gpt-realtime-2.1"}, "session.model"),  # connected with gpt-realtime
]


@pytest.mark.parametrize(("session", "param"), REFUSALS)
async def test_each_field_outside_the_scope_is_refused_and_the_socket_stays_open(
    fake_upstream, alice, connect, session, param
):
    token = await db(
        token_for,
        alice,
        scope_kind=ScopeKind.CUSTOM,
        realtime_models=["gpt-realtime"],
        max_output_tokens=300,
    )
    _, client = await connect(token=token)
    await client.receive_until("session.updated")
    await client.send({"type": "session.update", "event_id": "evt_r", "session": session})
    error = (await client.receive())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (
        "field_not_allowed",
        param,
        "evt_r",
    )
    assert [e["type"] for e in fake_upstream.received] == ["session.update"]  # the defaults
    await client.send({"type": "input_audio_buffer.commit"})
    assert (await client.receive())["type"] == "input_audio_buffer.committed"


async def test_a_full_scope_allows_each_of_those_fields(fake_upstream, alice, connect):
    token = await db(token_for, alice, scope_kind=ScopeKind.FULL)
    _, client = await connect(token=token)
    await client.receive_until("session.updated")
    for session, param in REFUSALS:
        if param == "session.model":
            session = {"model": "gpt-realtime"}  # the session's own model may be repeated
        await client.send({"type": "session.update", "session": session})
        assert (await client.receive())["type"] == "session.updated", param


async def test_the_output_token_cap_is_the_sessions_default_and_holds_per_response(
    fake_upstream, alice, connect
):
    token = await db(
        token_for,
        alice,
        scope_kind=ScopeKind.CUSTOM,
        realtime_models=["gpt-realtime"],
        max_output_tokens=300,
    )
    _, client = await connect(token=token)
    await client.receive_until("session.updated")
    assert fake_upstream.received[0]["session"]["max_output_tokens"] == 300
    await client.send({"type": "response.create", "response": {"max_output_tokens": 200}})
    await client.receive_until("response.done")
    await client.send({"type": "response.create", "response": {"max_output_tokens": "inf"}})
    error = (await client.receive())["error"]
    assert (error["code"], error["param"]) == ("field_not_allowed", "response.max_output_tokens")
    assert "at most 300" in error["message"]


async def test_an_out_of_band_system_message_needs_the_instructions_scope(
    fake_upstream, alice_token, connect
):
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    system = {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "x"}]}
    await client.send(
        {"type": "response.create", "response": {"conversation": "none", "input": [system]}}
    )
    error = (await client.receive())["error"]
    assert (error["code"], error["param"]) == ("field_not_allowed", "response.input[0].role")


async def test_a_model_outside_the_tokens_scope_is_refused_on_connect(
    fake_upstream, alice, connect
):
    token = await db(
        token_for, alice, scope_kind=ScopeKind.CUSTOM, realtime_models=["gpt-realtime-2.1-mini"]
    )
    _, client = await connect(token=token, path="/v1/realtime?model=gpt-realtime-2.1")
    events, code = await client.receive_close()
    assert events[-1]["error"]["code"] == "model_not_allowed"
    assert "gpt-realtime-2.1-mini" in events[-1]["error"]["message"] and code == 4011
    assert fake_upstream.request_headers == []


async def test_a_model_the_site_dropped_is_gone_from_every_scope(
    fake_upstream, alice, connect, settings
):
    token = await db(token_for, alice, scope_kind=ScopeKind.FULL)
    settings.REALTIME_ALLOWED_MODELS = ["gpt-realtime-2.1"]
    _, client = await connect(token=token, path="/v1/realtime?model=gpt-realtime")
    events, code = await client.receive_close()
    assert events[-1]["error"]["code"] == "model_not_allowed" and code == 4011


async def test_browser_sessions_follow_the_site_switches(fake_upstream, alice, connect, settings):
    settings.REALTIME_CLIENT_MAY_SET_TOOLS = True
    cookie = await db(session_cookie, alice)
    _, client = await connect(cookie=cookie, origin="http://127.0.0.1:8000")
    await client.receive_until("session.updated")
    await client.send({"type": "session.update", "session": {"tools": []}})
    assert (await client.receive())["type"] == "session.updated"
    await client.send({"type": "session.update", "session": {"instructions": "x"}})
    assert (await client.receive())["error"]["param"] == "session.instructions"


# --- create_api_token ----------------------------------------------------------------------


def _create(*args: str) -> ApiToken:
    out = io.StringIO()
    call_command("create_api_token", "alice", *args, stdout=out)
    return ApiToken.objects.get(digest=ApiToken.digest_of(out.getvalue().strip()))


def test_create_api_token_scope_flags(alice, settings):
    assert _create().scope_kind == ScopeKind.SITE
    assert _create("--full-scope").scope_kind == ScopeKind.FULL
    custom = _create(
        "--instructions",
        "--transcription-model",
        "gpt-4o-transcribe",
        "--transcription-model",
        "whisper-1",
        "--model",
        "gpt-realtime-2.1",
        "--max-output-tokens",
        "1000",
    )
    assert custom.scope_kind == ScopeKind.CUSTOM
    assert (custom.may_set_instructions, custom.may_set_tools, custom.may_set_prompt) == (
        True,
        False,
        False,
    )
    assert custom.transcription_models == ["gpt-4o-transcribe", "whisper-1"]
    assert custom.realtime_models == ["gpt-realtime-2.1"]
    assert custom.max_output_tokens == 1000
    # Without --model, every model the site allows.
    assert _create("--tools").realtime_models == settings.REALTIME_ALLOWED_MODELS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--full-scope", "--tools"], "--full-scope already allows everything"),
        (["--model", "gpt-4o-realtime-preview"], "--model gpt-4o-realtime-preview: not offered"),
        (["--transcription-model", "gpt-9-transcribe"], "not offered by this site"),
        (["--max-output-tokens", "-1"], "must be 0"),
    ],
)
def test_create_api_token_refuses_what_the_site_does_not_offer(alice, args, message):
    with pytest.raises(CommandError, match=message):
        _create(*args)
    assert not ApiToken.objects.exists()


# --- admin ---------------------------------------------------------------------------------


@pytest.fixture
def staff(django_user_model):
    """A superuser who edits tokens in admin."""
    return django_user_model.objects.create_superuser("staff", password="staff-password-123")


def _scope_form(**fields) -> dict:
    return {"name": "script", "scope_kind": ScopeKind.CUSTOM, "max_output_tokens": 0, **fields}


def test_admin_edits_a_tokens_scope(client, staff, alice):
    api_token, _ = api_token_create(user=alice, name="script")
    client.force_login(staff)
    url = reverse("admin:voicechat_apitoken_change", args=[api_token.pk])
    page = client.get(url).content.decode()
    assert 'value="gpt-4o-transcribe"' in page and 'value="gpt-realtime-2.1-mini"' in page
    response = client.post(
        url,
        _scope_form(
            may_set_instructions="on",
            transcription_models=["gpt-4o-transcribe"],
            realtime_models=["gpt-realtime-2.1", "gpt-realtime-2.1-mini"],
            max_output_tokens=800,
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    api_token.refresh_from_db()
    assert api_token.scope_kind == ScopeKind.CUSTOM and api_token.may_set_instructions
    assert not api_token.may_set_tools
    assert api_token.transcription_models == ["gpt-4o-transcribe"]
    assert api_token.realtime_models == ["gpt-realtime-2.1", "gpt-realtime-2.1-mini"]
    assert api_token.max_output_tokens == 800


def test_admin_refuses_a_custom_scope_without_models_or_with_unknown_ones(client, staff, alice):
    api_token, _ = api_token_create(user=alice, name="script")
    client.force_login(staff)
    url = reverse("admin:voicechat_apitoken_change", args=[api_token.pk])
    no_model = client.post(url, _scope_form())
    assert no_model.status_code == 200
    assert "needs at least one realtime model" in no_model.content.decode()
    unknown = client.post(url, _scope_form(realtime_models=["gpt-4o-realtime-preview"]))
    assert unknown.status_code == 200 and "Select a valid choice" in unknown.content.decode()
    api_token.refresh_from_db()
    assert api_token.scope_kind == ScopeKind.SITE
