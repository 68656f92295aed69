"""Which models the offline engine runs, in words, for the record of a conversation.

Read from the settings when a conversation starts, so its history can say what answered it
("Whisper tiny.en, Qwen2.5-Coder-1.5B-Instruct, piper") rather than the OpenAI model name the
client asked for, which the offline engine does not run.
"""

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def offline_models() -> str:
    """The recognizer, the answering model and the voice, as configured now ("" if unknown)."""
    try:
        parts = [_recognizer(), _answerer(), settings.LOCAL_TTS]
    except ImproperlyConfigured:
        # A misconfigured engine fails on its own, with its own message; the record just
        # goes without.
        return ""
    return ", ".join(part for part in parts if part)


def _short(title: str) -> str:
    # Package titles carry a gloss in brackets: "Whisper tiny.en (speech recognition, English)".
    return title.split(" (")[0]


def _recognizer() -> str:
    if settings.LOCAL_STT != "faster-whisper":
        return settings.LOCAL_STT.rsplit(".", 1)[-1]
    if settings.LOCAL_STT_MODEL_PATH:
        return f"Whisper ({Path(settings.LOCAL_STT_MODEL_PATH).name})"
    # Imported here: the recognizer's module loads numpy, which only the offline engine needs.
    from voicechat.local_engine import stt

    return _short(stt.MODELS[stt.model_for(settings.REALTIME_LANGUAGE)].title)


def _answerer() -> str:
    if settings.LOCAL_LLM_URL:
        return settings.LOCAL_LLM_MODEL
    if settings.LOCAL_LLM == "embedded":
        if settings.LOCAL_LLM_MODEL_PATH:
            return Path(settings.LOCAL_LLM_MODEL_PATH).stem
        from voicechat.local_engine import llm

        return _short(llm.QWEN_15B.title)
    return "answers by rules"
