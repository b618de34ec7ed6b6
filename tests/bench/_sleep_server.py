"""A loopback HTTP server that answers every request after a known time (for instrument tests).

``python _sleep_server.py LATENCY_MS`` serves ``GET /`` and ``GET /search`` on 127.0.0.1 (port
chosen by the OS),
answering ``{"completeness": {"coverage": 1.0}, "partial": false}`` after
``asyncio.sleep(LATENCY_MS / 1000)``. It prints its URL on stdout once listening and serves until
its stdin closes.

Event-loop timers have millisecond granularity (a 20 ms sleep lasts 20 to 21 ms), which would
blur the very figure the tests check; so the handler sleeps until 1 ms before its time, then
yields to the loop until ``time.perf_counter`` says the time is up.
"""

from __future__ import annotations

import asyncio
import sys
import time

from aiohttp import web

BODY = b'{"partial": false, "completeness": {"coverage": 1.0}, "shards": []}'


async def main(latency_s: float) -> None:
    async def handle(request: web.Request) -> web.Response:
        answer_at = time.perf_counter() + latency_s
        await asyncio.sleep(max(0.0, latency_s - 0.001))
        while time.perf_counter() < answer_at:  # noqa: ASYNC110 (spin to the exact instant)
            await asyncio.sleep(0)
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/", handle)
    app.router.add_get("/search", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}/", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    await runner.cleanup()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(float(sys.argv[1]) / 1000.0))
