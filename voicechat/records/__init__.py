"""What is kept of a conversation: its transcript lines, usage, audio and exports.

Owns the recorder (server events -> transcript lines and usage, batched off the relay path,
retried, spilled to JSONL rather than lost), the clamping of every upstream value before it
reaches the ORM, recordings of both sides' audio, and the Markdown/JSON exports.

May import: voicechat.monitoring (metrics) and the app's core modules.
"""
