"""The Realtime session behind a conversation, as the gateway sees it.

Owns the `Upstream` interface and its exceptions (base.py), `OpenAIUpstream`, the only code that
talks to OpenAI and holds its key (openai.py), and the WebSocket client to the provider on picows
(websocket.py). The offline engine implements the same interface; voicechat.gateway.backends
chooses between the two, so this package never imports the engine.

May import: voicechat.transport and the app's core modules.
"""
