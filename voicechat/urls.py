from django.urls import path

from voicechat import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
]
