"""WebRTC calls on the server: CPU per call and reply latency, N calls at once.

Run from the repository root:  .venv/bin/python bench/webrtc_calls.py             (about 10 min)
                               .venv/bin/python bench/webrtc_calls.py --ns 1,2 --seconds 10

Offline engine (`--engine local`): a real server (`manage.py serve --workers 1`, as production
runs it; REALTIME_BACKEND=local, LOCAL_LLM=none, so the rule-based responder answers and the
cost is the server's: WebRTC, Opus, VAD, Whisper, piper) answers N calls from aiortc peers in
this process. Each peer says a sentence (the engine's piper voice, 20 ms frames at real-time
pace), is silent for --gap seconds, and so on in a loop, each call starting at its own place in
it. Over a steady window of --seconds, after --warmup, it measures:

- the server's CPU: utime + stime of its processes (/proc), over the window, in cores, and per
  call; and this process's own (the peers: Opus both ways), which shares the machine;
- per utterance, from the end of the speech (its last voiced sample leaving the peer) to the
  first loud frame of the reply on the peer's track: includes the 500 ms silence window of
  server_vad, the engine, the Opus/RTP path and aiortc's jitter buffer; and from the
  `input_audio_buffer.speech_stopped` event's arrival on the data channel to that frame, and
  to the arrival of `output_audio_buffer.started` (the server's track starting the reply: the
  engine's part, without the media path).

For each N in --ns: median and range of those latencies, how many utterances got no reply
before the next one, and "calls before the median doubles" against the first N (an unanswered
utterance counting as an endless latency). `--engine silent`: the same calls with a silent
microphone, so no turns: what keeping a call up costs (Opus both ways, SRTP, RTP pacing, the
engine's VAD on silence).

OpenAI backend (`--engine openai`): the server makes each call at the fake OpenAI of the tests
(voicechat/tests/fake_upstream.py, in this process: the media side is the fake's aiortc, not the
server's) and follows it over the sideband WebSocket. Each peer sends a typed message and
`response.create` on the data channel every --gap seconds; the fake answers with a text response
(about ten events) on the data channel and the sideband. Measured: the server's CPU per call.

The machine is shared: `uptime` is printed before and after each N. Results also go to
bench/results/webrtc_calls-<time>.json.
"""

import argparse
import asyncio
import fractions
import json
import logging
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The bench's own database and key, shared with the server it starts (set by prepare()).
FOLDER = Path(tempfile.gettempdir())
BENCH_ENV: dict[str, str] = {}

RATE = 24000
FRAME = RATE // 50  # 20 ms
VOICED = 300  # a sample louder than this is speech
LOUD_RMS = 300  # a received frame this loud is reply audio
SENTENCES = ["What is twelve times seven?", "What time is it?", "My name is Ada."]
PROVIDER_KEY = "sk-bench-not-a-real-key"
SILENCE_MS = 500
TURNS = {
    "audio": {
        "input": {
            "turn_detection": {
                "type": "server_vad",
                "prefix_padding_ms": 300,
                "silence_duration_ms": SILENCE_MS,
            }
        }
    }
}


# --- bookkeeping (tested in voicechat/tests/test_bench_webrtc_calls.py) ---------------------


def latencies(ends: list[float], starts: list[float]) -> tuple[list[float], int]:
    """For each end (of an utterance, or of a turn), the time to the first start (of a reply)
    after it and before the next end; returns those delays and how many ends had none."""
    ends, starts = sorted(ends), sorted(starts)
    delays, missed, j = [], 0, 0
    for i, end in enumerate(ends):
        following = ends[i + 1] if i + 1 < len(ends) else float("inf")
        while j < len(starts) and starts[j] <= end:
            j += 1
        if j < len(starts) and starts[j] < following:
            delays.append(starts[j] - end)
        else:
            missed += 1
    return delays, missed


def reply_starts(frames: list[tuple[float, bool]], quiet: float = 0.3) -> list[float]:
    """When replies start, from the received frames (time, loud): a loud frame after at least
    `quiet` seconds without one."""
    starts, last_loud = [], None
    for moment, loud in frames:
        if loud:
            if last_loud is None or moment - last_loud >= quiet:
                starts.append(moment)
            last_loud = moment
    return starts


def median_counting_missed(delays: list[float], missed: int) -> float | None:
    """The median latency, an unanswered utterance counting as an endless one (None for none:
    nothing was said)."""
    values = sorted(delays) + [float("inf")] * missed
    return statistics.median(values) if values else None


def calls_before_doubling(medians: dict[int, float]) -> int | None:
    """The largest N whose median latency is under twice the smallest N's, when every N up to
    it is too (None without a first N)."""
    if not medians:
        return None
    ns = sorted(medians)
    base, best = medians[ns[0]], ns[0]
    for n in ns[1:]:
        if medians[n] >= 2 * base:
            break
        best = n
    return best


def spread(values: list[float]) -> dict:
    """Median and range (None for none)."""
    if not values:
        return {"median": None, "min": None, "max": None, "count": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "count": len(values),
    }


# --- the server ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its descendants, in seconds (/proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(child) for child in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare() -> str:
    """A fresh folder and database for the bench, migrated; a user and an API token."""
    global FOLDER
    FOLDER = Path(tempfile.mkdtemp(prefix="voicechat-webrtc-bench-"))
    BENCH_ENV.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        SQLITE_PATH=str(FOLDER / "db.sqlite3"),
        SECRET_KEY="bench-only-" + secrets.token_hex(16),
        LOCAL_LLM="none",
    )
    os.environ.update(BENCH_ENV)
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from voicechat.services import api_token_create

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench", password="bench-password-123")
    return api_token_create(user=user, name="bench")[1]


def start_server(extra: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        **BENCH_ENV,
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        # One user makes every call: its limits are not what is measured.
        "REALTIME_MAX_CONCURRENT_PER_USER": "1000",
        "REALTIME_CONNECTS_PER_MINUTE_PER_USER": "1000",
        "REALTIME_CONNECTS_PER_MINUTE_PER_IP": "1000",
        "REALTIME_DAILY_MINUTES": "0",
        "REALTIME_DAILY_COST_USD": "0",
        **extra,
    }
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--workers", "1", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return process, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not answer /healthz within 120 s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the peers -------------------------------------------------------------------------------


def make_loop(gap_s: float) -> tuple[bytes, list[int]]:
    """The sentences, each followed by `gap_s` of silence, as one loop of PCM16 24 kHz; and the
    byte offset just after each sentence's last voiced sample."""
    import numpy as np

    from voicechat.tests.speech import spoken

    pcm, ends = b"", []
    for sentence in SENTENCES:
        speech = spoken(sentence)
        samples = np.frombuffer(speech, dtype=np.int16)
        voiced = np.flatnonzero(np.abs(samples.astype(np.int32)) > VOICED)
        ends.append(len(pcm) + 2 * (int(voiced[-1]) + 1 if len(voiced) else len(samples)))
        pcm += speech + bytes(2 * int(RATE * gap_s))
    return pcm, ends


class LoopTrack:
    """A microphone playing `pcm` in a loop from `offset`, in real time; notes when each
    utterance's last voiced sample goes out."""

    def __new__(cls, *args, **kwargs):
        from aiortc.mediastreams import MediaStreamTrack

        class _Track(MediaStreamTrack):
            kind = "audio"

            def __init__(self, pcm: bytes, ends: list[int], offset: int) -> None:
                super().__init__()
                self.pcm, self.ends = pcm, ends
                self.position = offset - offset % (2 * FRAME)
                self.said: list[float] = []
                self._start: float | None = None
                self._timestamp = 0

            async def recv(self):
                import av
                import numpy as np
                from aiortc.mediastreams import MediaStreamError

                if self.readyState != "live":
                    raise MediaStreamError
                if self._start is None:
                    self._start = time.monotonic()
                else:
                    self._timestamp += FRAME
                    delay = self._start + self._timestamp / RATE - time.monotonic()
                    await asyncio.sleep(max(0, delay))
                first = self.position
                chunk = self.pcm[first : first + 2 * FRAME]
                self.position = (first + 2 * FRAME) % len(self.pcm)
                chunk += self.pcm[: 2 * FRAME - len(chunk)]
                now = time.monotonic()
                for end in self.ends:
                    if first < end <= first + 2 * FRAME:
                        self.said.append(now + (end - first) / 2 / RATE)
                frame = av.AudioFrame.from_ndarray(
                    np.frombuffer(chunk, dtype=np.int16)[np.newaxis, :],
                    format="s16",
                    layout="mono",
                )
                frame.sample_rate, frame.pts = RATE, self._timestamp
                frame.time_base = fractions.Fraction(1, RATE)
                return frame

        return _Track(*args, **kwargs)


class Caller:
    """One call's client side: the microphone, the data channel, what is heard and when."""

    def __init__(self, microphone) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.microphone = microphone
        self.pc.addTrack(microphone)
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self.frames: list[tuple[float, bool]] = []  # (arrival, loud) of each received frame
        self.events: list[tuple[float, str]] = []  # (arrival, type) of each event
        self.call_id = ""
        self._reader: asyncio.Task | None = None

    def _on_message(self, message: str) -> None:
        self.events.append((time.monotonic(), json.loads(message).get("type", "")))

    def _on_track(self, track) -> None:
        import numpy as np
        from aiortc.mediastreams import MediaStreamError

        async def read() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                samples = frame.to_ndarray().astype(np.float64)
                loud = bool(np.sqrt(np.mean(samples**2)) > LOUD_RMS)
                self.frames.append((time.monotonic(), loud))

        self._reader = asyncio.ensure_future(read())

    async def call(self, client, address: str, token: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        response = await client.post(
            f"http://{address}/v1/realtime/calls?model=gpt-realtime",
            content=self.pc.localDescription.sdp,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
            timeout=60,
        )
        if response.status_code != 201:
            raise SystemExit(f"call refused: {response.status_code} {response.text}")
        self.call_id = response.headers["location"].rsplit("/", 1)[1]
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        async with asyncio.timeout(30):
            while self.pc.connectionState != "connected" or self.channel.readyState != "open":
                await asyncio.sleep(0.02)
        # server_vad with OpenAI's default 500 ms silence window: a fixed part of the latency
        # (the engine's default, semantic_vad, waits as long as its turn model judges).
        self.send({"type": "session.update", "session": {"type": "realtime", **TURNS}})

    async def hang_up(self, client, address: str, token: str) -> None:
        if self.call_id:
            await client.post(
                f"http://{address}/v1/realtime/calls/{self.call_id}/hangup",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
        self.microphone.stop()
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()

    def send(self, event: dict) -> None:
        if self.channel.readyState == "open":
            self.channel.send(json.dumps(event))


async def typed_turns(caller: Caller, gap_s: float, offset: float) -> None:
    """Every `gap_s`: a typed message and response.create (the OpenAI path's turns)."""
    await asyncio.sleep(offset)
    while True:
        caller.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "What is twelve times seven?"}],
                },
            }
        )
        caller.send({"type": "response.create"})
        await asyncio.sleep(gap_s)


# --- one N -----------------------------------------------------------------------------------


async def run_n(args, n: int, address: str, pid: int, token: str, loop, idle: float = 0.0) -> dict:
    import httpx

    pcm, ends = loop if loop else (b"", [])
    callers, turns = [], []
    load_before = uptime()
    async with httpx.AsyncClient() as client:
        try:
            for i in range(n):
                if args.engine == "silent":
                    microphone = LoopTrack(bytes(2 * RATE), [], 0)  # one second, in a loop
                elif args.engine == "local":
                    # Each call starts at its own place in the loop.
                    offset = int(len(pcm) * i / n) // 2 * 2
                    microphone = LoopTrack(pcm, ends, offset)
                else:
                    from aiortc.mediastreams import AudioStreamTrack

                    microphone = AudioStreamTrack()  # silence: the fake only counts frames
                caller = Caller(microphone)
                await caller.call(client, address, token)
                callers.append(caller)
                if args.engine == "openai":
                    turns.append(
                        asyncio.ensure_future(typed_turns(caller, args.gap, args.gap * i / n))
                    )
            await asyncio.sleep(args.warmup)
            own_before, server_before = time.process_time(), cpu_seconds(pid)
            window_start = time.monotonic()
            await asyncio.sleep(args.seconds)
            window_end = time.monotonic()
            server_cores = (cpu_seconds(pid) - server_before) / (window_end - window_start)
            own_cores = (time.process_time() - own_before) / (window_end - window_start)
        finally:
            for task in turns:
                task.cancel()
            for caller in callers:
                await caller.hang_up(client, address, token)
    result = {
        "n": n,
        "server_cores": server_cores,
        "server_cores_per_call": server_cores / n,
        "server_cores_per_call_above_idle": max(0.0, server_cores - idle) / n,
        "bench_cores": own_cores,
        "uptime_before": load_before,
        "uptime_after": uptime(),
    }
    if args.engine == "local":
        speech_delays, vad_delays, server_delays, missed, utterances = [], [], [], 0, 0
        for caller in callers:
            starts = reply_starts(caller.frames)
            # Utterances whose reply had the time to come within the window.
            said = [t for t in caller.microphone.said if window_start <= t <= window_end - args.gap]
            delays, lost = latencies(said, starts)
            speech_delays += delays
            missed += lost
            utterances += len(said)
            stopped = [
                t
                for t, etype in caller.events
                if etype == "input_audio_buffer.speech_stopped"
                and window_start <= t <= window_end - args.gap
            ]
            vad_delays += latencies(stopped, starts)[0]
            # The server's own moment: its track starts the reply (output_audio_buffer.started).
            started = [t for t, etype in caller.events if etype == "output_audio_buffer.started"]
            server_delays += latencies(stopped, started)[0]
        result.update(
            utterances=utterances,
            unanswered=missed,
            speech_end_to_reply_ms=spread([d * 1000 for d in speech_delays]),
            # Unanswered ones as endless: the figure "calls before the median doubles" uses.
            median_counting_unanswered_ms=(
                None if (m := median_counting_missed(speech_delays, missed)) is None else m * 1000
            ),
            speech_end_to_reply_all_ms=[round(d * 1000, 1) for d in speech_delays],
            speech_stopped_to_reply_ms=spread([d * 1000 for d in vad_delays]),
            speech_stopped_to_track_started_ms=spread([d * 1000 for d in server_delays]),
        )
    elif args.engine == "openai":
        done = sum(
            1
            for caller in callers
            for t, etype in caller.events
            if etype == "response.done" and window_start <= t <= window_end
        )
        result.update(responses=done)
    return result


def describe(result: dict) -> str:
    line = (
        f"N={result['n']:>2}  server {result['server_cores']:.3f} cores "
        f"({result['server_cores_per_call']:.3f}/call, "
        f"{result['server_cores_per_call_above_idle']:.3f} above idle)  "
        f"bench {result['bench_cores']:.2f} cores"
    )
    if "speech_end_to_reply_ms" in result:
        s, v = result["speech_end_to_reply_ms"], result["speech_stopped_to_reply_ms"]
        if s["count"]:
            line += (
                f"  end of speech -> reply: median {s['median']:.0f} ms "
                f"({s['min']:.0f}-{s['max']:.0f}, {s['count']})"
            )
        if v["count"]:
            line += (
                f"  speech_stopped -> reply: median {v['median']:.0f} ms "
                f"({v['min']:.0f}-{v['max']:.0f})"
            )
        t = result["speech_stopped_to_track_started_ms"]
        if t["count"]:
            line += (
                f"  (of which server: median {t['median']:.0f} ms, {t['min']:.0f}-{t['max']:.0f})"
            )
        line += f"  unanswered {result['unanswered']}/{result['utterances']}"
        counted = result["median_counting_unanswered_ms"]
        if counted is not None:
            line += f"  median counting them {counted:.0f} ms"
    elif "responses" in result:
        line += f"  responses {result['responses']}"
    return line


async def main(token: str) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("local", "silent", "openai", "all"), default="all")
    parser.add_argument("--ns", default="1,2,4,8", help="concurrent calls, offline engine")
    parser.add_argument("--openai-ns", default="1,4,8,16", help="concurrent calls, OpenAI path")
    parser.add_argument("--seconds", type=float, default=40.0, help="measured window, local")
    parser.add_argument("--openai-seconds", type=float, default=20.0, help="window, OpenAI")
    parser.add_argument("--warmup", type=float, default=6.0)
    parser.add_argument("--gap", type=float, default=4.0, help="silence after each sentence")
    args = parser.parse_args()
    for noisy in ("httpx", "websockets", "aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  commit {commit}  "
        f"{platform.machine()} nproc {os.cpu_count()}  Python {platform.python_version()}"
    )
    print(f"# {uptime()}")
    report = {"commit": commit, "started": time.time(), "nproc": os.cpu_count(), "runs": {}}
    engines = ("local", "silent", "openai") if args.engine == "all" else (args.engine,)
    for engine in engines:
        args.engine = engine
        fake = endpoint = None
        if engine in ("local", "silent"):
            extra = {"REALTIME_BACKEND": "local", "OPENAI_API_KEY": ""}
            loop = make_loop(args.gap) if engine == "local" else None
            ns = [int(x) for x in args.ns.split(",")]
        else:
            from voicechat.tests.fake_upstream import FakeRealtimeServer, serve_calls

            fake = FakeRealtimeServer()
            await fake.__aenter__()
            endpoint = await serve_calls(fake, api_key=PROVIDER_KEY)
            extra = {
                "REALTIME_BACKEND": "openai",
                "OPENAI_API_KEY": PROVIDER_KEY,
                "OPENAI_REALTIME_URL": fake.url,
                "OPENAI_REALTIME_CALLS_URL": endpoint.url,
            }
            loop = None
            ns = [int(x) for x in args.openai_ns.split(",")]
        process, address = start_server(extra, FOLDER / f"server-{engine}.log")
        results = []
        try:
            # One call first, not counted: the models load, the first decodes warm up.
            await run_n(
                argparse.Namespace(**{**vars(args), "seconds": 5}),
                1,
                address,
                process.pid,
                token,
                loop,
            )
            await asyncio.sleep(3)
            idle_before = cpu_seconds(process.pid)
            await asyncio.sleep(5)
            idle = (cpu_seconds(process.pid) - idle_before) / 5
            print(f"\n## {engine}: server pid {process.pid}, idle {idle:.3f} cores")
            for n in ns:
                window = args.seconds if engine == "local" else args.openai_seconds
                result = await run_n(
                    argparse.Namespace(**{**vars(args), "seconds": window}),
                    n,
                    address,
                    process.pid,
                    token,
                    loop,
                    idle,
                )
                results.append(result)
                print(describe(result), flush=True)
                print(f"#   {result['uptime_after']}", flush=True)
                await asyncio.sleep(3)  # the calls' ends are stored
        finally:
            stop_server(process)
            if fake is not None:
                await fake.__aexit__(None, None, None)
        summary = {"idle_cores": idle, "results": results}
        if engine == "local":
            medians = {
                r["n"]: r["median_counting_unanswered_ms"]
                for r in results
                if r["median_counting_unanswered_ms"] is not None
            }
            summary["calls_before_median_doubles"] = calls_before_doubling(medians)
            print(
                f"calls before the median latency doubles: {summary['calls_before_median_doubles']}"
            )
        per_call = [r["server_cores_per_call_above_idle"] for r in results]
        if per_call:
            print(
                f"server cores per call above idle: median {statistics.median(per_call):.3f} "
                f"({min(per_call):.3f}-{max(per_call):.3f}), so about "
                f"{1 / statistics.median(per_call):.0f} calls per core"
            )
        report["runs"][engine] = summary
    print(f"# {uptime()}")
    out = ROOT / "bench" / "results" / f"webrtc_calls-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"# results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main(prepare()))
