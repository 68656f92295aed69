"""The gateway's WebSocket: one browser or SDK socket, adapted to a GatewayConversation.

The consumer refuses what must not reach a conversation at all (a flood of sockets from one
address, an unauthenticated handshake: HTTP 403, nothing opened) and carries frames; everything
a conversation is and does lives in voicechat/gateway/conversation.py.
"""

import contextlib
import logging

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.sessions import InstanceSessionWrapper
from django.conf import settings

from voicechat.access import ratelimit
from voicechat.access.auth import authenticate, header
from voicechat.enums import EndReason
from voicechat.gateway.conversation import GatewayConversation
from voicechat.transport.server import TEXT_SHORTCUT, TextShortcut

logger = logging.getLogger(__name__)
audit = logging.getLogger("voicechat.audit")


def _frame_send(send):
    """The ASGI server's own send, for relayed frames.

    Channels' SessionMiddleware wraps `send` to save the session on HTTP responses; for every
    WebSocket frame the wrapper only inspects the (lazy) session and passes the frame on, which
    cost more than the policy check on the relay path. Accept and close still go through it.
    """
    wrapper = getattr(send, "__self__", None)
    return wrapper.real_send if isinstance(wrapper, InstanceSessionWrapper) else send


class _ConsumerSocket:
    """The consumer's socket as a gateway.ClientSocket."""

    def __init__(self, consumer: "RealtimeGatewayConsumer") -> None:
        self._consumer = consumer
        self._relay_send = _frame_send(consumer.base_send)
        self.shortcut: TextShortcut | None = consumer.scope.get("extensions", {}).get(
            TEXT_SHORTCUT
        )  # daphne, runserver, a test communicator: None, the general path only

    async def send_text(self, text: str) -> None:
        await self._consumer.send(text_data=text)

    async def send_frame(self, text: str) -> None:
        await self._relay_send({"type": "websocket.send", "text": text})

    async def close(self, code: int) -> None:
        await self._consumer.close(code=code)


class RealtimeGatewayConsumer(AsyncWebsocketConsumer):
    conversation: GatewayConversation | None = None

    async def __call__(self, scope: dict, receive, send) -> None:
        """Serve one socket with a plain receive loop (the hot path: one call per client frame).

        Channels' own loop would, for every frame, race the socket against a channel layer (a new
        task plus asyncio.wait) and hop to the database thread to close stale connections, where
        frames queue behind transcript writes. The gateway is never addressed through a channel
        layer, and it reaches the database only through database_sync_to_async, which does that
        clean-up itself around each call; so both are pure cost here. Staff on any process end
        a conversation through the process's one EndRequests reader (voicechat/monitoring/live.py).
        """
        self.scope = scope
        self.base_send = send
        try:
            with contextlib.suppress(StopConsumer):
                while True:
                    message = await receive()
                    if message["type"] != "websocket.receive":
                        await self.dispatch(message)
                    elif self.conversation is not None:
                        await self.conversation.receive(message.get("text"), message.get("bytes"))
        except Exception:
            # Whatever one message broke, the conversation still ends properly. Uncaught, it
            # left the socket at 1006 and the row open, still holding one of the user's
            # REALTIME_MAX_CONCURRENT_PER_USER places (issue 13).
            conversation = self.conversation
            logger.exception(
                "gateway failed (conversation %s)", conversation and conversation.conversation_id
            )
            if conversation is not None:
                await conversation.end(
                    EndReason.SERVER_ERROR,
                    "The gateway hit an internal error.",
                    code="server_error",
                )
        finally:
            if self.conversation is not None:
                await self.conversation.finish()

    async def dispatch(self, message: dict) -> None:
        """Call the handler for an ASGI message type (websocket_connect, _disconnect)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        client_ip = (self.scope.get("client") or ["unknown"])[0]
        if not await ratelimit.allow(
            f"ip:{client_ip}", limit=settings.REALTIME_CONNECTS_PER_MINUTE_PER_IP
        ):
            audit.warning("socket refused: too many connections from %s", client_ip)
            await self.close()
            return
        identity = await authenticate(self.scope)
        if identity is None:
            audit.warning("socket refused: not authenticated, from %s", client_ip)
            # Closing before accept refuses the handshake (HTTP 403); no upstream was opened.
            await self.close()
            return
        await self.accept()
        self.conversation = GatewayConversation(
            _ConsumerSocket(self),
            identity,
            client_ip=client_ip,
            user_agent=header(self.scope, b"user-agent") or "",
            query_string=self.scope.get("query_string", b"").decode("latin-1"),
        )
        await self.conversation.open()
