"""Start-up checks (Django's system check framework): what must hold before serving.

Checked when the server starts (runserver, serve, check), so a mistake stops the server with a
clear message instead of failing in the middle of someone's conversation, or worse, not failing:
- every model a client may pick has a price, so budgets count it (never billed as free);
- the offline engine's models are installed and are the pinned files. Each model's owner says
  what "ready" means (stt.py, turn.py, llm.py); this module only decides when to ask.
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
    from voicechat.local_engine import stt, turn

    problems = stt.check_models() + turn.check_model()
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


@checks.register("prices")
def every_allowed_model_priced(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    from voicechat.services import PRICE_RATES, unpriced_models

    return [
        checks.Error(
            f"Model {model!r} is in REALTIME_ALLOWED_MODELS but has no complete price: its "
            "conversations would be billed as free and no budget would count them.",
            hint=f"Add it to REALTIME_PRICES in config/settings.py ({', '.join(PRICE_RATES)}, "
            "US dollars per million tokens, with the source), or leave it out of "
            "REALTIME_ALLOWED_MODELS.",
            id="voicechat.E201",
        )
        for model in unpriced_models(settings.REALTIME_ALLOWED_MODELS)
    ]
