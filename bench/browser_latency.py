#!/usr/bin/env python3
"""Voice-to-voice latency as a user of the chat page hears it, in headless Chromium.

    python bench/browser_latency.py                  # 4 spoken turns, about 1-2 minutes
    python bench/browser_latency.py --turns 2
    python bench/browser_latency.py --push-to-talk   # the same turns, holding Space to talk
    python bench/browser_latency.py --transport websocket   # the page's WebSocket, not WebRTC
    python bench/browser_latency.py --transport both        # each in turn, one site, one run

The site runs as `make run` serves it (runserver, the offline local engine, a fresh SQLite
database in a temporary folder). Debian's Chromium opens the chat page, hands-free, with a fake
microphone that asks a few questions in the engine's own voice, over the transport chosen with
the page's own switch (WebRTC, the page's default, or the WebSocket). After each reply the page's
own measurements are read from `window.voicechat.stats` (static/voicechat/js/conversation.js):

- lastLatencyMs: from the end of the user's turn (hands-free: the server's `speech_stopped`,
  sent once the VAD has heard its silence window; push-to-talk: the release of Space, held from
  before the question until RELEASE_AFTER_MS after its last sound) to the reply playing. Over
  the WebSocket: the moment the playback worklet starts it. Over WebRTC: the server's
  `output_audio_buffer.started` (its track starts the reply) plus the receiver's mean
  jitter-buffer delay (getStats), the wait before a packet is played out;
- lastPrefillWaitMs: the browser's share of it. WebSocket: from the reply's first audio on the
  socket to the worklet starting it (the playback prefill). WebRTC: that jitter-buffer delay;
- underruns: times the worklet's playback ran dry once started (WebSocket only; 0 over WebRTC,
  where Chrome's jitter buffer conceals losses instead).

The microphone side is fixed by design: 40 ms capture chunks. Results: printed, and written to
bench/results/browser-<UTC stamp>.json. Nothing here asserts a time (BENCHMARKS.md has them).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "What is two plus two?",
    "What time is it?",
    "What is three plus four?",
    "Thank you very much.",
]
TURN_GAP_MS = 6000  # silence after each question: the reply plays out before the next one
TURN_TIMEOUT_MS = 90_000
RELEASE_AFTER_MS = 300  # push-to-talk: a person lets go a moment after their last word

# Push-to-talk: true RELEASE_AFTER_MS after the microphone has gone quiet following speech
# (the level read from the page's own analyser on the microphone); false if no question came
# within TURN_GAP_MS + 5 s (the reply took so long that the question played unheld, unheard).
SPOKEN_AND_QUIET_JS = """async ([quietMs, giveUpMs]) => {
    const analyser = window.voicechat.app.recorder.analyser;
    const samples = new Float32Array(analyser.fftSize);
    const start = performance.now();
    let heard = false, quietSince = null;
    for (;;) {
        if (!heard && performance.now() - start > giveUpMs) return false;
        await new Promise((resolve) => setTimeout(resolve, 10));
        analyser.getFloatTimeDomainData(samples);
        let sum = 0;
        for (const x of samples) sum += x * x;
        const loud = Math.sqrt(sum / samples.length) > 0.01;
        if (loud) { heard = true; quietSince = null; }
        else if (heard) {
            quietSince ??= performance.now();
            if (performance.now() - quietSince >= quietMs) return true;
        }
    }
}"""


def site_env(folder: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SQLITE_PATH": str(folder / "db.sqlite3"),
        "DEBUG": "True",
        "OPENAI_API_KEY": "",
        "REALTIME_BACKEND": "local",
        "PYTHONUNBUFFERED": "1",
    }


def prepare_site(env: dict[str, str]) -> str:
    """Migrate the fresh database and sign a user in; returns the session cookie's value."""
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    user, _ = get_user_model().objects.get_or_create(username="bench")
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def microphone_wav(path: Path, turns: int) -> Path:
    """The questions in the engine's own (steady) voice, each followed by a pause."""
    from voicechat.tests.browser import RATE, silence, write_wav
    from voicechat.tests.speech import spoken

    pcm = silence(1200)
    for question in QUESTIONS[:turns]:
        pcm += spoken(question) + silence(TURN_GAP_MS)
    return write_wav(path, pcm, RATE)


def start_site(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    from voicechat.tests.browser import free_port

    port = free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - the child holds it
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the site did not start: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the site did not answer /healthz within 60 s")


def measure(
    url: str, cookie: str, wav: Path, turns: int, *, push_to_talk: bool, transport: str
) -> list[dict]:
    from playwright.sync_api import sync_playwright

    from voicechat.tests.browser import CHROMIUM, chromium_args

    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=chromium_args(wav))
        context = browser.new_context()
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": url}])
        page = context.new_page()
        page.goto(url)
        page.get_by_test_id(f"transport-{transport}").check()
        mode = "mode-push-to-talk" if push_to_talk else "mode-hands-free"
        page.get_by_test_id(mode).check()
        page.get_by_test_id("connect").click()
        for turn in range(turns):
            if push_to_talk:
                # Press before the question starts (the last reply has finished playing).
                page.wait_for_selector(
                    '[data-testid="push-to-talk"]:not([disabled])', timeout=TURN_TIMEOUT_MS
                )
                page.wait_for_selector(
                    '[data-testid="status"][data-state="listening"]', timeout=TURN_TIMEOUT_MS
                )
                page.evaluate("() => document.activeElement?.blur()")
                page.keyboard.down("Space")
                spoken = page.evaluate(SPOKEN_AND_QUIET_JS, [RELEASE_AFTER_MS, TURN_GAP_MS + 5000])
                page.keyboard.up("Space")
                if not spoken:
                    print(f"turn {turn + 1}: missed (the last reply ran into it)", file=sys.stderr)
                    continue
            page.wait_for_function(
                "() => window.voicechat.stats.lastLatencyMs !== null"
                " && window.voicechat.stats.lastPrefillWaitMs !== null",
                timeout=TURN_TIMEOUT_MS,
            )
            stats = page.evaluate(
                """() => { const s = window.voicechat.stats;
                           const seen = {...s};
                           s.lastLatencyMs = null; s.lastPrefillWaitMs = null;
                           return seen; }"""
            )
            results.append(
                {
                    "transport": transport,
                    "turn": turn + 1,
                    "question": QUESTIONS[turn],
                    "turn_end_to_playback_ms": stats["lastLatencyMs"],
                    "prefill_wait_ms": stats["lastPrefillWaitMs"],
                    "underruns": stats["underruns"],
                }
            )
            print(f"turn {turn + 1}: {results[-1]}", file=sys.stderr, flush=True)
        browser.close()
    return results


def summary(results: list[dict]) -> dict:
    if not results:
        return {"turns": 0}
    latencies = [r["turn_end_to_playback_ms"] for r in results]
    prefill = [r["prefill_wait_ms"] for r in results]
    return {
        "turns": len(results),
        "turn_end_to_playback_ms": {
            "median": statistics.median(latencies), "min": min(latencies), "max": max(latencies),
        },
        "prefill_wait_ms": {"median": statistics.median(prefill), "max": max(prefill)},
        "underruns": max(r["underruns"] for r in results),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--turns", type=int, default=len(QUESTIONS), choices=range(1, len(QUESTIONS) + 1)
    )
    parser.add_argument(
        "--push-to-talk", action="store_true", help="hold Space for each question (not VAD)"
    )
    parser.add_argument(
        "--transport",
        choices=("webrtc", "websocket", "both"),
        default="webrtc",
        help="the page's transport (both: the WebSocket, then WebRTC, on the same site)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voicechat-browser-bench-") as folder:
        folder = Path(folder)
        env = site_env(folder)
        cookie = prepare_site(env)
        wav = microphone_wav(folder / "questions.wav", args.turns)
        load = os.getloadavg()
        process, url = start_site(env, folder / "runserver.log")
        transports = ("websocket", "webrtc") if args.transport == "both" else (args.transport,)
        try:
            results = {
                transport: measure(
                    url, cookie, wav, args.turns, push_to_talk=args.push_to_talk,
                    transport=transport,
                )
                for transport in transports
            }  # fmt: skip
        finally:
            process.terminate()
            process.wait(10)
    now = time.gmtime()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", now),
        "machine": {
            "nproc": os.cpu_count(), "load_at_start": load, "python": platform.python_version(),
        },
        "command": " ".join(["bench/browser_latency.py", *sys.argv[1:]]),
        "mode": "push-to-talk" if args.push_to_talk else "hands-free",
        "summary": {transport: summary(turns) for transport, turns in results.items()},
        "turns": [turn for turns in results.values() for turn in turns],
    }  # fmt: skip
    out = ROOT / "bench" / "results" / f"browser-{time.strftime('%Y%m%dT%H%M%SZ', now)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    print(f"written to {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
