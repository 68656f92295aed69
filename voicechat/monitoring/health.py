"""GET /healthz: is this process able to serve? (database and channel layer, really used)."""

import asyncio
import logging
import re
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

from voicechat import lifecycle
from voicechat.redaction import redact

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0
_URL_CREDENTIALS = re.compile(r"://[^/@\s]+@")


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _channel_layer() -> None:
    """A message sent to a fresh channel of this process comes back (through Redis if used)."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer is configured")
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "health.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "health.ping":
        raise RuntimeError(f"the channel layer returned {message!r}")


async def _timed(name: str, check) -> dict:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check()
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # Never echo a password from a DATABASE_URL/REDIS_URL, or the provider key.
        detail = _URL_CREDENTIALS.sub("://***@", redact(detail))[:300]
        logger.warning("health check %s failed: %s", name, detail)
        return {"ok": False, "error": detail}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the channel layer answer, else 503; details either way."""
    checks = {
        "database": await _timed("database", sync_to_async(_database)),
        "channel_layer": await _timed("channel_layer", _channel_layer),
    }
    healthy = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {
            "status": "ok" if healthy else "unavailable",
            "checks": checks,
            "process": lifecycle.process_id(),
            "draining": lifecycle.draining(),
            "live_conversations": lifecycle.live_count(),
        },
        status=200 if healthy and not lifecycle.draining() else 503,
    )
