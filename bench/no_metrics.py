"""The gateway's ASGI application with its metrics switched off, for the bench's
`gw-uvicorn-nometrics` target: the same relay with and without the Prometheus counting
(BENCHMARKS.md, "Metrics on and off"). Never used outside the bench.
"""

import contextlib

from config.asgi import (
    application,  # sets Django up first: voicechat.monitoring.metrics needs the models
)
from voicechat.monitoring import metrics


class NoMeter(metrics.ConversationMeter):
    """A ConversationMeter that counts and measures nothing."""

    def started(self) -> None:
        pass

    def ended(self, reason: str) -> None:
        pass

    def connecting(self):
        return contextlib.nullcontext()

    def to_upstream(self, frame: str) -> None:
        pass

    def to_client(self, etype, frame: str) -> None:
        return None


metrics.ConversationMeter = NoMeter

__all__ = ["application"]
