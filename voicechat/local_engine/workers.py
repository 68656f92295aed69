"""Bounded thread pools per process for the engine's CPU-heavy calls (STT, TTS, end of turn).

Recognition and synthesis get a pool each: with one shared queue, a backlog of recognition
work from busy conversations would hold up the first sentence of someone else's reply, the
one piece of work a listener is waiting for. The turn model gets its own for the same reason:
it is asked as a pause begins, just when that pause's final transcription is queued for STT.
"""

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

from django.conf import settings

T = TypeVar("T")
Pool = Literal["stt", "tts", "turn"]


@functools.cache
def _executor(pool: Pool) -> ThreadPoolExecutor:
    # More threads than cores only adds contention: onnxruntime and CTranslate2 are CPU-bound.
    workers = getattr(settings, "LOCAL_ENGINE_WORKERS", 0) or os.cpu_count() or 2
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"local-{pool}")


async def run_heavy(pool: Pool, fn: Callable[..., T], *args) -> T:
    """Run a sync CPU-bound call off the event loop, in the named bounded pool."""
    return await asyncio.get_running_loop().run_in_executor(_executor(pool), fn, *args)
