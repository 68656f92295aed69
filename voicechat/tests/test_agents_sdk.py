"""OpenAI's Agents SDK (agents.realtime), pointed at the gateway with one of our tokens, holds text
and audio turns, calls a function tool and hands off between agents, unchanged.

Each test runs a real RealtimeSession over the gateway served by uvicorn (its own protocol, as in
production) to the fake upstream, or to the offline engine. README, "Using OpenAI's SDK against
the gateway", documents what the SDK needs from a token's scope.
"""

import asyncio
import contextlib
import threading

import pytest
from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner, realtime_handoff

from voicechat.access.scopes import ScopeKind
from voicechat.services import api_token_create
from voicechat.tests.conftest import db, finished_conversation
from voicechat.tests.fake_upstream import FakeRealtimeServer
from voicechat.tests.fake_voice_upstream import RATE, VoiceFakeUpstream, speechlike
from voicechat.tests.realtime_validation import validate_server_event
from voicechat.tests.speech import spoken, words

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "gpt-realtime-2.1"
REPLY_MS = 600  # the voice fake's spoken reply
WEATHER = "Sunny and 21 degrees in Paris."


@pytest.fixture
def full_token(alice) -> str:
    """A token whose holder may set everything (create_api_token --full-scope)."""
    return api_token_create(user=alice, name="agents", scope_kind=ScopeKind.FULL)[1]


@pytest.fixture
def scripts_token(alice) -> str:
    """A custom scope with what the Agents SDK sets for its agents, but no tracing."""
    return api_token_create(
        user=alice,
        name="scripts",
        scope_kind=ScopeKind.CUSTOM,
        may_set_instructions=True,
        may_set_tools=True,
        transcription_models=["gpt-4o-mini-transcribe"],
        realtime_models=[MODEL],
    )[1]


@pytest.fixture
async def voice_upstream(settings):
    """A fake upstream that hears turns in the audio (server VAD) and answers with audio."""
    async with VoiceFakeUpstream(
        reply_ms=REPLY_MS, transcripts=["What is the weather in Paris?"]
    ) as (server):
        settings.OPENAI_API_KEY = "sk-test-provider"
        settings.OPENAI_REALTIME_URL = server.url
        settings.REALTIME_BACKEND = "openai"
        yield server


@function_tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return WEATHER if city == "Paris" else f"No weather for {city}."


def text_agent(**kwargs) -> RealtimeAgent:
    return RealtimeAgent(name="Assistant", instructions="Answer briefly.", **kwargs)


def billing_and_triage() -> tuple[RealtimeAgent, RealtimeAgent]:
    """Two agents: triage hands billing questions to billing, which has its own tool."""
    billing = RealtimeAgent(
        name="Billing agent",
        instructions="You answer billing questions.",
        handoff_description="Takes questions about invoices and billing.",
        tools=[get_weather],
    )
    triage = RealtimeAgent(
        name="Triage agent",
        instructions="Send billing questions to the billing agent.",
        handoffs=[realtime_handoff(billing)],
    )
    return triage, billing


@contextlib.asynccontextmanager
async def agent_session(
    gateway: str, token: str, agent: RealtimeAgent, *, run_config=None, **model_settings
):
    """A RealtimeSession of `agent` through the gateway, as README shows it (text replies unless
    the caller asks for audio)."""
    settings = {"model_name": MODEL, "output_modalities": ["text"], **model_settings}
    runner = RealtimeRunner(agent, config={"model_settings": settings, **(run_config or {})})
    session = await runner.run(
        model_config={"api_key": token, "url": f"ws://{gateway}/v1/realtime?model={MODEL}"}
    )
    async with session:
        yield session


class Events:
    """A session's events as they arrive; server events are checked against the GA types."""

    def __init__(self, session) -> None:
        self.seen: list = []
        self._stream = aiter(session)

    async def until(self, condition, timeout: float = 30) -> None:
        """Read events until condition() holds (checked before each read)."""
        async with asyncio.timeout(timeout):
            while not condition():
                event = await anext(self._stream)
                if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                    validate_server_event(event.data.data)
                self.seen.append(event)

    async def next(self, kind: str, timeout: float = 30) -> None:
        """Read events up to the next one of type `kind`."""
        count = len(self.of(kind))
        await self.until(lambda: len(self.of(kind)) > count, timeout)

    def server_events(self, kind: str) -> list[dict]:
        return [
            e.data.data
            for e in self.seen
            if e.type == "raw_model_event"
            and e.data.type == "raw_server_event"
            and e.data.data["type"] == kind
        ]

    def of(self, kind: str) -> list:
        return [e for e in self.seen if e.type == kind]

    @property
    def history(self) -> list:
        """The conversation as the SDK last reported it (history_updated)."""
        return self.of("history_updated")[-1].history if self.of("history_updated") else []


def replies(events: Events) -> list[str]:
    """The assistant's words in the session's history (text, or the transcript of audio)."""
    return [
        getattr(part, "text", None) or getattr(part, "transcript", None)
        for item in events.history
        if getattr(item, "role", None) == "assistant"
        for part in item.content
        if getattr(part, "text", None) or getattr(part, "transcript", None)
    ]


def session_updates(events: Events) -> list[dict]:
    """The session.updated events the SDK received."""
    return events.server_events("session.updated")


def refusals(events: Events) -> list[tuple[str, str]]:
    """(code, param) of each error event the gateway answered the SDK with."""
    return [(e["error"]["code"], e["error"]["param"]) for e in events.server_events("error")]


def heard(events: Events) -> list[str]:
    """The transcripts of the user's audio in the session's history."""
    return [
        part.transcript
        for item in events.history
        if getattr(item, "role", None) == "user"
        for part in item.content
        if part.type == "input_audio" and part.transcript
    ]


def silence(ms: int) -> bytes:
    """`ms` of PCM16 silence at 24 kHz."""
    return bytes(RATE * 2 * ms // 1000)


def sent(upstream: FakeRealtimeServer, kind: str) -> list[dict]:
    return [event for event in upstream.received if event.get("type") == kind]


async def test_text_turn_with_a_full_scope_token(fake_upstream, gateway_server, alice, full_token):
    async with agent_session(gateway_server, full_token, text_agent()) as session:
        events = Events(session)
        await session.send_message("Say hello")
        await events.next("agent_end")
        # The SDK's second session.update (tracing, sent on session.created) is in full scope.
        await events.until(
            lambda: any(u["session"].get("tracing") for u in session_updates(events))
        )

    assert events.of("error") == []
    assert replies(events) == ["Hello from the fake upstream."]
    updates = sent(fake_upstream, "session.update")
    # The gateway's defaults first, then the agent's session, then the SDK's tracing.
    assert updates[1]["session"]["instructions"] == "Answer briefly."
    assert updates[1]["session"]["audio"]["input"]["transcription"]["model"] == (
        "gpt-4o-mini-transcribe"
    )
    assert updates[2]["session"]["tracing"] == "auto"
    # The client sees the gateway's defaults applied (session.updated) before its own session;
    # the SDK keeps the newest session it is told of, so it ends up with the agent's.
    updated = [event["session"] for event in session_updates(events)]
    assert updated[0]["instructions"] != "Answer briefly."
    assert updated[1]["instructions"] == "Answer briefly."
    assert updated[1]["output_modalities"] == ["text"]
    conversation = await finished_conversation(alice)
    items = await db(conversation.ordered_items)
    assert [(i.role, i.text) for i in items] == [
        ("user", "Say hello"),
        ("assistant", "Hello from the fake upstream."),
    ]


async def test_function_tool_call(fake_upstream, gateway_server, full_token):
    fake_upstream.call_function_next("get_weather", {"city": "Paris"})
    async with agent_session(
        gateway_server, full_token, text_agent(tools=[get_weather])
    ) as session:
        events = Events(session)
        await session.send_message("What is the weather in Paris?")
        # The tool's output goes back and starts the next response, which answers in text.
        await events.until(lambda: replies(events))

    assert events.of("error") == []
    [tool_end] = events.of("tool_end")
    assert (tool_end.tool.name, tool_end.output) == ("get_weather", WEATHER)
    # The agent's tool, and the server's own after it (voicechat/gateway/server_tools.py).
    declared = sent(fake_upstream, "session.update")[1]["session"]["tools"]
    assert [tool["name"] for tool in declared] == [
        "get_weather",
        "get_current_time",
        "search_my_conversations",
    ]
    outputs = [e["item"] for e in sent(fake_upstream, "conversation.item.create")]
    assert outputs[-1]["type"] == "function_call_output"
    assert outputs[-1]["output"] == WEATHER
    assert replies(events) == ["Hello from the fake upstream."]


async def test_handoff_between_two_agents(fake_upstream, gateway_server, full_token):
    triage, billing = billing_and_triage()
    fake_upstream.call_function_next("transfer_to_billing_agent")
    async with agent_session(gateway_server, full_token, triage) as session:
        events = Events(session)
        await session.send_message("I have a question about my invoice.")
        await events.until(lambda: replies(events))

    assert events.of("error") == []
    [handoff] = events.of("handoff")
    assert (handoff.from_agent, handoff.to_agent) == (triage, billing)
    # The SDK switched the session to the billing agent before answering the transfer.
    switched = sent(fake_upstream, "session.update")[-1]["session"]
    assert switched["instructions"] == "You answer billing questions."
    assert [tool["name"] for tool in switched["tools"]] == [
        "get_weather",
        "get_current_time",
        "search_my_conversations",
    ]
    updated = session_updates(events)[-1]["session"]
    assert updated["instructions"] == "You answer billing questions."
    assert sent(fake_upstream, "conversation.item.create")[-1]["item"]["type"] == (
        "function_call_output"
    )
    assert replies(events) == ["Hello from the fake upstream."]


async def test_audio_turn(voice_upstream, gateway_server, full_token):
    """Speech in, speech out: the SDK's audio is heard, transcribed and answered with audio."""
    agent = text_agent()
    async with agent_session(
        gateway_server, full_token, agent, output_modalities=["audio"]
    ) as session:
        events = Events(session)
        await events.until(lambda: len(session_updates(events)) >= 2)
        await session.send_audio(speechlike(800) + silence(600))  # the pause ends the turn
        await events.next("agent_end")
        await events.until(lambda: heard(events))

    assert events.of("error") == []
    assert sum(len(e.audio.data) for e in events.of("audio")) == RATE * 2 * REPLY_MS // 1000
    assert replies(events) == ["Hello from the fake upstream."]
    assert heard(events) == ["What is the weather in Paris?"]
    assert sent(voice_upstream, "input_audio_buffer.append")


async def test_tracing_needs_full_scope(fake_upstream, gateway_server, scripts_token):
    """A token that may set instructions, tools and the SDK's transcription model holds the
    conversation; the SDK's tracing update is refused (traces land in the deployer's OpenAI
    account), and the session goes on."""
    async with agent_session(gateway_server, scripts_token, text_agent()) as session:
        events = Events(session)
        await session.send_message("Say hello")
        await events.next("agent_end")
        # The refusal may come before or after the reply: the SDK hands it to the application.
        await events.until(lambda: events.of("error"))

    assert refusals(events) == [("field_not_allowed", "session.tracing")]
    [reported] = events.of("error")
    assert (reported.error.code, reported.error.param) == ("field_not_allowed", "session.tracing")
    assert replies(events) == ["Hello from the fake upstream."]
    assert not [u for u in sent(fake_upstream, "session.update") if "tracing" in u["session"]]


async def test_tracing_disabled_needs_no_tracing_scope(
    fake_upstream, gateway_server, scripts_token
):
    async with agent_session(
        gateway_server, scripts_token, text_agent(), run_config={"tracing_disabled": True}
    ) as session:
        events = Events(session)
        await session.send_message("Say hello")
        await events.next("agent_end")

    assert events.of("error") == []
    assert replies(events) == ["Hello from the fake upstream."]
    assert not [u for u in sent(fake_upstream, "session.update") if u["session"].get("tracing")]


async def test_a_site_default_token_is_refused_the_agents_session(
    fake_upstream, gateway_server, alice_token
):
    """Browser-like permissions do not cover an agent's instructions and tools: the SDK is told
    why (an error event), and the conversation stays open on the server's session."""
    async with agent_session(gateway_server, alice_token, text_agent()) as session:
        events = Events(session)
        await events.until(lambda: len(refusals(events)) == 2)
        await session.send_message("Say hello")
        await events.next("agent_end")

    (code, param), tracing = refusals(events)
    assert code == "field_not_allowed"
    assert param in {"session.instructions", "session.tools"}
    assert tracing == ("field_not_allowed", "session.tracing")
    assert replies(events) == ["Hello from the fake upstream."]
    # Only the gateway's own session reached the upstream.
    assert len(sent(fake_upstream, "session.update")) == 1


@pytest.fixture
def local_backend(settings):
    settings.REALTIME_BACKEND = "local"
    settings.OPENAI_API_KEY = ""
    settings.LOCAL_LLM_URL = ""
    yield
    # The engine loads its speech models in a daemon thread (speech.warm_up); a process that
    # exits mid-load, as a short run of this file does, aborts in C++ ("terminate called").
    for thread in threading.enumerate():
        if thread.name == "local-warm-up":
            thread.join(timeout=60)


async def test_offline_engine_text_tool_and_handoff(local_backend, gateway_server, full_token):
    """The offline engine (rules, LOCAL_LLM=none) answers, calls the handoff tool the request
    names, and then the billing agent's own tool, whose result it reads back."""
    triage, billing = billing_and_triage()
    async with agent_session(gateway_server, full_token, triage) as session:
        events = Events(session)
        await session.send_message("What is twelve times seven?")
        await events.until(lambda: len(replies(events)) == 1, timeout=60)
        await session.send_message("Please transfer me to the billing agent.")
        await events.until(lambda: len(replies(events)) == 2, timeout=60)
        await session.send_message("What is the weather in Paris?")
        await events.until(lambda: len(replies(events)) == 3, timeout=60)

    assert refusals(events) == []
    [handoff] = events.of("handoff")
    assert (handoff.from_agent, handoff.to_agent) == (triage, billing)
    [tool_end] = events.of("tool_end")
    assert (tool_end.tool.name, tool_end.output) == ("get_weather", WEATHER)
    said = replies(events)
    assert "84" in said[0]
    assert "Sunny and 21 degrees" in said[-1]


async def test_offline_engine_audio_turn(local_backend, gateway_server, full_token):
    """The engine hears the SDK's audio with the SDK's own turn detection (semantic_vad), and
    answers in audio with a transcript."""
    speech = await asyncio.to_thread(spoken, "What is twelve times seven?")
    async with agent_session(
        gateway_server, full_token, text_agent(), output_modalities=["audio"]
    ) as session:
        events = Events(session)
        await events.until(lambda: len(session_updates(events)) >= 2, timeout=60)
        await session.send_audio(silence(500) + speech + silence(1500))
        # The transcript of the reply grows with it: read it once the turn has ended.
        await events.until(lambda: events.of("agent_end") and heard(events), timeout=90)

    assert refusals(events) == []
    assert words(heard(events)[0]) == words("What is twelve times seven?")
    assert "84" in replies(events)[0]
    assert events.of("audio")
