"""/metrics: refused to all but staff and the token; a scripted conversation moves every metric."""

import asyncio
import base64
import json
import urllib.request

import pytest
from django.test import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from voicechat.models import Conversation
from voicechat.tests.conftest import db, free_port
from voicechat.tests.servers import serve_process, server_env, wait_for_port
from voicechat.tests.test_recorder_outage import spill_dir  # noqa: F401
from voicechat.tests.test_turn_latency import push_to_talk_turn, scripted_local_engine  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

AUDIO = base64.b64encode(b"\x01\x00" * 960).decode()  # 40 ms of 24 kHz PCM16
TOKEN = "metrics-scraper-token"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape() -> dict:
    response = await AsyncClient().get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return samples(response.content.decode())


@pytest.fixture
def metrics_token(settings):
    settings.METRICS_TOKEN = TOKEN


def test_anonymous_and_ordinary_users_are_refused(client, alice, settings):
    settings.METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 403
    client.force_login(alice)
    assert client.get("/metrics").status_code == 403


def test_an_empty_token_setting_turns_token_access_off(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", headers={"authorization": "Bearer "}).status_code == 403


def test_staff_and_the_token_are_served(client, staff_user, settings):
    settings.METRICS_TOKEN = TOKEN
    response = client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert "voicechat_conversations_started_total" in response.content.decode()
    client.force_login(staff_user)
    assert client.get("/metrics").status_code == 200


async def test_a_conversation_moves_the_metrics(fake_upstream, alice_token, connect, metrics_token):
    before = await scrape()
    connected, client = await connect(token=alice_token)
    assert connected
    assert (await client.receive())["type"] == "session.created"
    during = await scrape()
    assert value(during, "voicechat_open_conversations", backend="openai") == (
        value(before, "voicechat_open_conversations", backend="openai") + 1
    )
    for n in range(3):
        await client.send(
            {"type": "input_audio_buffer.append", "event_id": f"e{n}", "audio": AUDIO}
        )
    await client.send({"type": "no.such.event"})
    refusal = (await client.receive_until("error"))[-1]
    assert refusal["error"]["code"] == "unknown_event_type"
    await fake_upstream.wait_for("input_audio_buffer.append", 3)
    await fake_upstream.push([{"type": "input_audio_buffer.speech_stopped", "item_id": "i1"}])
    await fake_upstream.push([{"type": "response.output_audio.delta", "delta": AUDIO}] * 2)
    await client.receive_until("response.output_audio.delta")
    await client.receive_until("response.output_audio.delta")
    await client.communicator.disconnect()

    after = await scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("voicechat_conversations_started_total", backend="openai") == 1
    assert (
        moved("voicechat_conversations_ended_total", backend="openai", reason="client_closed") == 1
    )
    assert moved("voicechat_open_conversations", backend="openai") == 0
    assert moved("voicechat_client_events_refused_total", code="unknown_event_type") == 1
    assert moved("voicechat_relayed_frames_total", direction="to_upstream") == 3
    assert moved("voicechat_relayed_bytes_total", direction="to_upstream") > 3 * len(AUDIO)
    # session.created, session.updated (the defaults), speech_stopped, two deltas.
    assert moved("voicechat_relayed_frames_total", direction="to_client") == 5
    assert moved("voicechat_relayed_bytes_total", direction="to_client") > 2 * len(AUDIO)
    assert moved("voicechat_upstream_connect_seconds_count", backend="openai") == 1
    # One turn: the first delta after speech_stopped is measured, the second is not.
    assert moved("voicechat_voice_to_voice_seconds_count", backend="openai") == 1
    assert 0 < moved("voicechat_voice_to_voice_seconds_sum", backend="openai") < 5


def _processes() -> set[str]:
    return set(Conversation.objects.values_list("process", flat=True))


def _get(url: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


async def test_two_workers_report_one_set(fake_upstream, alice_token, tmp_path):
    from websockets.asyncio.client import connect

    port = free_port()
    # A directory left with an earlier run's values: serve empties it before the workers start.
    (tmp_path / "counter_1.db").write_bytes(b"stale")
    env = server_env(
        upstream_url=fake_upstream.url,
        METRICS_TOKEN=TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
        # Up to 40 sockets in a row until both workers hold one: above the per-user default.
        REALTIME_CONNECTS_PER_MINUTE_PER_USER="100",
    )
    proc = serve_process(port, env, workers=2)
    try:
        await wait_for_port(port, proc)
        # Sockets until both workers hold some (the kernel spreads them over the workers).
        opened = 0
        while opened < 40 and len(await db(_processes)) < 2:
            async with connect(
                f"ws://127.0.0.1:{port}/v1/realtime",
                additional_headers={"Authorization": f"Bearer {alice_token}"},
            ) as ws:
                first = json.loads(await ws.recv())
                assert first["type"] == "session.created", first
            opened += 1
        assert len(await db(_processes)) == 2
        for _ in range(10):  # whichever worker answers, the same totals: every process's
            found = samples(await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics"))
            assert value(found, "voicechat_conversations_started_total", backend="openai") == (
                opened
            )
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, output


def _moved(before: dict, after: dict):
    return lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)


async def test_recorder_writes_cost_and_budget_refusals_are_counted(
    fake_upstream, settings, alice, alice_token, connect, metrics_token
):
    from decimal import Decimal

    from voicechat.tests.conftest import finished_conversation
    from voicechat.tests.fake_upstream import USAGE
    from voicechat.tests.test_limits import _past_conversation

    before = await scrape()
    settings.REALTIME_DAILY_COST_USD = Decimal("0.03")
    await _past_conversation(alice, minutes=1, cost="0.01")
    connected, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    # One response at $0.02452: stored by the recorder, counted, and over the budget.
    await fake_upstream.push(
        [
            {
                "type": "response.done",
                "response": {"id": "resp_1", "status": "completed", "output": [], "usage": USAGE},
            }
        ]
    )
    await client.receive_close()
    await client.communicator.disconnect()
    charged = await finished_conversation(alice)
    # The next one is refused before it starts.
    connected, client = await connect(token=alice_token)
    await client.receive_close()
    await client.communicator.disconnect()
    await finished_conversation(alice)

    moved = _moved(before, await scrape())
    assert moved("voicechat_budget_refusals_total", when="during") == 1
    assert moved("voicechat_budget_refusals_total", when="at_start") == 1
    model = charged.model
    assert moved("voicechat_estimated_cost_usd_total", model=model) == pytest.approx(0.02452)
    assert moved("voicechat_recorder_write_seconds_count") >= 1
    assert value(await scrape(), "voicechat_recorder_backlog_changes") == 0


@pytest.mark.usefixtures("scripted_local_engine")
async def test_the_offline_engine_stages_are_observed(alice, alice_token, connect, metrics_token):
    before = await scrape()
    await push_to_talk_turn(connect, alice, alice_token)
    moved = _moved(before, await scrape())
    for stage in ("transcript", "first_token", "first_audio"):
        assert moved("voicechat_local_engine_stage_seconds_count", stage=stage) == 1
    assert moved("voicechat_voice_to_voice_seconds_count", backend="local") == 1


@pytest.mark.usefixtures("spill_dir")
async def test_the_recorder_backlog_grows_while_the_database_is_away(alice, caplog, metrics_token):
    from voicechat.tests.test_recorder_outage import (
        _failed_writes,
        _line,
        _start,
        _stored_line,
        _until,
        database_locked,
    )

    def backlog(found: dict) -> float:
        return value(found, "voicechat_recorder_backlog_changes")

    before = backlog(await scrape())
    conversation, recorder = await _start(alice)
    async with database_locked():
        recorder.observe(*_line("item_u1", "During the outage"))
        recorder.observe(*_line("item_u2", "Still during the outage"))
        await _until(lambda: _failed_writes(caplog) >= 2)
        assert backlog(await scrape()) - before == 2  # held for a retry
    await _until(lambda: _stored_line(conversation, "item_u2"))
    await _until(lambda: _scraped_backlog_is(before))
    await recorder.close()


async def _scraped_backlog_is(expected: float) -> bool:
    return value(await scrape(), "voicechat_recorder_backlog_changes") == expected
