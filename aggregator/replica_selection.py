"""Which replica of a shard gets a request: load bookkeeping and selection policies.

:class:`ReplicaLoads` keeps, per replica, the requests outstanding and a peak-EWMA of latency;
a selector orders a shard's candidate replicas, best first. The first replica in the order gets
the primary request, the next ones the backups (hedges and retries).

Pure: a selector reads only its own state, the loads and the injected clock and random
generator, so tests can drive it without I/O.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol

from aggregator.clock import Clock

__all__ = [
    "SELECTORS",
    "PowerOfTwoChoices",
    "RandomOrder",
    "ReplicaLoad",
    "ReplicaLoads",
    "ReplicaSelector",
    "RoundRobin",
    "make_selector",
]

#: Selection policy names accepted by :func:`make_selector`.
SELECTORS = ("p2c", "round_robin", "random")

ReplicaKey = tuple[str, int]


class ReplicaLoad:
    """One replica's load: requests outstanding and a peak-EWMA of latency in seconds."""

    __slots__ = ("ewma_s", "outstanding", "updated_at_s")

    def __init__(self, initial_latency_s: float = 0.0) -> None:
        self.outstanding = 0
        self.ewma_s = initial_latency_s
        self.updated_at_s: float | None = None

    def cost(self) -> float:
        """Expected wait for one more request: latency x (outstanding + 1).

        A replica never observed costs 0 x (outstanding + 1) = 0 while idle, so it gets tried
        once and measured.
        """
        return self.ewma_s * (self.outstanding + 1)


class ReplicaLoads:
    """Load of every replica, keyed by ``(shard name, replica index)``.

    The latency average is a *peak* EWMA (Finagle's and Linkerd's load balancers): a sample
    above the average replaces it at once, a sample below pulls it down with a weight that
    grows with the time since the last sample (``exp(-elapsed / decay_s)``). Rationale: a
    replica that turns slow must lose traffic within one request, while one that recovers
    wins it back gradually, so a single lucky answer does not herd every request onto it.
    """

    __slots__ = ("_clock", "_decay_s", "_initial_latency_s", "_loads")

    def __init__(
        self, clock: Clock, *, decay_s: float = 10.0, initial_latency_s: float = 0.0
    ) -> None:
        if not decay_s > 0:
            raise ValueError(f"EWMA decay must be > 0 s, got {decay_s!r}")
        if not initial_latency_s >= 0:
            raise ValueError(f"initial latency must be >= 0 s, got {initial_latency_s!r}")
        self._clock = clock
        self._decay_s = decay_s
        self._initial_latency_s = initial_latency_s
        self._loads: dict[ReplicaKey, ReplicaLoad] = {}

    def get(self, shard: str, replica: int) -> ReplicaLoad:
        """The load of one replica (created idle on first use)."""
        key = (shard, replica)
        load = self._loads.get(key)
        if load is None:
            load = self._loads[key] = ReplicaLoad(self._initial_latency_s)
        return load

    def on_start(self, shard: str, replica: int) -> None:
        """A request to the replica was sent."""
        self.get(shard, replica).outstanding += 1

    def on_end(self, shard: str, replica: int, latency_s: float | None) -> None:
        """A request ended; ``latency_s`` (if given) is folded into the peak EWMA.

        Pass ``None`` for a result that says nothing about speed (a fast failure: feeding it
        would make a broken replica look fast and draw traffic to it).
        """
        load = self.get(shard, replica)
        load.outstanding = max(0, load.outstanding - 1)
        if latency_s is not None:
            self.observe(shard, replica, latency_s)

    def observe(self, shard: str, replica: int, latency_s: float) -> None:
        """Fold one latency sample (seconds) into the replica's peak EWMA."""
        if not latency_s >= 0 or math.isinf(latency_s):
            return
        load = self.get(shard, replica)
        now_s = self._clock.now_s()
        if load.updated_at_s is None or latency_s > load.ewma_s:
            load.ewma_s = latency_s
        else:
            elapsed_s = max(0.0, now_s - load.updated_at_s)
            weight = math.exp(-elapsed_s / self._decay_s)
            load.ewma_s = load.ewma_s * weight + latency_s * (1.0 - weight)
        load.updated_at_s = now_s

    def cost(self, shard: str, replica: int) -> float:
        """The replica's current cost (see :meth:`ReplicaLoad.cost`)."""
        return self.get(shard, replica).cost()


class ReplicaSelector(Protocol):
    """Orders a shard's candidate replicas, best first."""

    def order(self, shard: str, candidates: Sequence[int]) -> tuple[int, ...]:
        """A permutation of ``candidates`` (non-empty, distinct replica indexes)."""
        ...


class PowerOfTwoChoices:
    """Pick two candidates at random, lead with the cheaper; the rest follow by cost.

    Rationale (Mitzenmacher's power of two choices, Envoy's least-request balancer, C3): always
    sending to the cheapest replica herds every coordinator onto it between two updates of the
    load figures; comparing just two random ones keeps nearly all of the benefit (the maximum
    load drops exponentially) and never herds. Backups then go to the cheapest of the others.
    """

    __slots__ = ("_loads", "_rng")

    def __init__(self, loads: ReplicaLoads, rng: random.Random) -> None:
        self._loads = loads
        self._rng = rng

    def order(self, shard: str, candidates: Sequence[int]) -> tuple[int, ...]:
        """The cheaper of two random candidates first, then the others by cost."""
        if len(candidates) <= 1:
            return tuple(candidates)
        a, b = self._rng.sample(list(candidates), 2)
        cost_a, cost_b = self._loads.cost(shard, a), self._loads.cost(shard, b)
        first = a if cost_a <= cost_b else b
        rest = sorted(
            (c for c in candidates if c != first), key=lambda c: (self._loads.cost(shard, c), c)
        )
        return (first, *rest)


class RoundRobin:
    """Each shard's candidates in rotation: the lead moves one place per plan."""

    __slots__ = ("_turns",)

    def __init__(self) -> None:
        self._turns: dict[str, int] = {}

    def order(self, shard: str, candidates: Sequence[int]) -> tuple[int, ...]:
        """``candidates`` rotated by how many plans this shard has had."""
        turn = self._turns.get(shard, 0)
        self._turns[shard] = turn + 1
        if not candidates:
            return ()
        start = turn % len(candidates)
        return tuple(candidates[start:]) + tuple(candidates[:start])


class RandomOrder:
    """A uniformly random order of the candidates."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def order(self, shard: str, candidates: Sequence[int]) -> tuple[int, ...]:
        """``candidates`` shuffled."""
        shuffled = list(candidates)
        self._rng.shuffle(shuffled)
        return tuple(shuffled)


def make_selector(name: str, loads: ReplicaLoads, rng: random.Random) -> ReplicaSelector:
    """The selector called ``name`` (one of :data:`SELECTORS`); ValueError otherwise."""
    if name == "p2c":
        return PowerOfTwoChoices(loads, rng)
    if name == "round_robin":
        return RoundRobin()
    if name == "random":
        return RandomOrder(rng)
    raise ValueError(f"unknown replica selection {name!r}; choose from {', '.join(SELECTORS)}")
