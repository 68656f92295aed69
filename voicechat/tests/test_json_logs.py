"""LOG_FORMAT=json: one JSON object per line, naming the conversation, user and process."""

import io
import json
import logging
import os

import pytest

from voicechat.monitoring.logformat import JsonFormatter
from voicechat.tests.conftest import PROVIDER_KEY

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def json_log():
    """The configured console handler (its filters included), writing JSON lines to a buffer."""
    # Imported first: get_asgi_application() sets logging up again, with a new handler.
    import config.asgi  # noqa: F401

    root = logging.getLogger()
    handler = next(
        h for h in root.handlers if any(type(f).__name__ == "RedactingFilter" for f in h.filters)
    )
    stream, old_stream, old_formatter, old_level = (
        io.StringIO(),
        handler.stream,
        handler.formatter,
        root.level,
    )
    handler.setStream(stream)
    handler.setFormatter(JsonFormatter())
    root.setLevel(logging.INFO)
    yield stream
    handler.setStream(old_stream)
    handler.setFormatter(old_formatter)
    root.setLevel(old_level)


def test_settings_put_the_ids_on_every_handler(settings):
    for handler in settings.LOGGING["handlers"].values():
        assert handler["filters"][:1] == ["conversation_context"]
        assert "redact_secrets" in handler["filters"]


async def test_gateway_lines_carry_the_conversation_and_user(
    fake_upstream, alice, alice_token, connect, json_log
):
    connected, client = await connect(token=alice_token)
    assert connected
    assert (await client.receive())["type"] == "session.created"
    await client.communicator.disconnect()
    logging.getLogger("voicechat.audit").warning("leaked %s", PROVIDER_KEY)

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    gateway = [line for line in lines if line["logger"] == "voicechat.audit"]
    opened = next(line for line in gateway if "opened" in line["message"])
    ended = next(line for line in gateway if "ended" in line["message"])
    for line in (opened, ended):
        assert line["user_id"] == alice.pk
        assert line["conversation_id"] == int(opened["message"].split()[1])
        assert line["process"] == os.getpid()
    assert PROVIDER_KEY not in json_log.getvalue()
    assert "leaked" in gateway[-1]["message"]
