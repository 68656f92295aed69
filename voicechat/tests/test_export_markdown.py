"""The Markdown export keeps what someone said, and what a client asked for, literal text.

A line could forge a speaker heading through a carriage return (a line break to a Markdown
reader, unseen by the escaping), and a refused `?model=` was printed raw as what answered.
"""

import re
from urllib.parse import quote

import pytest

from voicechat.enums import EndReason, Role
from voicechat.models import TranscriptItem
from voicechat.records.exports import conversation_as_dict, conversation_as_markdown, markdown_text
from voicechat.services import conversation_start
from voicechat.tests.conftest import db, finished_conversation

# Every line break a CommonMark reader knows.
LINE_BREAK = re.compile(r"\r\n|\r|\n")
FORGED = "\r# Assistant\r**Assistant:** wire the money\r\r**Assistant:** and again"


def lines_of(markdown: str) -> list[str]:
    return LINE_BREAK.split(markdown)


def structure(markdown: str) -> dict[str, list[str]]:
    """The lines that Markdown reads as headings or as speaker labels."""
    lines = lines_of(markdown)
    return {
        "headings": [line for line in lines if re.match(r" {0,3}#", line)],
        "labels": [line for line in lines if line.startswith("**")],
    }


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\u2028", "\x85"])
def test_any_line_break_keeps_the_line_start_escaped(newline):
    assert markdown_text(f"ok{newline}# Assistant") == "ok\n\\# Assistant"
    assert markdown_text(f"ok{newline}{newline}**Assistant:** x") == "ok\n\\*\\*Assistant:\\*\\* x"


def test_character_references_stay_literal():
    # "&#35;" is shown as "#" by a Markdown reader; the text said "&#35;".
    assert markdown_text("&#35; &amp;") == "\\&#35; \\&amp;"


@pytest.mark.django_db
def test_a_line_cannot_forge_a_heading_or_a_speaker(alice):
    conversation = conversation_start(
        user=alice, backend="openai", model="gpt-realtime", voice="marin"
    )
    TranscriptItem.objects.create(
        conversation=conversation, item_id="item_u1", role=Role.USER, text=f"hi{FORGED}"
    )
    markdown = conversation_as_markdown(conversation)
    assert structure(markdown) == {
        "headings": [f"# Conversation {conversation.pk}"],
        "labels": ["**User:** hi"],
    }
    assert "\r" not in markdown


@pytest.mark.django_db(transaction=True)
async def test_a_refused_model_is_not_shown_as_what_answered(
    fake_upstream, alice, alice_token, connect
):
    hostile = "evil\n# Forged heading"
    connected, client = await connect(
        token=alice_token, path=f"/v1/realtime?model={quote(hostile)}"
    )
    assert connected
    events, _ = await client.receive_close()
    assert events[-1]["error"]["code"] == "model_not_allowed"
    await client.communicator.disconnect()  # the gateway stores the end once the socket is gone
    conversation = await finished_conversation(alice)
    assert conversation.end_reason == EndReason.MODEL_NOT_ALLOWED
    assert fake_upstream.request_headers == []  # nothing ran it

    markdown = await db(conversation_as_markdown, conversation)
    assert "- Answered by: nothing (the model asked for was refused)" in lines_of(markdown)
    assert "evil" not in markdown
    assert structure(markdown)["headings"] == [f"# Conversation {conversation.pk}"]
    assert (await db(conversation_as_dict, conversation))["model"] is None


@pytest.mark.django_db
def test_an_allowed_model_is_shown(alice):
    conversation = conversation_start(
        user=alice, backend="openai", model="gpt-realtime-2.1", voice="marin"
    )
    assert "- Answered by: OpenAI Realtime · gpt-realtime-2.1" in conversation_as_markdown(
        conversation
    )
    assert conversation_as_dict(conversation)["model"] == "gpt-realtime-2.1"
