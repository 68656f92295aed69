"""Benchmark the local engine as a conversation partner: voice-to-voice latency and capacity.

Run from the repository root:  python bench/local_latency.py            (about 10 minutes)
                               python bench/local_latency.py --quick    (about 2 minutes)

A scripted 8-turn conversation (with questions only a language model can answer) is spoken to
the engine in its own (piper) voice, in 40 ms chunks at real-time pace, through LocalUpstream
exactly as the gateway drives it, once per assistant (--responders: the embedded language
model and the rule-based one, in the same run). It prints what was heard and answered, and:

1. voice-to-voice latency per turn: from the VAD end of the user's turn (the moment the
   `speech_stopped` event arrives) to the first `response.output_audio.delta`, median and p95;
   also from the real end of speech (last spoken chunk sent), which adds the silence window
   (server_vad) or the turn model's wait (semantic_vad: --turn-detection both compares the two
   in one run, conversations alternating, --repeat times each), and from the last voiced
   sample (piper trails each reading with ~0.1-0.2 s of near-silence, which the chunk-based
   figure leaves out); how many replies begun during a pause were used or thrown away because
   the user went on (--speculative-replies off/both: without them, or both ways in the same
   run); and how many scripted lines were cut, heard as more than one turn;
2. STT and TTS real-time factors (CPU seconds / audio seconds) per conversation;
3. capacity: the median latency with N conversations at once, and the N at which it doubles;
4. isolation: while one conversation transcribes a long utterance, and while one conversation's
   language model writes a long answer, how long another connection waits for the answer to a
   cheap event, compared with an idle engine;
5. memory: the process's resident set before and after the models are loaded.
"""

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from voicechat.local_engine import LocalUpstream  # noqa: E402
from voicechat.local_engine.tts import get_synthesizer, local_voice_for  # noqa: E402

CHUNK = 1920  # 40 ms of PCM16 24 kHz
CHUNK_S = 0.040
TURN_TIMEOUT_S = 120  # a turn this slow means the machine is overloaded: the run stops there
SILENCE_MS = 500  # server_vad's silence window (OpenAI's default is 500 ms too)
TURN_DETECTION = {
    "server_vad": {
        "type": "server_vad",
        "prefix_padding_ms": 300,
        "silence_duration_ms": SILENCE_MS,
    },
    # The turn model ends a finished sentence ~0.3 s into the pause, at most 4 s (medium).
    "semantic_vad": {"type": "semantic_vad", "eagerness": "medium"},
}
# Silence sent after each phrase: enough for the turn to end (semantic_vad waits at most 4 s).
TAIL_MS = {"server_vad": SILENCE_MS + 400, "semantic_vad": 4000 + 400}
# --turn-detection both: the two, alternating conversation by conversation.
BOTH = ("server_vad", "semantic_vad")
# A sample louder than this is voiced (the last one is the end of the user's speech).
VOICED = 300
# " | " is a pause mid-sentence: MID_PAUSE_MS of silence between the two readings, which trail
# and lead with ~0.15 s more (~0.4 s of silence in all). Shorter than server_vad's window, so
# the turn goes on, but long enough for the engine to start a reply it then throws away.
MID_PAUSE_MS = 250
SCRIPT = [
    "Hello there.",
    "My name is Ada.",
    "What is twelve times seven?",
    "What is the capital of Australia?",
    "Can you suggest a name | for a black cat?",
    "What is my name?",
    "What time is it?",
    "Thank you, that was helpful.",
]
SESSION = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "audio": {
            "input": {
                "transcription": {"model": "local", "language": "en"},
                "turn_detection": TURN_DETECTION["server_vad"],  # see use_turn_detection()
            }
        },
    },
}


def use_turn_detection(kind: str) -> None:
    """Every conversation of this run finds the end of a turn with `kind`."""
    global tail_ms
    SESSION["session"]["audio"]["input"]["turn_detection"] = TURN_DETECTION[kind]
    tail_ms = TAIL_MS[kind]


tail_ms = TAIL_MS["server_vad"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


class Conversation:
    """One LocalUpstream session driven like a person: speak, wait for the answer, repeat."""

    def __init__(self) -> None:
        self.upstream = LocalUpstream(model="gpt-realtime")
        self.events: asyncio.Queue = asyncio.Queue()
        self.turns: list[dict] = []
        self.cut_short = 0  # replies cancelled because the user (as the engine judged) went on

    async def __aenter__(self):
        await self.upstream.connect()
        self._reader = asyncio.create_task(self._read())
        await self.send(SESSION)
        return self

    async def __aexit__(self, *exc):
        await self.upstream.close()
        await self._reader

    async def _read(self):
        async for frame in self.upstream:
            self.events.put_nowait((time.perf_counter(), json.loads(frame)))

    async def send(self, event: dict) -> None:
        await self.upstream.send(json.dumps(event))

    async def speak(self, pcm: bytes, *, tail_ms: int) -> tuple[float, float]:
        """Stream speech then silence at real-time pace; returns when the speech ended: the
        chunk with the reading's end, and the chunk with its last voiced sample."""
        audio = b"\0" * 48 * 200 + pcm
        last_voiced = 48 * 200 + 2 * last_voiced_sample(pcm)
        speech_end = voiced_end = 0.0
        start = time.perf_counter()
        total = audio + b"\0" * 48 * tail_ms
        for n, i in enumerate(range(0, len(total), CHUNK)):
            await self.send(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(total[i : i + CHUNK]).decode(),
                }
            )
            if i + CHUNK > last_voiced and not voiced_end:
                voiced_end = time.perf_counter()
            if i + CHUNK >= len(audio) and not speech_end:
                speech_end = time.perf_counter()
            # Real-time pace, without drift.
            await asyncio.sleep(max(0.0, start + (n + 1) * CHUNK_S - time.perf_counter()))
        return speech_end, voiced_end

    async def turn(self, pcm: bytes) -> dict:
        """Say one scripted line; the reply to the turn that ended last in it is the answer.

        A line the engine ends early (in a pause) and then hears go on is one line heard as
        two turns: `cut`. Its latency is measured to the reply to its last part."""
        speaking = asyncio.create_task(self.speak(pcm, tail_ms=tail_ms))
        stopped = first_audio = None
        stops = 0
        answered = False
        heard: list[str] = []
        answer = ""
        while not (answered and speaking.done()):
            getting = asyncio.ensure_future(self.events.get())
            done, _ = await asyncio.wait(
                {getting, speaking}, timeout=TURN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                raise TimeoutError("no event for a whole turn: the machine is overloaded")
            if getting not in done:
                getting.cancel()
                continue
            at, event = getting.result()
            if event["type"] == "input_audio_buffer.speech_stopped":
                stopped, stops, first_audio, answered = at, stops + 1, None, False
            elif event["type"] == "conversation.item.input_audio_transcription.completed":
                heard.append(event["transcript"])
            elif event["type"] == "response.output_audio.delta" and first_audio is None:
                first_audio = at
            elif event["type"] == "response.output_audio_transcript.done":
                answer = event["transcript"]
            elif event["type"] == "response.done":
                if event["response"]["status"] == "completed" and first_audio is not None:
                    answered = True
                    continue
                # A reply cut short (the turn detector heard the user go on): wait for the next.
                self.cut_short += 1
                first_audio = None
        speech_end, voiced_end = speaking.result()
        result = {
            "vad_to_audio_ms": (first_audio - stopped) * 1000,
            "speech_end_to_audio_ms": (first_audio - speech_end) * 1000,
            "voiced_end_to_audio_ms": (first_audio - voiced_end) * 1000,
            "cut": stops > 1,
            "heard": " | ".join(heard),
            "answer": answer,
            "replies_cut_short": self.cut_short,  # so far in this conversation
        }
        self.turns.append(result)
        return result

    def stats(self):
        return self.upstream._session.stats

    def speculation(self) -> dict:
        """Replies begun in a pause: started, used, thrown away (session.speculation_stats)."""
        return dataclasses.asdict(self.upstream._session.speculation_stats)


def last_voiced_sample(pcm: bytes) -> int:
    """Index of the last sample of a reading louder than VOICED."""
    samples = memoryview(pcm).cast("h")
    for i in range(len(samples) - 1, -1, -1):
        if abs(samples[i]) > VOICED:
            return i
    return 0


async def run_conversation(phrases: list[bytes]) -> tuple[list[dict], object, dict]:
    async with Conversation() as conv:
        for pcm in phrases:
            await conv.turn(pcm)
        return conv.turns, conv.stats(), conv.speculation()


def pooled(runs: list[dict]) -> dict:
    """Several conversations' latency() results as one: every turn pooled, each run's median."""
    if len(runs) == 1:
        return {**runs[0], "runs": [summary_line(runs[0])]}
    out = {"runs": [summary_line(r) for r in runs], "turns": sum(r["turns"] for r in runs)}
    for key in ("vad_to_audio", "speech_end_to_audio", "voiced_end_to_audio"):
        values = [v for r in runs for v in r[f"{key}_ms"]]
        out[f"{key}_ms"] = values
        out[f"{key}_median_ms"] = statistics.median(values)
        out[f"{key}_p95_ms"] = pct(values, 0.95)
        out[f"{key}_run_medians_ms"] = [r[f"{key}_median_ms"] for r in runs]
    for key in ("transcript", "lines_cut"):
        out[key] = [x for r in runs for x in r[key]]
    out["load_avg_1m"] = [x for r in runs for x in r["load_avg_1m"]]
    out["speculation"] = thrown_away([r["speculation"] for r in runs])
    for key in ("stt_rtf", "tts_rtf", "cpu_seconds", "conversation_seconds"):
        out[key] = statistics.mean(r[key] for r in runs)
    out["cpu_per_conversation_second"] = out["cpu_seconds"] / out["conversation_seconds"]
    out["cpu_bound_capacity"] = (os.cpu_count() or 1) / out["cpu_per_conversation_second"]
    return out


def summary_line(r: dict) -> str:
    return (
        f"load {r['load_avg_1m'][0]:.2f}-{r['load_avg_1m'][-1]:.2f}: end of speech -> first "
        f"audio median {r['speech_end_to_audio_median_ms']:.0f} / p95 "
        f"{r['speech_end_to_audio_p95_ms']:.0f} ms, from the last voiced sample "
        f"{r['voiced_end_to_audio_median_ms']:.0f} ms, VAD end {r['vad_to_audio_median_ms']:.0f}"
        f" ms; per line {[t['speech_end_ms'] for t in r['transcript']]}; "
        f"thrown away {r['speculation']['thrown_away']} of {r['speculation']['started']}; "
        f"lines cut: {r['lines_cut'] or 'none'}"
    )


def thrown_away(speculations: list[dict]) -> dict:
    """The speculation counts of several conversations added up, and the share wasted."""
    total = {key: sum(s[key] for s in speculations) for key in ("started", "used", "thrown_away")}
    total["thrown_away_share"] = total["thrown_away"] / total["started"] if total["started"] else 0
    return total


async def latency(phrases: list[bytes]) -> dict:
    load_before = os.getloadavg()[0]
    cpu_start = time.process_time()
    turns, stats, speculation = await run_conversation(phrases)
    cpu = time.process_time() - cpu_start
    # CPU per second of conversation (what the user says plus what the engine says) does not
    # depend on how busy the machine is, unlike the latencies: capacity follows from it.
    talk_s = sum(len(p) / 48000 + 0.2 + tail_ms / 1000 for p in phrases)
    talk_s += stats.tts_audio_seconds
    cpu_per_talk_s = cpu / talk_s
    vad = [t["vad_to_audio_ms"] for t in turns]
    end = [t["speech_end_to_audio_ms"] for t in turns]
    voiced = [t["voiced_end_to_audio_ms"] for t in turns]
    return {
        "load_avg_1m": [load_before, os.getloadavg()[0]],
        "turns": len(turns),
        "vad_to_audio_ms": vad,
        "speech_end_to_audio_ms": end,
        "voiced_end_to_audio_ms": voiced,
        "transcript": [
            {
                "heard": t["heard"],
                "answer": t["answer"],
                "ms": round(t["vad_to_audio_ms"]),
                "speech_end_ms": round(t["speech_end_to_audio_ms"]),
                "cut": t["cut"],
            }
            for t in turns
        ],
        "lines_cut": [t["heard"] for t in turns if t["cut"]],
        "vad_to_audio_median_ms": statistics.median(vad),
        "vad_to_audio_p95_ms": pct(vad, 0.95),
        "speech_end_to_audio_median_ms": statistics.median(end),
        "speech_end_to_audio_p95_ms": pct(end, 0.95),
        "voiced_end_to_audio_median_ms": statistics.median(voiced),
        "voiced_end_to_audio_p95_ms": pct(voiced, 0.95),
        "speculation": thrown_away([speculation]),
        "stt_rtf": stats.stt_rtf(),
        "tts_rtf": stats.tts_rtf(),
        "cpu_seconds": cpu,
        "conversation_seconds": talk_s,
        "cpu_per_conversation_second": cpu_per_talk_s,
        "cpu_bound_capacity": (os.cpu_count() or 1) / cpu_per_talk_s,
    }


async def capacity(phrases: list[bytes], levels: list[int]) -> list[dict]:
    rows = []
    for n in levels:
        results = await asyncio.gather(*(run_conversation(phrases) for _ in range(n)))
        vad = [t["vad_to_audio_ms"] for turns, _, _ in results for t in turns]
        rows.append(
            {
                "conversations": n,
                "vad_to_audio_median_ms": statistics.median(vad),
                "vad_to_audio_p95_ms": pct(vad, 0.95),
                "stt_rtf": statistics.mean(s.stt_rtf() for _, s, _ in results),
                "tts_rtf": statistics.mean(s.tts_rtf() for _, s, _ in results),
                "speculation": thrown_away([spec for _, _, spec in results]),
            }
        )
        print(
            f"  {n} conversation(s): median {rows[-1]['vad_to_audio_median_ms']:.0f} ms", flush=True
        )
    return rows


async def probe_latency(conv: Conversation, until: asyncio.Event | float) -> list[float]:
    """Round trips of a cheap event (conversation.item.retrieve of a missing item -> error)."""
    samples = []
    deadline = until if isinstance(until, float) else None
    while (deadline and time.perf_counter() < deadline) or (
        isinstance(until, asyncio.Event) and not until.is_set()
    ):
        sent = time.perf_counter()
        await conv.send({"type": "conversation.item.retrieve", "item_id": "item_probe"})
        while True:
            at, event = await conv.events.get()
            if event["type"] == "error":
                samples.append((at - sent) * 1000)
                break
        await asyncio.sleep(0.02)
    return samples


async def isolation(long_pcm: bytes) -> dict:
    """B's event latency while A transcribes (push-to-talk commit of a long utterance)."""
    async with Conversation() as a, Conversation() as b:
        await a.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {
                            "turn_detection": None,
                            "transcription": {"model": "local", "language": "en"},
                        }
                    },
                },
            }
        )
        idle = await probe_latency(b, time.perf_counter() + 3.0)
        for i in range(0, len(long_pcm), CHUNK * 25):  # load the buffer quickly (1 s chunks)
            await a.send(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(long_pcm[i : i + CHUNK * 25]).decode(),
                }
            )
        transcribed = asyncio.Event()

        async def wait_transcript():
            while True:
                at, event = await a.events.get()
                if event["type"] == "conversation.item.input_audio_transcription.completed":
                    transcribed.set()
                    return at

        waiter = asyncio.create_task(wait_transcript())
        started = time.perf_counter()
        await a.send({"type": "input_audio_buffer.commit"})
        busy = await probe_latency(b, transcribed)
        done_at = await waiter
    return {
        "utterance_s": len(long_pcm) / 48000,
        "transcription_s": done_at - started,
        "idle_p50_ms": statistics.median(idle),
        "idle_p95_ms": pct(idle, 0.95),
        "idle_max_ms": max(idle),
        "busy_p50_ms": statistics.median(busy),
        "busy_p95_ms": pct(busy, 0.95),
        "busy_max_ms": max(busy),
        "busy_samples": len(busy),
    }


async def generation_isolation() -> dict:
    """B's event latency while A's language model writes a long answer (typed question)."""
    async with Conversation() as a, Conversation() as b:
        idle = await probe_latency(b, time.perf_counter() + 2.0)
        question = "Tell me a long story about a lighthouse keeper and a storm."
        await a.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": question}],
                },
            }
        )
        answered = asyncio.Event()

        async def wait_done():
            while True:
                at, event = await a.events.get()
                if event["type"] == "response.done":
                    answered.set()
                    return at

        waiter = asyncio.create_task(wait_done())
        started = time.perf_counter()
        await a.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        busy = await probe_latency(b, answered)
        done_at = await waiter
    return {
        "generation_s": done_at - started,
        "idle_p50_ms": statistics.median(idle),
        "busy_p50_ms": statistics.median(busy),
        "busy_p95_ms": pct(busy, 0.95),
        "busy_max_ms": max(busy),
        "busy_samples": len(busy),
    }


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def main(args) -> dict:
    """One run per responder (LOCAL_LLM), the same speech for each; with and/or without
    speculative replies (LOCAL_SPECULATIVE_REPLIES)."""
    results = {}
    for responder in args.responders.split(","):
        for speculate in SPECULATION_RUNS[args.speculative_replies]:
            settings.LOCAL_LLM = responder
            settings.LOCAL_SPECULATIVE_REPLIES = speculate
            name = responder if speculate else f"{responder}, no speculative replies"
            print(f"== responder: {name}", flush=True)
            results[name] = await run_for_responder(args)
    return results


SPECULATION_RUNS = {"on": (True,), "off": (False,), "both": (True, False)}


async def run_for_responder(args) -> dict:
    synth = get_synthesizer()
    voice = local_voice_for("marin")
    print("synthesizing the script...", flush=True)
    script = SCRIPT[: args.turns]
    mid_pause = b"\0" * 48 * MID_PAUSE_MS
    phrases = [
        mid_pause.join(
            [
                await asyncio.to_thread(synth.synthesize, part, voice=voice)
                for part in line.split(" | ")
            ]
        )
        for line in script
    ]
    long_texts = [
        "Please tell me a story about the sea.",
        "My name is Bob.",
        "What is the weather in London?",
        "What is the date today?",
    ]
    long_pcm = b"".join(
        [await asyncio.to_thread(synth.synthesize, text, voice=voice) for text in long_texts]
    )
    rss_before = rss_mb()
    # Warm up: the first conversation loads the recognizer, the VAD and the language model.
    await run_conversation(phrases[:1])
    if settings.LOCAL_LLM == "embedded":
        from voicechat.local_engine import llm

        await asyncio.to_thread(llm.shared)
    rss_loaded = rss_mb()

    kinds = BOTH if args.turn_detection == "both" else (args.turn_detection,)
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for repeat in range(args.repeat):
        for kind in kinds:
            use_turn_detection(kind)
            print(
                f"latency, one conversation, {kind} ({repeat + 1} of {args.repeat})...", flush=True
            )
            runs[kind].append(await latency(phrases))
            print("  " + summary_line(runs[kind][-1]), flush=True)
    by_kind = {kind: pooled(r) for kind, r in runs.items()}
    use_turn_detection(kinds[0])
    single = by_kind[kinds[0]]
    print("capacity...", flush=True)
    levels = [1, 2, 3] if args.quick else list(range(1, args.max_conversations + 1))
    if args.skip_capacity:
        levels = []
    rows = (
        await capacity(phrases[:3] if args.quick else phrases, levels)
        if levels
        else [
            {
                "conversations": 1,
                **{
                    k: single[k]
                    for k in ("vad_to_audio_median_ms", "vad_to_audio_p95_ms", "stt_rtf", "tts_rtf")
                },
            }
        ]
    )
    base = rows[0]["vad_to_audio_median_ms"]
    doubled = next(
        (r["conversations"] for r in rows if r["vad_to_audio_median_ms"] >= 2 * base), None
    )
    iso = gen_iso = None
    if not args.skip_isolation:
        print("isolation...", flush=True)
        iso = await isolation(long_pcm)
        gen_iso = await generation_isolation() if settings.LOCAL_LLM == "embedded" else None
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": os.getloadavg()[0],
            "tts": settings.LOCAL_TTS,
            "stt": settings.LOCAL_STT,
            "llm": settings.LOCAL_LLM,
            "turn_detection": SESSION["session"]["audio"]["input"]["turn_detection"],
            "speculative_replies": settings.LOCAL_SPECULATIVE_REPLIES,
        },
        "single": single,
        "by_turn_detection": by_kind,
        "capacity": rows,
        "latency_doubles_at": doubled,
        "isolation": iso,
        "generation_isolation": gen_iso,
        "rss_mb": {"before_models": rss_before, "models_loaded": rss_loaded, "end": rss_mb()},
        "transcript": single["transcript"],
    }


def report(results: dict) -> str:
    return "\n\n".join(f"## responder: {name}\n\n{report_one(r)}" for name, r in results.items())


def report_one(result: dict) -> str:
    s, iso = result["single"], result["isolation"]
    lines = [
        f"machine: {result['machine']}",
        "",
        "| turn detection | load (1 min) | end of speech -> first audio, median / p95 "
        "| from the last voiced sample, median / p95 | VAD end -> first audio, median "
        "| replies begun in a pause: thrown away | lines heard as two turns |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {kind} | {min(r['load_avg_1m']):.1f}-{max(r['load_avg_1m']):.1f} "
            f"| {r['speech_end_to_audio_median_ms']:.0f} / "
            f"{r['speech_end_to_audio_p95_ms']:.0f} ms "
            f"| {r['voiced_end_to_audio_median_ms']:.0f} / "
            f"{r['voiced_end_to_audio_p95_ms']:.0f} ms "
            f"| {r['vad_to_audio_median_ms']:.0f} ms "
            f"| {r['speculation']['thrown_away']} of {r['speculation']['started']} "
            f"({r['speculation']['thrown_away_share']:.0%}) | {r['lines_cut'] or 'none'} |"
            for kind, r in result["by_turn_detection"].items()
        ),
        "",
        *(
            f"{kind}, conversation {n + 1}: {line}"
            for kind, r in result["by_turn_detection"].items()
            for n, line in enumerate(r["runs"])
        ),
        "",
        "| user said (as heard) | assistant answered | VAD end -> first audio |",
        "|---|---|---|",
        *(f"| {t['heard']} | {t['answer']} | {t['ms']} ms |" for t in result["transcript"]),
        "",
        f"resident memory: {result['rss_mb']['before_models']:.0f} MB before the models, "
        f"{result['rss_mb']['models_loaded']:.0f} MB with them loaded, "
        f"{result['rss_mb']['end']:.0f} MB at the end",
        "",
        "| one conversation | median | p95 |",
        "|---|---|---|",
        f"| VAD end (speech_stopped) -> first audio delta | {s['vad_to_audio_median_ms']:.0f} ms "
        f"| {s['vad_to_audio_p95_ms']:.0f} ms |",
        f"| end of speech -> first audio delta (incl. the wait for the end of the turn) "
        f"| {s['speech_end_to_audio_median_ms']:.0f} ms "
        f"| {s['speech_end_to_audio_p95_ms']:.0f} ms |",
        "",
        speculation_line(s["speculation"]),
        "",
        f"STT real-time factor {s['stt_rtf']:.2f}, TTS real-time factor {s['tts_rtf']:.2f} "
        f"({s['turns']} turns; wall time in the worker / audio time)",
        "",
        f"CPU: {s['cpu_seconds']:.1f} s for {s['conversation_seconds']:.1f} s of conversation "
        f"({s['cpu_per_conversation_second']:.2f} cores per conversation): at most "
        f"~{s['cpu_bound_capacity']:.1f} conversations before the CPUs are saturated",
        "",
        "| conversations at once | VAD end -> audio median | p95 | STT RTF | TTS RTF "
        "| replies begun in a pause thrown away |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["capacity"]:
        spec = r.get("speculation") or s["speculation"]
        lines.append(
            f"| {r['conversations']} | {r['vad_to_audio_median_ms']:.0f} ms "
            f"| {r['vad_to_audio_p95_ms']:.0f} ms | {r['stt_rtf']:.2f} | {r['tts_rtf']:.2f} "
            f"| {spec['thrown_away']} of {spec['started']} |"
        )
    lines += [
        "",
        f"median latency doubles at: {result['latency_doubles_at'] or 'not reached'} conversations",
    ]
    if iso is None:
        return "\n".join(lines)
    lines += [
        "",
        f"isolation: conversation A transcribes {iso['utterance_s']:.1f} s of speech in "
        f"{iso['transcription_s']:.2f} s; meanwhile conversation B's event round trip is "
        f"p50 {iso['busy_p50_ms']:.1f} / p95 {iso['busy_p95_ms']:.1f} / max "
        f"{iso['busy_max_ms']:.1f} ms ({iso['busy_samples']} probes), idle p50 "
        f"{iso['idle_p50_ms']:.1f} / p95 {iso['idle_p95_ms']:.1f} / max "
        f"{iso['idle_max_ms']:.1f} ms",
    ]
    gen = result.get("generation_isolation")
    if gen:
        lines.append(
            f"isolation: while conversation A's model writes a long answer "
            f"({gen['generation_s']:.1f} s), B's event round trip is p50 {gen['busy_p50_ms']:.1f}"
            f" / p95 {gen['busy_p95_ms']:.1f} / max {gen['busy_max_ms']:.1f} ms "
            f"({gen['busy_samples']} probes; idle p50 {gen['idle_p50_ms']:.1f} ms)"
        )
    return "\n".join(lines)


def speculation_line(spec: dict) -> str:
    return (
        f"replies begun during a pause: {spec['started']}, used {spec['used']}, thrown away "
        f"{spec['thrown_away']} ({spec['thrown_away_share']:.0%}: the user went on speaking)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns and levels (~1 min)")
    parser.add_argument("--turns", type=int, default=len(SCRIPT))
    parser.add_argument("--max-conversations", type=int, default=4)
    parser.add_argument("--skip-capacity", action="store_true", help="latency and isolation only")
    parser.add_argument(
        "--skip-isolation", action="store_true", help="no isolation measurements (latency only)"
    )
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument(
        "--responders", default="embedded,none", help="LOCAL_LLM values to run, in this order"
    )
    parser.add_argument(
        "--turn-detection",
        choices=[*sorted(TURN_DETECTION), "both"],
        default="server_vad",
        help="how the engine finds the end of each turn (server_vad: 500 ms of silence; both: "
        "the two in one run, conversations alternating)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="conversations per turn detection (latency)"
    )
    parser.add_argument(
        "--speculative-replies",
        choices=sorted(SPECULATION_RUNS),
        default="on",
        help="start replies during the user's pause (on, the default), not (off), or both runs",
    )
    args = parser.parse_args()
    use_turn_detection(BOTH[0] if args.turn_detection == "both" else args.turn_detection)
    if args.quick:
        args.turns = min(args.turns, 4)
    result = asyncio.run(main(args))
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
