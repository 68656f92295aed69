from django.urls import path

from voicechat.monitoring import views

urlpatterns = [
    path("", views.monitor_page, name="monitor"),
    path("health", views.monitor_health, name="monitor_health"),
    path("<int:pk>/end", views.monitor_end, name="monitor_end"),
]
