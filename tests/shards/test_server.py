"""The shard server over real loopback sockets: protocol, deadlines, shedding, bad input."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

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
from shards.local_cluster import LocalShardCluster, format_url
from shards.server import DEADLINE_HEADER, create_shard_app, shard_state
from tests.aggregator.fakes import ScriptedShard

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]

HITS = [("d1", 3.0), ("d2", 2.0), ("d3", 1.0)]


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
    client: TestClient[web.Request, web.Application],
    body: Any,
    deadline_ms: str | None = "1000",
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    headers = {} if deadline_ms is None else {DEADLINE_HEADER: deadline_ms}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = await client.post("/search", data=data, headers=headers)
    payload = orjson.loads(await resp.read())
    return resp.status, payload, resp


async def test_search_returns_the_protocol_reply(aiohttp_client: ClientFactory) -> None:
    """A search answers 200 with shard, docs, the top-k hits (best first) and took_ms."""
    backend = ScriptedShard("s0", 0.0, docs=42, hits=HITS)
    client = await aiohttp_client(create_shard_app(backend))
    status, body, resp = await post(client, {"q": "hello", "k": 2})
    assert status == 200
    assert resp.content_type == "application/json"
    assert body["shard"] == "s0"
    assert body["docs"] == 42
    assert body["hits"] == [{"id": "d1", "score": 3.0}, {"id": "d2", "score": 2.0}]
    assert body["took_ms"] >= 0


async def test_titles_are_sent_when_present(aiohttp_client: ClientFactory) -> None:
    """A hit's title travels in the reply; a hit without one has no title key."""
    reply = ShardReply("t", 2, (Hit("a", 2.0, "t", "A title"), Hit("b", 1.0, "t")))
    client = await aiohttp_client(create_shard_app(ScriptedShard("t", 0.0, reply=reply)))
    status, body, _ = await post(client, {"q": "x", "k": 5})
    assert status == 200
    assert body["hits"] == [
        {"id": "a", "score": 2.0, "title": "A title"},
        {"id": "b", "score": 1.0},
    ]


async def test_healthz_reports_name_and_docs(aiohttp_client: ClientFactory) -> None:
    """GET /healthz says ok with the shard's name and document count."""
    client = await aiohttp_client(create_shard_app(ScriptedShard("s9", 0.0, docs=123)))
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert orjson.loads(await resp.read()) == {"status": "ok", "shard": "s9", "docs": 123}


async def test_backend_gets_the_header_budget_from_arrival(aiohttp_client: ClientFactory) -> None:
    """The backend's deadline is the header's budget, started on the loop clock at arrival."""
    backend = GatedShard()
    backend.release.set()
    client = await aiohttp_client(create_shard_app(backend))
    status, _, _ = await post(client, {"q": "x", "k": 1}, deadline_ms="250.5")
    assert status == 200
    assert backend.deadlines[0].budget_ms == pytest.approx(250.5)


async def test_missing_header_gets_the_default_budget(aiohttp_client: ClientFactory) -> None:
    """Without X-Deadline-Ms the search runs under the bounded default budget."""
    backend = GatedShard()
    backend.release.set()
    app = create_shard_app(backend, default_budget_ms=300.0)
    client = await aiohttp_client(app)
    status, _, _ = await post(client, {"q": "x"}, deadline_ms=None)
    assert status == 200
    assert backend.deadlines[0].budget_ms == pytest.approx(300.0)


async def test_slow_backend_is_cancelled_at_the_deadline(aiohttp_client: ClientFactory) -> None:
    """A backend still running when the budget is spent is cancelled and the reply is 504."""
    backend = ScriptedShard("slow", 30.0, hits=HITS)
    app = create_shard_app(backend)
    client = await aiohttp_client(app)
    status, body, _ = await post(client, {"q": "x", "k": 3}, deadline_ms="50")
    assert status == 504
    assert body["error"]["type"] == "ShardTimeout"
    assert backend.cancelled == 1
    assert shard_state(app).timed_out == 1


async def test_spent_budget_is_answered_at_once(aiohttp_client: ClientFactory) -> None:
    """A request arriving with 0 ms left gets 504 without running the backend."""
    backend = ScriptedShard("s", 0.0)
    client = await aiohttp_client(create_shard_app(backend))
    status, body, _ = await post(client, {"q": "x"}, deadline_ms="0")
    assert status == 504
    assert body["error"]["type"] == "ShardTimeout"
    assert backend.calls == 0


@pytest.mark.parametrize("value", ["abc", "nan", "-1", "60001", "inf", "", "1e9"])
async def test_invalid_deadline_header_is_400(aiohttp_client: ClientFactory, value: str) -> None:
    """An X-Deadline-Ms that is not a number in [0, 60000] is a 400 JSON error."""
    backend = ScriptedShard("s", 0.0)
    client = await aiohttp_client(create_shard_app(backend))
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
async def test_bad_request_bodies_are_400(
    aiohttp_client: ClientFactory, body: Any, reason_part: str
) -> None:
    """Malformed JSON or a wrong shape is a 400 JSON error naming the problem."""
    backend = ScriptedShard("s", 0.0)
    client = await aiohttp_client(create_shard_app(backend))
    status, payload, _ = await post(client, body)
    assert status == 400
    assert payload["error"]["type"] == "InvalidQuery"
    assert reason_part in payload["error"]["reason"]
    assert backend.calls == 0


async def test_unknown_fields_are_ignored(aiohttp_client: ClientFactory) -> None:
    """Fields the protocol does not define are ignored, for forward compatibility."""
    client = await aiohttp_client(create_shard_app(ScriptedShard("s", 0.0, hits=HITS)))
    status, body, _ = await post(client, {"q": "x", "k": 1, "future": {"a": 1}})
    assert status == 200
    assert len(body["hits"]) == 1


async def test_oversized_body_is_413(aiohttp_client: ClientFactory) -> None:
    """A request body over the cap is a 413 JSON error."""
    client = await aiohttp_client(create_shard_app(ScriptedShard("s", 0.0), max_body_bytes=1024))
    status, body, _ = await post(client, {"q": "x" * 2000})
    assert status == 413
    assert "larger than 1024" in body["error"]["reason"]


async def test_unknown_route_and_method_are_json_errors(aiohttp_client: ClientFactory) -> None:
    """404 and 405 from routing are JSON error bodies too."""
    client = await aiohttp_client(create_shard_app(ScriptedShard("s", 0.0)))
    resp = await client.get("/nope")
    assert resp.status == 404
    assert orjson.loads(await resp.read())["error"]["type"] == "HTTPNotFound"
    resp = await client.get("/search")
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]
    assert orjson.loads(await resp.read())["error"]["type"] == "HTTPMethodNotAllowed"


async def test_over_concurrency_is_shed_with_429(aiohttp_client: ClientFactory) -> None:
    """With max_concurrency searches running, one more is shed at once with 429 + Retry-After."""
    backend = GatedShard()
    app = create_shard_app(backend, max_concurrency=2)
    client = await aiohttp_client(app)
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
    state = shard_state(app)
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
    aiohttp_client: ClientFactory, error: Exception, status: int, type_: str
) -> None:
    """A backend exception becomes its status with a JSON type and reason, never a traceback."""
    client = await aiohttp_client(create_shard_app(ScriptedShard("s", 0.0, error=error)))
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


async def test_malformed_backend_reply_is_500(aiohttp_client: ClientFactory) -> None:
    """A backend producing a non-finite score is a 500 InvalidHit error, never bad JSON."""
    client = await aiohttp_client(create_shard_app(_NanScoringShard()))
    status, body, _ = await post(client, {"q": "x"})
    assert status == 500
    assert body["error"]["type"] == "InvalidHit"


async def test_client_disconnect_cancels_the_backend(aiohttp_server: Any) -> None:
    """A caller that goes away mid-search cancels the backend call."""
    backend = GatedShard()
    app = create_shard_app(backend)
    server: TestServer = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(
            session.post(
                server.make_url("/search"), data=b'{"q": "x"}', headers={DEADLINE_HEADER: "9000"}
            )
        )
        await backend.wait_started(1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    async with asyncio.timeout(5):
        await backend.cancelled.wait()
    assert shard_state(app).in_flight == 0


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
