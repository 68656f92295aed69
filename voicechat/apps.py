from django.apps import AppConfig


class VoicechatConfig(AppConfig):
    name = "voicechat"
    verbose_name = "Voice chat"

    def ready(self) -> None:
        from voicechat import checks  # noqa: F401 - registers the start-up checks
