"""What staff and operators see of the gateway while it runs.

Owns the live monitor (events published per conversation, staff "End" on any process), its
WebSocket consumer, pages and health dashboard, the Prometheus metrics, the health endpoint and
JSON log lines.

May import: voicechat.access and the app's core modules.
"""
