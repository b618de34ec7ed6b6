"""The tail-tolerant planner: replica selection, hedging, circuit breakers and retries together.

:class:`TailTolerantPlanner` is both halves of the policy. As a
:class:`~aggregator.plan.Planner` it decides, before any call, each shard's replica order
(selection policy, replicas with an open circuit left out) and hedge delay, and skips a shard
whose every replica is open (``skip_reason="circuit_open"``). As a
:class:`~aggregator.feedback.DispatchFeedback` it answers the dispatcher's questions while
calls are in flight (admission, the shared hedge and retry budget, backoff) and learns from
every replica request (latency, outcome). Give it to the coordinator as the planner; the
coordinator uses it as feedback too.

Pure: all state lives in the policy objects, which read the injected clock and random
generator; :meth:`TailTolerantPlanner.replica_states` exposes it as plain values.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from itertools import cycle, islice

from aggregator.breaker import BreakerConfig, CircuitBreaker
from aggregator.clock import Clock, LoopClock
from aggregator.cluster import Cluster
from aggregator.deadline import Deadline
from aggregator.feedback import AttemptKind, AttemptResult
from aggregator.hedging import BackupBudget, FixedHedgeDelay, HedgeDelay, PercentileHedgeDelay
from aggregator.plan import CIRCUIT_OPEN, GoodEnough, QueryPlan, ShardPlan
from aggregator.replica_selection import SELECTORS, ReplicaLoads, make_selector
from aggregator.retry import FullJitterBackoff, RetryConfig
from aggregator.types import Query

__all__ = ["MAX_ATTEMPTS", "ReplicaCounters", "TailConfig", "TailTolerantPlanner"]

#: Most requests one shard call may make (primary, hedges and retries), as in gRPC.
MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class TailConfig:
    """Settings of the tail-tolerance policies. Times in seconds, shares in [0, 1].

    ``selection``: ``p2c`` (power of two choices over outstanding x peak-EWMA latency),
    ``round_robin`` or ``random``. Hedging: after ``hedge_after_s`` if set, else after the
    shard's rolling ``hedge_percentile`` (``None`` for both: no hedging). ``backup_share``
    caps hedges and retries together at that share of primary requests (``backup_burst``
    tokens of slack). ``max_attempts`` bounds the requests of one shard call; with
    ``reuse_replicas`` a shard with fewer replicas than that cycles through them again (a
    backup to a replica already asked), otherwise each replica is asked at most once.
    """

    selection: str = "p2c"
    ewma_decay_s: float = 10.0
    hedge_after_s: float | None = None
    hedge_percentile: float | None = 95.0
    hedge_window_s: float = 30.0
    hedge_refresh_s: float = 3.0
    hedge_min_samples: int = 100
    hedge_min_delay_s: float = 0.0
    backup_share: float = 0.05
    backup_burst: float = 100.0
    max_attempts: int = 2
    reuse_replicas: bool = False
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    grace_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.selection not in SELECTORS:
            raise ValueError(
                f"unknown replica selection {self.selection!r}; choose from {', '.join(SELECTORS)}"
            )
        if self.hedge_after_s is not None and not 0 <= self.hedge_after_s < math.inf:
            raise ValueError(f"hedge_after_s must be finite and >= 0, got {self.hedge_after_s!r}")
        if self.hedge_percentile is not None and not 0 < self.hedge_percentile < 100:
            raise ValueError(f"hedge_percentile must be in (0, 100), got {self.hedge_percentile!r}")
        if not 0 <= self.backup_share <= 1:
            raise ValueError(f"backup_share must be in [0, 1], got {self.backup_share!r}")
        if isinstance(self.max_attempts, bool) or not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(
                f"max_attempts must be in 1..{MAX_ATTEMPTS}, got {self.max_attempts!r}"
            )
        if not 0 <= self.grace_fraction <= 1:
            raise ValueError(f"grace_fraction must be in [0, 1], got {self.grace_fraction!r}")

    @property
    def hedging(self) -> bool:
        """True when some hedge delay is configured."""
        return self.hedge_after_s is not None or self.hedge_percentile is not None


class ReplicaCounters:
    """Request counts of one replica since start."""

    __slots__ = ("errors", "hedges_sent", "hedges_won", "requests", "retries", "timeouts")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.timeouts = 0
        self.hedges_sent = 0
        self.hedges_won = 0
        self.retries = 0


class TailTolerantPlanner:
    """Plans replica order and hedge delay per shard, and steers calls while they run.

    ``clock`` is the coordinator's clock (default: the running loop's); ``rng`` draws replica
    choices and backoffs (default: a fresh, unseeded generator). See :class:`TailConfig`.
    """

    def __init__(
        self,
        config: TailConfig | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or TailConfig()
        self.clock: Clock = clock or LoopClock()
        rng = rng or random.Random()
        cfg = self.config
        self.loads = ReplicaLoads(self.clock, decay_s=cfg.ewma_decay_s)
        self.selector = make_selector(cfg.selection, self.loads, rng)
        self.hedge_delay: HedgeDelay | None
        if cfg.hedge_after_s is not None:
            self.hedge_delay = FixedHedgeDelay(cfg.hedge_after_s)
        elif cfg.hedge_percentile is not None:
            self.hedge_delay = PercentileHedgeDelay(
                self.clock,
                percentile=cfg.hedge_percentile,
                window_s=cfg.hedge_window_s,
                refresh_s=cfg.hedge_refresh_s,
                min_samples=cfg.hedge_min_samples,
                min_delay_s=cfg.hedge_min_delay_s,
            )
        else:
            self.hedge_delay = None
        self.budget = BackupBudget(cfg.backup_share, burst=cfg.backup_burst)
        self.backoff = FullJitterBackoff(cfg.retry, rng)
        self._breakers: dict[tuple[str, int], CircuitBreaker] = {}
        self._counters: dict[tuple[str, int], ReplicaCounters] = {}

    # -- Planner ----------------------------------------------------------------------------

    def plan(self, query: Query, deadline: Deadline, cluster: Cluster, now_s: float) -> QueryPlan:
        """Every shard: replicas ordered by the selector, open circuits left out, the hedge
        delay if hedging is on; a shard with every circuit open is skipped at once."""
        cfg = self.config
        shard_plans: list[ShardPlan] = []
        for shard in cluster.shards:
            candidates = [
                i
                for i in range(len(shard.replicas))
                if self.breaker(shard.name, i).allows_request()
            ]
            if not candidates:
                shard_plans.append(ShardPlan(shard.name, (), skip_reason=CIRCUIT_OPEN))
                continue
            ordered = self.selector.order(shard.name, candidates)
            if cfg.reuse_replicas:
                replicas = tuple(islice(cycle(ordered), cfg.max_attempts))
            else:
                replicas = ordered[: cfg.max_attempts]
            hedge_after_s = None
            if self.hedge_delay is not None and len(replicas) > 1:
                hedge_after_s = self.hedge_delay.delay_s(shard.name)
            shard_plans.append(ShardPlan(shard.name, replicas, hedge_after_s))
        good_enough = (
            None
            if query.min_coverage is None
            else GoodEnough(query.min_coverage, cfg.grace_fraction)
        )
        return QueryPlan(query, deadline, tuple(shard_plans), good_enough)

    # -- DispatchFeedback -------------------------------------------------------------------

    def admit(self, shard: str, replica: int, now_s: float) -> bool:
        """False while the replica's circuit is open (or its one probe is out)."""
        return self.breaker(shard, replica).allows_request()

    def on_attempt_start(self, shard: str, replica: int, kind: AttemptKind, now_s: float) -> None:
        """Count the request, mark it outstanding, feed the budget if it is a primary."""
        self.breaker(shard, replica).on_request()
        self.loads.on_start(shard, replica)
        counters = self.counters(shard, replica)
        counters.requests += 1
        if kind is AttemptKind.PRIMARY:
            self.budget.on_primary()
        elif kind is AttemptKind.HEDGE:
            counters.hedges_sent += 1
        else:
            counters.retries += 1

    def on_attempt_end(
        self,
        shard: str,
        replica: int,
        kind: AttemptKind,
        result: AttemptResult,
        latency_s: float,
        now_s: float,
    ) -> None:
        """Learn from one request: latency for the EWMA and hedge delay, verdict for the breaker.

        Fast failures say nothing about speed and are kept out of the latency figures (a
        broken replica must not look fast). Timeouts and cancellations are censored: the
        request took at least ``latency_s``, which still ranks correctly above the hedge delay.
        """
        breaker = self.breaker(shard, replica)
        counters = self.counters(shard, replica)
        if result is AttemptResult.OK:
            breaker.record_success()
            self.loads.on_end(shard, replica, latency_s)
        elif result is AttemptResult.CANCELLED:
            breaker.record_abandoned()
            self.loads.on_end(shard, replica, None)
            self._observe_lower_bound(shard, replica, latency_s)
        elif result is AttemptResult.TIMEOUT:
            counters.timeouts += 1
            breaker.record_failure()
            self.loads.on_end(shard, replica, latency_s)
        else:
            counters.errors += 1
            breaker.record_failure()
            self.loads.on_end(shard, replica, None)
        if self.hedge_delay is not None and result in (
            AttemptResult.OK,
            AttemptResult.TIMEOUT,
            AttemptResult.CANCELLED,
        ):
            self.hedge_delay.observe(shard, latency_s)

    def on_answer(self, shard: str, replica: int, kind: AttemptKind, now_s: float) -> None:
        """Count a hedge that answered first as won."""
        if kind is AttemptKind.HEDGE:
            self.counters(shard, replica).hedges_won += 1

    def try_backup(self, shard: str, kind: AttemptKind, now_s: float) -> bool:
        """Spend a budget token on a hedge or retry; retries also need retries enabled."""
        if kind is AttemptKind.RETRY and not self.config.retry.enabled:
            return False
        return self.budget.try_spend()

    def retry_backoff_s(self, shard: str, retry_number: int) -> float:
        """A full-jitter backoff for that retry."""
        return self.backoff.backoff_s(retry_number)

    # -- state ------------------------------------------------------------------------------

    def breaker(self, shard: str, replica: int) -> CircuitBreaker:
        """The circuit breaker of one replica (created closed on first use)."""
        key = (shard, replica)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(self.clock, self.config.breaker)
        return breaker

    def counters(self, shard: str, replica: int) -> ReplicaCounters:
        """Request counts of one replica (created at zero on first use)."""
        key = (shard, replica)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = ReplicaCounters()
        return counters

    def replica_states(self, cluster: Cluster | None = None) -> list[dict[str, object]]:
        """Per replica, as plain values for ``/shards`` and metrics.

        Keys: ``shard``, ``replica`` (index), ``label`` (``shard/index``), ``breaker``
        (closed / open / half_open), ``breaker_opened`` (times), ``ewma_latency_ms``,
        ``outstanding``, ``requests``, ``errors``, ``timeouts``, ``hedges_sent``,
        ``hedges_won``, ``retries``. With ``cluster``, every replica of it in order (seen or
        not); without, every replica seen so far.
        """
        if cluster is not None:
            keys = [(s.name, i) for s in cluster.shards for i in range(len(s.replicas))]
        else:
            keys = sorted(set(self._counters) | set(self._breakers))
        states: list[dict[str, object]] = []
        for shard, replica in keys:
            breaker = self.breaker(shard, replica)
            load = self.loads.get(shard, replica)
            counters = self.counters(shard, replica)
            states.append(
                {
                    "shard": shard,
                    "replica": replica,
                    "label": f"{shard}/{replica}",
                    "breaker": breaker.state.value,
                    "breaker_opened": breaker.opened,
                    "ewma_latency_ms": load.ewma_s * 1000.0,
                    "outstanding": load.outstanding,
                    "requests": counters.requests,
                    "errors": counters.errors,
                    "timeouts": counters.timeouts,
                    "hedges_sent": counters.hedges_sent,
                    "hedges_won": counters.hedges_won,
                    "retries": counters.retries,
                }
            )
        return states

    def budget_state(self) -> dict[str, object]:
        """The shared hedge and retry budget: share, tokens, primaries, backups, refusals."""
        budget = self.budget
        return {
            "share": budget.share,
            "burst": budget.burst,
            "tokens": budget.tokens,
            "primaries": budget.primaries,
            "backups": budget.backups,
            "refused": budget.refused,
            "extra_share": budget.extra_share(),
        }

    def hedge_delay_ms(self, shard: str) -> float | None:
        """The hedge delay a plan for ``shard`` would use now, in ms (``None``: no hedging)."""
        if self.hedge_delay is None:
            return None
        delay_s = self.hedge_delay.delay_s(shard)
        return None if delay_s is None else delay_s * 1000.0

    def _observe_lower_bound(self, shard: str, replica: int, latency_s: float) -> None:
        # A cancelled request lasted at least ``latency_s``: it may raise the peak EWMA (a
        # slow copy that lost a race is slow) but never lower it.
        load = self.loads.get(shard, replica)
        if latency_s > load.ewma_s:
            self.loads.observe(shard, replica, latency_s)
