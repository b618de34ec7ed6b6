"""Hostile input, fuzzed with hypothesis against the HTTP service over a real loopback socket.

The property, for query strings, JSON bodies and headers alike: every request is answered
(no hang: each one is bounded by a client timeout), with 200 or a 4xx JSON error
``{"error": {"type", "reason"}}``; never a 5xx, never a stack trace; and the server keeps
serving (a valid query afterwards answers 200). Inputs that can only be wrong (huge ``k``,
huge ``q``, NaN / negative / huge deadlines, invalid UTF-8, deep or oversized JSON, unknown
fields, repeated parameters) must be 4xx. Requests that break HTTP itself (an over-long
request line, too many or too large headers, raw bytes that are not a URL) are sent over a
raw socket to a server with the limits ``python -m aggregator serve`` uses.

Example counts are bounded so the file runs in seconds; the server is one per test and the
examples share it, which is the point (it must survive all of them).
"""

from __future__ import annotations

import string
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import Coordinator
from aggregator.admission import Admission
from aggregator.clock import ManualClock
from aggregator.config import LimitsConfig
from aggregator.service import (
    SEARCH_FIELDS,
    SERVICE_KEY,
    ServiceSettings,
    create_app,
    create_runner,
)
from aggregator.types import MAX_K, MAX_QUERY_CHARS
from tests.aggregator.fakes import ScriptedShard
from tests.aggregator.raw_http import raw_exchange

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

#: The limits ``python -m aggregator serve`` runs with by default.
LIMITS = LimitsConfig()
#: A hang guard for each request: far above any honest answer of this tiny cluster.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
#: One server survives every example of a test; hypothesis must not make one per example.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEW = settings(FUZZ, max_examples=25)

#: Text that would only ever come from a stack trace.
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "line ")


def _shards() -> list[ScriptedShard]:
    return [
        ScriptedShard("s0", 0.0, docs=100, hits=[("a", 3.0), ("b", 1.0)]),
        ScriptedShard("s1", 0.0, docs=50, hits=[("c", 2.0)]),
    ]


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> AsyncIterator[Client]:
    """The service over two instant shards, with the serve command's HTTP limits.

    Every test shares one server across its examples; afterwards it must still serve. The
    service's clock is frozen, so an answer depends on the input alone, never on how long
    parsing took on a busy machine (a valid 1 ms budget is never spent before it starts).
    """
    clock = ManualClock(1000.0)
    app = create_app(
        Coordinator(_shards(), clock=clock),
        admission=Admission(clock=clock),
        settings=ServiceSettings(loop_lag_interval_s=0),
    )
    server = ServiceTestServer(app)
    await server.start_server()
    test_client = await aiohttp_client(server)
    yield test_client
    await assert_still_serving(test_client)


class ServiceTestServer(TestServer):
    """A test server whose runner is the one ``serve`` uses (:func:`create_runner`), with the
    serve command's HTTP limits and its JSON answers to requests HTTP's parser refuses."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return create_runner(self.app, LIMITS)


def check_answer(status: int, content_type: str, body: bytes) -> dict[str, Any]:
    """200 or a 4xx JSON error; never a 5xx or a traceback. Returns the decoded body."""
    assert status < 500, (status, body[:300])
    assert content_type == "application/json", (status, content_type, body[:300])
    text = body.decode("utf-8", "replace")
    assert not any(marker in text for marker in TRACEBACK_MARKERS[:2]), text[:300]
    doc: dict[str, Any] = orjson.loads(body)
    if status == 200:
        assert isinstance(doc["hits"], list)
        assert doc["completeness"]["shards_total"] == 2
    else:
        assert 400 <= status < 500
        error = doc["error"]
        assert isinstance(error["type"], str)
        assert isinstance(error["reason"], str)
        assert error["type"]
        assert error["reason"]
        assert len(error["reason"]) < 1000, "a reason echoes input, never all of it"
    return doc


async def get(client: Client, raw_query: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.get(f"/search?{raw_query}", timeout=REQUEST_TIMEOUT, **kwargs)
    body = await resp.read()
    return resp.status, check_answer(resp.status, resp.content_type, body)


async def post(
    client: Client, body: bytes, content_type: str = "application/json", **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    resp = await client.post(
        "/search",
        data=body,
        headers={"Content-Type": content_type, **kwargs.pop("headers", {})},
        timeout=REQUEST_TIMEOUT,
        **kwargs,
    )
    data = await resp.read()
    return resp.status, check_answer(resp.status, resp.content_type, data)


async def assert_still_serving(client: Client) -> None:
    """A valid query answers 200 and nothing is left holding an admission slot."""
    status, doc = await get(client, "q=python&k=2")
    assert status == 200
    assert [h["id"] for h in doc["hits"]] == ["a", "c"]
    assert client.app[SERVICE_KEY].admission.queue.in_flight == 0


# -- strategies ----------------------------------------------------------------------------------

#: Parameter names: the real ones, near misses, and names that look like a way to pick shards.
param_names = st.one_of(
    st.sampled_from(sorted(SEARCH_FIELDS)),
    st.sampled_from(["url", "shard", "shards", "host", "deadline", "K", "q[]", "timeout", ""]),
    st.text(min_size=1, max_size=12),
)
numberish = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-0", "0x10", " 5", "5 ", "1_0",
         "\u0663", "\uff11\uff10", "", "+5", "5e-324", "1" * 40]
    ),
)  # fmt: skip
param_values = st.one_of(numberish, st.text(max_size=60))
param_lists = st.lists(st.tuples(param_names, param_values), max_size=7)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(
    st.one_of(st.sampled_from(sorted(SEARCH_FIELDS)), st.text(max_size=10)),
    st.one_of(json_values, numberish),
    max_size=6,
)

invalid_utf8 = st.binary(min_size=1, max_size=40).filter(lambda b: not _is_utf8(b))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- query strings ---------------------------------------------------------------------------


@FUZZ
@given(pairs=param_lists)
async def test_any_query_string_is_200_or_a_4xx_json_error(
    client: Client, pairs: list[tuple[str, str]]
) -> None:
    """Arbitrary GET parameters (names, values, repeats) get 200 or a 4xx JSON error."""
    status, _ = await get(client, urlencode(pairs))
    names = [name for name, _ in pairs]
    if status == 200:
        assert set(names) <= SEARCH_FIELDS, "an unknown parameter is never ignored"
        assert len(names) == len(set(names)), "a repeated parameter is never ignored"


@FUZZ
@given(
    k=st.one_of(
        st.integers(min_value=MAX_K + 1, max_value=10**60),
        st.integers(max_value=0, min_value=-(10**60)),
    )
)
async def test_k_out_of_range_is_400(client: Client, k: int) -> None:
    """Any k outside 1..1000, however many digits, is a 400 naming k."""
    status, doc = await get(client, urlencode({"q": "x", "k": str(k)}))
    assert status == 400
    assert "k must be an integer" in doc["error"]["reason"]


@FEW
@given(length=st.integers(min_value=MAX_QUERY_CHARS + 1, max_value=7000))
async def test_huge_q_in_the_query_string_is_400(client: Client, length: int) -> None:
    """A q over the length limit (still within the request line limit) is a 400."""
    status, doc = await get(client, "q=" + "x" * length)
    assert status == 400
    assert "longer than" in doc["error"]["reason"]


@FUZZ
@given(
    deadline=st.one_of(
        st.sampled_from(["nan", "NaN", "inf", "-inf", "infinity", "1e309", "-0", "0", "0.999"]),
        st.floats(max_value=0.999, allow_nan=False).map(repr),
        st.floats(min_value=60000.001, allow_nan=False).map(repr),
        st.integers(min_value=60001, max_value=10**30).map(str),
        st.integers(max_value=0, min_value=-(10**30)).map(str),
    ),
    field=st.sampled_from(["deadline_ms", "min_coverage"]),
)
async def test_nan_negative_or_huge_budgets_are_400(
    client: Client, deadline: str, field: str
) -> None:
    """NaN, infinite, negative, zero or huge deadlines (and coverages) are a 400."""
    if field == "min_coverage" and _in_unit_interval(deadline):
        return  # a valid coverage, e.g. 0.999
    status, doc = await get(client, urlencode({"q": "x", field: deadline}))
    assert status == 400, doc
    assert field in doc["error"]["reason"]


@pytest.mark.parametrize("deadline_ms", ["1", "2.5", "5"])
async def test_small_valid_budget_on_an_idle_server_is_not_overloaded(
    aiohttp_client: ClientFactory, deadline_ms: str
) -> None:
    """A budget the API accepts, on an idle server, is served or refused as invalid (400).

    Never 503 Overloaded: that tells the client to retry, and a retry can never succeed.
    The clock is frozen, so no budget is spent parsing and the answer depends on policy alone.
    """
    clock = ManualClock(1000.0)
    coordinator = Coordinator(_shards(), clock=clock)
    app = create_app(
        coordinator,
        admission=Admission(clock=clock),
        settings=ServiceSettings(loop_lag_interval_s=0),
    )
    client = await aiohttp_client(app)
    resp = await client.get(f"/search?q=x&deadline_ms={deadline_ms}", timeout=REQUEST_TIMEOUT)
    doc = orjson.loads(await resp.read())
    assert resp.status in (200, 400), doc


def _in_unit_interval(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return 0 < value <= 1


@FUZZ
@given(raw=invalid_utf8, field=st.sampled_from(["q", "k", "deadline_ms", "name"]))
async def test_percent_encoded_invalid_utf8_is_400(client: Client, raw: bytes, field: str) -> None:
    """Percent-encoded bytes that are not UTF-8, in a value or a name, are a 400."""
    encoded = quote(raw, safe="")
    if field == "name":
        query = f"q=x&{encoded}=1"
    elif field == "q":
        query = f"q={encoded}"
    else:
        query = f"q=x&{field}={encoded}"
    status, doc = await get(client, query)
    assert status == 400
    assert doc["error"]["type"] == "InvalidQuery"


@FEW
@given(name=st.sampled_from(sorted(SEARCH_FIELDS)), times=st.integers(min_value=2, max_value=40))
async def test_repeated_parameters_are_400(client: Client, name: str, times: int) -> None:
    """A parameter given more than once, however often, is a 400 (never last-one-wins)."""
    value = {"q": "x", "k": "3", "deadline_ms": "100", "min_coverage": "0.5"}[name]
    pairs = [("q", "x")] if name != "q" else []
    pairs += [(name, value)] * times
    status, doc = await get(client, urlencode(pairs))
    assert status == 400
    reason = doc["error"]["reason"]
    assert "more than once" in reason or "too many query parameters" in reason


# -- JSON bodies ---------------------------------------------------------------------------------


@FUZZ
@given(doc=json_values)
async def test_any_json_body_is_200_or_a_4xx_json_error(client: Client, doc: Any) -> None:
    """Any JSON document as the POST body gets 200 or a 4xx JSON error."""
    status, _ = await post(client, orjson.dumps(doc))
    if status == 200:
        assert isinstance(doc, dict)
        assert set(doc) <= SEARCH_FIELDS


@FUZZ
@given(doc=json_objects)
async def test_any_json_object_is_200_or_a_4xx_json_error(
    client: Client, doc: dict[str, Any]
) -> None:
    """Objects mixing real and unknown fields of any type: 200 only when every field is known."""
    status, answer = await post(client, orjson.dumps(doc))
    unknown = set(doc) - SEARCH_FIELDS
    if unknown:
        assert status == 400
        assert "unknown field" in answer["error"]["reason"]


@FEW
@given(
    depth=st.integers(min_value=1, max_value=50_000),
    opener=st.sampled_from([b"[", b'{"a":']),
    wrap=st.booleans(),
)
async def test_deeply_nested_json_is_4xx(
    client: Client, depth: int, opener: bytes, wrap: bool
) -> None:
    """JSON nested to any depth (alone or as a field's value) is a 4xx, not a crash."""
    closer = b"]" if opener == b"[" else b"}"
    nested = opener * depth + b"1" + closer * depth
    body = b'{"q": "x", "k": ' + nested + b"}" if wrap else nested
    status, _ = await post(client, body)
    assert status in (400, 413)


@FEW
@given(size=st.integers(min_value=LIMITS.max_body_bytes + 1, max_value=4 * LIMITS.max_body_bytes))
async def test_oversized_json_is_413(client: Client, size: int) -> None:
    """A body over the limit is a 413, whether or not it would parse."""
    body = b'{"q": "' + b"x" * size + b'"}'
    status, doc = await post(client, body)
    assert status == 413
    assert doc["error"]["type"] == "PayloadTooLarge"


@FEW
@given(raw=invalid_utf8)
async def test_invalid_utf8_inside_json_is_400(client: Client, raw: bytes) -> None:
    """Bytes that are not UTF-8 inside a JSON string are a 400."""
    status, _ = await post(client, b'{"q": "' + raw.replace(b'"', b"") + b'"}')
    assert status == 400


@FEW
@given(content_type=st.text(alphabet=string.ascii_letters + "/+-.;= ", max_size=40))
async def test_any_content_type_is_200_or_a_4xx_json_error(
    client: Client, content_type: str
) -> None:
    """A valid body under any declared content type is answered 200, 400 or 415."""
    status, _ = await post(client, b'{"q": "x"}', content_type=content_type)
    assert status in (200, 400, 415)


# -- headers ---------------------------------------------------------------------------------

header_names = st.text(
    alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=100,
)


@FUZZ
@given(
    headers=st.dictionaries(
        st.one_of(
            st.sampled_from(
                ["X-Client-Id", "Authorization", "Accept", "Accept-Encoding", "Host",
                 "X-Forwarded-For", "X-Forwarded-Host", "Forwarded", "Expect", "Cookie"]
            ),
            header_names,
        ),
        header_values,
        max_size=LIMITS.max_headers - 10,
    )
)  # fmt: skip
async def test_any_headers_are_200_or_a_4xx_json_error(
    client: Client, headers: dict[str, str]
) -> None:
    """Arbitrary headers, up to the header limit, on a valid query: 200 or a 4xx JSON error."""
    headers.pop("Expect", None)  # 100-continue is the transport's business, not the service's
    status, _ = await get(client, "q=python", headers=headers)
    if status != 200:
        assert "X-Client-Id" in headers or "Host" in headers


@FEW
@given(count=st.integers(min_value=1, max_value=LIMITS.max_headers - 10))
async def test_many_headers_under_the_limit_are_ignored(client: Client, count: int) -> None:
    """A valid query with many unknown headers (under the limit) answers 200."""
    headers = {f"X-Noise-{i}": "v" * 50 for i in range(count)}
    status, _ = await get(client, "q=python", headers=headers)
    assert status == 200


async def test_server_keeps_serving_after_fuzzing(client: Client) -> None:
    """The shared server answers a valid query after a burst of hostile ones."""
    for query in ("q=%ff", "k=9" * 2000, "q=x&k=0", "q=x&deadline_ms=nan", "q=x&url=http://x"):
        status, _ = await get(client, query)
        assert status == 400
    await assert_still_serving(client)


# -- requests that break HTTP itself --------------------------------------------------------------


def _get_line(target: bytes, extra: bytes = b"") -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + extra
        + b"Connection: close\r\n\r\n"
    )


BROKEN_HTTP = {
    "request line over the limit": _get_line(b"/search?q=" + b"x" * LIMITS.max_line_bytes),
    "too many headers": _get_line(
        b"/search?q=x", b"".join(b"X-H%d: 1\r\n" % i for i in range(LIMITS.max_headers + 1))
    ),
    "header over the limit": _get_line(
        b"/search?q=x", b"X-Big: " + b"y" * (LIMITS.max_field_bytes + 1) + b"\r\n"
    ),
    "raw bytes that are not UTF-8 in the URL": _get_line(b"/search?q=\xff\xfe"),
    "not a method": b"G@T /search?q=x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "negative Content-Length": (
        b"POST /search HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\nConnection: close\r\n\r\n{}"
    ),
}


@pytest.mark.parametrize("request_bytes", BROKEN_HTTP.values(), ids=BROKEN_HTTP.keys())
async def test_broken_http_is_refused_with_a_4xx(client: Client, request_bytes: bytes) -> None:
    """Requests HTTP's parser refuses get a 4xx without a traceback, and the server lives on."""
    assert client.port is not None
    status, _, body = await raw_exchange(client.port, request_bytes)
    assert 400 <= status < 500
    assert TRACEBACK_MARKERS[0] not in body.decode("latin-1")


@pytest.mark.parametrize("request_bytes", BROKEN_HTTP.values(), ids=BROKEN_HTTP.keys())
async def test_broken_http_is_answered_with_the_json_error_shape(
    client: Client, request_bytes: bytes
) -> None:
    """Requests HTTP's parser refuses get the service's JSON error shape like any other 4xx."""
    assert client.port is not None
    status, content_type, body = await raw_exchange(client.port, request_bytes)
    error = check_answer(status, content_type, body)["error"]
    assert status == 400
    assert error["type"] == "MalformedHttp"
    assert "\n" not in error["reason"], "one line: the parser's caret drawing is dropped"
    assert len(error["reason"]) <= 120
