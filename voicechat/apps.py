from django.apps import AppConfig


class VoicechatConfig(AppConfig):
    name = "voicechat"
    verbose_name = "Voice chat"
