"""WhiteNoise for ASGI servers: static file bodies streamed as async iterators.

WhiteNoise 6 hands Django a file to iterate synchronously; under ASGI, Django then reads the
whole file into memory in a worker thread and warns about it on every process. Here the same
response streams the file in chunks read off the event loop instead.
"""

import asyncio
from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware

CHUNK_SIZE = 64 * 1024


async def _chunks(file) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(file.read, CHUNK_SIZE):
            yield chunk
    finally:
        file.close()


class AsgiWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    @staticmethod
    def serve(static_file, request: HttpRequest) -> HttpResponse:
        response = WhiteNoiseMiddleware.serve(static_file, request)
        file = getattr(response, "file_to_stream", None)
        if file is not None:
            response.streaming_content = _chunks(file)
        return response
