"""The live conversations of this server process: their heartbeat, and a graceful end.

Neither uvicorn nor daphne lets a consumer speak before shutdown: uvicorn closes every socket
with 1012 (the consumer only hears `websocket.disconnect` afterwards) and daphne cancels the
consumers outright. So the first conversation of a process wraps the server's own SIGTERM/SIGINT
handler: on the signal it first ends every live conversation here (an `error` event the client
can show, close code 4007, upstream closed, transcript flushed, end reason `server_shutdown`),
within REALTIME_SHUTDOWN_TIMEOUT, and then hands the signal to the server, which shuts down as
it always does. A second signal skips the wait.

Every server process also keeps a beat from its start to its exit (`keep_alive`, started by
`keeping_alive` with the server, or by its first conversation): each REALTIME_HEARTBEAT_INTERVAL
it marks its live conversations alive and ends those of processes that died (no heartbeat for
REALTIME_STALE_AFTER), idle or not, so a killed process's conversations are ended within
REALTIME_STALE_AFTER + REALTIME_HEARTBEAT_INTERVAL by whichever process is still up; `serve`
ends a dead worker's at once.
"""

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import socket
import threading
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings

from voicechat import services

logger = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class LiveConversation(Protocol):
    conversation_id: int

    async def end_for_shutdown(self) -> None: ...


_live: set[LiveConversation] = set()
_state = {"loop": None, "heartbeat": None, "draining": False, "signalled": False}
_previous_handlers: dict[int, object] = {}


def process_id(pid: int | None = None) -> str:
    """This server process (or process `pid` on this host), as shown to staff: host and pid."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def draining() -> bool:
    """True once this process is shutting down: new conversations are refused."""
    return _state["draining"]


def register(conversation: LiveConversation) -> None:
    """Track a live conversation (call from its event loop, once it is stored)."""
    _live.add(conversation)
    _state["loop"] = asyncio.get_running_loop()
    keep_alive()
    _install_signal_handlers()


def unregister(conversation: LiveConversation) -> None:
    # The beat goes on with no conversation left: it also ends those of dead processes.
    _live.discard(conversation)


def keep_alive() -> None:
    """Start this process's beat on the running event loop, unless it already runs there."""
    loop = asyncio.get_running_loop()
    heartbeat = _state["heartbeat"]
    if heartbeat is None or heartbeat.done() or heartbeat.get_loop() is not loop:
        _state["heartbeat"] = loop.create_task(_beat_forever())


def keeping_alive(application):
    """The ASGI `application`, with this process's beat started when the server starts it
    (ASGI lifespan), or on its first connection under a server that sends no lifespan events."""

    async def with_beat(scope, receive, send) -> None:
        keep_alive()
        if scope["type"] != "lifespan":
            await application(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return with_beat


def live_count() -> int:
    return len(_live)


async def shutdown_all(timeout: float | None = None) -> None:
    """End every live conversation of this process (server shutdown), waiting up to `timeout`."""
    _state["draining"] = True
    conversations = list(_live)
    if not conversations:
        return
    logger.info("shutting down: ending %d live conversation(s)", len(conversations))
    tasks = [asyncio.create_task(c.end_for_shutdown()) for c in conversations]
    done, pending = await asyncio.wait(
        tasks, timeout=settings.REALTIME_SHUTDOWN_TIMEOUT if timeout is None else timeout
    )
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            logger.error("ending a conversation at shutdown failed", exc_info=task.exception())
    if pending:
        logger.warning("shutdown: %d conversation(s) did not finish in time", len(pending))


async def _beat_forever() -> None:
    """Mark this process's conversations alive, and end those of processes that died: at once
    (a process starting up cleans after one that died), then every heartbeat interval."""
    while True:
        ids = [c.conversation_id for c in _live]
        try:
            if ids:
                await database_sync_to_async(services.conversations_heartbeat)(conversation_ids=ids)
            ended = await database_sync_to_async(services.conversations_end_stale)()
        except Exception:
            logger.exception("conversation heartbeat failed")
        else:
            if ended:
                logger.warning("ended %d conversation(s) of a lost server process", ended)
        await asyncio.sleep(settings.REALTIME_HEARTBEAT_INTERVAL)


# --- signals --------------------------------------------------------------------------------


def _install_signal_handlers() -> None:
    """Wrap the server's shutdown signal handlers once (signals belong to the main thread)."""
    if _previous_handlers or threading.current_thread() is not threading.main_thread():
        return
    for signum in SHUTDOWN_SIGNALS:
        _previous_handlers[signum] = signal.getsignal(signum)
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame) -> None:
    loop = _state["loop"]
    if _state["signalled"] or not _live or loop is None or loop.is_closed():
        # Nothing to end, or a second signal: the server's own handling, at once.
        _pass_on(signum, frame)
        return
    _state["signalled"] = True
    logger.info("received signal %d: ending live conversations first", signum)
    # A fresh context: the handler runs inside whatever code the signal interrupted, and its
    # context variables (asgiref's "single DB thread busy" flag among them) must not leak into
    # the shutdown tasks, or their database writes refuse to run.
    loop.call_soon_threadsafe(_start_shutdown, signum, frame, context=contextvars.Context())


def _start_shutdown(signum: int, frame) -> None:
    task = asyncio.get_running_loop().create_task(shutdown_all())
    task.add_done_callback(lambda _: _pass_on(signum, frame))


def _pass_on(signum: int, frame) -> None:
    """Hand the signal to whoever handled it before us (uvicorn, twisted, or the default)."""
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


@contextlib.contextmanager
def fresh_state():
    """Tests: a process with no live conversation that is not shutting down, before and after.

    A test whose consumer was cancelled (a communicator timing out) never unregisters it; it
    must not be "shut down" by the next test.
    """
    saved = {"loop": _state["loop"]}
    _live.clear()
    _state.update(draining=False, signalled=False, heartbeat=None)
    try:
        yield
    finally:
        heartbeat = _state["heartbeat"]
        if heartbeat is not None and not heartbeat.get_loop().is_closed():
            heartbeat.cancel()
        _live.clear()
        _state.update(draining=False, signalled=False, heartbeat=None, **saved)
