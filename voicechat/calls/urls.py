from django.urls import path

from voicechat.calls import views

urlpatterns = [
    path("calls", views.create_call, name="realtime_calls"),
    path("calls/<str:call_id>/hangup", views.hang_up, name="realtime_call_hangup"),
    path("client_secrets", views.client_secrets, name="realtime_client_secrets"),
]
