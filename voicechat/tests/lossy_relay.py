"""A relay that loses every other audio append: the benchmark must notice (test_bench_run.py).

python lossy_relay.py PORT UPSTREAM_URL
"""

import asyncio
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def relay(client, upstream_url: str) -> None:
    async with connect(upstream_url) as upstream:
        appends = 0

        async def up() -> None:
            nonlocal appends
            async for frame in client:
                if '"input_audio_buffer.append"' in frame:
                    appends += 1
                    if appends % 2 == 0:
                        continue  # lost
                await upstream.send(frame)

        async def down() -> None:
            async for frame in upstream:
                await client.send(frame)

        await asyncio.gather(up(), down())


async def main(port: int, upstream_url: str) -> None:
    async with serve(lambda ws: relay(ws, upstream_url), "127.0.0.1", port):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
