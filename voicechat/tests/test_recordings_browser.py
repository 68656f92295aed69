"""History plays a recorded conversation in Chromium: each line's <audio> loads its turn."""

import pytest

from voicechat.tests.browser import (  # noqa: F401 (fixtures)
    ChatServer,
    launch_browser,
    playwright_instance,
    server_env,
    signed_in_page,
)
from voicechat.tests.test_recordings import recorded_conversation, recordings_dir  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def recordings_server(transactional_db, recordings_dir, tmp_path, monkeypatch):  # noqa: F811
    """The site on daphne, reading recordings where this test writes them."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    env = server_env(OPENAI_API_KEY="", REALTIME_BACKEND="local", RECORDING_DIR=str(recordings_dir))
    with ChatServer(env, tmp_path / "runserver.log") as server:
        yield server


def test_history_plays_the_recording_of_each_line(recordings_server, launch_browser, alice):  # noqa: F811
    conversation = recorded_conversation(alice, seconds=1.5)
    page = signed_in_page(launch_browser(), recordings_server, alice)
    page.goto(f"{recordings_server.url}/history/{conversation.pk}/")

    players = page.locator('[data-testid="history-item"] audio[data-testid="recording"]')
    assert players.count() == 2
    # Loaded by the browser through the owner's view: the metadata says how long it plays.
    page.wait_for_function(
        """() => [...document.querySelectorAll('audio[data-testid="recording"]')]
            .every(a => a.readyState >= 1 && a.duration > 0)"""
    )
    durations = page.evaluate(
        """() => [...document.querySelectorAll('audio[data-testid="recording"]')]
            .map(a => a.duration)"""
    )
    assert durations == [pytest.approx(1.5, abs=0.05)] * 2
    # And it plays: time moves on.
    page.evaluate(
        """() => { const a = document.querySelector('audio[data-testid="recording"]');
                   a.muted = true; return a.play(); }"""
    )
    page.wait_for_function(
        """() => document.querySelector('audio[data-testid="recording"]').currentTime > 0.2"""
    )
