"""One conversation's life, from admission to its stored end.

Owns `GatewayConversation` (admission, upstream, client-event policy, recording, monitor,
limits, ending, recycling, resuming, server tools), the Channels consumer that adapts a WebSocket
to it, and the choice of backend. Transports other than the WebSocket adapt their socket to its
`ClientSocket` protocol.

May import: voicechat.access, voicechat.transport, voicechat.upstream, voicechat.local_engine,
voicechat.records, voicechat.monitoring and the app's core modules.
"""
