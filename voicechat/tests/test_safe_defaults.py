"""Safe defaults: DEBUG only when asked, no server on the public development key, and the
production settings clean under Django's deployment checklist (`manage.py check --deploy`)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from voicechat.tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
# What a deployer sets for production (README, "Running in production"), and a key of its own.
PRODUCTION = {
    "SECRET_KEY": "a-key-of-their-own-" + "k3y" * 20,
    "ALLOWED_HOSTS": "voice.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://voice.example.com",
    "HTTPS": "true",
}


def environment(**env: str) -> dict[str, str]:
    """This machine's environment with none of the settings under test, plus `env`."""
    unset = ("DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "HTTPS", "SECURE_SSL_REDIRECT")
    base = {key: value for key, value in os.environ.items() if key not in unset}
    # A provider key, so no command waits on the offline engine's models: not under test here.
    base.update(DJANGO_SETTINGS_MODULE="config.settings", OPENAI_API_KEY="x", PYTHONUNBUFFERED="1")
    return {**base, **env}


def run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    """A command run to its end; one that serves instead of refusing fails the test (timeout)."""
    return subprocess.run(
        command, cwd=ROOT, env=environment(**env), capture_output=True, text=True, timeout=120
    )


def settings_with(**env: str) -> dict:
    names = [
        "DEBUG",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
    ]
    script = f"import json, config.settings as s; print(json.dumps({{n: getattr(s, n) for n in {names}}}))"
    done = run([sys.executable, "-c", script], **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_debug_is_on_only_when_asked():
    # Without DATABASE_URL (the embedded defaults) too: that used to mean DEBUG.
    assert settings_with()["DEBUG"] is False
    assert settings_with(DEBUG="1")["DEBUG"] is True
    assert settings_with(DEBUG="true")["DEBUG"] is True


def test_plain_http_stays_usable_and_https_turns_on_the_protections():
    assert settings_with(DEBUG="1") == {
        "DEBUG": True,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_SSL_REDIRECT": False,
        "SECURE_HSTS_SECONDS": 0,
    }
    assert settings_with(HTTPS="true") == {
        "DEBUG": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000,
    }
    # A proxy that redirects to HTTPS itself may keep that job.
    assert settings_with(HTTPS="true", SECURE_SSL_REDIRECT="false")["SECURE_SSL_REDIRECT"] is False


def test_uvicorn_refuses_to_start_with_the_development_key():
    command = [sys.executable, "-m", "uvicorn", "config.asgi:application"]
    done = run([*command, "--port", str(free_port()), "--lifespan", "off"])
    assert done.returncode != 0
    assert "voicechat.E301" in done.stderr and "Set SECRET_KEY" in done.stderr


def test_serve_refuses_to_start_with_the_development_key():
    port = free_port()
    done = run([sys.executable, "manage.py", "serve", "--port", str(port), "--workers", "1"])
    assert done.returncode != 0
    assert "voicechat.E301" in done.stderr and "Set SECRET_KEY" in done.stderr
    assert "serving" not in done.stdout  # refused before any worker started
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # and nothing holds the port


def test_check_deploy_is_clean_for_production_settings():
    check = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    done = run(check, **PRODUCTION)
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout
    # Without a key of its own, the deployment check says so.
    without_key = {name: value for name, value in PRODUCTION.items() if name != "SECRET_KEY"}
    done = run(check, **without_key)
    assert done.returncode != 0
    assert "voicechat.E301" in done.stderr


def test_make_run_asks_for_debug(tmp_path):
    # Every command `make run` runs, recorded by a stand-in for the project's Python.
    log = tmp_path / "commands"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "DEBUG=$DEBUG $*" >> {log}\n')
    python.chmod(0o755)
    done = run(["make", "--no-print-directory", "-o", "install", "run", f"PY={python}"])
    assert done.returncode == 0, done.stderr
    commands = log.read_text().splitlines()
    assert any("manage.py runserver" in line for line in commands), commands
    assert all(line.startswith("DEBUG=1 ") for line in commands), commands
