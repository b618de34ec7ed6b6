"""The HTTP search API over real loopback sockets: answers, every error as JSON, cancellation,
admission, authentication, health, shard stats and metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aggregator import Coordinator, CoordinatorConfig, Deadline, Hit, Query, ShardReply
from aggregator.admission import Admission, AdmissionLimits
from aggregator.client import ShardClient, connect_shards
from aggregator.errors import ShardError
from aggregator.service import SERVICE_KEY, ServiceSettings, create_app
from shards.local_cluster import LocalShardCluster
from shards.sim import simulated_cluster
from tests.aggregator.fakes import ScriptedShard

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


class GatedShard:
    """Blocks every search until ``release`` is set; counts searches in flight."""

    def __init__(self, name: str, docs: int = 10) -> None:
        self.name = name
        self.doc_count = docs
        self.in_flight = 0
        self.release = asyncio.Event()
        self.changed = asyncio.Event()

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        self.in_flight += 1
        self.changed.set()
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
            self.changed.set()
        return ShardReply(self.name, self.doc_count, (Hit(f"{self.name}-1", 1.0, self.name),))


async def until(predicate: Callable[[], bool], *events: asyncio.Event) -> None:
    """Wait (at most 5 s, as a hang guard) until ``predicate()`` holds, re-checking on events."""
    async with asyncio.timeout(5):
        while not predicate():
            if events:
                for event in events:
                    event.clear()
                waits = [asyncio.ensure_future(e.wait()) for e in events]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
            else:
                await asyncio.sleep(0.005)


def _shards() -> list[ScriptedShard]:
    return [
        ScriptedShard("s0", 0.0, docs=100, hits=[("a", 3.0), ("b", 1.0)]),
        ScriptedShard("s1", 0.0, docs=50, hits=[("c", 2.0)]),
    ]


async def _client(
    aiohttp_client: ClientFactory,
    backends: list[Any] | None = None,
    **kwargs: Any,
) -> Client:
    coordinator = Coordinator(backends if backends is not None else _shards())
    return await aiohttp_client(create_app(coordinator, **kwargs))


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.content_type == "application/json"
    body: dict[str, Any] = orjson.loads(await resp.read())
    return body


# -- answers ---------------------------------------------------------------------------------


async def test_get_search_answers_with_the_response_object(aiohttp_client: ClientFactory) -> None:
    """GET /search returns merged hits, completeness and every shard's outcome."""
    client = await _client(aiohttp_client)
    resp = await client.get("/search", params={"q": "python", "k": "2", "deadline_ms": "500"})
    assert resp.status == 200
    body = await _json(resp)
    assert [h["id"] for h in body["hits"]] == ["a", "c"]
    assert body["partial"] is False
    assert body["deadline_ms"] == pytest.approx(500.0)
    assert body["completeness"]["docs_total"] == 150
    assert [s["status"] for s in body["shards"]] == ["ok", "ok"]


async def test_post_search_takes_the_same_fields(aiohttp_client: ClientFactory) -> None:
    """POST /search with a JSON object answers like GET."""
    client = await _client(aiohttp_client)
    resp = await client.post("/search", json={"q": "python", "k": 1, "min_coverage": 0.5})
    assert resp.status == 200
    assert [h["id"] for h in (await _json(resp))["hits"]] == ["a"]


async def test_default_deadline_applies_when_none_is_given(aiohttp_client: ClientFactory) -> None:
    """A query without deadline_ms gets the configured default budget."""
    client = await _client(aiohttp_client, settings=ServiceSettings(default_deadline_ms=250))
    body = await _json(await client.get("/search", params={"q": "x"}))
    assert body["deadline_ms"] == pytest.approx(250.0)


async def test_slow_shard_is_cut_at_the_deadline(aiohttp_client: ClientFactory) -> None:
    """A hanging shard is reported as a timeout and the others' hits are returned."""
    stuck = GatedShard("stuck")
    client = await _client(aiohttp_client, [*_shards(), stuck])
    body = await _json(await client.get("/search", params={"q": "x", "deadline_ms": "20"}))
    assert body["partial"] is True
    assert [s["status"] for s in body["shards"]] == ["ok", "ok", "timeout"]
    assert stuck.in_flight == 0


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query_string", "reason"),
    [
        ("", "missing parameter 'q'"),
        ("k=3", "missing parameter 'q'"),
        ("q=", "must not be empty"),
        ("q=%20%20", "must not be empty"),
        ("q=x&k=0", "k must be an integer in 1..1000"),
        ("q=x&k=1001", "k must be an integer in 1..1000"),
        ("q=x&k=99999999999999", "k must be an integer"),
        ("q=x&k=abc", "k must be an integer"),
        ("q=x&k=1.5", "k must be an integer"),
        ("q=x&k=-1", "k must be an integer"),
        ("q=x&deadline_ms=0", "deadline_ms must be in 1..60000"),
        ("q=x&deadline_ms=0.5", "deadline_ms must be in 1..60000"),
        ("q=x&deadline_ms=60001", "deadline_ms must be in 1..60000"),
        ("q=x&deadline_ms=-5", "deadline_ms must be in 1..60000"),
        ("q=x&deadline_ms=nan", "deadline_ms must be in 1..60000"),
        ("q=x&deadline_ms=inf", "deadline_ms must be in 1..60000"),
        ("q=x&deadline_ms=soon", "deadline_ms must be a number"),
        ("q=x&min_coverage=0", "min_coverage must be in (0, 1]"),
        ("q=x&min_coverage=1.5", "min_coverage must be in (0, 1]"),
        ("q=x&q=y", "parameter 'q' is given more than once"),
        ("q=x&deadline=5", "unknown parameter 'deadline'"),
        ("q=%ff%fe", "not valid UTF-8"),
        ("q=%ed%a0%80", "not valid UTF-8"),
        ("q=x&k=1&k=1&k=1&k=1", "too many query parameters"),
        ("q=" + "x" * 5000, "longer than 4096"),
    ],
)
async def test_bad_query_strings_get_400_json(
    aiohttp_client: ClientFactory, query_string: str, reason: str
) -> None:
    """Every malformed GET gets 400 with type InvalidQuery and a reason naming the problem."""
    client = await _client(aiohttp_client)
    resp = await client.get(f"/search?{query_string}")
    assert resp.status == 400
    error = (await _json(resp))["error"]
    assert error["type"] == "InvalidQuery"
    assert reason in error["reason"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "malformed JSON"),
        (b"", "body is empty"),
        (b"[1, 2]", "must be an object, got an array"),
        (b'"q"', "must be an object, got a string"),
        (b'{"q": 5}', "q must be a string, got a number"),
        (b'{"q": ["x"]}', "q must be a string, got an array"),
        (b'{"q": "x", "k": "10"}', "k must be an integer, got a string"),
        (b'{"q": "x", "k": true}', "k must be an integer, got a boolean"),
        (b'{"q": "x", "k": 10.0}', "k must be an integer, got a number"),
        (b'{"q": "x", "k": 0}', "k must be an integer in 1..1000"),
        (b'{"q": "x", "deadline_ms": "5"}', "deadline_ms must be a number"),
        (b'{"q": "x", "deadline_ms": 1e9}', "deadline_ms must be in 1..60000"),
        (b'{"q": "x", "deadline_ms": NaN}', "malformed JSON"),
        (b'{"q": "x", "min_coverage": {}}', "min_coverage must be a number"),
        (b'{"q": "x", "extra": 1}', "unknown field 'extra'"),
        (b'{"q": "x", "q": "y"}', "field 'q' is given more than once"),
        (b'{"q": "\xff"}', "malformed JSON"),
        (b'{"q": "\\ud800"}', "malformed JSON"),
        (b'{"q": ' + b"[" * 5000 + b"]" * 5000 + b"}", "malformed JSON"),
        (b'{"k": 3}', "missing parameter 'q'"),
        (b'{"q": null}', "missing parameter 'q'"),
    ],
)
async def test_bad_json_bodies_get_400_json(
    aiohttp_client: ClientFactory, body: bytes, reason: str
) -> None:
    """Every malformed POST body gets 400 with type InvalidQuery and a reason."""
    client = await _client(aiohttp_client)
    resp = await client.post("/search", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    error = (await _json(resp))["error"]
    assert error["type"] == "InvalidQuery"
    assert reason in error["reason"]


async def test_post_with_a_query_string_is_refused(aiohttp_client: ClientFactory) -> None:
    """POST fields belong in the body; a query string on a POST is a 400, not merged."""
    client = await _client(aiohttp_client)
    resp = await client.post("/search?k=3", json={"q": "x"})
    assert resp.status == 400
    assert "not the query string" in (await _json(resp))["error"]["reason"]


async def test_body_over_the_limit_gets_413(aiohttp_client: ClientFactory) -> None:
    """A declared or streamed body over max_body_bytes is refused with a JSON 413."""
    client = await _client(aiohttp_client, settings=ServiceSettings(max_body_bytes=1024))
    big = orjson.dumps({"q": "x" * 2000})
    resp = await client.post("/search", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await _json(resp))["error"]["type"] == "PayloadTooLarge"

    async def chunks() -> Any:
        for _ in range(4):
            yield b" " * 512

    resp = await client.post("/search", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await _json(resp))["error"]["type"] == "PayloadTooLarge"


async def test_stalled_body_gets_408_by_the_default_deadline(
    aiohttp_client: ClientFactory,
) -> None:
    """A POST body that stops arriving is answered 408 JSON once the default budget is spent."""
    client = await _client(aiohttp_client, settings=ServiceSettings(default_deadline_ms=50))
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
    finally:
        writer.close()
        await writer.wait_closed()
    assert head.split()[1] == b"408"
    assert orjson.loads(body)["error"]["type"] == "RequestTimeout"


async def test_non_json_body_gets_415(aiohttp_client: ClientFactory) -> None:
    """A POST body declared as something other than JSON is refused with a JSON 415."""
    client = await _client(aiohttp_client)
    resp = await client.post("/search", data="q=x", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await _json(resp))["error"]["type"] == "UnsupportedMediaType"


async def test_unknown_path_and_wrong_method_are_json(aiohttp_client: ClientFactory) -> None:
    """404 and 405 come as JSON errors; 405 keeps its Allow header."""
    client = await _client(aiohttp_client)
    resp = await client.get("/nope")
    assert resp.status == 404
    assert (await _json(resp))["error"]["type"] == "NotFound"
    resp = await client.delete("/search")
    assert resp.status == 405
    assert (await _json(resp))["error"]["type"] == "MethodNotAllowed"
    assert "GET" in resp.headers["Allow"]


async def test_bad_client_id_is_refused(aiohttp_client: ClientFactory) -> None:
    """An over-long client id header is a 400, not silently truncated."""
    client = await _client(aiohttp_client)
    resp = await client.get("/search", params={"q": "x"}, headers={"X-Client-Id": "c" * 200})
    assert resp.status == 400


# -- failures --------------------------------------------------------------------------------


async def test_every_shard_failing_is_503_with_retry_after(aiohttp_client: ClientFactory) -> None:
    """No shard answered: 503 NoShardAnswered listing each shard's outcome, with Retry-After."""
    backends = [ScriptedShard("s0", 0.0, error=ShardError("disk on fire"))]
    client = await _client(aiohttp_client, backends)
    resp = await client.get("/search", params={"q": "x"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    error = (await _json(resp))["error"]
    assert error["type"] == "NoShardAnswered"
    assert error["shards"][0]["status"] == "error"
    assert "disk on fire" in error["shards"][0]["reason"]


async def test_unexpected_error_is_a_json_500_without_traceback(
    aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug becomes a JSON 500 with no stack trace in the body; the traceback is logged."""
    coordinator = Coordinator(_shards())

    async def broken(query: Query, deadline: Deadline | None = None) -> Any:
        raise RuntimeError("secret internals")

    coordinator.search = broken  # type: ignore[method-assign]
    client = await aiohttp_client(create_app(coordinator))
    with caplog.at_level(logging.ERROR, logger="aggregator.service"):
        resp = await client.get("/search", params={"q": "x"})
    assert resp.status == 500
    text = await resp.text()
    assert "secret" not in text
    assert "Traceback" not in text
    assert orjson.loads(text) == {"error": {"type": "InternalError", "reason": "internal error"}}
    assert "secret internals" in caplog.text


# -- admission -------------------------------------------------------------------------------


async def test_overload_is_shed_with_503_and_retry_after(aiohttp_client: ClientFactory) -> None:
    """With every slot taken and no room to wait, the next query gets 503 Overloaded at once."""
    gated = GatedShard("g")
    admission = Admission(AdmissionLimits(max_in_flight=1, max_waiting=0))
    client = await _client(aiohttp_client, [gated], admission=admission)
    first = asyncio.create_task(client.get("/search", params={"q": "x", "deadline_ms": "5000"}))
    await until(lambda: gated.in_flight == 1, gated.changed)
    resp = await client.get("/search", params={"q": "y"})
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await _json(resp))["error"]["type"] == "Overloaded"
    gated.release.set()
    assert (await first).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'aggregator_queries_shed_total{reason="queue_full"} 1.0' in metrics


async def test_client_disconnect_cancels_the_fan_out(aiohttp_client: ClientFactory) -> None:
    """A client that hangs up mid-query cancels every shard call of that query."""
    gated = [GatedShard("g0"), GatedShard("g1")]
    client = await _client(aiohttp_client, gated)
    request = asyncio.create_task(client.get("/search", params={"q": "x", "deadline_ms": "60000"}))
    await until(lambda: all(g.in_flight == 1 for g in gated), *(g.changed for g in gated))
    request.cancel()  # closes the connection: the server sees the peer go away
    with pytest.raises(asyncio.CancelledError):
        await request
    await until(lambda: all(g.in_flight == 0 for g in gated), *(g.changed for g in gated))
    service = client.app[SERVICE_KEY]
    await until(lambda: service.admission.queue.in_flight == 0)
    metrics = await (await client.get("/metrics")).text()
    assert "aggregator_queries_cancelled_total 1.0" in metrics


async def test_disconnect_drops_http_shard_requests_to_zero(
    aiohttp_client: ClientFactory,
) -> None:
    """Through real HTTP shards: after the client hangs up, no shard request is left in flight."""
    backends = simulated_cluster(3, "hang=1", seed=1)
    async with LocalShardCluster(backends) as cluster, ShardClient() as shard_client:
        shards = await connect_shards(cluster.urls, shard_client)
        client = await aiohttp_client(create_app(Coordinator(shards)))
        request = asyncio.create_task(
            client.get("/search", params={"q": "x", "deadline_ms": "60000"})
        )
        await until(lambda: shard_client.in_flight() == 3)
        await until(lambda: all(cluster.state(i).in_flight == 1 for i in range(3)))
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await until(lambda: shard_client.in_flight() == 0)
        await until(lambda: all(cluster.state(i).in_flight == 0 for i in range(3)))


async def test_http_shards_answer_through_the_service(aiohttp_client: ClientFactory) -> None:
    """The real path: service, coordinator, HttpShard, shard servers; /shards shows the URLs."""
    backends = simulated_cluster(3, "constant:1ms", seed=1, docs_per_shard=200)
    async with LocalShardCluster(backends) as cluster, ShardClient() as shard_client:
        shards = await connect_shards(cluster.urls, shard_client)
        client = await aiohttp_client(create_app(Coordinator(shards)))
        body = await _json(await client.get("/search", params={"q": "asyncio", "k": "5"}))
        assert len(body["hits"]) == 5
        assert body["completeness"]["shards_ok"] == 3
        listed = (await _json(await client.get("/shards")))["shards"]
        assert [s["url"] for s in listed] == list(cluster.urls)
        assert all(s["outcomes"]["ok"] == 1 for s in listed)


# -- authentication --------------------------------------------------------------------------


async def test_bearer_token_guards_everything_but_healthz(aiohttp_client: ClientFactory) -> None:
    """With a token set, a missing or wrong token is a JSON 401; /healthz stays open."""
    client = await _client(aiohttp_client, settings=ServiceSettings(token="s3cret"))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
        resp = await client.get("/search", params={"q": "x"}, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await _json(resp))["error"]["type"] == "Unauthorized"
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/healthz")).status == 200
    ok = await client.get("/search", params={"q": "x"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200


# -- operations ------------------------------------------------------------------------------


async def test_healthz_and_shards(aiohttp_client: ClientFactory) -> None:
    """/healthz says ok; /shards lists docs, recent percentiles and outcome counts per shard."""
    client = await _client(aiohttp_client)
    assert await _json(await client.get("/healthz")) == {"status": "ok", "shards": 2}
    before = (await _json(await client.get("/shards")))["shards"]
    assert before[0]["recent"] == {"calls": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None}
    for _ in range(3):
        await client.get("/search", params={"q": "x"})
    shards = (await _json(await client.get("/shards")))["shards"]
    assert [s["name"] for s in shards] == ["s0", "s1"]
    assert [s["docs"] for s in shards] == [100, 50]
    assert shards[0]["outcomes"]["ok"] == 3
    assert shards[0]["recent"]["calls"] == 3
    assert shards[0]["recent"]["p99_ms"] is not None


async def test_metrics_are_prometheus_text(aiohttp_client: ClientFactory) -> None:
    """/metrics serves this app's registry: shard histograms, outcomes, admission, loop lag."""
    client = await _client(aiohttp_client)
    await client.get("/search", params={"q": "x"})
    await client.get("/search", params={"k": "0"})
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    for line in (
        'aggregator_shard_latency_seconds_count{shard="s0"} 1.0',
        'aggregator_shard_outcomes_total{shard="s1",status="ok"} 1.0',
        'aggregator_http_responses_total{code="200"} 1.0',
        'aggregator_http_responses_total{code="400"} 1.0',
        "aggregator_queries_in_flight 0.0",
        "aggregator_queries_waiting 0.0",
        "aggregator_queries_admitted_total 1.0",
        "aggregator_event_loop_lag_seconds_bucket",
    ):
        assert line in text


async def test_lifecycle_owns_the_loop_lag_monitor() -> None:
    """The loop-lag monitor starts with the app and is gone after cleanup; draining shows."""
    app = create_app(Coordinator(_shards()), settings=ServiceSettings(loop_lag_interval_s=0.001))
    service = app[SERVICE_KEY]
    server = TestServer(app)
    async with TestClient(server) as client:
        assert service.lag_monitor is not None
        await until(lambda: service.lag_monitor is not None and service.lag_monitor.samples > 0)
        await app.shutdown()
        assert (await client.get("/healthz")).status == 503
    assert service.lag_monitor is None
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "aggregator-loop-lag" not in names


async def test_apps_do_not_share_metrics(aiohttp_client: ClientFactory) -> None:
    """Two apps in one process each count only their own queries (no global registry)."""
    first = await _client(aiohttp_client)
    second = await _client(aiohttp_client)
    await first.get("/search", params={"q": "x"})
    text = await (await second.get("/metrics")).text()
    assert 'aggregator_http_responses_total{code="200"}' not in text


def test_settings_reject_nonsense() -> None:
    """Service settings outside their ranges are refused."""
    with pytest.raises(ValueError, match="max_k"):
        ServiceSettings(max_k=0)
    with pytest.raises(ValueError, match="token"):
        ServiceSettings(token="")
    with pytest.raises(ValueError, match="default_deadline_ms"):
        ServiceSettings(default_deadline_ms=0)


def test_coordinator_limits_are_independent_of_admission() -> None:
    """The coordinator's per-shard bound stays its own setting (admission adds its own)."""
    assert CoordinatorConfig().max_inflight_per_shard >= AdmissionLimits().max_in_flight


async def test_fan_in_keeps_a_reserve_for_sending_the_answer(
    aiohttp_client: ClientFactory,
) -> None:
    """Shards get the budget minus the reply reserve; the response reports the client's budget."""
    seen: list[float] = []

    class Recording:
        name = "r"
        doc_count = 1

        async def search(self, query: Query, deadline: Deadline) -> ShardReply:
            seen.append(deadline.budget_ms or 0.0)
            return ShardReply("r", 1, (Hit("d", 1.0, "r"),))

    app = create_app(Coordinator([Recording()]), settings=ServiceSettings(reply_reserve_ms=2.0))
    client = await aiohttp_client(app)
    resp = await client.get("/search", params={"q": "x", "deadline_ms": "100"})
    body = await resp.json()
    assert resp.status == 200
    assert body["deadline_ms"] == 100.0
    assert seen == [pytest.approx(98.0)]
    resp = await client.get("/search", params={"q": "x", "deadline_ms": "10"})
    assert resp.status == 200
    assert seen[1] == pytest.approx(9.0)  # the reserve is at most 10% of the budget
