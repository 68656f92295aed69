"""How long a conversation's audio is held while it moves to a fresh upstream session.

Run from the repository root:  python bench/recycle_pause.py          (about 2 minutes)

The real gateway (uvicorn with its own protocol, in this process) relays a client that streams
microphone audio at real-time pace (20 ms appends) for --seconds, once without recycling and
once with a recycle every --every seconds (REALTIME_RECYCLE_AFTER_SECONDS), to the fake OpenAI
upstream and to the offline engine. Each append's arrival at the upstream is timed; the longest
gap between two arrivals is the longest pause a recycle puts in the user's audio (appends sent
during a move wait and then go to the fresh session). Prints medians, p99 and maxima per run,
with the machine's load: these machines are shared, so compare within one run only.
"""

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ["SQLITE_PATH"] = str(Path(tempfile.mkdtemp(prefix="voicechat-recycle-")) / "db.sqlite3")
os.environ.setdefault("SECRET_KEY", "bench-only-" + os.urandom(8).hex())
os.environ["LOCAL_LLM"] = "none"  # the pause is the gateway's, not the model's

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from voicechat.local_engine import LocalUpstream  # noqa: E402
from voicechat.services import api_token_create  # noqa: E402
from voicechat.tests.conftest import served_gateway  # noqa: E402
from voicechat.tests.fake_upstream import FakeRealtimeServer  # noqa: E402

APPEND = json.dumps(
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(960)).decode()}
)  # 20 ms of silence, PCM16 24 kHz
APPEND_S = 0.020


class TimedFakeUpstream(FakeRealtimeServer):
    """The fake OpenAI upstream, noting when each append arrives."""

    def __init__(self, arrivals: list[float]) -> None:
        super().__init__()
        self.arrivals = arrivals

    def _reply(self, event, session, state):
        if event.get("type") == "input_audio_buffer.append":
            self.arrivals.append(time.monotonic())
        return super()._reply(event, session, state)


def time_local_appends(arrivals: list[float]) -> None:
    """Note when each append reaches the offline engine (LocalUpstream.send)."""
    send = LocalUpstream.send

    async def timed_send(self, frame: str) -> None:
        if '"input_audio_buffer.append"' in frame[:48]:
            arrivals.append(time.monotonic())
        await send(self, frame)

    LocalUpstream.send = timed_send


async def stream(address: str, token: str, seconds: float) -> None:
    """Send 20 ms appends at real-time pace for `seconds`, reading whatever comes back."""
    url = f"ws://{address}/v1/realtime?model={settings.REALTIME_MODEL}"
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:

        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - start < seconds:
            await ws.send(APPEND)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * APPEND_S - now))
        reader.cancel()


def gaps_ms(arrivals: list[float]) -> list[float]:
    return [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)]


def summary(name: str, arrivals: list[float], recycles: int) -> str:
    gaps = sorted(gaps_ms(arrivals))
    if not gaps:
        return f"{name:<28} no appends arrived"
    p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
    return (
        f"{name:<28} appends {len(arrivals):>5}  recycles {recycles:>2}  gap median "
        f"{statistics.median(gaps):5.1f} ms  p99 {p99:6.1f} ms  max {gaps[-1]:7.1f} ms"
    )


async def run(backend: str, every: float, seconds: float, token: str, user) -> str:
    from voicechat.models import Conversation

    arrivals: list[float] = []
    settings.REALTIME_RECYCLE_AFTER_SECONDS = every
    settings.REALTIME_RECYCLE_GRACE_SECONDS = 1.0
    before = Conversation.objects.count()
    if backend == "openai":
        async with TimedFakeUpstream(arrivals) as fake:
            settings.REALTIME_BACKEND, settings.OPENAI_REALTIME_URL = "openai", fake.url
            settings.OPENAI_API_KEY = "sk-bench-not-a-real-key"
            async with served_gateway() as address:
                await stream(address, token, seconds)
    else:
        settings.REALTIME_BACKEND, settings.OPENAI_API_KEY = "local", ""
        time_local_appends(arrivals)
        async with served_gateway() as address:
            await stream(address, token, seconds)
    await asyncio.sleep(1)  # the conversation's end is stored
    conversation = Conversation.objects.order_by("-pk").first()
    assert Conversation.objects.count() == before + 1
    label = f"{backend}, " + (f"recycle every {every:g} s" if every else "no recycling")
    return summary(label, arrivals, conversation.recycles)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--backends", default="openai,local")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("bench", password="bench-password-123")
    token = api_token_create(user=user, name="bench")[1]
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for backend in args.backends.split(","):
        for every in (0.0, args.every):
            print(await run(backend, every, args.seconds, token, user), flush=True)


if __name__ == "__main__":
    # The ORM from the event loop's thread, as a script (not a server) may.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    asyncio.run(main())
