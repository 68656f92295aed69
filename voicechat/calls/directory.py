"""Where each call lives, for every process: a hangup reaches the call on any of them.

A call lives on the process that answered it (voicechat/calls/call.py keeps it there). When it
is answered, its id is written to the cache with its conversation and user: under several
processes the cache is Redis (REDIS_URL), as for the `ek_` secrets. A hangup that reaches a
process not holding the call looks the id up, checks that the call is the caller's and its
conversation still open (the row, which the holding process closes), and asks the holding
process to hang up, as staff "End" does: an end request on the channel layer, to the channel
stored on the conversation's row (voicechat/monitoring/live.py). The holding process tells a
hangup from a staff end by its `by`, which no username can be, and ends the call as the caller's
own hangup. Entries outlive their calls until the longest conversation would have ended; a stale
one finds the conversation ended, and the call is unknown.
"""

import asyncio
import logging
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache

from voicechat.models import Conversation
from voicechat.monitoring.live import END_REQUEST

logger = logging.getLogger(__name__)

# The `by` of an end request that is a caller's hangup (a username has no NUL or space).
HANGUP = "\x00call hangup"
# How long a hangup from another process waits for the holding process to store the end.
STORED_WITHIN = 10.0


def _key(call_id: str) -> str:
    return "voicechat:call:" + call_id


async def publish(call) -> None:
    """Make an answered call reachable from every process: record where it lives, and have its
    conversation's end requests that are hangups hang the call up."""
    conversation = call.conversation
    if conversation.stored is None:
        return
    pk = conversation.stored.pk
    await cache.aset(
        _key(call.id), (pk, call.user_id), timeout=settings.REALTIME_MAX_DURATION + 300
    )
    requests = conversation.end_requests
    # The handler the conversation registered (its staff end); none once it has ended already.
    staff_end = requests.handler(pk) if requests is not None else None
    if staff_end is None:
        return

    async def end(by: str) -> None:
        if by == HANGUP:
            await call.hang_up()
        else:
            await staff_end(by)

    requests.register(pk, end)


async def hang_up_elsewhere(call_id: str, user_id: int) -> bool:
    """Hang up the user's call held by another process, and wait until its end is stored.

    False if there is no such call: unknown, someone else's, or its conversation has ended.
    """
    if not call_id.startswith("rtc_") or len(call_id) > 64:
        return False
    entry = await cache.aget(_key(call_id))
    if not isinstance(entry, tuple) or len(entry) != 2 or entry[1] != user_id:
        return False
    conversation_id = entry[0]
    conversation = await _open_conversation(conversation_id, user_id)
    layer = get_channel_layer()
    if conversation is None or not conversation.channel_name or layer is None:
        return False
    await layer.send(
        conversation.channel_name,
        {"type": END_REQUEST, "conversation": conversation_id, "by": HANGUP},
    )
    logger.info(
        "call %s hung up on another process (%s, conversation %s)",
        call_id,
        conversation.process,
        conversation_id,
    )
    deadline = time.monotonic() + STORED_WITHIN
    while await _open_conversation(conversation_id, user_id) is not None:
        if time.monotonic() > deadline:
            # Asked; the holding process ends it when it reads the request (or it is gone,
            # and the conversation is found lost by its missing heartbeat).
            logger.warning("call %s: its end was not stored within %s s", call_id, STORED_WITHIN)
            break
        await asyncio.sleep(0.05)
    return True


@database_sync_to_async
def _open_conversation(conversation_id: int, user_id: int) -> Conversation | None:
    return Conversation.objects.active().filter(pk=conversation_id, user_id=user_id).first()
