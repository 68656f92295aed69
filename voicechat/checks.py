"""Start-up checks (Django's system check framework): what must hold before serving.

Checked when the server starts (runserver, serve, check), so a mistake stops the server with a
clear message instead of failing in the middle of someone's conversation, or worse, not failing:
- every model a client may pick has a price, so budgets count it (never billed as free);
- the offline engine's models are installed and are the pinned files. Each model's owner says
  what "ready" means (stt.py, turn.py, llm.py); this module only decides when to ask.
- a server with DEBUG off never starts with the public development SECRET_KEY (a deployment
  check, also asked for by every server start, since uvicorn runs no system checks).
"""

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


def _offline_engine_in_use() -> bool:
    from voicechat.enums import Backend
    from voicechat.gateway.backends import resolve_backend

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


@checks.register("prices")
def every_transcription_model_priced(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    from voicechat.services import unpriced_transcription_models

    return [
        checks.Error(
            f"Transcription model {model!r} may be chosen (REALTIME_TRANSCRIPTION_MODELS) but has "
            "no price: its transcriptions would be billed as free.",
            hint="Add it to REALTIME_TRANSCRIPTION_PRICES in config/settings.py (per million "
            "tokens in and out, or per minute, with the source), or leave it out.",
            id="voicechat.E202",
        )
        for model in unpriced_transcription_models(settings.REALTIME_TRANSCRIPTION_MODELS)
    ]


@checks.register("upstream")
def upstream_proxy_usable(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """An https:// proxy would be reached without TLS: refused at start, not at the first call."""
    from voicechat.upstream.websocket import proxy_problem

    problem = proxy_problem(settings.OPENAI_REALTIME_URL)
    return [checks.Error(problem, id="voicechat.E401")] if problem else []


def development_key_in_production() -> list[checks.CheckMessage]:
    """An error when DEBUG is off and SECRET_KEY is still the public development key."""
    if settings.DEBUG or settings.SECRET_KEY != settings.DEVELOPMENT_SECRET_KEY:
        return []
    return [
        checks.Error(
            "SECRET_KEY is the public development key (none was set) and DEBUG is off: anyone "
            "could sign themselves a session as any user.",
            hint="Set SECRET_KEY to a long random value, the same for every process (python -c "
            '"import secrets; print(secrets.token_urlsafe(50))"); or, on your own machine for '
            "development, DEBUG=1 (`make run` sets it).",
            id="voicechat.E301",
        )
    ]


# With the deployment checks: the servers ask for it themselves (refuse_development_key), and
# other commands (migrate, createsuperuser) may run with the development key.
@checks.register(checks.Tags.security, deploy=True)
def secret_key_is_not_the_development_key(app_configs=None, **kwargs) -> list:
    return development_key_in_production()


def refuse_development_key() -> None:
    """Stop a server from starting with the development key when DEBUG is off.

    Called where a server loads the application (config/asgi.py, so uvicorn, daphne and every
    `serve` worker; and `serve` itself, once, before its workers): uvicorn runs no system checks.
    """
    for error in development_key_in_production():
        raise ImproperlyConfigured(str(error))


@checks.register("server_tools")
def server_tools_importable(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Every REALTIME_SERVER_TOOLS entry names a function decorated with @server_tool."""
    from django.utils.module_loading import import_string

    errors = []
    for path in settings.REALTIME_SERVER_TOOLS:
        try:
            function = import_string(path)
        except ImportError as exc:
            errors.append(checks.Error(f"{path}: {exc}", id="voicechat.E601"))
            continue
        if not hasattr(function, "server_tool"):
            errors.append(
                checks.Error(
                    f"{path} is not a server tool.",
                    hint=(
                        "Decorate it with "
                        "voicechat.gateway.server_tools.server_tool(name=..., ...)."
                    ),
                    id="voicechat.E601",
                )
            )
    return errors
