"""Benchmark the local engine's speech parts: speed, listening quality, GIL hold times.

Run from the repository root:  python bench/local_speech.py [--seconds 2]
Prints real-time factors (processing time / audio time, lower is faster) for TTS and STT,
Whisper's load time and memory, VAD cost per second of audio, Whisper's word error rate per
voice, what a turn spoken in real time gets from the engine (partial transcripts, and the time
from the end of the turn to its final transcript), and how long each library keeps the event
loop waiting while it works in a worker thread.
"""

import argparse
import asyncio
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.test import override_settings  # noqa: E402

from voicechat.local_engine import stt, tts, vad  # noqa: E402
from voicechat.local_engine.audio import PCM_RATE, pcm16_duration_ms  # noqa: E402
from voicechat.tests.local_engine_client import EngineClient  # noqa: E402
from voicechat.tests.speech import SENTENCES, VOICES, readings, word_error_rate  # noqa: E402

CHUNK = PCM_RATE // 25 * 2  # 40 ms appends, as the browser sends them


def timed(fn: Callable, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def chunks(pcm: bytes, size: int = CHUNK):
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


# --- speed ----------------------------------------------------------------------------------


def bench_tts(name: str, voice: str) -> list[bytes]:
    with override_settings(LOCAL_TTS=name):
        synthesizer, load = timed(tts.get_synthesizer)
        synthesizer.synthesize("Warm up.", voice=voice)
        factors, clips = [], []
        for sentence in SENTENCES:
            pcm, elapsed = timed(synthesizer.synthesize, sentence, voice=voice)
            factors.append(elapsed / (pcm16_duration_ms(pcm, PCM_RATE) / 1000))
            clips.append(pcm)
    print(
        f"TTS {name:7s} load {load:5.2f} s   RTF median {statistics.median(factors):.3f}"
        f"  max {max(factors):.3f}   (per sentence, {len(SENTENCES)} sentences, voice {voice})"
    )
    return clips


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def bench_stt(clips: list[bytes]) -> None:
    for language in ("en", "de"):
        before = rss_mb()
        recognizer, load = timed(stt.get_recognizer, language)
        recognizer.transcribe(clips[0], language=language)
        factors, seconds = [], []
        for pcm in clips:
            elapsed = timed(recognizer.transcribe, pcm, language="en")[1]
            factors.append(elapsed / (pcm16_duration_ms(pcm, PCM_RATE) / 1000))
            seconds.append(elapsed)
        print(
            f"STT Whisper {stt.model_for(language):8s} load {load:4.2f} s, "
            f"RSS +{rss_mb() - before:.0f} MB (after decoding)\n"
            f"    one utterance: median {statistics.median(seconds):.2f} s"
            f"  max {max(seconds):.2f} s   RTF median {statistics.median(factors):.3f}"
            f"  max {max(factors):.3f}"
        )


def bench_vad(clips: list[bytes]) -> None:
    detector, load = timed(vad.VoiceActivityDetector)
    silence = b"\x00\x00" * PCM_RATE
    stream = b"".join(silence + clip for clip in clips) + silence
    per_feed = []
    for chunk in chunks(stream):
        per_feed.append(timed(detector.feed, chunk)[1])
    seconds = pcm16_duration_ms(stream, PCM_RATE) / 1000
    print(
        f"VAD silero load {load * 1000:.0f} ms   {sum(per_feed) / seconds * 1000:.1f} ms CPU "
        f"per second of audio; per 40 ms feed median {statistics.median(per_feed) * 1000:.2f} ms"
        f"  max {max(per_feed) * 1000:.2f} ms"
    )


# --- quality --------------------------------------------------------------------------------


def bench_quality() -> dict[str, list[bytes]]:
    recognizer = stt.get_recognizer("en")
    sets = {voice: readings(voice) for voice in VOICES}
    for voice, clips in sets.items():
        heard = [recognizer.transcribe(clip, language="en") for clip in clips]
        print(f"WER {voice:20s} {word_error_rate(SENTENCES, heard):5.1%} ({len(clips)} sentences)")
    return sets


async def spoken_turns(clips: list[bytes]) -> tuple[list[float], list[int], list[str], float]:
    """Each clip as a turn in real time; ms from speech_stopped to the final transcript, the
    partial transcripts (deltas) before speech_stopped, the transcripts, and the seconds spent
    decoding per second of audio streamed to the recognizer."""
    session = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {
                "input": {
                    "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                }
            },
        },
    }
    waits, partials, transcripts = [], [], []
    async with EngineClient() as client:
        arrived: list[float] = []  # when each event of client.log arrived
        add = client.log.add
        client.log.add = lambda event: (arrived.append(time.perf_counter()), add(event))
        await client.send(session)
        for pcm in clips:
            await client.append_audio(bytes(300 * 48) + pcm + bytes(700 * 48), pace=0.04)
            stopped = await client.wait("input_audio_buffer.speech_stopped")
            done = await client.wait(
                "conversation.item.input_audio_transcription.completed",
                where=lambda e, item=stopped["item_id"]: e["item_id"] == item,
            )
            events = client.log.events
            waits.append((arrived[events.index(done)] - arrived[events.index(stopped)]) * 1000)
            before = events[: events.index(stopped)]
            partials.append(
                sum(
                    e["type"] == "conversation.item.input_audio_transcription.delta"
                    and e["item_id"] == stopped["item_id"]
                    for e in before
                )
            )
            transcripts.append(done["transcript"])
            await client.wait("response.done")
        busy = client.upstream._session.stats.stt_rtf()
    return waits, partials, transcripts, busy


def bench_turns(sets: dict[str, list[bytes]]) -> None:
    print("Turns spoken in real time (40 ms appends, 500 ms silence window):")
    for voice, clips in sets.items():
        waits, partials, heard, busy = asyncio.run(spoken_turns(clips))
        print(
            f"    {voice:20s} speech_stopped -> transcript"
            f" median {statistics.median(waits):4.0f} ms"
            f"  range {min(waits):.0f}-{max(waits):.0f} ms;  partials before the end"
            f" {statistics.mean(partials):.1f} per turn (max {max(partials)});"
            f"  WER {word_error_rate(SENTENCES, heard):5.1%};  decoding {busy:.2f} s per s"
        )


# --- GIL ------------------------------------------------------------------------------------


async def loop_gaps(work: Callable | None, seconds: float) -> tuple[list[float], int]:
    """Time 1 ms asyncio sleeps while `work` runs over and over in a thread."""
    stop = threading.Event()
    runs = 0

    def worker() -> None:
        nonlocal runs
        while not stop.is_set():
            work()
            runs += 1

    thread = threading.Thread(target=worker) if work else None
    if thread:
        thread.start()
    gaps = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        gaps.append((time.perf_counter() - start) * 1000)
    stop.set()
    if thread:
        thread.join()
    return gaps, runs


def bench_gil(clips: list[bytes], seconds: float) -> None:
    clip = clips[2]
    piper = tts.get_synthesizer()
    with override_settings(LOCAL_TTS="espeak"):
        espeak = tts.get_synthesizer()
    recognizer = stt.get_recognizer("en")
    feeds = chunks(clip)
    detector = vad.VoiceActivityDetector()

    def vad_stream() -> None:
        for chunk in feeds:
            detector.feed(chunk)

    cases = {
        "idle (baseline)": None,
        "piper synthesize": lambda: piper.synthesize(SENTENCES[2], voice="piper"),
        "espeak synthesize": lambda: espeak.synthesize(SENTENCES[2], voice="marin"),
        "whisper transcribe": lambda: recognizer.transcribe(clip, language="en"),
        "silero VAD feed": vad_stream,
    }
    print(f"GIL: 1 ms asyncio.sleep in the loop while a thread works ({seconds:.0f} s each)")
    for label, work in cases.items():
        gaps, runs = asyncio.run(loop_gaps(work, seconds))
        gaps.sort()
        p99 = gaps[int(len(gaps) * 0.99)]
        print(
            f"    {label:20s} ticks {len(gaps):5d}  p50 {statistics.median(gaps):6.2f} ms  "
            f"p99 {p99:7.2f} ms  max {gaps[-1]:7.2f} ms   ({runs} runs)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per GIL case")
    args = parser.parse_args()
    print(
        f"# local speech benchmark {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
        f"{platform.machine()} nproc {os.cpu_count()}  load {os.getloadavg()[0]:.2f} "
        f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}  Python {platform.python_version()}"
    )
    piper_clips = bench_tts("piper", "piper")
    bench_tts("espeak", "marin")
    bench_stt(piper_clips)
    bench_vad(piper_clips)
    sets = bench_quality()
    bench_turns(sets)
    bench_gil(piper_clips, args.seconds)
    print(f"# load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
