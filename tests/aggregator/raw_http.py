"""Raw HTTP for tests: bytes sent exactly as written, so requests no client library would
send (broken request lines, oversized headers, bad lengths) reach the server."""

from __future__ import annotations

import asyncio


async def raw_exchange(
    port: int, request: bytes, timeout_s: float = 10.0
) -> tuple[int, str, bytes]:
    """Send ``request`` as is to 127.0.0.1:``port``; return the status, the content type
    (without parameters) and the body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
    return status, headers.get("content-type", "").split(";")[0], body
