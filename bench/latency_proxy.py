"""A TCP relay on loopback that delays every byte by half a round-trip time each way.

Agents reach the shared PostgreSQL across a network; a Unix socket on the same
machine hides the per-statement round trips a naive writer pays. This relay
puts a fixed latency between the benchmark and the server so both the store
and the baseline pay it alike. No kernel traffic shaping (netem) is needed,
so it runs anywhere; it only ever listens on and dials 127.0.0.1.

    python bench/latency_proxy.py LISTEN_PORT TARGET_PORT RTT_MS

It prints ``ready`` on stdout once listening, and runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
import time

CHUNK = 65536


async def delayed_pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk leaving ``delay`` seconds after it arrived, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while data := await reader.read(CHUNK):
            queue.put_nowait((time.monotonic() + delay, data))
        queue.put_nowait((0.0, b""))

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0 and delay:  # timers have about 1 ms of granularity: measure, don't trust
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    await asyncio.gather(receive(), send(), return_exceptions=True)


async def relay(target_port: int, one_way: float, client_reader, client_writer) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        delayed_pipe(client_reader, server_writer, one_way),
        delayed_pipe(server_reader, client_writer, one_way),
        return_exceptions=True,
    )


async def main(listen_port: int, target_port: int, rtt_ms: float) -> None:
    one_way = rtt_ms / 2000.0
    server = await asyncio.start_server(
        lambda r, w: relay(target_port, one_way, r, w), "127.0.0.1", listen_port
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
