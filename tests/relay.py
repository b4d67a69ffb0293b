"""A TCP relay that delays every byte by a fixed time each way: the test hosts' distance
(tests/hosts.py), where the kernel has no ``tc netem`` (sch_netem is a module many
kernels, this machine's among them, do not carry).

    python -m tests.relay DELAY_SECONDS LISTEN_HOST:PORT=TARGET_HOST:PORT [...]

Order is kept: bytes leave in the order they came, each ``DELAY_SECONDS`` after it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((time.monotonic() + delay, b""))
    with contextlib.suppress(ConnectionError, OSError):
        await sender


async def relay(listen: str, target: str, delay: float) -> asyncio.Server:
    target_host, target_port = target.rsplit(":", 1)

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(target_host, int(target_port))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pump(client_r, upstream_w, delay), pump(upstream_r, client_w, delay))

    host, port = listen.rsplit(":", 1)
    return await asyncio.start_server(serve, host, int(port))


async def main(delay: float, pairs: list[str]) -> None:
    servers = []
    for pair in pairs:
        listen, target = pair.split("=", 1)
        servers.append(await relay(listen, target, delay))
    print("relaying", *pairs, flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]), sys.argv[2:]))
