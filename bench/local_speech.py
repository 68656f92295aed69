"""Benchmark the local engine's speech parts: speed, listening quality, GIL hold times.

Run from the repository root:  python bench/local_speech.py [--seconds 2]
Prints real-time factors (processing time / audio time, lower is faster) for TTS and STT,
VAD cost per second of audio, word accuracy of piper/espeak speech through pocketsphinx, and
how long each library keeps the event loop waiting while it works in a worker thread.
"""

import argparse
import asyncio
import difflib
import os
import platform
import re
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

SENTENCES = [
    "What time does the store open tomorrow morning?",
    "Please turn on the kitchen lights.",
    "I would like to book a table for two people tonight.",
    "How far is it from here to the train station?",
    "Can you tell me a joke about computers?",
    "My favorite color is blue and I live in a small town.",
    "Set a timer for ten minutes please.",
    "Thank you very much for your help.",
    "The weather is nice today so let us go for a walk.",
    "Could you remind me to call my sister on Friday?",
]
CHUNK = PCM_RATE // 25 * 2  # 40 ms appends, as the browser sends them


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def word_accuracy(references: list[str], hypotheses: list[str]) -> float:
    matched = total = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, hyp = words(reference), words(hypothesis)
        matched += sum(b.size for b in difflib.SequenceMatcher(a=ref, b=hyp).get_matching_blocks())
        total += len(ref)
    return matched / total


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


def bench_stt(clips: list[bytes]) -> None:
    build = timed(stt._pool._build)[1]
    recognizer = stt.make_recognizer()
    whole, streamed, finish_ms = [], [], []
    for pcm in clips:
        seconds = pcm16_duration_ms(pcm, PCM_RATE) / 1000
        whole.append(timed(recognizer.transcribe, pcm)[1] / seconds)
        recognizer.start()
        fed = sum(timed(recognizer.feed, chunk)[1] for chunk in chunks(pcm))
        _text, finish = timed(recognizer.finish)
        streamed.append((fed + finish) / seconds)
        finish_ms.append(finish * 1000)
    recognizer.close()
    print(
        f"STT pocketsphinx decoder build {build:4.2f} s (pooled: paid once per concurrent "
        f"conversation)\n"
        f"    transcribe(whole utterance) RTF median {statistics.median(whole):.3f}"
        f"  max {max(whole):.3f}\n"
        f"    streamed in 40 ms feeds     RTF median {statistics.median(streamed):.3f}"
        f"  max {max(streamed):.3f}; finish() after the last feed median "
        f"{statistics.median(finish_ms):.0f} ms  max {max(finish_ms):.0f} ms"
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


def transcribe_conversation(clips: list[bytes]) -> list[str]:
    recognizer = stt.make_recognizer()
    try:
        return [recognizer.transcribe(clip) for clip in clips]
    finally:
        recognizer.close()


def bench_quality(label: str, clips: list[bytes]) -> None:
    heard = transcribe_conversation(clips)
    first = word_accuracy(SENTENCES[:1], heard[:1])
    rest = word_accuracy(SENTENCES[1:], heard[1:])
    print(
        f"ACC {label:20s} words right {word_accuracy(SENTENCES, heard):5.1%}"
        f"   first utterance {first:5.1%}, later ones {rest:5.1%}"
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
    recognizer = stt.make_recognizer()
    feeds = chunks(clip)
    detector = vad.VoiceActivityDetector()

    def stt_stream() -> None:
        recognizer.start()
        for chunk in feeds:
            recognizer.feed(chunk)
        recognizer.finish()

    def vad_stream() -> None:
        for chunk in feeds:
            detector.feed(chunk)

    cases = {
        "idle (baseline)": None,
        "piper synthesize": lambda: piper.synthesize(SENTENCES[2], voice="piper"),
        "espeak synthesize": lambda: espeak.synthesize(SENTENCES[2], voice="marin"),
        "pocketsphinx stream": stt_stream,
        "pocketsphinx whole": lambda: recognizer.transcribe(clip),
        "pocketsphinx build": stt._pool._build,
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
    recognizer.close()


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
    espeak_clips = bench_tts("espeak", "marin")
    bench_stt(piper_clips)
    bench_vad(piper_clips)
    bench_quality("piper -> pocketsphinx", piper_clips)
    bench_quality("espeak -> pocketsphinx", espeak_clips)
    bench_gil(piper_clips, args.seconds)
    print(f"# load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
