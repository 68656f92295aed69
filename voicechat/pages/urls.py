from django.contrib.auth import views as auth_views
from django.urls import path

from voicechat.pages import views

urlpatterns = [
    path("", views.chat, name="chat"),
    path("history/", views.history, name="history"),
    path("history/<int:pk>/", views.conversation_detail, name="conversation_detail"),
    path("history/<int:pk>/delete/", views.conversation_delete, name="conversation_delete"),
    path("history/<int:pk>/export.md", views.conversation_export, name="conversation_export"),
    path(
        "history/<int:pk>/export.zip", views.conversation_export_zip, name="conversation_export_zip"
    ),
    path("recordings/<int:pk>.ogg", views.recording_audio, name="recording_audio"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
