from django.contrib import admin
from django.urls import include, path

from voicechat import health

urlpatterns = [
    path("admin/", admin.site.urls),
    # The health check (database + channel layer) and the staff live monitor.
    path("healthz", health.healthz, name="healthz"),
    path("monitor/", include("voicechat.monitor_urls")),
    path("", include("voicechat.urls")),
]
