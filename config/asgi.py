"""ASGI entry point: HTTP through Django, WebSockets through the gateway's routes."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before anything imports models, so this comes first (channels docs).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from voicechat import lifecycle  # noqa: E402
from voicechat.checks import refuse_development_key  # noqa: E402
from voicechat.enums import Backend  # noqa: E402
from voicechat.gateway.backends import resolve_backend  # noqa: E402
from voicechat.routing import websocket_urlpatterns  # noqa: E402

# No server starts with DEBUG off and the public development key (uvicorn runs no system checks).
refuse_development_key()

# No AllowedHostsOriginValidator here: it refuses every handshake without an Origin header,
# which is every script and OpenAI's SDK. The consumer checks the origin of cookie-authenticated
# sockets itself (voicechat/access/auth.py), where it matters. keeping_alive: every server process,
# idle or not, ends the conversations of processes that died (voicechat/lifecycle.py).
application = lifecycle.keeping_alive(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
        }
    )
)

# The offline engine's models load now, in the background, rather than in the first conversation
# (a missing model was already reported by the start-up check, voicechat/checks.py).
if resolve_backend() == Backend.LOCAL:
    from voicechat.local_engine import assistant, speech

    speech.warm_up()
    assistant.warm_up()

# Everything alive now (Django, the apps, the URL conf) lives as long as the process. Moved out
# of the collector's sight, it is not walked again by every full collection, which otherwise
# stall every conversation on the process for tens of milliseconds (docs/benchmarks.md).
gc.collect()
gc.freeze()
