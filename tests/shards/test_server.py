"""The shard server over real loopback sockets: protocol, deadlines, shedding, bad input.

The protocol tests run against both front ends of :class:`ShardService` (the ``serve``
fixture): the aiohttp application and the lean :class:`ShardHttpServer`. What only the lean
server does is in ``test_http_server.py``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aggregator import (
    Deadline,
    Hit,
    Query,
    ShardError,
    ShardRejected,
    ShardReply,
    ShardTimeout,
    ShardUnavailable,
)
from aggregator.backend import ShardBackend
from shards.http_server import ShardHttpServer
from shards.local_cluster import LocalShardCluster, format_url
from shards.server import (
    DEADLINE_HEADER,
    DEFAULT_BUDGET_MS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    ShardServerState,
    ShardService,
    create_shard_app,
    shard_state,
)
from tests.aggregator.fakes import ScriptedShard

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]

HITS = [("d1", 3.0), ("d2", 2.0), ("d3", 1.0)]


#: A client bound to one server: ``.post(path, ...)`` and ``.get(path)`` give ClientResponses.
ShardClient = TestClient[web.Request, web.Application] | aiohttp.ClientSession


@dataclass(frozen=True)
class Served:
    """A shard server under test: a client bound to it and the counters to inspect."""

    client: ShardClient
    state: ShardServerState


class Serve(Protocol):
    """The ``serve`` fixture: start a backend under the ShardService limits."""

    def __call__(
        self,
        backend: ShardBackend,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        default_budget_ms: float = DEFAULT_BUDGET_MS,
    ) -> Awaitable[Served]: ...


@pytest.fixture(params=["aiohttp", "lean"])
async def serve(
    request: pytest.FixtureRequest, aiohttp_client: ClientFactory
) -> AsyncIterator[Serve]:
    """Start ``backend`` behind one front end on 127.0.0.1: the aiohttp application (under
    pytest-aiohttp's test server) or the lean :class:`ShardHttpServer`."""
    servers: list[ShardHttpServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(
        backend: ShardBackend,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        default_budget_ms: float = DEFAULT_BUDGET_MS,
    ) -> Served:
        if request.param == "aiohttp":
            app = create_shard_app(
                backend,
                max_concurrency=max_concurrency,
                max_body_bytes=max_body_bytes,
                default_budget_ms=default_budget_ms,
            )
            return Served(await aiohttp_client(app), shard_state(app))
        service = ShardService(
            backend,
            max_concurrency=max_concurrency,
            max_body_bytes=max_body_bytes,
            default_budget_ms=default_budget_ms,
        )
        server = ShardHttpServer(service, host="127.0.0.1")
        await server.start()
        servers.append(server)
        session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.port}")
        sessions.append(session)
        return Served(session, service.state)

    try:
        yield start
    finally:
        # Sessions first: their connections closing cancels what still runs server-side.
        for session in sessions:
            await session.close()
        for server in servers:
            await server.close()


class GatedShard:
    """Blocks every search until ``release`` is set; records starts and cancellations."""

    def __init__(self, name: str = "gated") -> None:
        self.name = name
        self.doc_count = 7
        self.started = 0
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.deadlines: list[Deadline] = []
        self._started_event = asyncio.Event()

    async def wait_started(self, n: int) -> None:
        async with asyncio.timeout(5):
            while self.started < n:
                self._started_event.clear()
                await self._started_event.wait()

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        self.started += 1
        self.deadlines.append(deadline)
        self._started_event.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return ShardReply(self.name, self.doc_count, (Hit("g1", 1.0, self.name),))


async def post(
    client: ShardClient,
    body: Any,
    deadline_ms: str | None = "1000",
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    headers = {} if deadline_ms is None else {DEADLINE_HEADER: deadline_ms}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = await client.post("/search", data=data, headers=headers)
    payload = orjson.loads(await resp.read())
    return resp.status, payload, resp


async def test_search_returns_the_protocol_reply(serve: Serve) -> None:
    """A search answers 200 with shard, docs, the top-k hits (best first) and took_ms."""
    backend = ScriptedShard("s0", 0.0, docs=42, hits=HITS)
    client = (await serve(backend)).client
    status, body, resp = await post(client, {"q": "hello", "k": 2})
    assert status == 200
    assert resp.content_type == "application/json"
    assert body["shard"] == "s0"
    assert body["docs"] == 42
    assert body["hits"] == [{"id": "d1", "score": 3.0}, {"id": "d2", "score": 2.0}]
    assert body["took_ms"] >= 0


async def test_titles_are_sent_when_present(serve: Serve) -> None:
    """A hit's title travels in the reply; a hit without one has no title key."""
    reply = ShardReply("t", 2, (Hit("a", 2.0, "t", "A title"), Hit("b", 1.0, "t")))
    client = (await serve(ScriptedShard("t", 0.0, reply=reply))).client
    status, body, _ = await post(client, {"q": "x", "k": 5})
    assert status == 200
    assert body["hits"] == [
        {"id": "a", "score": 2.0, "title": "A title"},
        {"id": "b", "score": 1.0},
    ]


async def test_healthz_reports_name_and_docs(serve: Serve) -> None:
    """GET /healthz says ok with the shard's name and document count."""
    client = (await serve(ScriptedShard("s9", 0.0, docs=123))).client
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert orjson.loads(await resp.read()) == {"status": "ok", "shard": "s9", "docs": 123}


async def test_backend_gets_the_header_budget_from_arrival(serve: Serve) -> None:
    """The backend's deadline is the header's budget, started on the loop clock at arrival."""
    backend = GatedShard()
    backend.release.set()
    client = (await serve(backend)).client
    status, _, _ = await post(client, {"q": "x", "k": 1}, deadline_ms="250.5")
    assert status == 200
    assert backend.deadlines[0].budget_ms == pytest.approx(250.5)


async def test_missing_header_gets_the_default_budget(serve: Serve) -> None:
    """Without X-Deadline-Ms the search runs under the bounded default budget."""
    backend = GatedShard()
    backend.release.set()
    client = (await serve(backend, default_budget_ms=300.0)).client
    status, _, _ = await post(client, {"q": "x"}, deadline_ms=None)
    assert status == 200
    assert backend.deadlines[0].budget_ms == pytest.approx(300.0)


async def test_slow_backend_is_cancelled_at_the_deadline(serve: Serve) -> None:
    """A backend still running when the budget is spent is cancelled and the reply is 504."""
    backend = ScriptedShard("slow", 30.0, hits=HITS)
    served = await serve(backend)
    client = served.client
    status, body, _ = await post(client, {"q": "x", "k": 3}, deadline_ms="50")
    assert status == 504
    assert body["error"]["type"] == "ShardTimeout"
    assert backend.cancelled == 1
    assert served.state.timed_out == 1


async def test_spent_budget_is_answered_at_once(serve: Serve) -> None:
    """A request arriving with 0 ms left gets 504 without running the backend."""
    backend = ScriptedShard("s", 0.0)
    client = (await serve(backend)).client
    status, body, _ = await post(client, {"q": "x"}, deadline_ms="0")
    assert status == 504
    assert body["error"]["type"] == "ShardTimeout"
    assert backend.calls == 0


@pytest.mark.parametrize("value", ["abc", "nan", "-1", "60001", "inf", "", "1e9"])
async def test_invalid_deadline_header_is_400(serve: Serve, value: str) -> None:
    """An X-Deadline-Ms that is not a number in [0, 60000] is a 400 JSON error."""
    backend = ScriptedShard("s", 0.0)
    client = (await serve(backend)).client
    status, body, _ = await post(client, {"q": "x"}, deadline_ms=value)
    assert status == 400
    assert DEADLINE_HEADER in body["error"]["reason"]
    assert backend.calls == 0


@pytest.mark.parametrize(
    ("body", "reason_part"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"", "not valid JSON"),
        ([1, 2], "JSON object"),
        ({"k": 3}, "'q'"),
        ({"q": 5}, "'q'"),
        ({"q": "   "}, "empty"),
        ({"q": "x" * 5000}, "longer"),
        ({"q": "x", "k": 0}, "'k'"),
        ({"q": "x", "k": 1001}, "'k'"),
        ({"q": "x", "k": "5"}, "'k'"),
        ({"q": "x", "k": True}, "'k'"),
        ({"q": "x", "k": 2.5}, "'k'"),
    ],
)
async def test_bad_request_bodies_are_400(serve: Serve, body: Any, reason_part: str) -> None:
    """Malformed JSON or a wrong shape is a 400 JSON error naming the problem."""
    backend = ScriptedShard("s", 0.0)
    client = (await serve(backend)).client
    status, payload, _ = await post(client, body)
    assert status == 400
    assert payload["error"]["type"] == "InvalidQuery"
    assert reason_part in payload["error"]["reason"]
    assert backend.calls == 0


async def test_unknown_fields_are_ignored(serve: Serve) -> None:
    """Fields the protocol does not define are ignored, for forward compatibility."""
    client = (await serve(ScriptedShard("s", 0.0, hits=HITS))).client
    status, body, _ = await post(client, {"q": "x", "k": 1, "future": {"a": 1}})
    assert status == 200
    assert len(body["hits"]) == 1


async def test_oversized_body_is_413(serve: Serve) -> None:
    """A request body over the cap is a 413 JSON error."""
    client = (await serve(ScriptedShard("s", 0.0), max_body_bytes=1024)).client
    status, body, _ = await post(client, {"q": "x" * 2000})
    assert status == 413
    assert "larger than 1024" in body["error"]["reason"]


async def test_unknown_route_and_method_are_json_errors(serve: Serve) -> None:
    """404 and 405 from routing are JSON error bodies too."""
    client = (await serve(ScriptedShard("s", 0.0))).client
    resp = await client.get("/nope")
    assert resp.status == 404
    assert orjson.loads(await resp.read())["error"]["type"] == "HTTPNotFound"
    resp = await client.get("/search")
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]
    assert orjson.loads(await resp.read())["error"]["type"] == "HTTPMethodNotAllowed"


async def test_over_concurrency_is_shed_with_429(serve: Serve) -> None:
    """With max_concurrency searches running, one more is shed at once with 429 + Retry-After."""
    backend = GatedShard()
    served = await serve(backend, max_concurrency=2)
    client = served.client
    running = [asyncio.ensure_future(post(client, {"q": "x"}, "5000")) for _ in range(2)]
    try:
        await backend.wait_started(2)
        status, body, resp = await post(client, {"q": "x"}, "5000")
        assert status == 429
        assert body["error"]["type"] == "ShardRejected"
        assert int(resp.headers["Retry-After"]) >= 1
        backend.release.set()
        assert [s for s, _, _ in await asyncio.gather(*running)] == [200, 200]
    finally:
        for task in running:
            task.cancel()
    status, _, _ = await post(client, {"q": "x"})
    assert status == 200
    state = served.state
    assert (state.served, state.shed, state.in_flight) == (3, 1, 0)


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        (ShardTimeout("gave up"), 504, "ShardTimeout"),
        (ShardRejected("busy"), 429, "ShardRejected"),
        (ShardUnavailable("index closed"), 503, "ShardUnavailable"),
        (ShardError("broken"), 500, "ShardError"),
        (RuntimeError("bug in backend"), 500, "RuntimeError"),
    ],
)
async def test_backend_errors_map_to_statuses(
    serve: Serve, error: Exception, status: int, type_: str
) -> None:
    """A backend exception becomes its status with a JSON type and reason, never a traceback."""
    client = (await serve(ScriptedShard("s", 0.0, error=error))).client
    resp = await client.post("/search", data=b'{"q": "x"}', headers={DEADLINE_HEADER: "500"})
    text = await resp.text()
    assert resp.status == status
    assert orjson.loads(text) == {"error": {"type": type_, "reason": str(error)}}
    assert "Traceback" not in text


class _NanScoringShard:
    """A backend whose scoring yields NaN: the hit refuses to be built inside `search`."""

    name = "s"
    doc_count = 1

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        return ShardReply("s", 1, (Hit("a", math.nan, "s"),))


async def test_malformed_backend_reply_is_500(serve: Serve) -> None:
    """A backend producing a non-finite score is a 500 InvalidHit error, never bad JSON."""
    client = (await serve(_NanScoringShard())).client
    status, body, _ = await post(client, {"q": "x"})
    assert status == 500
    assert body["error"]["type"] == "InvalidHit"


async def test_client_disconnect_cancels_the_backend(serve: Serve) -> None:
    """A caller that goes away mid-search cancels the backend call."""
    backend = GatedShard()
    served = await serve(backend)
    request = asyncio.ensure_future(
        served.client.post("/search", data=b'{"q": "x"}', headers={DEADLINE_HEADER: "9000"})
    )
    await backend.wait_started(1)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    async with asyncio.timeout(5):
        await backend.cancelled.wait()
        # The slot is freed as the server's task unwinds, just after the backend saw it.
        while served.state.in_flight:  # noqa: ASYNC110 (waits on the server's own state)
            await asyncio.sleep(0.001)
    assert served.state.in_flight == 0


async def test_local_cluster_serves_every_backend() -> None:
    """A local cluster serves one server per backend and lists name, URL and docs."""
    backends = [ScriptedShard(f"s{i}", 0.0, docs=10 + i) for i in range(3)]
    async with LocalShardCluster(backends) as cluster, aiohttp.ClientSession() as session:
        assert [(e.name, e.doc_count) for e in cluster.endpoints] == [
            ("s0", 10),
            ("s1", 11),
            ("s2", 12),
        ]
        assert len(set(cluster.urls)) == 3
        for endpoint in cluster.endpoints:
            async with session.get(endpoint.url + "/healthz") as resp:
                assert (await resp.json())["shard"] == endpoint.name
    assert not cluster.is_running(0)


async def test_local_cluster_restarts_a_shard_on_its_port() -> None:
    """A stopped shard refuses connections; started again it serves on the same URL."""
    async with LocalShardCluster([ScriptedShard("s0", 0.0)]) as cluster:
        url = cluster.urls[0]
        await cluster.stop_shard(0)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(url + "/healthz")
            await cluster.start_shard(0)
            assert cluster.urls[0] == url
            async with session.get(url + "/healthz") as resp:
                assert resp.status == 200


async def test_local_cluster_port_clash_is_an_oserror() -> None:
    """Starting on a taken port raises OSError and leaves no server running."""
    async with LocalShardCluster([ScriptedShard("a", 0.0)]) as first:
        port = int(first.urls[0].rsplit(":", 1)[1])
        clash = LocalShardCluster([ScriptedShard("b", 0.0)], base_port=port)
        with pytest.raises(OSError):  # noqa: PT011 - the OS decides errno and message
            await clash.start()
        assert not clash.is_running(0)


def test_format_url_brackets_ipv6() -> None:
    """An IPv6 literal host is bracketed in a URL."""
    assert format_url("::1", 80) == "http://[::1]:80"
    assert format_url("127.0.0.1", 80) == "http://127.0.0.1:80"
