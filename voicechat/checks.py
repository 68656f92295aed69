"""Start-up checks (Django's system check framework): what must hold before serving.

The offline engine's models are checked here, when the server starts (runserver, serve, check),
so a missing model package or a file that is not the pinned one stops the server with a clear
message instead of failing in the middle of someone's conversation. Each model's owner says
what "ready" means (stt.py, llm.py); this module only decides when to ask.
"""

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


def _offline_engine_in_use() -> bool:
    from voicechat.upstream import Backend, resolve_backend

    return resolve_backend() == Backend.LOCAL


@checks.register("offline_models")
def offline_models(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    if not _offline_engine_in_use():
        return []
    from voicechat.local_engine import stt

    problems = stt.check_models()
    if not settings.LOCAL_LLM_URL and settings.LOCAL_LLM == "embedded":
        from voicechat.local_engine import llm

        try:
            llm.check_runtime()
            llm.model_path()
        except ImproperlyConfigured as exc:
            problems.append(
                checks.Error(
                    str(exc),
                    hint="Or set LOCAL_LLM=none (rule-based answers) or LOCAL_LLM_URL.",
                    id="voicechat.E101",
                )
            )
    return problems
