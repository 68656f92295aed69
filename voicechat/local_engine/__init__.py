"""The offline Realtime engine: speaks the GA protocol in-process (VAD, STT, responder, TTS).

Owns everything that answers a conversation without a provider: voice activity and turn
detection, recognition, the language model and its canned skills, the voice, and the model files
(pinned wheels, hash-checked). `LocalUpstream` implements voicechat.upstream.base's interface.

May import: voicechat.upstream (the interface only) and the app's core modules.
"""

from voicechat.local_engine.connection import LocalUpstream

__all__ = ["LocalUpstream"]
