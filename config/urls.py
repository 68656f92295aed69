from django.contrib import admin
from django.urls import include, path
from django.views.i18n import JavaScriptCatalog

from voicechat.monitoring import health, metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    # The health check (database + channel layer) and the staff live monitor.
    path("healthz", health.healthz, name="healthz"),
    # Prometheus metrics, for staff and a scraper holding METRICS_TOKEN
    # (voicechat/monitoring/metrics.py).
    path("metrics", metrics.metrics_view, name="metrics"),
    path("monitor/", include("voicechat.monitoring.urls")),
    # OpenAI's WebRTC contract: POST /v1/realtime/calls and .../hangup (voicechat/calls/).
    path("v1/realtime/", include("voicechat.calls.urls")),
    # The language picker posts to set_language (i18n/setlang/); the page scripts' strings come
    # from jsi18n/ (locale/*/djangojs.po), loaded before their modules.
    path("i18n/", include("django.conf.urls.i18n")),
    path(
        "jsi18n/",
        JavaScriptCatalog.as_view(packages=["voicechat"], domain="djangojs"),
        name="javascript-catalog",
    ),
    path("", include("voicechat.pages.urls")),
]
