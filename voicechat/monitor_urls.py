from django.urls import path

from voicechat import monitor_views

urlpatterns = [
    path("", monitor_views.monitor_page, name="monitor"),
    path("health", monitor_views.monitor_health, name="monitor_health"),
    path("<int:pk>/end", monitor_views.monitor_end, name="monitor_end"),
]
