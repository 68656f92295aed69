"""WS /ws/monitor: a staff member's live view of every conversation, on every server process.

On connect it sends the open conversations (`snapshot`), then `started` / `ended` events as
conversations come and go anywhere. `{"type": "watch", "conversation": ID}` sends that
conversation's stored lines (`transcript`) and then its new lines and status changes as they
happen; `{"type": "end", "conversation": ID}` ends it, wherever it is held.
"""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from voicechat.access.auth import same_origin
from voicechat.access.revocation import Access, access_watch, revoked
from voicechat.monitoring import live
from voicechat.protocol import CloseCode


class MonitorConsumer(AsyncJsonWebsocketConsumer):
    watching: int | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        # Session cookies only, so the same-origin check applies (cross-site hijacking).
        if user is None or not user.is_active or not user.is_staff or not same_origin(self.scope):
            await self.close()
            return
        self.username = user.get_username()
        # Join before reading the snapshot, so nothing that happens in between is missed.
        await self.channel_layer.group_add(live.MONITOR_GROUP, self.channel_name)
        await self.accept()
        # A staff member demoted, deactivated or signed out meanwhile loses the live view.
        self.access = Access(user.pk, session_key=self.scope["session"].session_key, staff=True)
        access_watch().watch(self, self.access, self._close_for_revoked_access)
        conversations = await database_sync_to_async(live.live_conversations)()
        await self.send_json({"kind": "snapshot", "conversations": conversations})

    async def disconnect(self, code: int) -> None:
        access_watch().forget(self)
        if hasattr(self, "username"):
            await self.channel_layer.group_discard(live.MONITOR_GROUP, self.channel_name)
            await self._unwatch()

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        # Anything but a JSON text frame is answered as any other wrong message is, and the
        # socket stays open (the base class raised, which dropped it with no close code).
        try:
            content = await self.decode_json(text_data) if text_data is not None else None
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            content = None
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        conversation_id = content.get("conversation") if isinstance(content, dict) else None
        if kind == "unwatch":
            await self._unwatch()
            return
        if kind not in ("watch", "end") or type(conversation_id) is not int:
            await self.send_json({"kind": "error", "message": "Send watch, unwatch or end."})
            return
        if kind == "watch":
            await self._watch(conversation_id)
        elif await database_sync_to_async(revoked)({self: self.access}):
            await self._close_for_revoked_access("Your staff access has been withdrawn.")
        else:
            ok = await live.request_end(conversation_id, by=self.username)
            await self.send_json(
                {"kind": "end_requested", "conversation": conversation_id, "ok": ok}
            )

    async def _close_for_revoked_access(self, message: str) -> None:
        await self.send_json({"kind": "error", "message": message})
        await self.close(code=int(CloseCode.ACCESS_REVOKED))

    async def _watch(self, conversation_id: int) -> None:
        await self._unwatch()
        self.watching = conversation_id
        await self.channel_layer.group_add(live.watch_group(conversation_id), self.channel_name)
        transcript = await database_sync_to_async(live.transcript_lines)(conversation_id)
        if transcript is None:
            await self._unwatch()
            await self.send_json({"kind": "error", "message": "No such conversation."})
            return
        await self.send_json({"kind": "transcript", **transcript, "conversation": conversation_id})

    async def _unwatch(self) -> None:
        if self.watching is not None:
            group = live.watch_group(self.watching)
            await self.channel_layer.group_discard(group, self.channel_name)
            self.watching = None

    async def monitor_event(self, message: dict) -> None:
        event = message["event"]
        # A watch group message for a conversation we have since stopped watching is dropped.
        if event["kind"] in ("line", "status") and event["conversation"] != self.watching:
            return
        await self.send_json(event)
