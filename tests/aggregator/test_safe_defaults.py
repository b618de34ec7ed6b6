"""Safe defaults: loopback only, shards from config only, bounded requests, optional token.

Two kinds of checks:

* End to end against ``python -m aggregator serve --simulated --port 0 --token ...`` in a
  child process (started once for the module): what it listens on (read from ``/proc``), the
  bearer token on every endpoint but ``/healthz``, the request line / header / body limits,
  and a clean exit (status 0) on SIGTERM.
* In process, with "canary" servers on other loopback addresses: nothing a request carries
  (parameters, JSON fields, headers), no redirect from a shard and no proxy variable in the
  environment can make the aggregator connect anywhere but its configured shards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import Coordinator
from aggregator.client import HttpShard, ShardClient
from aggregator.commands import serve as serve_command
from aggregator.config import LimitsConfig, ServerConfig, parse_config
from aggregator.errors import ConfigError
from aggregator.service import ServiceSettings, create_app, create_runner, create_site
from shards.commands import serve as shards_serve_command
from shards.local_cluster import LocalShardCluster
from shards.sim import simulated_cluster
from tests.aggregator.raw_http import raw_exchange

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
LIMITS = LimitsConfig()
TIMEOUT = aiohttp.ClientTimeout(total=10.0)
#: /proc/net/tcp state of a listening socket.
_LISTEN = "0A"


# -- the served command ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A running ``python -m aggregator serve`` child."""

    proc: subprocess.Popen[str]
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = {k: v for k, v in os.environ.items() if k != serve_command.TOKEN_ENV}
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "serve", "--simulated", "--port", "0",
             "--token", TOKEN, "--loop", "asyncio", "--log-level", "WARNING"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60.0)
        assert ready, "the server did not start within 60 s"
        banner = proc.stdout.readline()
        # "aggregator: serving http://127.0.0.1:PORT (...)"
        url = banner.split()[2]
        assert url.startswith("http://127.0.0.1:"), banner
        yield Served(proc, int(url.rsplit(":", 1)[1]))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket the process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != _LISTEN or inode not in inodes:
                    continue
                hex_addr, hex_port = local.split(":")
                assert len(hex_addr) == width
                found.append((_decode_address(hex_addr), int(hex_port, 16)))
    return found


def _decode_address(hex_addr: str) -> str:
    """A /proc/net/tcp address (little-endian words) as text."""
    if len(hex_addr) == 8:
        return ".".join(str(b) for b in reversed(bytes.fromhex(hex_addr)))
    words = [bytes.fromhex(hex_addr[i : i + 8])[::-1] for i in range(0, 32, 8)]
    raw = b"".join(words)
    if raw[:12] == b"\x00" * 10 + b"\xff\xff":
        return ".".join(str(b) for b in raw[12:])  # IPv4-mapped
    return ":".join(raw[i : i + 2].hex() for i in range(0, 16, 2))


def test_serve_listens_on_loopback_only_by_default(served: Served) -> None:
    """Without --host, every socket the serve process listens on (API and shards) is 127.0.0.1."""
    listening = _listening_addresses(served.proc.pid)
    assert ("127.0.0.1", served.port) in listening
    assert len(listening) > 1, "the built-in shard servers listen too"
    assert all(address == "127.0.0.1" for address, _ in listening), listening


def test_defaults_name_loopback_everywhere() -> None:
    """Config, the shard server command and the local cluster all default to 127.0.0.1."""
    assert ServerConfig().host == "127.0.0.1"
    config = parse_config('[[shards]]\nname = "a"\nurl = "http://127.0.0.1:9"\n')
    assert config.server.host == "127.0.0.1"
    assert config.server.token is None
    parser = argparse.ArgumentParser()
    shards_serve_command.add_arguments(parser)
    assert parser.parse_args(["--sim", "1"]).host == "127.0.0.1"
    assert LocalShardCluster(simulated_cluster(1, "constant:0ms")).host == "127.0.0.1"


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(url, headers=headers or {}) as resp,
    ):
        body = await resp.read()
        doc = orjson.loads(body) if resp.content_type == "application/json" else body
        return resp.status, resp.headers, doc


@pytest.mark.parametrize("path", ["/search?q=python", "/shards", "/metrics"])
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}",
     TOKEN, f"Bearer  {TOKEN}", "Bearer \u00e9t\u00e9"],
)  # fmt: skip
async def test_token_is_required_on_every_endpoint_but_healthz(
    served: Served, path: str, authorization: str | None
) -> None:
    """With a token configured, a missing or wrong Authorization header gets 401 JSON."""
    headers = {} if authorization is None else {"Authorization": authorization}
    status, resp_headers, doc = await _get(served.base + path, headers)
    assert status == 401
    assert resp_headers["WWW-Authenticate"].startswith("Bearer")
    assert doc["error"]["type"] == "Unauthorized"
    assert TOKEN not in orjson.dumps(doc).decode()


async def test_right_token_is_served_and_healthz_is_open(served: Served) -> None:
    """The right bearer token gets 200 everywhere; /healthz needs none."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/search?q=python&deadline_ms=500", "/shards", "/metrics"):
        status, _, _ = await _get(served.base + path, auth)
        assert status == 200, path
    status, _, doc = await _get(served.base + "/healthz")
    assert status == 200
    assert doc["status"] == "ok"


_AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


def _request(target: bytes, extra: bytes = b"", method: bytes = b"GET", body: bytes = b"") -> bytes:
    head = method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + _AUTH + extra
    return head + b"Connection: close\r\n\r\n" + body


OVER_LIMITS = {
    "request line": _request(b"/search?q=" + b"x" * LIMITS.max_line_bytes),
    "header count": _request(
        b"/search?q=x", b"".join(b"X-H%d: 1\r\n" % i for i in range(LIMITS.max_headers + 1))
    ),
    "header size": _request(
        b"/search?q=x", b"X-Big: " + b"y" * (LIMITS.max_field_bytes + 1) + b"\r\n"
    ),
}


@pytest.mark.parametrize("request_bytes", OVER_LIMITS.values(), ids=OVER_LIMITS.keys())
async def test_request_line_and_header_limits(served: Served, request_bytes: bytes) -> None:
    """Over the request line, header count or header size limit: a 4xx without a traceback."""
    status, _, body = await raw_exchange(served.port, request_bytes)
    assert 400 <= status < 500
    assert b"Traceback" not in body
    status, _, _ = await _get(f"{served.base}/search?q=x", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_limit(served: Served, chunked: bool) -> None:
    """A POST body over the limit, declared or streamed in chunks, gets 413 JSON."""
    size = LIMITS.max_body_bytes + 1
    payload = b'{"q": "' + b"x" * size + b'"}'
    if chunked:
        extra = b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    else:
        extra = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(payload)
        body = payload
    status, content_type, answer = await raw_exchange(
        served.port, _request(b"/search", extra, b"POST", body)
    )
    assert status == 413
    assert content_type.startswith("application/json")
    assert orjson.loads(answer)["error"]["type"] == "PayloadTooLarge"


async def test_unknown_paths_and_garbage_get_json_without_traces(served: Served) -> None:
    """Unknown paths and methods are JSON errors; nothing echoes a stack trace."""
    for path in ("/", "/admin", "/search/../../etc/passwd", "/%2e%2e/%2e%2e/"):
        status, _, doc = await _get(served.base + path, {"Authorization": f"Bearer {TOKEN}"})
        assert status in (404, 405), path
        assert "Traceback" not in orjson.dumps(doc).decode()


# -- nothing in a request reaches another address -------------------------------------------


class Canary:
    """A listener nobody should ever connect to; counts the connections it gets."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    async def __aenter__(self) -> Canary:
        self._server = await asyncio.start_server(self._on_connect, self.host, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


@dataclass
class Guarded:
    client: Client
    canaries: tuple[Canary, Canary]

    @property
    def contacted(self) -> int:
        return sum(c.connections for c in self.canaries)


@pytest.fixture
async def guarded(
    aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Guarded]:
    """The service over two real shard servers, with canaries on 127.0.0.1 and 127.0.0.2."""
    async with (
        Canary("127.0.0.1") as local,
        Canary("127.0.0.2") as other,
        LocalShardCluster(simulated_cluster(2, "constant:0ms", seed=3)) as cluster,
    ):
        # A proxy in the environment must not capture shard traffic either.
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, other.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        async with ShardClient() as shard_client:
            shards = [
                HttpShard(e.name, e.url, e.doc_count, shard_client) for e in cluster.endpoints
            ]
            client = await aiohttp_client(create_app(Coordinator(shards)))
            yield Guarded(client, (local, other))
            await client.close()


async def test_shard_address_parameters_are_refused(guarded: Guarded) -> None:
    """Parameters or fields naming an address are 400 (unknown), and nothing is contacted."""
    target = guarded.canaries[1].url
    for name in ("url", "shard", "shards", "host", "backend", "upstream", "callback"):
        resp = await guarded.client.get("/search", params={"q": "x", name: target})
        assert resp.status == 400
        assert "unknown parameter" in (await resp.json())["error"]["reason"]
        resp = await guarded.client.post("/search", json={"q": "x", name: [target]})
        assert resp.status == 400
        assert "unknown field" in (await resp.json())["error"]["reason"]
    assert guarded.contacted == 0


async def test_address_headers_are_ignored(guarded: Guarded) -> None:
    """Host, forwarding and routing headers naming another address change nothing."""
    target = guarded.canaries[1].url
    host = target.removeprefix("http://")
    headers = {
        "Host": host,
        "X-Forwarded-Host": host,
        "X-Forwarded-For": "127.0.0.2",
        "Forwarded": f"for=127.0.0.2;host={host}",
        "X-Original-URL": target,
        "X-Rewrite-URL": target,
        "Referer": target,
        "X-Shard-Url": target,
        "Via": f"1.1 {host}",
    }
    resp = await guarded.client.get("/search", params={"q": "x"}, headers=headers)
    assert resp.status == 200
    body = await resp.json()
    assert [s["status"] for s in body["shards"]] == ["ok", "ok"]
    assert guarded.contacted == 0


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    params=st.dictionaries(
        st.sampled_from(["q", "k", "deadline_ms", "min_coverage", "url", "shard", "host"]),
        st.sampled_from(["CANARY", "http://CANARY/search", "CANARY/x", "x"]),
        max_size=4,
    ),
    as_json=st.booleans(),
)
async def test_no_request_reaches_a_canary(
    guarded: Guarded, params: dict[str, str], as_json: bool
) -> None:
    """Whatever addresses a request names, in any field, only configured shards are called."""
    canary = guarded.canaries[0].url.removeprefix("http://")
    filled = {k: v.replace("CANARY", canary) for k, v in params.items()}
    if as_json:
        resp = await guarded.client.post("/search", json=filled)
    else:
        resp = await guarded.client.get("/search", params=filled)
    assert resp.status < 500
    await resp.read()
    assert guarded.contacted == 0


async def test_shard_redirect_is_not_followed(aiohttp_client: ClientFactory) -> None:
    """A shard answering with a redirect elsewhere is an error outcome; the target is untouched."""
    async with Canary("127.0.0.2") as canary:

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(canary.url + "/search")

        shard_app = web.Application()
        shard_app.router.add_post("/search", redirect)
        shard_client = await aiohttp_client(shard_app)
        async with ShardClient() as client:
            good = LocalShardCluster(simulated_cluster(1, "constant:0ms"))
            async with good:
                shards = [
                    HttpShard("redirector", str(shard_client.make_url("")), 1, client),
                    *(HttpShard(e.name, e.url, e.doc_count, client) for e in good.endpoints),
                ]
                api = await aiohttp_client(create_app(Coordinator(shards)))
                resp = await api.get("/search", params={"q": "x", "deadline_ms": "500"})
                assert resp.status == 200
                outcome = (await resp.json())["shards"][0]
                assert outcome["status"] == "error"
                assert "307" in outcome["reason"]
                await api.close()
        assert canary.connections == 0


# -- requests that stall: bounded in time as well as size ------------------------------------


@pytest.fixture
async def served_here() -> AsyncIterator[int]:
    """The service on a runner built like the serve command's (same limits); yields its port."""
    shards = simulated_cluster(2, "constant:1ms", seed=5)
    app = create_app(Coordinator(shards))
    runner = create_runner(app, LIMITS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def _wait_for_answer(port: int, request: bytes, limit_s: float) -> tuple[float, bytes]:
    """Send ``request``; wait (in loop time) for a whole response, or for the server to hang
    up; return how long that took and what came (``b"<no answer>"`` if neither happened)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        start_s = loop.time()
        try:
            async with asyncio.timeout(limit_s):
                answer = await _read_response(reader)
        except TimeoutError:
            answer = b"<no answer>"
        return loop.time() - start_s, answer
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One whole HTTP response, or what came before the server hung up (b"" for nothing)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    try:
        return head + await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        return head + exc.partial


@pytest.mark.looptime
async def test_stalled_body_is_answered_within_the_deadline(served_here: int) -> None:
    """A POST whose body stops arriving gets a 4xx JSON error by the query's deadline.

    The budget starts when the headers are read, so reading the body counts against it; a
    client that declares 100 bytes and sends 1 must not hold a handler past the deadline.
    """
    request = (
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\nConnection: close\r\n\r\n{"
    )
    default_deadline_s = ServiceSettings().default_deadline_ms / 1000.0
    waited_s, answer = await _wait_for_answer(served_here, request, 600.0)
    assert waited_s <= default_deadline_s + 0.05, answer
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert 400 <= status < 500
    assert orjson.loads(body)["error"]["type"]


@pytest.mark.looptime
@pytest.mark.parametrize(
    "request_bytes",
    [b"", b"GET /search?q=x HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
    ids=["nothing sent", "headers never finished"],
)
async def test_stalled_request_head_is_dropped(served_here: int, request_bytes: bytes) -> None:
    """A connection that never completes a request is closed after the idle timeout."""
    waited_s, answer = await _wait_for_answer(served_here, request_bytes, 600.0)
    assert answer != b"<no answer>", "the connection was still open after 600 s"
    assert waited_s <= LIMITS.idle_timeout_ms / 1000.0 + 1.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's TCP_INFO")
async def test_the_listener_holds_listen_backlog_connections() -> None:
    """The service listens with ``[limits] listen_backlog`` (default 1024, not aiohttp's 128),
    as the kernel reports it for the listening socket (TCP_INFO's ``tcpi_sacked``, which is
    what ``ss -l`` shows as Send-Q); the key is read from config and bounded."""
    import socket
    import struct

    assert LimitsConfig().listen_backlog == 1024
    base = '[[shards]]\nname = "a"\nurl = "http://127.0.0.1:9"\n[limits]\n'
    assert parse_config(base + "listen_backlog = 300").limits.listen_backlog == 300
    with pytest.raises(ConfigError, match="listen_backlog"):
        parse_config(base + "listen_backlog = 0")
    limits = LimitsConfig(listen_backlog=300)
    runner = create_runner(create_app(Coordinator(simulated_cluster(1, "constant:0ms"))), limits)
    await runner.setup()
    try:
        site = create_site(runner, "127.0.0.1", 0, limits)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        (listener,) = server.sockets
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        # struct tcp_info: eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked
        unacked, sacked = struct.unpack_from("II", info, 24)
        assert (unacked, sacked) == (0, 300)
    finally:
        await runner.cleanup()


def test_idle_timeout_is_bounded_and_configurable() -> None:
    """The idle timeout defaults to a minute, is read from [limits], and can never be off."""
    assert 0 < LimitsConfig().idle_timeout_ms <= 120_000
    base = '[[shards]]\nname = "a"\nurl = "http://127.0.0.1:9"\n[limits]\n'
    assert parse_config(base + "idle_timeout_ms = 5000").limits.idle_timeout_ms == 5000.0
    with pytest.raises(ConfigError, match="idle_timeout_ms"):
        parse_config(base + "idle_timeout_ms = 0")
