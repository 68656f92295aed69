"""Recordings: both sides' audio stored per turn when recording is on, nothing when it is off;
played to the owner only, purged after the retention, erased with the conversation, and a full
disk stops the recording but not the conversation."""

import base64
import io
import logging
import zipfile
from datetime import timedelta

import av
import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.utils.timezone import now

from voicechat import services
from voicechat.enums import Backend, Role
from voicechat.models import Recording, TranscriptItem, UserLimits, recordings_storage
from voicechat.records.recordings import BYTES_PER_SECOND, SAMPLE_RATE, encode_opus
from voicechat.tests.conftest import db, finished_conversation

pytestmark = pytest.mark.django_db(transaction=True)

REPLY_ITEM = "item_reply_1"


@pytest.fixture
def recordings_dir(settings, tmp_path):
    """Recordings go to a directory of the test's own (recording itself stays as the test sets)."""
    location = tmp_path / "recordings"
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }
    return location


@pytest.fixture
def recording_on(settings, recordings_dir):
    settings.RECORDING_ENABLED = True
    return recordings_dir


def tone(seconds: float, hz: float = 440) -> bytes:
    """A loud sine at 24 kHz, PCM16: something an encoder cannot squeeze to nothing."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


def decoded_seconds(data: bytes) -> float:
    """How long an Ogg/Opus file plays, counted from its decoded samples."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.rate


async def say_and_hear(client, fake_upstream, *, said: float, heard: float) -> str:
    """The user speaks `said` seconds (appended in 100 ms chunks, then committed); the fake
    upstream answers with `heard` seconds of audio. Returns the user's item id."""
    await client.receive_until("session.updated")
    chunk = tone(0.1)
    for _ in range(round(said * 10)):
        await client.send({"type": "input_audio_buffer.append", "audio": b64(chunk)})
    await client.send({"type": "input_audio_buffer.commit"})
    committed = (await client.receive_until("input_audio_buffer.committed"))[-1]
    reply = tone(heard, hz=220)
    half = len(reply) // 2 - (len(reply) // 2) % 2
    ids = {"response_id": "resp_1", "item_id": REPLY_ITEM, "output_index": 0, "content_index": 0}
    await fake_upstream.push(
        [
            {"type": "response.output_audio.delta", **ids, "delta": b64(reply[:half])},
            {"type": "response.output_audio.delta", **ids, "delta": b64(reply[half:])},
            {"type": "response.output_audio.done", **ids},
        ]
    )
    await client.receive_until("response.output_audio.done")
    return committed["item_id"]


async def test_nothing_is_written_when_recording_is_off(
    connect, fake_upstream, alice, alice_token, recordings_dir
):
    _, client = await connect(token=alice_token)
    await say_and_hear(client, fake_upstream, said=0.5, heard=0.5)
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)

    assert await db(lambda: Recording.objects.filter(conversation=conversation).count()) == 0
    assert not recordings_dir.exists() or not any(recordings_dir.rglob("*"))


@pytest.mark.over_every_transport  # uvicorn-gateway: the synchronous shortcut's hook too
async def test_both_sides_are_stored_per_turn_with_their_durations(
    connect, fake_upstream, alice, alice_token, recording_on
):
    _, client = await connect(token=alice_token)
    user_item = await say_and_hear(client, fake_upstream, said=1.0, heard=0.6)
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)

    recordings = await db(
        lambda: {r.role: r for r in Recording.objects.filter(conversation=conversation)}
    )
    assert set(recordings) == {Role.USER, Role.ASSISTANT}
    assert recordings[Role.USER].item_id == user_item
    assert recordings[Role.USER].duration_ms == 1000
    assert recordings[Role.ASSISTANT].item_id == REPLY_ITEM
    assert recordings[Role.ASSISTANT].duration_ms == 600
    for recording, seconds in [(recordings[Role.USER], 1.0), (recordings[Role.ASSISTANT], 0.6)]:
        path = recording_on / recording.file.name
        data = path.read_bytes()
        assert data.startswith(b"OggS")
        # Compressed: far smaller than the PCM it holds.
        assert len(data) < seconds * BYTES_PER_SECOND / 4
        assert decoded_seconds(data) == pytest.approx(seconds, abs=0.03)


async def test_a_users_own_setting_turns_recording_on(
    connect, fake_upstream, alice, alice_token, recordings_dir, settings
):
    settings.RECORDING_ENABLED = False
    await db(UserLimits.objects.create, user=alice, record_audio=True)
    _, client = await connect(token=alice_token)
    await say_and_hear(client, fake_upstream, said=0.3, heard=0.3)
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)

    assert await db(lambda: Recording.objects.filter(conversation=conversation).count()) == 2


async def test_a_users_own_setting_turns_recording_off(
    connect, fake_upstream, alice, alice_token, recording_on
):
    await db(UserLimits.objects.create, user=alice, record_audio=False)
    _, client = await connect(token=alice_token)
    await say_and_hear(client, fake_upstream, said=0.3, heard=0.3)
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)

    assert await db(lambda: Recording.objects.filter(conversation=conversation).count()) == 0


async def test_the_users_turn_starts_where_the_speech_does(
    connect, fake_upstream, alice, alice_token, recording_on, settings
):
    """Server VAD: the buffer holds the quiet before the words; speech_started says where they
    begin, and the recording starts there. Minutes of quiet do not crowd the words out."""
    settings.RECORDING_MAX_TURN_SECONDS = 2
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated")
    quiet, words = b"\0" * (BYTES_PER_SECOND // 10), tone(0.1)
    for _ in range(30):  # 3 s of quiet: more than a turn may hold
        await client.send({"type": "input_audio_buffer.append", "audio": b64(quiet)})
    for _ in range(12):  # then 1.2 s of speech
        await client.send({"type": "input_audio_buffer.append", "audio": b64(words)})
    await fake_upstream.wait_for("input_audio_buffer.append", count=42)
    await fake_upstream.push(
        [
            {"type": "input_audio_buffer.speech_started", "audio_start_ms": 3000, "item_id": "u1"},
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 4200, "item_id": "u1"},
            {"type": "input_audio_buffer.committed", "item_id": "u1", "previous_item_id": None},
        ]
    )
    await client.receive_until("input_audio_buffer.committed")
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice)

    recording = await db(Recording.objects.get, conversation=conversation)
    assert (recording.item_id, recording.duration_ms) == ("u1", 1200)
    # Only the words: every sample of the file is loud.
    with av.open(str(recording_on / recording.file.name)) as container:
        samples = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
    assert np.abs(samples[2400:-2400]).mean() > 0.1  # past the codec's edges


class FullDisk:
    """A storage whose disk is full."""

    def save(self, name, content, max_length=None):
        raise OSError(28, "No space left on device")


async def test_a_full_disk_stops_the_recording_not_the_conversation(
    connect, fake_upstream, alice, alice_token, recording_on, monkeypatch, caplog
):
    monkeypatch.setattr("voicechat.records.recordings.recordings_storage", FullDisk)
    _, client = await connect(token=alice_token)
    with caplog.at_level(logging.ERROR, logger="voicechat.records.recordings"):
        await say_and_hear(client, fake_upstream, said=0.3, heard=0.3)
        # The conversation goes on: a text turn is still answered after the failure.
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Still there?"}],
                },
            }
        )
        await client.send({"type": "response.create"})
        await client.receive_until("response.done")
        await client.communicator.disconnect()
        conversation = await finished_conversation(alice)

    assert conversation.end_reason == "client_closed"
    assert await db(lambda: Recording.objects.filter(conversation=conversation).count()) == 0
    assert "recording stopped: could not store audio" in caplog.text
    # Logged once: the assistant's turn after it was not tried.
    assert caplog.text.count("recording stopped") == 1


# --- playback, export, retention, deletion ----------------------------------------------------


def recorded_conversation(user, *, seconds: float = 0.5, ended: bool = True):
    """A stored conversation with one user line and its recording, as the gateway leaves it."""
    conversation = services.conversation_start(
        user=user, backend=Backend.OPENAI, model="gpt-realtime", voice="alloy"
    )
    TranscriptItem.objects.create(
        conversation=conversation, item_id="item_u1", role=Role.USER, text="Hello there"
    )
    TranscriptItem.objects.create(
        conversation=conversation,
        item_id="item_a1",
        previous_item_id="item_u1",
        role=Role.ASSISTANT,
        text="Hi!",
    )
    for item_id, role in [("item_u1", Role.USER), ("item_a1", Role.ASSISTANT)]:
        name = recordings_storage().save(
            f"{conversation.pk}/{role}-{item_id}.ogg",
            ContentFile(encode_opus(tone(seconds))),
        )
        Recording.objects.create(
            conversation=conversation,
            item_id=item_id,
            role=role,
            file=name,
            duration_ms=int(seconds * 1000),
        )
    if ended:
        services.conversation_end(conversation_id=conversation.pk, reason="client_closed")
    return conversation


def test_history_plays_each_line_to_its_owner_only(client, alice, bob, recordings_dir):
    conversation = recorded_conversation(alice)
    recording = conversation.recordings.get(item_id="item_u1")
    url = f"/recordings/{recording.pk}.ogg"

    client.force_login(alice)
    page = client.get(f"/history/{conversation.pk}/").content.decode()
    assert page.count('data-testid="recording"') == 2
    assert f'src="{url}"' in page
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "audio/ogg"
    assert "private" in response["Cache-Control"]
    assert decoded_seconds(b"".join(response.streaming_content)) == pytest.approx(0.5, abs=0.03)

    client.force_login(bob)
    assert client.get(url).status_code == 404
    client.logout()
    assert client.get(url).status_code == 302  # to the sign-in page


def test_staff_play_recordings_in_admin(client, alice, django_user_model, recordings_dir):
    conversation = recorded_conversation(alice)
    admin_user = django_user_model.objects.create_superuser("root", password="root-password-1")
    client.force_login(admin_user)
    page = client.get(f"/admin/voicechat/conversation/{conversation.pk}/change/").content.decode()
    recording = conversation.recordings.get(item_id="item_a1")
    assert f'<audio controls preload="none" src="/recordings/{recording.pk}.ogg">' in page
    assert client.get(f"/recordings/{recording.pk}.ogg").status_code == 200


def test_staff_without_the_permission_get_404(client, alice, staff_user, recordings_dir):
    recording = recorded_conversation(alice).recordings.first()
    client.force_login(staff_user)
    assert client.get(f"/recordings/{recording.pk}.ogg").status_code == 404


def test_the_zip_export_holds_transcript_and_audio(client, alice, recordings_dir):
    conversation = recorded_conversation(alice)
    client.force_login(alice)
    page = client.get(f"/history/{conversation.pk}/").content.decode()
    assert f'href="/history/{conversation.pk}/export.zip"' in page
    response = client.get(f"/history/{conversation.pk}/export.zip")
    assert response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = archive.namelist()
    assert "conversation.md" in names and "conversation.json" in names
    audio = sorted(name for name in names if name.endswith(".ogg"))
    assert len(audio) == 2
    assert decoded_seconds(archive.read(audio[0])) == pytest.approx(0.5, abs=0.03)
    assert "Hello there" in archive.read("conversation.md").decode()
    # The Markdown download is unchanged: no audio, no ZIP.
    markdown = client.get(f"/history/{conversation.pk}/export.md")
    assert markdown["Content-Type"].startswith("text/markdown")


def test_staff_export_conversations_with_their_recordings(
    client, alice, django_user_model, recordings_dir
):
    first, second = recorded_conversation(alice), recorded_conversation(alice)
    admin_user = django_user_model.objects.create_superuser("root", password="root-password-1")
    client.force_login(admin_user)
    response = client.post(
        "/admin/voicechat/conversation/",
        {"action": "export_zip", "_selected_action": [first.pk, second.pk]},
    )
    assert response["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    for conversation in (first, second):
        folder = f"conversation-{conversation.pk}/"
        assert folder + "conversation.md" in names
        assert sum(n.startswith(folder + "audio/") for n in names) == 2


def test_the_zip_export_is_offered_to_staff_who_may_hear_recordings(
    client, staff_user, alice, recordings_dir
):
    recorded_conversation(alice)  # the list shows its actions only when it lists something

    def actions() -> str:
        client.force_login(staff_user)  # a fresh login: permissions are cached per user object
        return client.get("/admin/voicechat/conversation/").content.decode()

    staff_user.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    assert 'value="export_markdown"' in actions()
    assert 'value="export_zip"' not in actions()
    staff_user.user_permissions.add(Permission.objects.get(codename="view_recording"))
    assert 'value="export_zip"' in actions()


def test_no_zip_offered_without_recordings(client, alice):
    conversation = services.conversation_start(
        user=alice, backend=Backend.OPENAI, model="gpt-realtime", voice="alloy"
    )
    client.force_login(alice)
    page = client.get(f"/history/{conversation.pk}/").content.decode()
    assert "export.zip" not in page
    assert 'data-testid="recording"' not in page


def test_recordings_are_purged_after_the_retention(alice, recordings_dir, settings):
    settings.RECORDING_RETENTION_DAYS = 7
    old, new = recorded_conversation(alice), recorded_conversation(alice)
    old.recordings.update(created=now() - timedelta(days=8))
    old_files = [recordings_dir / r.file.name for r in old.recordings.all()]
    new_files = [recordings_dir / r.file.name for r in new.recordings.all()]
    assert all(path.exists() for path in old_files + new_files)

    out = io.StringIO()
    call_command("purge_recordings", stdout=out)

    assert "2 recording(s)" in out.getvalue()
    assert not old.recordings.exists()
    assert not any(path.exists() for path in old_files)
    assert new.recordings.count() == 2
    assert all(path.exists() for path in new_files)


def test_the_purge_erases_files_of_conversations_deleted_outright(alice, recordings_dir):
    """Deleted in admin, or with its user: the rows cascade away, the files are left to purge."""
    gone, kept = recorded_conversation(alice), recorded_conversation(alice)
    gone_files = [recordings_dir / r.file.name for r in gone.recordings.all()]
    kept_files = [recordings_dir / r.file.name for r in kept.recordings.all()]
    gone.delete()
    assert all(path.exists() for path in gone_files)

    out = io.StringIO()
    call_command("purge_recordings", stdout=out)

    assert "2 file(s) of conversations deleted outright" in out.getvalue()
    assert not any(path.exists() for path in gone_files)
    assert all(path.exists() for path in kept_files)


def test_the_purge_with_nothing_ever_recorded(recordings_dir):
    out = io.StringIO()
    call_command("purge_recordings", stdout=out)
    assert "0 recording(s)" in out.getvalue()


def test_deleting_a_conversation_erases_its_recordings(client, alice, recordings_dir):
    conversation = recorded_conversation(alice)
    files = [recordings_dir / r.file.name for r in conversation.recordings.all()]
    recording = conversation.recordings.first()
    client.force_login(alice)
    client.post(f"/history/{conversation.pk}/delete/")

    assert not Recording.objects.filter(conversation=conversation).exists()
    assert not any(path.exists() for path in files)
    assert client.get(f"/recordings/{recording.pk}.ogg").status_code == 404


def test_the_chat_page_says_when_recording_is_on(client, alice, settings):
    client.force_login(alice)
    settings.RECORDING_ENABLED = False
    assert 'data-testid="recording-notice"' not in client.get("/").content.decode()
    settings.RECORDING_ENABLED = True
    assert 'data-testid="recording-notice"' in client.get("/").content.decode()
    UserLimits.objects.create(user=alice, record_audio=False)
    assert 'data-testid="recording-notice"' not in client.get("/").content.decode()


# --- the offline engine ---------------------------------------------------------------------


@pytest.fixture
def offline_engine(settings, monkeypatch):
    """REALTIME_BACKEND=local, hearing by loudness and a scripted recognizer (fast, and the
    same words every run): the recording is what is tested, not the hearing."""
    from voicechat.local_engine import speech, stt, vad
    from voicechat.tests.test_local_engine_push_to_talk import LoudnessVAD
    from voicechat.tests.test_local_transcription import ScriptedRecognizer

    settings.REALTIME_BACKEND = "local"
    settings.OPENAI_API_KEY = ""
    settings.LOCAL_LLM_URL = ""
    monkeypatch.setattr(vad, "VoiceActivityDetector", LoudnessVAD)
    monkeypatch.setattr(speech, "warm_up", lambda: None)
    scripted = ScriptedRecognizer()
    monkeypatch.setattr(stt, "get_recognizer", lambda language: scripted)


async def test_the_offline_engine_is_recorded_both_ways(
    connect, offline_engine, alice, alice_token, recording_on
):
    _, client = await connect(token=alice_token)
    await client.receive_until("session.updated", timeout=60)
    # Push to talk: the turn is the audio between the press and the release (the commit).
    await client.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        }
    )
    await client.receive_until("session.updated", timeout=30)
    chunk = tone(0.1)
    for _ in range(8):
        await client.send({"type": "input_audio_buffer.append", "audio": b64(chunk)})
    await client.send({"type": "input_audio_buffer.commit"})
    user_item = (await client.receive_until("input_audio_buffer.committed", timeout=30))[-1]
    # A typed turn, answered in speech.
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is twelve times seven?"}],
            },
        }
    )
    await client.send({"type": "response.create"})
    events = await client.receive_until("response.done", timeout=120)
    reply_audio = sum(
        len(base64.b64decode(e["delta"]))
        for e in events
        if e["type"] == "response.output_audio.delta"
    )
    reply_item = next(e["item_id"] for e in events if e["type"] == "response.output_audio.delta")
    await client.communicator.disconnect()
    conversation = await finished_conversation(alice, timeout=60)

    recordings = await db(
        lambda: {r.item_id: r for r in Recording.objects.filter(conversation=conversation)}
    )
    assert recordings[user_item["item_id"]].role == Role.USER
    assert recordings[user_item["item_id"]].duration_ms == 800
    assert recordings[reply_item].role == Role.ASSISTANT
    assert recordings[reply_item].duration_ms == reply_audio * 1000 // BYTES_PER_SECOND > 500
    data = (recording_on / recordings[reply_item].file.name).read_bytes()
    assert decoded_seconds(data) == pytest.approx(reply_audio / BYTES_PER_SECOND, abs=0.03)


def test_staff_turn_recording_on_for_one_user_in_admin(client, alice, django_user_model):
    admin_user = django_user_model.objects.create_superuser("root", password="root-password-1")
    client.force_login(admin_user)
    page = client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()
    assert 'name="limits-0-record_audio"' in page


async def test_memory_is_bounded_while_the_encoder_is_behind(settings, caplog):
    """Turns wait for the encoder up to MAX_QUEUED_TURNS; past that one is dropped and logged,
    and a turn never holds more than RECORDING_MAX_TURN_SECONDS."""
    from voicechat.records.recordings import MAX_QUEUED_TURNS, ConversationRecorder

    settings.RECORDING_MAX_TURN_SECONDS = 1
    recorder = ConversationRecorder(conversation_id=1)  # never started: nothing is encoded
    append = f'{{"type":"input_audio_buffer.append","audio":"{b64(tone(0.5))}"}}'
    with caplog.at_level(logging.WARNING, logger="voicechat.records.recordings"):
        for turn in range(MAX_QUEUED_TURNS + 1):
            for _ in range(6):  # 3 s, of which the last 1 s is kept
                recorder.client_frame(append)
            recorder.server_event(
                "input_audio_buffer.committed",
                f'{{"type":"input_audio_buffer.committed","item_id":"u{turn}"}}',
            )
    queued = [recorder._queue.get_nowait() for _ in range(recorder._queue.qsize())]
    assert [turn.item_id for turn in queued] == [f"u{i}" for i in range(MAX_QUEUED_TURNS)]
    assert {len(turn.pcm) for turn in queued} == {BYTES_PER_SECOND}
    assert f"turn u{MAX_QUEUED_TURNS} dropped: the encoder is behind" in caplog.text
