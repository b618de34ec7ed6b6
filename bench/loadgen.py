"""An open-loop load generator that does not lie about the tail.

Rationale (wrk2's fix for coordinated omission): a closed-loop generator sends its next request
only after the previous one answered, so while the system under test stalls it stops sending
and the stall shows up as *one* slow request instead of the hundreds that real users, arriving
on their own schedule, would have suffered. Here:

- Every request has an *intended* send time fixed before the run (Poisson or constant
  arrivals at the offered rate); a request never waits for earlier ones to answer.
- Latency is measured from the intended send time, so if the generator itself falls behind,
  its lateness counts against the system instead of vanishing. The lateness (lag) is measured
  and reported too, and a run that could not keep the offered rate says so.
- In-flight requests are bounded (``max_inflight``); a send that would exceed the bound is
  *dropped and counted*, never queued (queueing it would be closed-loop behaviour again).
- Runs are bounded: at most ``max_requests`` sends within ``duration_s``, then at most
  ``drain_s`` to collect stragglers; requests still running after that are cancelled and
  recorded as ``abandoned`` with the time they had waited so far (a lower bound, never hidden).

The generator drives any :data:`Target`: an async callable taking the request's index. Use
:class:`HttpSearchTarget` for an HTTP URL (one :class:`HttpSession`, bounded pool) or an
in-process callable (e.g. a coordinator on virtual time).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import orjson
from yarl import URL

from aggregator.connection_pool import ConnectionPool, HttpReply
from aggregator.errors import ShardError
from bench.histogram import LatencyHistogram

__all__ = [
    "ARRIVALS",
    "HttpSearchTarget",
    "HttpSession",
    "LoadResult",
    "LoadSpec",
    "RequestResult",
    "RequestStatus",
    "Target",
    "arrival_offsets_s",
    "run_load",
]

#: The arrival processes the generator knows.
ARRIVALS = ("poisson", "constant")
#: A hard ceiling on requests in one run, whatever the spec says (memory stays bounded).
MAX_REQUESTS_CEILING = 2_000_000
#: Caps on a reply body the generator reads: a search answer, and an error's JSON.
_MAX_REPLY_BYTES = 64 * 1024 * 1024
_MAX_ERROR_REPLY_BYTES = 64 * 1024
#: Reasons of the statuses counted as shed.
_SHED_REASONS = {503: "HTTP 503", 429: "HTTP 429"}


class RequestStatus(IntEnum):
    """How one request ended, as the generator saw it."""

    OK = 0  # a complete answer
    PARTIAL = 1  # an answer with coverage below 1 (some shards missing)
    ERROR = 2  # an error reply, a transport failure or an exception
    SHED = 3  # refused by admission control (HTTP 503 / 429)
    ABANDONED = 4  # still running when the run ended; cancelled and counted
    DROPPED = 5  # never sent: the in-flight bound was reached
    TIMEOUT = 6  # the query's own deadline answer (HTTP 504) or the client's timeout


@dataclass(frozen=True, slots=True)
class RequestResult:
    """What a target reports for one request.

    ``coverage`` is the answer's share of documents searched (``None`` when there was no
    answer); ``extra_requests`` counts shard requests beyond one per shard (hedges, retries);
    ``server_ms`` is the time the server itself reported (the aggregator's ``took_ms``), so a
    report can tell the server's share of a latency from the network's and the queues'.
    ``completed_s`` is when the answer was complete, on the run's clock, if the target knows
    (the request ends there; otherwise when the target returns). Why: a reply parsed in one
    iteration of the generator's loop reaches the awaiting task in the next, and on a busy
    generator that hop is its own lag, not the server's.
    """

    status: RequestStatus
    coverage: float | None = None
    extra_requests: int = 0
    reason: str | None = None
    server_ms: float | None = None
    completed_s: float | None = None


#: A load target: given the request's index (0, 1, ...), perform it and say how it ended.
#: Exceptions are recorded as ``ERROR``; cancellation must propagate.
Target = Callable[[int], Awaitable[RequestResult]]


@runtime_checkable
class StartsAtOnce(Protocol):
    """A target that can also start a request without a task (optional; see :func:`run_load`).

    ``try_start(index, done)`` sends request ``index`` now and returns True, then calls
    ``done(result)`` exactly once, from a transport callback, when it ends; or returns False
    having sent nothing (say, no idle connection), and the generator awaits the target
    instead. Why: a task, a future and a timeout timer per request, and the loop iteration
    between a reply's arrival and its task's next step, cost a Python generator about 60 of
    its 180 microseconds per request, on the same two cores as the system it measures
    (``bench/RESULTS.md``, overload soak).
    """

    def try_start(self, index: int, done: Callable[[RequestResult], None]) -> bool: ...


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One open-loop run.

    ``rate_per_s`` offered requests per second; ``duration_s`` the send window in seconds;
    ``arrivals`` ``"poisson"`` (exponential gaps) or ``"constant"``; ``max_requests`` caps the
    sends (the run ends at whichever bound comes first); ``max_inflight`` bounds concurrent
    requests (overflow policy: drop the send and count it); ``warmup_s`` excludes requests
    intended in the first seconds from the figures; ``drain_s`` bounds the wait for stragglers
    after the last send; ``spin_s`` wakes the generator that long before each send and yields
    until the exact instant (sub-millisecond sends on loops whose timers have millisecond
    granularity; 0 on virtual time); ``late_after_s`` is the lag from which a send counts as
    late; ``max_lag_s`` the p99 lag beyond which the run says it did not keep the rate.
    """

    rate_per_s: float
    duration_s: float
    arrivals: Literal["poisson", "constant"] = "poisson"
    max_requests: int = 1_000_000
    max_inflight: int = 1000
    warmup_s: float = 0.0
    drain_s: float = 5.0
    spin_s: float = 0.0
    late_after_s: float = 0.001
    max_lag_s: float = 0.010
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("rate_per_s", "duration_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.arrivals not in ARRIVALS:
            choices = ", ".join(ARRIVALS)
            raise ValueError(f"arrivals must be one of {choices}, got {self.arrivals!r}")
        if not 1 <= self.max_requests <= MAX_REQUESTS_CEILING:
            raise ValueError(f"max_requests must be in 1..{MAX_REQUESTS_CEILING}")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        for name in ("warmup_s", "drain_s", "spin_s", "late_after_s", "max_lag_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.warmup_s >= self.duration_s:
            raise ValueError("warmup_s must be shorter than duration_s")

    @property
    def expected_requests(self) -> int:
        """Sends the spec asks for (rate x duration, capped by ``max_requests``)."""
        return min(self.max_requests, max(1, math.ceil(self.rate_per_s * self.duration_s)))


def arrival_offsets_s(spec: LoadSpec) -> npt.NDArray[np.float64]:
    """Intended send times in seconds from the start, sorted, all below ``duration_s``.

    Poisson arrivals draw exponential gaps from a generator seeded with ``spec.seed``, so a
    spec always yields the same schedule. At least one request is always scheduled (at 0).
    """
    if spec.arrivals == "constant":
        offsets = np.arange(spec.expected_requests, dtype=np.float64) / spec.rate_per_s
    else:
        rng = np.random.default_rng(spec.seed)
        # Draw a little more than expected so the window is filled; cut at the duration.
        n = min(spec.max_requests, math.ceil(spec.rate_per_s * spec.duration_s * 1.2) + 16)
        offsets = np.cumsum(rng.exponential(1.0 / spec.rate_per_s, size=n))
        offsets -= offsets[0]
    offsets = offsets[offsets < spec.duration_s][: spec.max_requests]
    return offsets if len(offsets) else np.zeros(1)


@dataclass(slots=True)
class LoadResult:
    """Everything one run measured. Times in seconds unless the name says otherwise.

    ``latency`` is measured from each request's intended send time (the honest figure), for
    every request however it ended; ``answered`` is the same for answers only (complete or
    partial), since fast failures would otherwise flatter the figures; ``service`` is measured
    from the moment each request was actually sent (what a coordinated-omission-prone tool
    would report; compare the two). ``lag`` holds how late each send was. The per-request
    arrays (``offsets_s``, ``latency_s``, ``service_s``, ``status``, ``coverage``,
    ``server_ms``) cover every scheduled request, including warm-up ones (``nan`` where not
    applicable). The histograms are filled from the arrays once the run is over, so the
    generator spends nothing on them while it measures.
    """

    spec: LoadSpec
    latency: LatencyHistogram
    service: LatencyHistogram
    lag: LatencyHistogram
    answered: LatencyHistogram
    offsets_s: npt.NDArray[np.float64]
    latency_s: npt.NDArray[np.float64]
    status: npt.NDArray[np.int8]
    coverage: npt.NDArray[np.float64]
    server_ms: npt.NDArray[np.float64]
    service_s: npt.NDArray[np.float64]
    extra_requests: int = 0
    late_sends: int = 0
    elapsed_s: float = 0.0
    send_window_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def measured(self) -> npt.NDArray[np.bool_]:
        """Mask of requests intended after the warm-up."""
        return np.asarray(self.offsets_s >= self.spec.warmup_s)

    def count(self, status: RequestStatus, *, measured_only: bool = True) -> int:
        """How many requests ended with ``status`` (after the warm-up, by default)."""
        mask = self.status == status
        if measured_only:
            mask &= self.measured
        return int(mask.sum())

    @property
    def scheduled(self) -> int:
        """Requests in the schedule (all of them, warm-up included)."""
        return len(self.offsets_s)

    @property
    def sent(self) -> int:
        """Requests actually sent (all of them, warm-up included)."""
        return self.scheduled - self.count(RequestStatus.DROPPED, measured_only=False)

    @property
    def dropped(self) -> int:
        """Sends dropped because ``max_inflight`` requests were already running."""
        return self.count(RequestStatus.DROPPED, measured_only=False)

    @property
    def offered_rate_per_s(self) -> float:
        """The rate asked for."""
        return self.spec.rate_per_s

    @property
    def send_rate_per_s(self) -> float:
        """Requests sent per second of the actual send window."""
        return self.sent / self.send_window_s if self.send_window_s > 0 else math.nan

    @property
    def achieved_rate_per_s(self) -> float:
        """Answers (complete, partial, error or shed) per second of the whole run."""
        answered = int(np.isin(self.status, _ANSWERED).sum())
        return answered / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def kept_rate(self) -> bool:
        """True when the generator sent on schedule: nothing dropped, lag p99 in bounds."""
        return not self.rate_problems()

    def rate_problems(self) -> list[str]:
        """Why the offered rate was not kept (empty when it was)."""
        problems = []
        if self.dropped:
            problems.append(
                f"{self.dropped} sends dropped at max_inflight={self.spec.max_inflight}"
            )
        lag_p99_s = self.lag.percentile_ms(99.0) / 1000.0
        if lag_p99_s > self.spec.max_lag_s:
            problems.append(
                f"generator lag p99 {lag_p99_s * 1000:.1f} ms > {self.spec.max_lag_s * 1000:g} ms"
            )
        return problems


_ANSWERED = np.array(
    [RequestStatus.OK, RequestStatus.PARTIAL, RequestStatus.ERROR, RequestStatus.SHED,
     RequestStatus.TIMEOUT],
    dtype=np.int8,
)  # fmt: skip


class _Run:
    """The mutable state of one run; see :func:`run_load`."""

    def __init__(
        self, spec: LoadSpec, target: Target, now_s: Callable[[], float], offsets: Any
    ) -> None:
        n = len(offsets)
        self.spec = spec
        self.target = target
        self.now_s = now_s
        self.offsets = offsets
        self.inflight: set[asyncio.Task[None]] = set()
        # Requests started without a task (StartsAtOnce) and not ended yet; none_left is set
        # whenever no request of either kind is left; once closed, late endings are ignored
        # (those requests stay abandoned).
        self.started = 0
        self.none_left = asyncio.Event()
        self.closed = False
        self.result = LoadResult(
            spec=spec,
            latency=LatencyHistogram(),
            service=LatencyHistogram(),
            answered=LatencyHistogram(),
            lag=LatencyHistogram(),
            offsets_s=offsets,
            latency_s=np.full(n, np.nan),
            status=np.full(n, RequestStatus.ABANDONED, dtype=np.int8),
            coverage=np.full(n, np.nan),
            server_ms=np.full(n, np.nan),
            service_s=np.full(n, np.nan),
        )
        # How late each send was (nan: not reached); into the lag histogram after the run.
        self.lag_s = np.full(n, np.nan)
        self.start_s = 0.0

    def record(self, index: int, intended_s: float, sent_s: float, outcome: RequestResult) -> None:
        end_s = self.now_s()
        completed_s = outcome.completed_s
        if completed_s is not None and sent_s <= completed_s <= end_s:  # else: another clock
            end_s = completed_s
        r = self.result
        # From the intended send, or from the actual one if that came first: uvloop runs a
        # timer due in under half a millisecond at once, so a send can leave early, and
        # timing it from the later instant would flatter the answer.
        latency_s = max(0.0, end_s - min(intended_s, sent_s))
        r.latency_s[index] = latency_s
        r.service_s[index] = max(0.0, end_s - sent_s)
        r.status[index] = outcome.status
        if outcome.coverage is not None:
            r.coverage[index] = outcome.coverage
        if outcome.server_ms is not None:
            r.server_ms[index] = outcome.server_ms
        if self.offsets[index] >= self.spec.warmup_s:
            r.extra_requests += outcome.extra_requests
            if outcome.reason:
                r.reasons[outcome.reason] = r.reasons.get(outcome.reason, 0) + 1

    def end(self, index: int, intended_s: float, sent_s: float, outcome: RequestResult) -> None:
        """A request started without a task ended (the ``done`` of :class:`StartsAtOnce`)."""
        if self.closed:
            return
        self.started -= 1
        self.record(index, intended_s, sent_s, outcome)
        self._note_if_none_left()

    def task_done(self, task: asyncio.Task[None]) -> None:
        """A request's task ended."""
        self.inflight.discard(task)
        self._note_if_none_left()

    def _note_if_none_left(self) -> None:
        if not self.started and not self.inflight:
            self.none_left.set()

    async def one(self, index: int, intended_s: float, sent_s: float) -> None:
        try:
            outcome = await self.target(index)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the target failed: an error result, never a crash
            outcome = RequestResult(RequestStatus.ERROR, reason=type(exc).__name__)
        if not isinstance(outcome, RequestResult):
            outcome = RequestResult(RequestStatus.ERROR, reason="target returned no result")
        self.record(index, intended_s, sent_s, outcome)


async def run_load(
    target: Target,
    spec: LoadSpec,
    *,
    now_s: Callable[[], float] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """Drive ``target`` open-loop as ``spec`` says and return what was measured.

    ``now_s`` is the clock stamps are read from (default: ``time.perf_counter``; pass
    ``loop.time`` on a virtual-time loop). Sleeps use the running loop's timers, so the two
    must advance together. ``on_progress(done, total)`` is called as requests are scheduled.
    Cancelling the run cancels every request in flight.
    """
    loop = asyncio.get_running_loop()
    clock = now_s or time.perf_counter
    try_start = target.try_start if isinstance(target, StartsAtOnce) else None
    offsets = arrival_offsets_s(spec)
    run = _Run(spec, target, clock, offsets)
    r = run.result
    total = len(offsets)
    progress_every = max(1, total // 200)
    start_s = run.start_s = clock()
    try:
        for index in range(total):
            intended_s = start_s + float(offsets[index])
            delay_s = intended_s - clock()
            if delay_s > spec.spin_s:
                await asyncio.sleep(delay_s - spec.spin_s)
            if spec.spin_s > 0:
                while clock() < intended_s:  # noqa: ASYNC110 (a spin to the exact instant)
                    await asyncio.sleep(0)
            elif delay_s <= 0:
                await asyncio.sleep(0)  # behind schedule: still let answers in between sends
            sent_s = clock()
            lag_s = max(0.0, sent_s - intended_s)
            run.lag_s[index] = lag_s
            if lag_s > spec.late_after_s:
                r.late_sends += 1
            if len(run.inflight) + run.started >= spec.max_inflight:
                r.status[index] = RequestStatus.DROPPED
            elif try_start is not None and try_start(
                index, functools.partial(run.end, index, intended_s, sent_s)
            ):
                run.started += 1
            else:
                task = loop.create_task(run.one(index, intended_s, sent_s))
                run.inflight.add(task)
                task.add_done_callback(run.task_done)
            if on_progress is not None and (index % progress_every == 0 or index == total - 1):
                on_progress(index + 1, total)
        r.send_window_s = max(clock() - start_s, float(offsets[-1]))
        if run.inflight or run.started:
            run.none_left.clear()
            try:
                async with asyncio.timeout(spec.drain_s):
                    await run.none_left.wait()
            except TimeoutError:
                pass  # what is still running is abandoned below
    finally:
        run.closed = True  # requests started at once and still running stay abandoned
        leftovers = list(run.inflight)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
    end_s = clock()
    r.elapsed_s = end_s - start_s
    # Abandoned requests waited at least until now: record that lower bound, never drop it.
    for late in np.flatnonzero(r.status == RequestStatus.ABANDONED).tolist():
        r.latency_s[late] = max(0.0, end_s - (start_s + float(offsets[late])))
    await _fill_histograms(r, run.lag_s)
    return r


#: Values recorded into a histogram between two yields to the loop.
_FILL_SLICE = 4096


async def _fill_histograms(r: LoadResult, lag_s: npt.NDArray[np.float64]) -> None:
    """The run's histograms from its per-request arrays: every send's lag; the latency of
    every measured request that was sent (abandoned ones at their lower bound); the time
    from the actual send of those that ended; the latency of the answers.

    In slices, yielding between them: another run may be measuring on the same loop (the
    soak's recovery starts while its overload drains), and must not wait for this one.
    """
    measured = r.measured
    answered = measured & np.isin(r.status, (RequestStatus.OK, RequestStatus.PARTIAL))
    for histogram, values in (
        (r.lag, lag_s[~np.isnan(lag_s)]),
        (r.latency, r.latency_s[measured & ~np.isnan(r.latency_s)]),
        (r.service, r.service_s[measured & ~np.isnan(r.service_s)]),
        (r.answered, r.latency_s[answered]),
    ):
        for start in range(0, len(values), _FILL_SLICE):
            histogram.record_many_s(values[start : start + _FILL_SLICE])
            await asyncio.sleep(0)


# -- HTTP ----------------------------------------------------------------------------------


class HttpSession:
    """The generator's HTTP client: a bounded keep-alive connection pool, fixed extra headers
    and a per-request timeout; an async context manager.

    It is the aggregator's own :class:`aggregator.connection_pool.ConnectionPool` (HTTP/1.1 on
    asyncio protocols with the llhttp parser), not a general-purpose client: at several
    hundred requests per second a general-purpose client cost the generator about 0.4 of a
    core on the same two cores as the system it measures, and its loop lag was added to every
    latency it reported. A request over ``pool_size`` connections waits for one, and that wait
    counts in its latency.
    """

    def __init__(
        self, pool_size: int, timeout_s: float, headers: Mapping[str, str] | None = None
    ) -> None:
        if not 0 < timeout_s <= 3600:
            raise ValueError(f"timeout_s must be in (0, 3600], got {timeout_s}")
        self.pool = ConnectionPool(
            max_per_origin=pool_size, max_total=pool_size, keepalive_s=max(timeout_s, 30.0)
        )
        self.timeout_s = timeout_s
        self.headers = b"".join(
            f"{name}: {value}\r\n".encode("latin-1") for name, value in (headers or {}).items()
        )

    async def __aenter__(self) -> HttpSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.pool.aclose()

    async def get(self, origin: str, path: str) -> HttpReply:
        """``GET origin + path``: the reply (status, body, when it was complete on
        ``time.perf_counter``). Raises ``TimeoutError`` past the timeout and
        :class:`aggregator.errors.ShardError` when the exchange fails."""
        async with asyncio.timeout(self.timeout_s):
            reply = await self.pool.request(
                origin,
                b"GET",
                path,
                self.headers,
                None,
                max_body_bytes=_MAX_REPLY_BYTES,
                max_error_body_bytes=_MAX_ERROR_REPLY_BYTES,
            )
        return reply


class HttpSearchTarget:
    """Queries an aggregator's HTTP search endpoint over one :class:`HttpSession`.

    Each request is ``GET {url}?q=...&<params>`` with the query texts taken in turn. A 200
    body is read for ``completeness.coverage`` and ``partial``; extra shard requests are the
    sum over shards of ``attempts - 1``. A 503 whose error type is ``NoShardAnswered`` is an
    error with coverage 0; other 503s and 429 count as shed, 504 as timeout, any other status
    or transport failure as an error named by its status or exception type.
    """

    def __init__(
        self,
        session: HttpSession,
        url: str,
        texts: Sequence[str],
        params: Mapping[str, str] | None = None,
    ) -> None:
        if not texts:
            raise ValueError("need at least one query text")
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"url must look like http://host:port/path, got {url!r}")
        self.session = session
        self.url = url
        self.texts = tuple(texts)
        self.params = dict(params or {})
        self._origin = str(parsed.origin())
        # One request target per query text, encoded once.
        self._paths = tuple(
            str(URL.build(path=parsed.path or "/", query={"q": text, **self.params}))
            for text in self.texts
        )

    @staticmethod
    def open_session(
        pool_size: int = 256, timeout_s: float = 60.0, headers: Mapping[str, str] | None = None
    ) -> HttpSession:
        """A session with at most ``pool_size`` connections (a request over the bound waits
        for one; that wait counts in its latency) and a total per-request timeout."""
        return HttpSession(pool_size, timeout_s, headers)

    async def __call__(self, index: int) -> RequestResult:
        """Send request ``index`` and classify its answer (complete when its last byte was
        parsed, on ``time.perf_counter``: run it on :func:`run_load`'s default clock)."""
        try:
            reply = await self.session.get(self._origin, self._paths[index % len(self._paths)])
        except TimeoutError:
            return RequestResult(RequestStatus.TIMEOUT, reason="client timeout")
        except ShardError as exc:
            return RequestResult(RequestStatus.ERROR, reason=type(exc).__name__)
        return classify_http(reply.status, reply.body, reply.completed_at_s)

    def try_start(self, index: int, done: Callable[[RequestResult], None]) -> bool:
        """Send request ``index`` now over an idle connection, if the session has one (see
        :class:`StartsAtOnce`); ``done`` gets the same result :meth:`__call__` returns. Such
        a request is bounded by the run's drain, not by the session's timeout."""

        def on_reply(reply: HttpReply | None, exc: ShardError | None) -> None:
            if reply is None:
                done(RequestResult(RequestStatus.ERROR, reason=type(exc).__name__))
            else:
                done(classify_http(reply.status, reply.body, reply.completed_at_s))

        return self.session.pool.start_request(
            self._origin,
            b"GET",
            self._paths[index % len(self._paths)],
            self.session.headers,
            max_body_bytes=_MAX_REPLY_BYTES,
            max_error_body_bytes=_MAX_ERROR_REPLY_BYTES,
            on_reply=on_reply,
        )


def classify_http(status: int, body: bytes, completed_s: float | None = None) -> RequestResult:
    """A :class:`RequestResult` from an HTTP status and the aggregator's JSON body (and when
    the reply was complete, if known)."""
    if status == 503 and b"NoShardAnswered" in body and _error_type(body) == "NoShardAnswered":
        return RequestResult(
            RequestStatus.ERROR, coverage=0.0, reason="no shard answered", completed_s=completed_s
        )
    if status in (503, 429):
        return RequestResult(
            RequestStatus.SHED, reason=_SHED_REASONS.get(status), completed_s=completed_s
        )
    if status == 504:
        return RequestResult(RequestStatus.TIMEOUT, reason="HTTP 504", completed_s=completed_s)
    if status != 200:
        return RequestResult(RequestStatus.ERROR, reason=f"HTTP {status}", completed_s=completed_s)
    try:
        doc = orjson.loads(body)
        completeness = doc["completeness"]
        coverage = float(completeness["coverage"])
        partial = bool(doc.get("partial", coverage < 1.0))
        extra = sum(max(0, int(s.get("attempts", 1)) - 1) for s in doc.get("shards", ()))
        took = doc.get("took_ms")
        server_ms = float(took) if isinstance(took, int | float) else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return RequestResult(
            RequestStatus.ERROR, reason="malformed response", completed_s=completed_s
        )
    status_ = RequestStatus.PARTIAL if partial else RequestStatus.OK
    return RequestResult(
        status_,
        coverage=coverage,
        extra_requests=extra,
        server_ms=server_ms,
        completed_s=completed_s,
    )


def _error_type(body: bytes) -> str | None:
    try:
        doc = orjson.loads(body)
        kind = doc["error"]["type"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return kind if isinstance(kind, str) else None
