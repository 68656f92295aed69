"""The pages people use: the chat page, History, a conversation's transcript and its exports.

Owns the views and URLs of those pages, and WhiteNoise's static files streamed under ASGI.

May import: voicechat.gateway, voicechat.records, voicechat.local_engine and the app's core
modules.
"""
