from django.urls import re_path

from voicechat.gateway.consumers import RealtimeGatewayConsumer
from voicechat.monitoring.consumers import MonitorConsumer

websocket_urlpatterns = [
    # OpenAI's SDK appends "/realtime" to its websocket_base_url, so clients use ws://HOST/v1.
    re_path(r"^v1/realtime/?$", RealtimeGatewayConsumer.as_asgi()),
    # Staff only: live conversations on every server process (voicechat/monitoring/consumers.py).
    re_path(r"^ws/monitor/?$", MonitorConsumer.as_asgi()),
]
