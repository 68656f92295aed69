"""Fixed-window rate limits on the cache (shared across processes when the cache is shared)."""

import time

from django.core.cache import cache


async def allow(key: str, *, limit: int, per_seconds: int = 60) -> bool:
    """Count one event for `key`; False once more than `limit` fall in the current window."""
    if limit <= 0:
        return True
    window = int(time.time() // per_seconds)
    cache_key = f"voicechat:rate:{key}:{window}"
    if await cache.aadd(cache_key, 1, timeout=per_seconds + 1):
        return True
    try:
        count = await cache.aincr(cache_key)
    except ValueError:  # the window expired between add and incr: this is its first event
        await cache.aset(cache_key, 1, timeout=per_seconds + 1)
        return True
    return count <= limit
