"""WebRTC calls: OpenAI's `POST /v1/realtime/calls` contract, served by this server.

Owns the HTTP side (who may call, `ek_` client secrets, reading the SDP offer and the session,
refusals in OpenAI's error shape, hangup) and, for the offline engine, the call the server
terminates itself with aiortc: the peer connection adapted to a GatewayConversation's
`ClientSocket`, so admission, policy, recording, monitor, limits and end reasons are the
WebSocket's; the microphone track fed to it as PCM16 24 kHz, the reply played on the outgoing
track with its playback tracked (output_audio_buffer.*, barge-in truncation), GA events on the
`oai-events` data channel. With the OpenAI backend the call is made at OpenAI instead (the
offer forwarded with the server's key and session, the media going to OpenAI directly) and the
conversation follows it over the call's sideband WebSocket (openai_call.py).

May import: voicechat.gateway, voicechat.access, voicechat.local_engine, voicechat.upstream,
voicechat.monitoring (a hangup on another process travels as an end request) and the app's core
modules.
"""
