"""The chat page as HTML: login, configuration handed to JavaScript, test hooks, static files."""

import json
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db

STATIC = Path(settings.BASE_DIR) / "static" / "voicechat"


def test_chat_page_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_login_form_signs_in_and_lands_on_chat(client, alice):
    page = client.get("/login/")
    assert b'name="username"' in page.content and b"csrfmiddlewaretoken" in page.content
    response = client.post("/login/", {"username": "alice", "password": "alice-password-123"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_wrong_password_is_explained(client, alice):
    response = client.post("/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"didn't match" in response.content


def test_logout_is_a_post_and_returns_to_login(client, alice):
    client.force_login(alice)
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert client.get("/").status_code == 302


def chat_config(response) -> dict:
    match = re.search(
        rb'<script id="chat-config" type="application/json">(.*?)</script>', response.content
    )
    assert match, "the page hands its configuration over with json_script"
    return json.loads(match.group(1))


def test_chat_config_reaches_javascript_through_json_script(client, alice, settings):
    settings.REALTIME_VOICES = ["cedar", "marin"]
    settings.REALTIME_VOICE = "cedar"
    settings.REALTIME_MODEL = "gpt-realtime-mini"
    client.force_login(alice)
    config = chat_config(client.get("/"))
    assert config["voices"] == ["cedar", "marin"]
    assert config["voice"] == "cedar"
    assert config["model"] == "gpt-realtime-mini"
    assert config["realtimePath"] == "/v1/realtime"
    assert config["worklets"] == {
        "capture": "/static/voicechat/worklets/capture-processor.js",
        "playback": "/static/voicechat/worklets/playback-processor.js",
    }


def test_chat_page_says_which_local_voice_speaks_each_name(client, alice, settings):
    settings.REALTIME_BACKEND = "local"
    settings.LOCAL_TTS = "piper"
    settings.REALTIME_VOICES = ["marin", "coral"]
    client.force_login(alice)
    assert chat_config(client.get("/"))["voiceDescriptions"] == {
        "marin": "Joe (Piper, US male)",
        "coral": "espeak-ng, US female (f5)",
    }
    # OpenAI's own voices need no description.
    settings.REALTIME_BACKEND = "openai"
    settings.OPENAI_API_KEY = "sk-test-voices"
    assert chat_config(client.get("/"))["voiceDescriptions"] == {}


def test_provider_key_never_reaches_the_page(client, alice, settings):
    settings.OPENAI_API_KEY = "sk-proj-never-in-a-page-0123456789"
    client.force_login(alice)
    assert b"sk-proj-never-in-a-page" not in client.get("/").content


@pytest.mark.parametrize(
    "testid",
    ["connect", "disconnect", "stop", "status", "text-input", "send", "push-to-talk", "transcript"],
)
def test_page_has_the_stable_test_hooks(client, alice, testid):
    client.force_login(alice)
    assert f'data-testid="{testid}"'.encode() in client.get("/").content


def test_no_javascript_is_templated_into_the_page(client, alice):
    client.force_login(alice)
    html = client.get("/").content.decode()
    inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", html)
    # The only inline script is the JSON configuration.
    assert inline == [' id="chat-config" type="application/json"']


@pytest.mark.parametrize("name", ["capture-processor", "playback-processor"])
def test_each_worklet_registers_one_processor_named_after_its_file(name):
    path = finders.find(f"voicechat/worklets/{name}.js")
    assert path, "worklets are real static files"
    source = Path(path).read_text()
    assert re.findall(r'registerProcessor\("([^"]+)"', source) == [name]


def test_modules_are_one_class_per_file():
    for path in sorted((STATIC / "js").glob("*.js")):
        classes = re.findall(r"^export class (\w+)", path.read_text(), re.MULTILINE)
        assert len(classes) <= 1, f"{path.name} exports {classes}"
    for name in ("realtime-client", "recorder", "player", "waveform", "app"):
        assert (STATIC / "js" / f"{name}.js").exists()
