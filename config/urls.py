from django.contrib import admin
from django.urls import include, path

from voicechat import health, metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    # The health check (database + channel layer) and the staff live monitor.
    path("healthz", health.healthz, name="healthz"),
    # Prometheus metrics, for staff and a scraper holding METRICS_TOKEN (voicechat/metrics.py).
    path("metrics", metrics.metrics_view, name="metrics"),
    path("monitor/", include("voicechat.monitor_urls")),
    path("", include("voicechat.urls")),
]
