from django.urls import re_path

from voicechat.consumers import RealtimeGatewayConsumer
from voicechat.monitor_consumer import MonitorConsumer

websocket_urlpatterns = [
    # OpenAI's SDK appends "/realtime" to its websocket_base_url, so clients use ws://HOST/v1.
    re_path(r"^v1/realtime/?$", RealtimeGatewayConsumer.as_asgi()),
    # Staff only: live conversations on every server process (voicechat/monitor_consumer.py).
    re_path(r"^ws/monitor/?$", MonitorConsumer.as_asgi()),
]
