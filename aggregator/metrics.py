"""What the service measures: Prometheus metrics, recent per-shard latencies, event-loop lag.

Each service owns one :class:`ServiceMetrics` with its own ``CollectorRegistry`` (never the
process-global one), so several apps, or several tests, in one process never share or clash
over series. Label values are bounded: shard names come from the configuration, statuses and
reasons from enums, HTTP codes from the handful the service sends.

Exposed series (``GET /metrics``):

* ``aggregator_shard_latency_seconds{shard}``: histogram of every shard call that was made
  (answered, failed or given up at the deadline; skipped shards are not calls).
* ``aggregator_shard_outcomes_total{shard,status}``: shard calls by outcome.
* ``aggregator_query_latency_seconds``: histogram of answered queries, arrival to response.
* ``aggregator_http_responses_total{code}``: responses of ``/search`` by status code.
* ``aggregator_queries_in_flight`` / ``aggregator_queries_waiting``: admission state now.
* ``aggregator_queries_shed_total{reason}``: queries shed by admission control.
* ``aggregator_queries_cancelled_total``: queries abandoned by their client mid-flight.
* ``aggregator_event_loop_lag_seconds``: how late the loop woke a timer (histogram).

With a tail-tolerant planner (:class:`~aggregator.tail.TailTolerantPlanner`), read from its
own state at scrape time, per replica (``replica`` is the index within the shard):

* ``aggregator_replica_breaker_state{shard,replica,state}``: 1 for the breaker's state now.
* ``aggregator_replica_breaker_opened_total{shard,replica}``: times the breaker opened.
* ``aggregator_replica_ewma_latency_seconds{shard,replica}``: peak-EWMA latency.
* ``aggregator_replica_outstanding_requests{shard,replica}``: requests in flight now.
* ``aggregator_replica_requests_total{shard,replica}``; ``aggregator_replica_failures_total
  {shard,replica,kind}`` (``error`` / ``timeout``); ``aggregator_replica_hedges_sent_total``,
  ``aggregator_replica_hedges_won_total``, ``aggregator_replica_retries_total``
  ``{shard,replica}``.
* ``aggregator_hedge_delay_seconds{shard}``: the hedge delay a plan would use now (shards
  without one yet are left out).
* ``aggregator_backup_budget_tokens``, ``aggregator_backup_primaries_total``,
  ``aggregator_backup_requests_total`` (hedges and retries sent),
  ``aggregator_backup_refused_total``: the shared hedge and retry budget.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aggregator.admission import AdmissionQueue, ShedReason
from aggregator.breaker import BreakerState
from aggregator.cluster import Cluster
from aggregator.tail import TailTolerantPlanner
from aggregator.types import OutcomeStatus, ShardOutcome

__all__ = [
    "LATENCY_BUCKETS_S",
    "LOOP_LAG_BUCKETS_S",
    "RECENT_WINDOW",
    "LoopLagMonitor",
    "RecentLatencies",
    "ServiceMetrics",
]

#: Bucket bounds (seconds) of the latency histograms: sub-millisecond to the longest budget.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
)  # fmt: skip
#: Bucket bounds (seconds) of the event-loop lag histogram.
LOOP_LAG_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: Latencies kept per shard for the recent percentiles of ``GET /shards``.
RECENT_WINDOW = 1024
#: Percentiles reported by ``GET /shards``.
RECENT_PERCENTILES = (50.0, 90.0, 99.0)


class RecentLatencies:
    """The last ``window`` latencies of one shard, in a bounded ring, and their percentiles.

    A ring of the most recent calls (not a time window) so the memory is fixed and a shard
    that turned slow shows it after ``window`` calls at most.
    """

    __slots__ = ("_values_ms",)

    def __init__(self, window: int = RECENT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._values_ms: deque[float] = deque(maxlen=window)

    def record_ms(self, latency_ms: float) -> None:
        """Add one latency in milliseconds, dropping the oldest when full."""
        self._values_ms.append(latency_ms)

    def __len__(self) -> int:
        return len(self._values_ms)

    def percentiles_ms(self, percentiles: Sequence[float] = RECENT_PERCENTILES) -> list[float]:
        """The given percentiles (0..100) in ms, nearest-rank; empty list when nothing yet."""
        if not self._values_ms:
            return []
        values = np.fromiter(self._values_ms, dtype=np.float64, count=len(self._values_ms))
        return [float(v) for v in np.percentile(values, percentiles, method="inverted_cdf")]


class _AdmissionCollector(Collector):
    """Reads admission control's own counters at scrape time (no double bookkeeping)."""

    def __init__(self, queue: AdmissionQueue) -> None:
        self._queue = queue

    def collect(self) -> Iterable[Metric]:
        shed = CounterMetricFamily(
            "aggregator_queries_shed",
            "Queries shed by admission control, by reason.",
            labels=["reason"],
        )
        for reason in ShedReason:
            shed.add_metric([reason.value], self._queue.shed_total[reason])
        admitted = CounterMetricFamily(
            "aggregator_queries_admitted", "Queries admitted by admission control."
        )
        admitted.add_metric([], self._queue.admitted_total)
        limit = GaugeMetricFamily(
            "aggregator_admission_limit",
            "Queries allowed in flight now (lowered below the maximum while the loop lags).",
        )
        limit.add_metric([], self._queue.limit)
        return [shed, admitted, limit]


class _TailCollector(Collector):
    """Reads the tail-tolerance policies' own state at scrape time (no double bookkeeping)."""

    def __init__(self, tail: TailTolerantPlanner, cluster: Cluster | None) -> None:
        self._tail = tail
        self._cluster = cluster

    def collect(self) -> Iterable[Metric]:
        labels = ["shard", "replica"]
        state = GaugeMetricFamily(
            "aggregator_replica_breaker_state",
            "Circuit breaker state of each replica (1 for the current state).",
            labels=[*labels, "state"],
        )
        opened = CounterMetricFamily(
            "aggregator_replica_breaker_opened",
            "Times each replica's breaker opened.",
            labels=labels,
        )
        ewma = GaugeMetricFamily(
            "aggregator_replica_ewma_latency_seconds",
            "Peak-EWMA latency of each replica.",
            labels=labels,
        )
        outstanding = GaugeMetricFamily(
            "aggregator_replica_outstanding_requests",
            "Requests in flight to each replica.",
            labels=labels,
        )
        requests = CounterMetricFamily(
            "aggregator_replica_requests", "Requests sent to each replica.", labels=labels
        )
        failures = CounterMetricFamily(
            "aggregator_replica_failures",
            "Failed requests to each replica, by kind (error, timeout).",
            labels=[*labels, "kind"],
        )
        hedges_sent = CounterMetricFamily(
            "aggregator_replica_hedges_sent", "Hedge copies sent to each replica.", labels=labels
        )
        hedges_won = CounterMetricFamily(
            "aggregator_replica_hedges_won",
            "Hedge copies to each replica that answered first.",
            labels=labels,
        )
        retries = CounterMetricFamily(
            "aggregator_replica_retries", "Retries sent to each replica.", labels=labels
        )
        for row in self._tail.replica_states(self._cluster):
            key = [str(row["shard"]), str(row["replica"])]
            for breaker_state in BreakerState:
                current = 1.0 if row["breaker"] == breaker_state.value else 0.0
                state.add_metric([*key, breaker_state.value], current)
            opened.add_metric(key, _number(row["breaker_opened"]))
            ewma.add_metric(key, _number(row["ewma_latency_ms"]) / 1000.0)
            outstanding.add_metric(key, _number(row["outstanding"]))
            requests.add_metric(key, _number(row["requests"]))
            failures.add_metric([*key, "error"], _number(row["errors"]))
            failures.add_metric([*key, "timeout"], _number(row["timeouts"]))
            hedges_sent.add_metric(key, _number(row["hedges_sent"]))
            hedges_won.add_metric(key, _number(row["hedges_won"]))
            retries.add_metric(key, _number(row["retries"]))
        delay = GaugeMetricFamily(
            "aggregator_hedge_delay_seconds",
            "The hedge delay a plan for each shard would use now.",
            labels=["shard"],
        )
        names = self._cluster.names() if self._cluster is not None else ()
        for name in names:
            delay_ms = self._tail.hedge_delay_ms(name)
            if delay_ms is not None:
                delay.add_metric([name], delay_ms / 1000.0)
        budget = self._tail.budget_state()
        tokens = GaugeMetricFamily(
            "aggregator_backup_budget_tokens", "Tokens left in the hedge and retry budget."
        )
        tokens.add_metric([], _number(budget["tokens"]))
        primaries = CounterMetricFamily(
            "aggregator_backup_primaries", "Primary requests that fed the hedge and retry budget."
        )
        primaries.add_metric([], _number(budget["primaries"]))
        backups = CounterMetricFamily(
            "aggregator_backup_requests", "Backup requests (hedges and retries) sent."
        )
        backups.add_metric([], _number(budget["backups"]))
        refused = CounterMetricFamily(
            "aggregator_backup_refused", "Backup requests the budget refused."
        )
        refused.add_metric([], _number(budget["refused"]))
        return [
            state,
            opened,
            ewma,
            outstanding,
            requests,
            failures,
            hedges_sent,
            hedges_won,
            retries,
            delay,
            tokens,
            primaries,
            backups,
            refused,
        ]


#: Per-replica figures ``GET /shards`` copies from the planner's state as they are.
_REPLICA_COUNTS = (
    "outstanding", "requests", "errors", "timeouts", "hedges_sent", "hedges_won", "retries",
)  # fmt: skip


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class ServiceMetrics:
    """Every metric of one service instance.

    ``shards`` are the shard names (fixed label values); ``admission`` (optional) is read at
    scrape time for in-flight, waiting and shed figures; ``shard_urls`` are shown by
    :meth:`shard_summaries`. ``tail`` (optional) is the tail-tolerant planner, read at scrape
    time for per-replica series, with ``cluster`` naming every replica (and its URL).
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        admission: AdmissionQueue | None = None,
        shard_urls: dict[str, str] | None = None,
        window: int = RECENT_WINDOW,
        tail: TailTolerantPlanner | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tail = tail
        self.cluster = cluster
        self.shard_names = tuple(shards)
        self.shard_urls = dict(shard_urls or {})
        self._recent = {name: RecentLatencies(window) for name in self.shard_names}
        self._outcome_counts: dict[str, dict[str, int]] = {
            name: dict.fromkeys((s.value for s in OutcomeStatus), 0) for name in self.shard_names
        }
        r = self.registry
        self.shard_latency = Histogram(
            "aggregator_shard_latency_seconds",
            "Latency of shard calls, from dispatch to answer or give-up.",
            ["shard"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.shard_outcomes = Counter(
            "aggregator_shard_outcomes", "Shard calls by outcome.", ["shard", "status"], registry=r
        )
        self.query_latency = Histogram(
            "aggregator_query_latency_seconds",
            "Latency of answered queries, from arrival to response.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.http_responses = Counter(
            "aggregator_http_responses",
            "Responses of /search by status code.",
            ["code"],
            registry=r,
        )
        self.queries_cancelled = Counter(
            "aggregator_queries_cancelled",
            "Queries abandoned by their client before the answer.",
            registry=r,
        )
        self.loop_lag = Histogram(
            "aggregator_event_loop_lag_seconds",
            "How late the event loop woke a periodic timer.",
            buckets=LOOP_LAG_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(
            "aggregator_queries_in_flight", "Queries holding an admission slot.", registry=r
        )
        self.waiting = Gauge(
            "aggregator_queries_waiting", "Queries waiting for an admission slot.", registry=r
        )
        self.max_loop_lag_s = 0.0
        self.admission = admission
        if admission is not None:
            self.in_flight.set_function(lambda: admission.in_flight)
            self.waiting.set_function(lambda: admission.waiting)
            r.register(_AdmissionCollector(admission))
        if tail is not None:
            r.register(_TailCollector(tail, cluster))
        # Every series exists from the start, at zero; the children are looked up once here,
        # not per query (a label lookup costs more than the increment it leads to).
        self._latency_child = {name: self.shard_latency.labels(name) for name in self.shard_names}
        self._outcome_child = {
            (name, status): self.shard_outcomes.labels(name, status.value)
            for name in self.shard_names
            for status in OutcomeStatus
        }
        self._response_child: dict[int, Any] = {}

    # -- recording --------------------------------------------------------------------------

    def observe_outcomes(self, outcomes: Iterable[ShardOutcome]) -> None:
        """Record each shard's outcome of one query (unknown shard names are ignored)."""
        for outcome in outcomes:
            name = outcome.shard
            counts = self._outcome_counts.get(name)
            if counts is None:
                continue
            status = outcome.status
            counts[status.value] += 1
            self._outcome_child[name, status].inc()
            if status is not OutcomeStatus.SKIPPED:
                self._latency_child[name].observe(outcome.latency_ms / 1000.0)
                self._recent[name].record_ms(outcome.latency_ms)

    def observe_response(self, code: int, latency_s: float | None = None) -> None:
        """Count one ``/search`` response; ``latency_s`` for answered queries."""
        child = self._response_child.get(code)
        if child is None:
            child = self._response_child[code] = self.http_responses.labels(str(code))
        child.inc()
        if latency_s is not None:
            self.query_latency.observe(latency_s)

    def observe_loop_lag(self, lag_s: float) -> None:
        """Record one event-loop lag sample in seconds."""
        self.loop_lag.observe(lag_s)
        self.max_loop_lag_s = max(self.max_loop_lag_s, lag_s)

    # -- reading ----------------------------------------------------------------------------

    def shard_summaries(self) -> list[dict[str, Any]]:
        """Per shard: name, url, recent latency percentiles (ms) and outcome counts.

        With a tail-tolerant planner also ``hedge_delay_ms`` and ``replicas``: per replica its
        index, label, url, breaker state, times opened, EWMA latency (ms), outstanding
        requests, and counts of requests, errors, timeouts, hedges sent and won, retries.
        """
        replicas = self._replica_summaries()
        out: list[dict[str, Any]] = []
        for name in self.shard_names:
            recent = self._recent[name]
            p50, p90, p99 = recent.percentiles_ms() or (None, None, None)
            summary: dict[str, Any] = {
                "name": name,
                "url": self.shard_urls.get(name),
                "recent": {
                    "calls": len(recent),
                    "p50_ms": _round(p50),
                    "p90_ms": _round(p90),
                    "p99_ms": _round(p99),
                },
                "outcomes": dict(self._outcome_counts[name]),
            }
            if self.tail is not None:
                summary["hedge_delay_ms"] = _round(self.tail.hedge_delay_ms(name))
                summary["replicas"] = replicas.get(name, [])
            out.append(summary)
        return out

    def budget_summary(self) -> dict[str, Any] | None:
        """The shared hedge and retry budget (``None`` without a tail-tolerant planner)."""
        if self.tail is None:
            return None
        budget = self.tail.budget_state()
        return {k: _round(v) if isinstance(v, float) else v for k, v in budget.items()}

    def _replica_summaries(self) -> dict[str, list[dict[str, Any]]]:
        if self.tail is None:
            return {}
        urls: dict[tuple[str, int], str | None] = {}
        if self.cluster is not None:
            for shard_of in self.cluster.shards:
                for index, backend in enumerate(shard_of.replicas):
                    url = getattr(backend, "url", None)
                    urls[shard_of.name, index] = str(url) if url else None
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in self.tail.replica_states(self.cluster):
            shard, index = str(row["shard"]), int(_number(row["replica"]))
            entry: dict[str, Any] = {
                "index": index,
                "label": row["label"],
                "url": urls.get((shard, index)),
                "breaker": row["breaker"],
                "breaker_opened": row["breaker_opened"],
                "ewma_latency_ms": _round(_number(row["ewma_latency_ms"])),
            }
            for key in _REPLICA_COUNTS:
                entry[key] = row[key]
            grouped.setdefault(shard, []).append(entry)
        return grouped


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class LoopLagMonitor:
    """Measures the event loop: sleeps ``interval_s``, records how late it woke and how busy
    the loop's thread was meanwhile.

    A loop busy with CPU work (or blocked by a synchronous call) wakes timers late; the
    lateness is what every query waiting on the loop pays too. The busy share is the loop
    thread's CPU time over the wall time of the interval (``time.thread_time`` over
    ``time.perf_counter``): unlike the lag, it is exact even where timers fire on whole
    milliseconds (uvloop). ``record(lag_s, busy_share)`` gets each sample. Run :meth:`run` as
    a task owned by the app's lifecycle; it ends only when cancelled.
    """

    __slots__ = ("interval_s", "record", "samples")

    def __init__(self, record: Callable[[float, float], None], interval_s: float = 0.1) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.record = record
        self.interval_s = interval_s
        self.samples = 0

    async def run(self) -> None:
        """Sample forever (until cancelled)."""
        loop = asyncio.get_running_loop()
        while True:
            started_s = loop.time()
            wall_s, cpu_s = time.perf_counter(), time.thread_time()
            await asyncio.sleep(self.interval_s)
            lag_s = max(0.0, loop.time() - started_s - self.interval_s)
            spent_wall_s = time.perf_counter() - wall_s
            busy = (time.thread_time() - cpu_s) / spent_wall_s if spent_wall_s > 0 else 0.0
            self.record(lag_s, min(1.0, max(0.0, busy)))
            self.samples += 1
