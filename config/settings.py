"""Settings for voicechat: one file, configured from the environment.

Every setting a deployer may change is read here with a small helper and listed in README.md.
The embedded defaults (SQLite, in-memory channel layer, local engine) need no services. One
block per concern, in this order: the site, languages, storage, static files, HTTPS, logs and
metrics, the gateway, limits, conversations across processes, the offline engine.
"""

import os
import tempfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from django.conf import global_settings
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def envdecimal(name: str, default: str) -> Decimal:
    value = os.environ.get(name, "").strip() or default
    try:
        return Decimal(value)
    except ArithmeticError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def envlist(name: str, default: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


# ==================================================================================================
# The site: Django itself, sign-in
# ==================================================================================================

# Debug pages show settings and code to anyone: only when asked for (`make run` asks).
DEBUG = envbool("DEBUG", "False")
# A fixed development key keeps sessions valid across restarts on a developer's machine. It is
# public, so anyone could forge a session signed with it: with DEBUG off the servers refuse to
# start with it (voicechat.E301 in voicechat/checks.py); production sets its own SECRET_KEY.
DEVELOPMENT_SECRET_KEY = "django-insecure-voicechat-development-only"
SECRET_KEY = os.environ.get("SECRET_KEY", "") or DEVELOPMENT_SECRET_KEY

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    # daphne first, so `manage.py runserver` is the ASGI server and serves WebSockets too.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "voicechat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # First, so a locked-out username+IP is refused before the password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "login"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ==================================================================================================
# Languages and time
# ==================================================================================================

# The pages speak English, Simplified Chinese and Japanese: LocaleMiddleware picks one from the
# language cookie (the picker in the top bar, Django's set_language) or else Accept-Language.
# Catalogs live in locale/ (templates and Python: django.po; the page scripts: djangojs.po).
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文"), ("ja", "日本語")]
LOCALE_PATHS = [BASE_DIR / "locale"]
# The choice outlives the browser session (Django's default cookie ends with it).
LANGUAGE_COOKIE_AGE = 365 * 24 * 60 * 60
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.sessions.middleware.SessionMiddleware") + 1,
    "django.middleware.locale.LocaleMiddleware",
)
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# ==================================================================================================
# Storage: the database, the channel layer and the cache (embedded, or shared for scale-out)
# ==================================================================================================

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
        # The recorder writes from worker threads while pages read; WAL and a busy timeout
        # keep SQLite from answering "database is locked" under that mix.
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        # Tests run the gateway and servers against one file database (in-memory SQLite and
        # async tests do not mix); one file per test process, so parallel runs never collide.
        "TEST": {
            "NAME": os.path.join(tempfile.gettempdir(), f"voicechat-test-{os.getpid()}.sqlite3")
        },
    }
}

# Seconds a database connection is reused. The gateway reaches the database from one worker
# thread per process; reopening SQLite for every write (and checkpointing its WAL on every
# close) made a burst of new conversations wait seconds on that thread. 0 = close after use.
DATABASES["default"]["CONN_MAX_AGE"] = envint("DATABASE_CONN_MAX_AGE", 600)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# PostgreSQL (psycopg 3) for several server processes, e.g. postgres://user:pass@host/voicechat.
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    import dj_database_url

    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            # Under ASGI, connections kept per thread leak (Django's docs), so either psycopg's
            # pool (DATABASE_POOL, the default for PostgreSQL) or a new connection per use.
            conn_max_age=0,
            conn_health_checks=False,
        )
    }
    if DATABASES["default"]["ENGINE"].endswith("postgresql") and envbool("DATABASE_POOL", "True"):
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": envint("DATABASE_POOL_MAX_SIZE", 10),
        }
    # One test database per test process, so parallel runs on one server never collide.
    DATABASES["default"]["TEST"] = {
        "NAME": f"test_{DATABASES['default'].get('NAME') or 'voicechat'}_{os.getpid()}"
    }

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Redis for the channel layer, so processes reach each other (live monitor, staff "end"),
# and for the cache, so rate limits count every process.
REDIS_URL = os.environ.get("REDIS_URL", "")
# Keys and groups are namespaced, so several deployments (or test runs) can share one Redis.
REDIS_PREFIX = os.environ.get("REDIS_PREFIX", "voicechat")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default, exactly the 5 s a
                # consumer blocks waiting for its next message: an idle consumer would die
                # with "Timeout reading from" Redis. Allow the blocking read to finish.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "prefix": REDIS_PREFIX,
            },
        }
    }
    # Rate-limit windows (voicechat/access/ratelimit.py) must be shared by every process too.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_PREFIX,
        }
    }

# ==================================================================================================
# Static files
# ==================================================================================================

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

# Static files are served by WhiteNoise from any ASGI server, with or without DEBUG. With
# STATIC_ROOT set (production: run collectstatic into it) files are served compressed with
# hashed, forever-cacheable names; without it they are served straight from the sources.
if os.environ.get("STATIC_ROOT"):
    STATIC_ROOT = Path(os.environ["STATIC_ROOT"])
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    WHITENOISE_USE_FINDERS = False
else:
    # Nothing collected: serve the sources (collectstatic then asks for STATIC_ROOT).
    STATIC_ROOT = None
    WHITENOISE_USE_FINDERS = True
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "voicechat.pages.staticfiles.AsgiWhiteNoiseMiddleware",
)

# ==================================================================================================
# HTTPS
# ==================================================================================================

# Behind a TLS-terminating proxy: trust its X-Forwarded-Proto (only if it always sets it).
if envbool("SECURE_PROXY_SSL_HEADER", "False"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Served over HTTPS (HTTPS=true): cookies only over TLS, plain HTTP redirected, and browsers
# told to stay on HTTPS (HSTS), which `manage.py check --deploy` asks for. Off by default, so
# plain http://127.0.0.1 keeps working. Behind a TLS proxy, the redirect needs the proxy's
# X-Forwarded-Proto trusted (SECURE_PROXY_SSL_HEADER, or uvicorn's FORWARDED_ALLOW_IPS).
HTTPS = envbool("HTTPS", "False")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", str(HTTPS))
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", str(HTTPS))
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "False")
# security.W021 (no preload) is silenced on purpose: preloading asks browser vendors to hard-code
# HTTPS for a whole registrable domain (hstspreload.org), its owner's choice, and slow to undo.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
# Load balancers probe plain HTTP on the inside.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# ==================================================================================================
# Logs and metrics
# ==================================================================================================

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # The provider key must never reach a log line, whoever logs it (ours, daphne, websockets).
    # Every line logged for a conversation names it and its user (JSON lines carry both).
    "filters": {
        "conversation_context": {"()": "voicechat.monitoring.logformat.ConversationContext"},
        "redact_secrets": {"()": "voicechat.redaction.RedactingFilter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["conversation_context", "redact_secrets"],
        },
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # WebRTC calls: aioice logs every ICE candidate pair it checks at INFO (a dozen lines a call).
    "loggers": {"aioice": {"level": "WARNING"}},
}

# LOG_FORMAT=json writes one JSON object per line (for log shippers); secrets stay redacted.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text").strip().lower()
LOGGING["formatters"] = {
    "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"},
    "json": {"()": "voicechat.monitoring.logformat.JsonFormatter"},
}
# Servers' own loggers go through our handler too (one format, and redacted): uvicorn gives
# them handlers of their own, which this replaces.
LOGGING.setdefault("loggers", {}).update(
    {name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.access")}
)
for _handler in LOGGING["handlers"].values():
    _handler["formatter"] = "json" if LOG_FORMAT == "json" else "text"
    _handler.setdefault("filters", [])
    if "redact_secrets" not in _handler["filters"]:
        _handler["filters"].append("redact_secrets")

# /metrics (Prometheus) for staff sessions, and for `Authorization: Bearer <METRICS_TOKEN>`
# (a scraper); empty = token access off. Anyone else is refused with 403.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

# ==================================================================================================
# The gateway: the provider, models, voices, what clients may set, prices
# ==================================================================================================

OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
OPENAI_REALTIME_URL = os.environ.get("OPENAI_REALTIME_URL", "wss://api.openai.com/v1/realtime")
# Where WebRTC calls are made at OpenAI (POST .../realtime/calls, .../calls/{id}/hangup); empty:
# beside OPENAI_REALTIME_URL (https://api.openai.com/v1/realtime/calls for the default).
OPENAI_REALTIME_CALLS_URL = os.environ.get("OPENAI_REALTIME_CALLS_URL", "")
# auto = OpenAI when a key is set, else the offline local engine.
REALTIME_BACKEND = os.environ.get("REALTIME_BACKEND", "auto").strip().lower()
if REALTIME_BACKEND not in ("auto", "openai", "local"):
    raise ImproperlyConfigured(
        f"REALTIME_BACKEND must be auto, openai or local, got {REALTIME_BACKEND!r}"
    )
REALTIME_MODEL = os.environ.get("REALTIME_MODEL", "gpt-realtime-2.1")
# Models a client may pick with ?model=; the default model is always allowed. Every one needs a
# price below (a system check refuses to start otherwise). gpt-realtime and gpt-realtime-mini
# stay until their announced shutdown on 2027-01-20 (realtime-protocol.md, "Update, December
# 2026"): drop them from this default then.
REALTIME_ALLOWED_MODELS = sorted(
    {
        REALTIME_MODEL,
        *envlist(
            "REALTIME_ALLOWED_MODELS",
            "gpt-realtime-2.1,gpt-realtime-2.1-mini,gpt-realtime-2,gpt-realtime-1.5,"
            "gpt-realtime,gpt-realtime-mini",
        ),
    }
)
REALTIME_VOICES = envlist(
    "REALTIME_VOICES", "marin,cedar,alloy,ash,ballad,coral,echo,sage,shimmer,verse"
)
REALTIME_VOICE = os.environ.get("REALTIME_VOICE", "marin")
REALTIME_INSTRUCTIONS = os.environ.get(
    "REALTIME_INSTRUCTIONS",
    "You are a friendly, concise voice assistant. Keep answers short and conversational.",
)
REALTIME_TRANSCRIPTION_MODEL = os.environ.get(
    "REALTIME_TRANSCRIPTION_MODEL", "gpt-4o-mini-transcribe"
)
REALTIME_LANGUAGE = os.environ.get("REALTIME_LANGUAGE", "en")
# The chat page's transport: webrtc (the browser's echo canceller hears the reply) or websocket.
REALTIME_CHAT_TRANSPORT = os.environ.get("REALTIME_CHAT_TRANSPORT", "webrtc").strip().lower()
if REALTIME_CHAT_TRANSPORT not in ("webrtc", "websocket"):
    raise ImproperlyConfigured(
        f"REALTIME_CHAT_TRANSPORT must be webrtc or websocket, got {REALTIME_CHAT_TRANSPORT!r}"
    )
# The site default scope (voicechat/access/scopes.py): what browser sessions, and API tokens
# without a scope of their own, may set. Clients may not replace the server's instructions, tools or
# prompt unless the deployer allows it; they may pick the server's own transcription model (as
# OpenAI's SDK does), or those listed; 0 = no limit on max_output_tokens beyond the model's own.
REALTIME_CLIENT_MAY_SET_INSTRUCTIONS = envbool("REALTIME_CLIENT_MAY_SET_INSTRUCTIONS", "False")
REALTIME_CLIENT_MAY_SET_TOOLS = envbool("REALTIME_CLIENT_MAY_SET_TOOLS", "False")
REALTIME_CLIENT_MAY_SET_PROMPT = envbool("REALTIME_CLIENT_MAY_SET_PROMPT", "False")
REALTIME_CLIENT_TRANSCRIPTION_MODELS = envlist(
    "REALTIME_CLIENT_TRANSCRIPTION_MODELS", REALTIME_TRANSCRIPTION_MODEL
)
REALTIME_CLIENT_MAX_OUTPUT_TOKENS = envint("REALTIME_CLIENT_MAX_OUTPUT_TOKENS", 0)
if REALTIME_CLIENT_MAX_OUTPUT_TOKENS < 0:
    raise ImproperlyConfigured("REALTIME_CLIENT_MAX_OUTPUT_TOKENS must be 0 (no limit) or more.")
# Transcription models any scope may let its holder pick (the server's own, and the site
# default scope's, are always in). Left out by default: gpt-4o-transcribe-diarize (its speaker
# segments are not stored yet) and gpt-realtime-whisper (it needs turn_detection null).
REALTIME_TRANSCRIPTION_MODELS = sorted(
    {
        REALTIME_TRANSCRIPTION_MODEL,
        *REALTIME_CLIENT_TRANSCRIPTION_MODELS,
        *envlist(
            "REALTIME_TRANSCRIPTION_MODELS",
            "gpt-transcribe,gpt-live-transcribe,gpt-4o-transcribe,gpt-4o-mini-transcribe,whisper-1",
        ),
    }
)
# Tools the gateway declares in every session and runs itself (voicechat/gateway/server_tools.py):
# dotted paths of functions decorated with @server_tool; add your own here. Empty: none.
REALTIME_SERVER_TOOLS = envlist(
    "REALTIME_SERVER_TOOLS",
    "voicechat.gateway.server_tools.get_current_time,voicechat.gateway.server_tools.search_my_conversations",
)
# Seconds a server tool may take before the model is told it took too long.
REALTIME_SERVER_TOOL_TIMEOUT = envint("REALTIME_SERVER_TOOL_TIMEOUT", 10)
# Seconds to wait for the upstream handshake before telling the client it is unreachable.
REALTIME_CONNECT_TIMEOUT = envint("REALTIME_CONNECT_TIMEOUT", 10)
# Client frames held while the upstream opens (40 ms audio chunks: 250 frames = 10 s).
REALTIME_PENDING_FRAMES = envint("REALTIME_PENDING_FRAMES", 250)
# WebRTC calls (voicechat/calls/): STUN servers for the server's side of a call, comma-separated
# URLs (stun:stun.example.org:3478). None by default: a server with a public address needs none,
# and aiortc's own default (a public STUN server) cannot be reached offline.
REALTIME_WEBRTC_ICE_SERVERS = envlist("REALTIME_WEBRTC_ICE_SERVERS", "")
# Seconds a call's peer has, after the SDP answer, to connect (ICE, DTLS) before the call ends.
REALTIME_WEBRTC_CONNECT_TIMEOUT = envint("REALTIME_WEBRTC_CONNECT_TIMEOUT", 20)

# US dollars per million tokens; cached input is a subset of input tokens, billed at its own
# rate. A model missing here is never billed as free: the gateway refuses to start with it
# allowed (voicechat/checks.py). Sources, read 2026-12-02:
#   [models] OpenAI's model pages, developers.openai.com/api/docs/models/<model>
#   [protocol] ../shared/reference/realtime-protocol.md, "Update, December 2026"
#   [pricing-2025] openai.com/api/pricing, 2025-08
REALTIME_PRICES = {
    # [models] gpt-realtime-2.1
    "gpt-realtime-2.1": {
        "text_input": Decimal("4.00"),
        "text_cached_input": Decimal("0.40"),
        "text_output": Decimal("24.00"),
        "audio_input": Decimal("32.00"),
        "audio_cached_input": Decimal("0.40"),
        "audio_output": Decimal("64.00"),
    },
    # [models] gpt-realtime-2.1-mini
    "gpt-realtime-2.1-mini": {
        "text_input": Decimal("0.60"),
        "text_cached_input": Decimal("0.06"),
        "text_output": Decimal("2.40"),
        "audio_input": Decimal("10.00"),
        "audio_cached_input": Decimal("0.30"),
        "audio_output": Decimal("20.00"),
    },
    # Text: [models] gpt-realtime-2; audio: [protocol] and [models] agree.
    "gpt-realtime-2": {
        "text_input": Decimal("4.00"),
        "text_cached_input": Decimal("0.40"),
        "text_output": Decimal("24.00"),
        "audio_input": Decimal("32.00"),
        "audio_cached_input": Decimal("0.40"),
        "audio_output": Decimal("64.00"),
    },
    # [models] gpt-realtime-1.5
    "gpt-realtime-1.5": {
        "text_input": Decimal("4.00"),
        "text_cached_input": Decimal("0.40"),
        "text_output": Decimal("16.00"),
        "audio_input": Decimal("32.00"),
        "audio_cached_input": Decimal("0.40"),
        "audio_output": Decimal("64.00"),
    },
    # [pricing-2025]; shut down on 2027-01-20.
    "gpt-realtime": {
        "text_input": Decimal("4.00"),
        "text_cached_input": Decimal("0.40"),
        "text_output": Decimal("16.00"),
        "audio_input": Decimal("32.00"),
        "audio_cached_input": Decimal("0.40"),
        "audio_output": Decimal("64.00"),
    },
    # [pricing-2025]; shut down on 2027-01-20.
    "gpt-realtime-mini": {
        "text_input": Decimal("0.60"),
        "text_cached_input": Decimal("0.06"),
        "text_output": Decimal("2.40"),
        "audio_input": Decimal("10.00"),
        "audio_cached_input": Decimal("0.30"),
        "audio_output": Decimal("20.00"),
    },
}
# The input transcription models, which OpenAI bills apart from the conversation's model: in
# US dollars per million tokens ("input": audio in, "output": text out) or per minute of audio
# ("per_minute"). Every model in REALTIME_TRANSCRIPTION_MODELS needs one (voicechat.E202), so a
# transcription is never billed as free. Sources as above, read 2026-12-02.
REALTIME_TRANSCRIPTION_PRICES = {
    # [models] gpt-4o-transcribe: audio tokens $2.50 in, $10.00 out
    "gpt-4o-transcribe": {"input": Decimal("2.50"), "output": Decimal("10.00")},
    # [models] gpt-4o-mini-transcribe (the compare page): $1.25 in, $5.00 out
    "gpt-4o-mini-transcribe": {"input": Decimal("1.25"), "output": Decimal("5.00")},
    # [models] gpt-transcribe: transcription audio duration, $0.0045 a minute
    "gpt-transcribe": {"per_minute": Decimal("0.0045")},
    # [models] gpt-live-transcribe and gpt-realtime-whisper: realtime audio, $0.017 a minute
    "gpt-live-transcribe": {"per_minute": Decimal("0.017")},
    "gpt-realtime-whisper": {"per_minute": Decimal("0.017")},
    # [pricing-2025] whisper-1: $0.006 a minute
    "whisper-1": {"per_minute": Decimal("0.006")},
}

# ==================================================================================================
# Limits: sign-in attempts, budgets, connections, frames, conversations
# ==================================================================================================

# Login rate limiting (django-axes): this many failures for one username from one address
# locks that pair out for LOGIN_COOLOFF_MINUTES; a successful login resets the count.
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=envint("LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"
AXES_VERBOSE = False

# Daily budgets per user (0 = unlimited); per-user overrides live in admin (User limits).
REALTIME_DAILY_MINUTES = envint("REALTIME_DAILY_MINUTES", 120)
REALTIME_DAILY_COST_USD = envdecimal("REALTIME_DAILY_COST_USD", "5.00")
# How often a live conversation re-checks the budgets, in seconds.
REALTIME_BUDGET_CHECK_SECONDS = envint("REALTIME_BUDGET_CHECK_SECONDS", 30)
# New gateway sockets per minute (0 = unlimited).
REALTIME_CONNECTS_PER_MINUTE_PER_USER = envint("REALTIME_CONNECTS_PER_MINUTE_PER_USER", 20)
REALTIME_CONNECTS_PER_MINUTE_PER_IP = envint("REALTIME_CONNECTS_PER_MINUTE_PER_IP", 60)
# Frame limits: the largest client frame (characters), and audio no faster than real time
# times REALTIME_AUDIO_RATE after a burst allowance of REALTIME_AUDIO_BURST_MS.
REALTIME_MAX_FRAME_BYTES = envint("REALTIME_MAX_FRAME_BYTES", 256 * 1024)
REALTIME_AUDIO_RATE = float(envdecimal("REALTIME_AUDIO_RATE", "1.5"))
REALTIME_AUDIO_BURST_MS = envint("REALTIME_AUDIO_BURST_MS", 5000)
# Refused client events tolerated per minute before the socket is closed as abusive.
REALTIME_MAX_REFUSED_PER_MINUTE = envint("REALTIME_MAX_REFUSED_PER_MINUTE", 300)

# Conversations one user may hold at once (0 = no limit).
REALTIME_MAX_CONCURRENT_PER_USER = envint("REALTIME_MAX_CONCURRENT_PER_USER", 3)

# Longest conversation in seconds (0 = no limit). Not OpenAI's 60 minutes per session: a
# conversation moves to a fresh session before then (REALTIME_RECYCLE_AFTER_SECONDS).
REALTIME_MAX_DURATION = envint("REALTIME_MAX_DURATION", 4 * 3600)

# ==================================================================================================
# Conversations across processes: access checks, heartbeat, shutdown, spilled transcripts, resume
# ==================================================================================================

# How often open sockets are checked for access withdrawn since they opened (a revoked token, a
# deactivated or demoted user, a signed-out session): the most such a socket lives on.
REALTIME_ACCESS_CHECK_SECONDS = float(envdecimal("REALTIME_ACCESS_CHECK_SECONDS", "5"))

# Each process marks its live conversations this often (seconds); rows not marked for
# REALTIME_STALE_AFTER seconds belong to a crashed process and are ended as process_lost.
REALTIME_HEARTBEAT_INTERVAL = envint("REALTIME_HEARTBEAT_INTERVAL", 30)
REALTIME_STALE_AFTER = envint("REALTIME_STALE_AFTER", 120)
# On SIGTERM/SIGINT, seconds to tell clients, close upstreams and store transcripts
# before the server's own shutdown goes on.
REALTIME_SHUTDOWN_TIMEOUT = envint("REALTIME_SHUTDOWN_TIMEOUT", 10)
# Where a conversation's transcript goes when the database is still away at its end (one JSONL
# file per conversation); `manage.py replay_spilled_transcripts` stores it once it is back.
TRANSCRIPT_SPILL_DIR = os.environ.get("TRANSCRIPT_SPILL_DIR", str(BASE_DIR / "var" / "spill"))

# A continued conversation (?resume=), and one moved to a fresh upstream session (recycled),
# replays at most this many tokens of its transcript to the model, the latest lines first
# (voicechat/gateway/resume.py).
REALTIME_RESUME_CONTEXT_TOKENS = envint("REALTIME_RESUME_CONTEXT_TOKENS", 4000)
# Before the upstream's own session limit (60 minutes at OpenAI), a conversation moves to a fresh
# upstream session: at a quiet moment after this many seconds (no reply being made, the user not
# speaking), or regardless once REALTIME_RECYCLE_GRACE_SECONDS more have passed. 0 = never.
REALTIME_RECYCLE_AFTER_SECONDS = float(envdecimal("REALTIME_RECYCLE_AFTER_SECONDS", "3300"))
REALTIME_RECYCLE_GRACE_SECONDS = float(envdecimal("REALTIME_RECYCLE_GRACE_SECONDS", "240"))

# ==================================================================================================
# Recordings: both sides' audio per turn, off unless turned on (voicechat/records/recordings.py)
# ==================================================================================================

# On for every user; a user's own "record audio" (admin, User limits) overrides it either way.
RECORDING_ENABLED = envbool("RECORDING_ENABLED", "false")
# `manage.py purge_recordings` (run it daily) erases recordings older than this.
RECORDING_RETENTION_DAYS = envint("RECORDING_RETENTION_DAYS", 30)
# The longest turn kept in memory while it is spoken; audio beyond it is not recorded.
RECORDING_MAX_TURN_SECONDS = envint("RECORDING_MAX_TURN_SECONDS", 120)
# Files go through Django's storage API: replace STORAGES["recordings"] with any storage backend
# (django-storages' S3Storage, say) to keep them on object storage. Never served publicly: only
# the owner's History page (and staff in admin) play them, through a view.
RECORDING_DIR = os.environ.get("RECORDING_DIR", str(BASE_DIR / "var" / "recordings"))
STORAGES = {
    **globals().get("STORAGES", global_settings.STORAGES),
    "recordings": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": RECORDING_DIR},
    },
}

# ==================================================================================================
# The offline engine (REALTIME_BACKEND=local, or auto without a key)
# ==================================================================================================

# Where model files split across several wheels are joined (once) before loading
# (voicechat/local_engine/model_files.py); about 1.2 GB with the default models.
LOCAL_MODEL_CACHE = os.environ.get(
    "LOCAL_MODEL_CACHE",
    os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "voicechat", "models"),
)

# Speech recognizer: faster-whisper (Whisper, models from requirements-models.txt) or a dotted
# path to your own factory (voicechat/local_engine/stt.py).
LOCAL_STT = os.environ.get("LOCAL_STT", "faster-whisper").strip()
# auto: Whisper tiny.en for English, multilingual base for other transcription languages.
LOCAL_STT_MODEL = os.environ.get("LOCAL_STT_MODEL", "auto").strip()
# Your own CTranslate2 Whisper model directory (with tokenizer.json), for every language.
LOCAL_STT_MODEL_PATH = os.environ.get("LOCAL_STT_MODEL_PATH", "").strip()
# How the offline engine's sessions find the end of a turn unless a client says otherwise:
# semantic_vad (a turn model judges each pause: LOCAL_TURN_MODEL, from requirements-models.txt)
# or server_vad (a fixed 500 ms of silence ends the turn).
LOCAL_TURN_DETECTION = os.environ.get("LOCAL_TURN_DETECTION", "semantic_vad").strip()
# The turn model: smart-turn (Smart-Turn v3.2) or a dotted path to your own factory
# (voicechat/local_engine/turn.py); LOCAL_TURN_MODEL_PATH: your own Smart-Turn v3 ONNX file.
LOCAL_TURN_MODEL = os.environ.get("LOCAL_TURN_MODEL", "smart-turn").strip()
LOCAL_TURN_MODEL_PATH = os.environ.get("LOCAL_TURN_MODEL_PATH", "").strip()
# Speech synthesizer: piper (bundled joe voice), espeak (fast, robotic) or a dotted path.
LOCAL_TTS = os.environ.get("LOCAL_TTS", "piper").strip()
# Another piper voice: path to its .onnx file, with the .onnx.json beside it.
LOCAL_PIPER_VOICE = os.environ.get("LOCAL_PIPER_VOICE", "")


# An OpenAI-compatible chat-completions server for the local engine's replies (Ollama:
# http://127.0.0.1:11434/v1, llama.cpp server: http://127.0.0.1:8080/v1); it overrides LOCAL_LLM.
LOCAL_LLM_URL = os.environ.get("LOCAL_LLM_URL", "").strip()
# Without LOCAL_LLM_URL: `embedded` runs a language model in process (llama.cpp; the pinned
# Qwen2.5-Coder-1.5B from requirements-models.txt, or your own GGUF at LOCAL_LLM_MODEL_PATH);
# `none` answers by rules only (time, date, arithmetic, remembered facts, tools).
LOCAL_LLM = os.environ.get("LOCAL_LLM", "embedded").strip().lower()
LOCAL_LLM_MODEL_PATH = os.environ.get("LOCAL_LLM_MODEL_PATH", "").strip()
# Tokens of context (the conversation is trimmed from its oldest turn to fit) and per reply.
LOCAL_LLM_CONTEXT = envint("LOCAL_LLM_CONTEXT", 4096)
LOCAL_LLM_MAX_TOKENS = envint("LOCAL_LLM_MAX_TOKENS", 120)
# Threads for the embedded model (0: one per core).
LOCAL_LLM_THREADS = envint("LOCAL_LLM_THREADS", 0)
LOCAL_LLM_MODEL = os.environ.get("LOCAL_LLM_MODEL", "llama3.2")
LOCAL_LLM_API_KEY = os.environ.get("LOCAL_LLM_API_KEY", "")
# Seconds to wait for the LLM server before the response fails.
LOCAL_LLM_TIMEOUT = envint("LOCAL_LLM_TIMEOUT", 60)
# Threads for speech recognition, and as many for synthesis, shared by all conversations
# (0: one per core).
LOCAL_ENGINE_WORKERS = envint("LOCAL_ENGINE_WORKERS", 0)
# Start the reply in the user's pause, before the turn has ended, and use it if the turn ends
# there (voicechat/local_engine/speculation.py); false waits for the end of the turn.
LOCAL_SPECULATIVE_REPLIES = envbool("LOCAL_SPECULATIVE_REPLIES", "True")
