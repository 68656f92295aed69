"""The offline Realtime engine: speaks the GA protocol in-process (VAD, STT, responder, TTS)."""

from voicechat.local_engine.connection import LocalUpstream

__all__ = ["LocalUpstream"]
