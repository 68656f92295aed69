from django.urls import re_path

from voicechat.consumers import RealtimeGatewayConsumer

websocket_urlpatterns = [
    # OpenAI's SDK appends "/realtime" to its websocket_base_url, so clients use ws://HOST/v1.
    re_path(r"^v1/realtime/?$", RealtimeGatewayConsumer.as_asgi()),
]
