"""The chat page end to end with the offline local engine: a real voice in, a real voice out.

The fake microphone speaks a sentence synthesized by the engine's own TTS (piper); the engine
hears it (VAD), transcribes it (pocketsphinx), answers, and speaks (piper) into the page.
"""

import pytest

from voicechat.models import Conversation, ItemStatus, Role
from voicechat.tests import browser
from voicechat.tests.browser import (
    RATE,
    signed_in_page,
    silence,
    stats,
    wait_for_stat,
    write_wav,
)

pytest.importorskip("voicechat.local_engine", reason="the local engine is not on this branch")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The shared browser fixtures, assigned here so pytest finds them for this module.
playwright_instance = browser.playwright_instance
launch_browser = browser.launch_browser
local_chat_server = browser.local_chat_server


def spoken_wav(path, *sentences: str, lead_ms: int = 1200):
    """A WAV of the engine's own voice saying each sentence, with pauses for turn-taking."""
    from voicechat.tests.speech import spoken

    pcm = silence(lead_ms)
    for sentence in sentences:
        pcm += spoken(sentence) + silence(6000)
    return write_wav(path, pcm, RATE)


def wait_for_entry(page, role: str, state: str, timeout: float = 60_000) -> None:
    page.wait_for_function(
        """([role, state]) => [...document.querySelectorAll('[data-testid="transcript-entry"]')]
            .some(e => e.dataset.role === role && e.dataset.state === state)""",
        arg=[role, state],
        timeout=timeout,
    )


def entries(page) -> list[dict]:
    return page.eval_on_selector_all(
        '[data-testid="transcript-entry"]',
        """els => els.map(e => ({role: e.dataset.role, state: e.dataset.state,
                                text: e.querySelector('.turn-text').textContent}))""",
    )


QUESTION_WORDS = ("what", "is", "two", "plus")


def heard_most(text: str, words: tuple[str, ...]) -> bool:
    """True when at least three quarters of `words` are in the transcript `text`."""
    heard = set(text.lower().replace("?", " ").split())
    return sum(word in heard for word in words) >= 0.75 * len(words)


def test_talking_to_the_local_engine(local_chat_server, launch_browser, alice, tmp_path):
    wav = spoken_wav(tmp_path / "question.wav", "What is two plus two?")
    page = signed_in_page(launch_browser(wav), local_chat_server, alice)
    page.set_default_timeout(60_000)
    page.goto(local_chat_server.url)
    page.get_by_test_id("connect").click()

    wait_for_entry(page, "user", "done")
    wait_for_entry(page, "assistant", "done")
    lines = entries(page)
    assert [line["role"] for line in lines[:2]] == ["user", "assistant"]
    # pocketsphinx is modest (and the first utterance of a conversation is its worst: "what is
    # to plus tipped" was seen), but most of the engine's own clear words come through.
    assert heard_most(lines[0]["text"], QUESTION_WORDS)
    assert lines[1]["text"].strip()

    # The reply is played out to the end, and once playing it never ran dry.
    wait_for_stat(
        page, "s.audioMsReceived > 500 && s.audioMsPlayed >= s.audioMsReceived - 25", 60_000
    )
    played = stats(page)
    assert played["underruns"] == 0
    # What bench/browser_latency.py reads: both parts of the wait are recorded (no timing).
    assert played["lastLatencyMs"] is not None
    assert 0 <= played["lastPrefillWaitMs"] <= played["lastLatencyMs"]

    conversation = Conversation.objects.for_user(alice).recent().first()
    page.get_by_test_id("disconnect").click()
    page.wait_for_selector('[data-testid="status"][data-state="ended"]')
    items = [i for i in conversation.ordered_items() if i.role in (Role.USER, Role.ASSISTANT)]
    assert [i.role for i in items[:2]] == [Role.USER, Role.ASSISTANT]
    assert heard_most(items[0].text, QUESTION_WORDS)
    assert items[1].status == ItemStatus.COMPLETED and items[1].text


def test_push_to_talk_with_the_local_engine(local_chat_server, launch_browser, alice, tmp_path):
    # Long leading silence: the press comes a moment after the microphone opens.
    wav = spoken_wav(tmp_path / "hello.wav", "Hello, what is your name?", lead_ms=3000)
    page = signed_in_page(launch_browser(wav), local_chat_server, alice)
    page.set_default_timeout(60_000)
    page.goto(local_chat_server.url)
    page.get_by_test_id("mode-push-to-talk").check()
    page.get_by_test_id("connect").click()
    page.wait_for_selector('[data-testid="status"][data-state="listening"]')
    page.wait_for_function("() => !document.querySelector('[data-testid=push-to-talk]').disabled")
    page.evaluate("() => document.activeElement?.blur()")
    page.keyboard.down("Space")
    # Hold while the sentence plays into the microphone (the file started at getUserMedia).
    wait_for_stat(page, "s.audioMsSent >= 5500", 60_000)
    page.keyboard.up("Space")
    wait_for_entry(page, "assistant", "done")
    lines = entries(page)
    assert [line["role"] for line in lines[:2]] == ["user", "assistant"]
    assert lines[0]["text"].strip() and lines[1]["text"].strip()


def test_interrupting_the_local_engine_truncates_its_reply(
    local_chat_server, launch_browser, alice, tmp_path
):
    # Ask with push-to-talk, then press again while the answer plays: the press stops the
    # playback and truncates the reply on the engine to what was heard. (Server-VAD barge-in
    # is the same truncate; test_chat_page_browser covers it with a deterministic upstream.)
    wav = spoken_wav(tmp_path / "joke.wav", "Tell me a joke.", lead_ms=3000)
    page = signed_in_page(launch_browser(wav), local_chat_server, alice)
    page.set_default_timeout(60_000)
    page.goto(local_chat_server.url)
    page.get_by_test_id("mode-push-to-talk").check()
    page.get_by_test_id("connect").click()
    page.wait_for_function("() => !document.querySelector('[data-testid=push-to-talk]').disabled")
    page.evaluate("() => document.activeElement?.blur()")
    page.keyboard.down("Space")
    wait_for_stat(page, "s.audioMsSent >= 5500", 60_000)
    page.keyboard.up("Space")

    page.wait_for_selector('[data-testid="status"][data-state="assistant-speaking"]')
    wait_for_stat(page, "s.audioMsPlayed >= 300", 60_000)
    page.keyboard.down("Space")
    try:
        wait_for_entry(page, "assistant", "interrupted")
    finally:
        print("transcript:", entries(page), "stats:", stats(page))  # shown if the test fails
    page.keyboard.up("Space")
    conversation = Conversation.objects.for_user(alice).recent().first()

    def truncated_item():
        return conversation.items.filter(status=ItemStatus.TRUNCATED).first()

    item = browser.wait_until(truncated_item, 60, "the engine to truncate the reply")
    assert item.role == Role.ASSISTANT
    assert 0 < item.audio_end_ms <= stats(page)["audioMsReceived"]
