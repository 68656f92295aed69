"""Browser test helpers: a real daphne server, headless Chromium with a fake microphone, WAVs.

Import the fixtures into a test module (`from voicechat.tests.browser import ...`). The server
is `manage.py runserver` (daphne, with static files) in a child process on a free port, using
the test database file that pytest-django created, so rows made in a test are seen by the server
and rows the server writes are seen by the test (hence `transactional_db`).
Chromium is Debian's /usr/bin/chromium driven by Playwright; never `playwright install`.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from voicechat.tests.fake_voice_upstream import RATE, ServerThread, VoiceFakeUpstream, speechlike

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
DUMMY_KEY = "sk-test-browser-dummy-key"

browser_mark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- WAV files for the fake microphone ------------------------------------------------------


def write_wav(path: Path, pcm: bytes, rate: int = RATE) -> Path:
    """A 16-bit mono WAV (Chromium's fake capture reads 16-bit PCM; 24-bit is silently mute)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return path


def silence(ms: int, rate: int = RATE) -> bytes:
    return bytes(2 * (rate * ms // 1000))


def speech_wav(path: Path, *segments: tuple[str, int]) -> Path:
    """A WAV of ("silence" | "speech", ms) segments; start with ~1 s of silence (see pitfalls)."""
    pcm = b"".join(
        silence(ms) if kind == "silence" else speechlike(ms, seed=i)
        for i, (kind, ms) in enumerate(segments)
    )
    return write_wav(path, pcm)


def pcm_rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


# ---- the server -----------------------------------------------------------------------------


class ChatServer:
    """`manage.py runserver` (daphne) in a child process; `url` is its base URL."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ChatServer":
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in __exit__
        self.start()
        return self

    def start(self) -> None:
        """Start runserver on this server's port and wait until it answers /healthz."""
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"runserver exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.2)
        raise RuntimeError(f"runserver did not start: {self.log_path.read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.close()

    def stop(self) -> None:
        """Stop the server process (SIGTERM, as a deploy does); start() brings it back."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def server_env(**overrides: str) -> dict[str, str]:
    """The child's environment: the test database file, DEBUG (static files), and `overrides`."""
    name = connection.settings_dict["NAME"]
    assert "memory" not in str(name), "browser tests need a file database"
    # The test database, on SQLite or (make test-services) PostgreSQL and Redis.
    from voicechat.tests.servers import scaled_out_env

    env = {
        **{key: value for key, value in os.environ.items() if key != "DATABASE_URL"},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        **scaled_out_env(),
        "DEBUG": "True",
        "SECRET_KEY": settings.SECRET_KEY,  # the test's own, so its sessions are valid there
        "PYTHONUNBUFFERED": "1",
        "OPENAI_API_KEY": "",
        "REALTIME_BACKEND": "auto",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    env.update(overrides)
    return env


@pytest.fixture
def voice_upstream(request) -> Iterator[VoiceFakeUpstream]:
    """A fake voice upstream (VAD, late transcripts, paced audio replies) on its own thread.

    Parametrize it indirectly to pass VoiceFakeUpstream arguments, e.g. {"reject_status": 401}.
    """
    with ServerThread(VoiceFakeUpstream(**getattr(request, "param", {}))) as server:
        yield server


@pytest.fixture
def chat_server(transactional_db, voice_upstream, tmp_path, monkeypatch) -> Iterator[ChatServer]:
    """The whole site on daphne, its gateway pointed at the fake voice upstream."""
    # Playwright's sync API keeps an event loop in this thread; the ORM calls the tests make
    # between browser steps are still plain synchronous calls (pitfalls.md).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    env = server_env(
        OPENAI_API_KEY=DUMMY_KEY,
        OPENAI_REALTIME_URL=voice_upstream.url,
        REALTIME_BACKEND="openai",
    )
    with ChatServer(env, tmp_path / "runserver.log") as server:
        yield server


@pytest.fixture
def local_chat_server(transactional_db, tmp_path, monkeypatch) -> Iterator[ChatServer]:
    """The whole site on daphne with the offline local engine as its AI (no provider at all)."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    env = server_env(OPENAI_API_KEY="", REALTIME_BACKEND="local")
    with ChatServer(env, tmp_path / "runserver.log") as server:
        yield server


# ---- the browser ----------------------------------------------------------------------------


@pytest.fixture
def playwright_instance():
    # Per test, not per session: the sync API keeps an event loop running in this thread
    # while it lives, which would break every async test that runs after it.
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        # .ci/run installs Chromium, so in CI a missing browser is a failure, never a skip.
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}; .ci/run should have installed it")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as playwright:
        yield playwright


def chromium_args(wav: Path | None, *, grant_microphone: bool = True) -> list[str]:
    args = [
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-device-for-media-stream",
    ]
    if grant_microphone:
        args.append("--use-fake-ui-for-media-stream")
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={wav}%noloop")
    return args


@pytest.fixture
def launch_browser(playwright_instance, tmp_path) -> Iterator[Callable]:
    """launch_browser(wav, grant_microphone=True) -> a Chromium browser, closed after the test.

    Without a WAV the microphone hears silence (Chromium's own fake device beeps every second,
    which a voice detector takes for speech).
    """
    browsers = []

    def _launch(wav: Path | None = None, *, grant_microphone: bool = True):
        if wav is None:
            wav = write_wav(tmp_path / "silence.wav", silence(30_000))
        browser = playwright_instance.chromium.launch(
            executable_path=CHROMIUM, args=chromium_args(wav, grant_microphone=grant_microphone)
        )
        browsers.append(browser)
        return browser

    yield _launch
    for browser in browsers:
        browser.close()


def signed_in_page(browser, server: ChatServer, user, **context_options):
    """A page whose browser context carries `user`'s session cookie (made with the real login)."""
    client = Client()
    client.force_login(user)
    context = browser.new_context(**context_options)
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": server.url}]
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    watch_console(page)
    return page


def watch_console(page) -> None:
    """Print the page's console and errors; pytest shows them when a test fails."""
    page.on("console", lambda message: print(f"console.{message.type}: {message.text}"))
    page.on("pageerror", lambda error: print(f"pageerror: {error}"))


def wait_until(condition: Callable[[], object], timeout: float = 20, what: str = "") -> object:
    """Poll `condition` until it returns something truthy (a wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


def received(upstream, etype: str, count: int = 1, timeout: float = 20) -> list[dict]:
    """The client events of `etype` the fake upstream has received, once there are `count`."""
    return wait_until(
        lambda: (
            (found := [e for e in list(upstream.received) if e["type"] == etype])
            and len(found) >= count
            and found
        ),
        timeout,
        f"{count} {etype}",
    )


def stats(page) -> dict:
    return page.evaluate("() => ({...window.voicechat.stats})")


def wait_for_stat(page, expression: str, timeout: float = 30_000) -> None:
    """Wait until a JS expression over `s` (window.voicechat.stats) is true."""
    page.wait_for_function(
        f"() => {{ const s = window.voicechat.stats; return {expression}; }}", timeout=timeout
    )
