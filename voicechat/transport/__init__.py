"""WebSocket framing the gateway owns: the server protocol uvicorn runs, and its frame codec.

Owns `GatewayWebSocketProtocol` (uvicorn's WebSocket protocol with the relay's flat frame path,
the text shortcut and the limits from settings), RFC 6455 frames parsed and built flat, and the
one-reader inbox that hands received frames on. It knows nothing of conversations.

May import: nothing from voicechat (it is the bottom layer).
"""
