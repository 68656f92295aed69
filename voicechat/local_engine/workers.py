"""One bounded thread pool per process for the engine's CPU-heavy calls (STT, TTS)."""

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.conf import settings

T = TypeVar("T")


@functools.cache
def _executor() -> ThreadPoolExecutor:
    # More threads than cores only adds contention: onnxruntime and pocketsphinx are CPU-bound.
    workers = getattr(settings, "LOCAL_ENGINE_WORKERS", 0) or os.cpu_count() or 2
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="local-engine")


async def run_heavy(fn: Callable[..., T], *args) -> T:
    """Run a sync CPU-bound call off the event loop, in the shared bounded pool."""
    return await asyncio.get_running_loop().run_in_executor(_executor(), fn, *args)
