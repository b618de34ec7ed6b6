"""Simulated shards: seeded latency, failures and true top-k hits, with no I/O.

A :class:`Behaviour` says how a shard misbehaves: a latency model (:mod:`shards.latency`)
plus an error probability, a hang probability and windows of degraded latency. Its compact
text form joins clauses with ``;``, the latency model first::

    lognormal:median=8ms,sigma=0.6;error=0.01;hang=0.001;degrade=2s-5s*10

``error=P``
    with probability P the call fails with :class:`aggregator.errors.ShardError` once its
    latency has elapsed (a failing shard still takes time to say so).
``hang=P``
    with probability P the call never answers, ignoring its deadline on purpose (a stuck
    shard); only cancellation ends it.
``degrade=START-END*FACTOR``
    calls that start between START and END (durations on the shard's clock, counted from
    the shard's creation; END may be left out for "from START on") take FACTOR times their
    latency. The clause may repeat; overlapping factors multiply.

The latency clause may be left out (``error=1`` answers at once, failing). Parsing raises
:class:`aggregator.errors.InvalidSpec`; ``parse_behaviour(b.spec) == b``.

Every draw is seeded: the same seed, shard name, replica label and query text give the same
latency, the same faults and the same hits (:class:`SimulatedShard`). :class:`Delayed` layers
a behaviour onto any other backend, e.g. a real BM25 shard.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from aggregator.backend import ShardBackend
from aggregator.clock import Clock, LoopClock
from aggregator.deadline import Deadline
from aggregator.errors import ConfigError, InvalidSpec, ShardError, ShardTimeout
from aggregator.types import Hit, Query, ShardReply
from shards.latency import (
    MAX_LATENCY_S,
    Constant,
    LatencyModel,
    format_duration,
    format_number,
    parse_duration_s,
    parse_latency,
)

__all__ = [
    "MAX_DOCS_PER_SHARD",
    "MAX_SIM_SHARDS",
    "TOP_K_CACHE_SIZE",
    "Behaviour",
    "DegradeWindow",
    "Delayed",
    "Draw",
    "SimulatedShard",
    "as_behaviour",
    "draw_call",
    "parse_behaviour",
    "simulated_cluster",
    "true_top_k",
]

#: Most documents one simulated shard may hold.
MAX_DOCS_PER_SHARD = 10_000_000
#: Most shards :func:`simulated_cluster` builds.
MAX_SIM_SHARDS = 4096
#: Answers each :class:`SimulatedShard` memoises (per shard).
TOP_K_CACHE_SIZE = 256
_MAX_FACTOR = 1e6
#: The latency of a behaviour that names none: answer at once.
_INSTANT = Constant(0.0)


# -- behaviour --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DegradeWindow:
    """Latency times ``factor`` for calls starting in ``[start_s, end_s)`` after creation.

    ``end_s`` may be ``math.inf`` (degraded from ``start_s`` on).
    """

    start_s: float
    end_s: float
    factor: float

    def __post_init__(self) -> None:
        if not 0 <= self.start_s <= MAX_LATENCY_S:
            raise InvalidSpec(f"degrade start must be in [0, {MAX_LATENCY_S:g}] s")
        if math.isnan(self.end_s) or self.end_s <= self.start_s:
            raise InvalidSpec(
                f"degrade window must end after it starts, got {self.start_s!r}-{self.end_s!r} s"
            )
        if math.isnan(self.factor) or not 0 < self.factor <= _MAX_FACTOR:
            raise InvalidSpec(
                f"degrade factor must be in (0, {_MAX_FACTOR:g}], got {self.factor!r}"
            )

    @property
    def spec(self) -> str:
        """``degrade=START-END*FACTOR`` (``END`` left out when unbounded)."""
        end = "" if math.isinf(self.end_s) else format_duration(self.end_s)
        return f"degrade={format_duration(self.start_s)}-{end}*{format_number(self.factor)}"

    def covers(self, elapsed_s: float) -> bool:
        """True when a call starting ``elapsed_s`` after creation is degraded."""
        return self.start_s <= elapsed_s < self.end_s


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a simulated shard behaves: latency model, fault probabilities, degraded windows.

    ``error_p`` and ``hang_p`` are probabilities in [0, 1], drawn independently per call
    (a hang wins over an error).
    """

    latency: LatencyModel = _INSTANT
    error_p: float = 0.0
    hang_p: float = 0.0
    degrade: tuple[DegradeWindow, ...] = ()

    def __post_init__(self) -> None:
        for what, p in (("error", self.error_p), ("hang", self.hang_p)):
            if isinstance(p, bool) or math.isnan(p) or not 0 <= p <= 1:
                raise InvalidSpec(f"{what} probability must be in [0, 1], got {p!r}")

    @property
    def spec(self) -> str:
        """The compact text form (see the module docstring)."""
        clauses = [self.latency.spec]
        if self.error_p:
            clauses.append(f"error={format_number(self.error_p)}")
        if self.hang_p:
            clauses.append(f"hang={format_number(self.hang_p)}")
        clauses.extend(window.spec for window in self.degrade)
        return ";".join(clauses)

    @property
    def is_random(self) -> bool:
        """False when every call behaves the same (constant latency, no faults)."""
        return bool(self.error_p or self.hang_p or not isinstance(self.latency, Constant))

    def factor_at(self, elapsed_s: float) -> float:
        """The latency multiplier for a call starting ``elapsed_s`` after creation."""
        factor = 1.0
        for window in self.degrade:
            if window.covers(elapsed_s):
                factor *= window.factor
        return factor


_FAULT_KEYS = ("error", "hang", "degrade")


def parse_behaviour(text: str) -> Behaviour:
    """The behaviour described by ``text`` (see the module docstring for the form).

    Raises :class:`InvalidSpec` with a one-line message naming the bad clause.
    """
    if not isinstance(text, str):
        raise InvalidSpec(f"a shard behaviour spec must be text, got {type(text).__name__}")
    clauses = [c.strip() for c in text.split(";")]
    first_key = clauses[0].partition("=")[0].strip().lower()
    latency: LatencyModel = _INSTANT
    if first_key not in _FAULT_KEYS:
        latency = parse_latency(clauses.pop(0))
    probabilities: dict[str, float] = {}
    windows: list[DegradeWindow] = []
    try:
        for clause in clauses:
            key, eq, value = clause.partition("=")
            key = key.strip().lower()
            if not eq or key not in _FAULT_KEYS:
                raise InvalidSpec(
                    f"unknown clause {clause!r}; after the latency model come "
                    f"error=P, hang=P and degrade=START-END*FACTOR"
                )
            if key == "degrade":
                windows.append(_parse_window(value))
                continue
            if key in probabilities:
                raise InvalidSpec(f"{key}= is given twice")
            probabilities[key] = _parse_probability(key, value)
        return Behaviour(
            latency,
            error_p=probabilities.get("error", 0.0),
            hang_p=probabilities.get("hang", 0.0),
            degrade=tuple(windows),
        )
    except InvalidSpec as exc:
        raise InvalidSpec(f"invalid shard behaviour {text.strip()!r}: {exc}") from None


def _parse_probability(key: str, value: str) -> float:
    try:
        p = float(value)
    except ValueError:
        raise InvalidSpec(f"{key} probability must be a number, got {value.strip()!r}") from None
    if math.isnan(p) or not 0 <= p <= 1:
        raise InvalidSpec(f"{key} probability must be in [0, 1], got {value.strip()!r}")
    return p


def _parse_window(value: str) -> DegradeWindow:
    window, star, factor_text = value.rpartition("*")
    if not star:
        raise InvalidSpec(f"degrade needs START-END*FACTOR, e.g. 2s-5s*10, got {value.strip()!r}")
    try:
        factor = float(factor_text)
    except ValueError:
        raise InvalidSpec(f"degrade factor must be a number, got {factor_text.strip()!r}") from None
    # A duration may itself hold a "-" (an exponent such as 1e-05s), so try every "-" as
    # the separator and take the first that leaves two valid durations.
    positions = [i for i, ch in enumerate(window) if ch == "-"]
    problem = f"degrade window {window.strip()!r} is not START-END"
    for i in positions:
        start_text, end_text = window[:i], window[i + 1 :]
        try:
            start_s = parse_duration_s(start_text, what="degrade start")
            end_s = (
                math.inf if not end_text.strip() else parse_duration_s(end_text, what="degrade end")
            )
        except InvalidSpec as exc:
            problem = str(exc)
            continue
        return DegradeWindow(start_s, end_s, factor)
    raise InvalidSpec(problem)


def as_behaviour(value: Behaviour | LatencyModel | str) -> Behaviour:
    """``value`` as a :class:`Behaviour`: parsed if text, wrapped if a bare latency model."""
    if isinstance(value, Behaviour):
        return value
    if isinstance(value, str):
        return parse_behaviour(value)
    return Behaviour(value)


# -- seeded draws -----------------------------------------------------------------------------


def _hash64(*parts: str | int) -> int:
    """A stable 64-bit hash of ``parts`` (length-prefixed, so no two tuples collide by
    concatenation)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        data = str(part).encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return int.from_bytes(h.digest(), "little")


@dataclass(frozen=True, slots=True)
class Draw:
    """What one call will do: hang, fail after its latency, or answer after it.

    ``latency_s`` is before any degradation factor.
    """

    latency_s: float
    error: bool = False
    hang: bool = False


def draw_call(
    behaviour: Behaviour, *, seed: int, shard: str, replica: str, text: str, call_index: int
) -> Draw:
    """The seeded draw for one call: a pure function of its arguments.

    The draws come from one :class:`random.Random` seeded by a blake2b hash of (seed, shard,
    replica, query text, call index), always in the order hang, error, latency.
    """
    if not behaviour.is_random:
        return Draw(behaviour.latency.sample_s(_NO_RNG))
    rng = random.Random(_hash64(seed, shard, replica, text, call_index))
    hang = rng.random() < behaviour.hang_p
    error = rng.random() < behaviour.error_p
    return Draw(behaviour.latency.sample_s(rng), error=error, hang=hang)


_NO_RNG = random.Random(0)  # only handed to Constant, which never reads it


class _Injector:
    """Applies a behaviour to one call: hangs, sleeps within the deadline, or fails."""

    __slots__ = ("_born_s", "_calls", "behaviour", "clock", "replica", "seed", "shard", "vary")

    def __init__(
        self,
        behaviour: Behaviour,
        *,
        seed: int,
        shard: str,
        replica: str,
        clock: Clock | None,
        vary_by_call: bool,
    ) -> None:
        self.behaviour = behaviour
        self.seed = seed
        self.shard = shard
        self.replica = replica
        self.clock: Clock = clock or LoopClock()
        self.vary = vary_by_call
        self._calls = 0
        self._born_s: float | None = None
        if clock is not None:
            self._born_s = clock.now_s()
        else:
            try:
                self._born_s = asyncio.get_running_loop().time()
            except RuntimeError:  # built outside a loop: the clock starts at the first call
                self._born_s = None

    def elapsed_s(self, now_s: float) -> float:
        """Seconds since creation (or since the first call, if built outside a loop)."""
        if self._born_s is None:
            self._born_s = now_s
        return now_s - self._born_s

    def draw(self, text: str) -> Draw:
        index = self._calls if self.vary else 0
        self._calls += 1
        return draw_call(
            self.behaviour,
            seed=self.seed,
            shard=self.shard,
            replica=self.replica,
            text=text,
            call_index=index,
        )

    async def apply(self, query: Query, deadline: Deadline) -> float:
        """Spend the call's latency; return it in seconds.

        Raises :class:`ShardTimeout` at the deadline if the latency would overrun it (the
        shard stops work when its budget is spent), :class:`ShardError` for a drawn error;
        never returns for a drawn hang. A zero latency does not touch the event loop.
        """
        now_s = self.clock.now_s()
        draw = self.draw(query.text)
        if draw.hang:
            # A stuck shard: it ignores its deadline on purpose; only cancellation ends it.
            await asyncio.get_running_loop().create_future()
        latency_s = draw.latency_s
        if self.behaviour.degrade:
            latency_s *= self.behaviour.factor_at(self.elapsed_s(now_s))
        latency_s = min(latency_s, MAX_LATENCY_S)
        remaining_s = deadline.remaining_s(now_s)
        if latency_s > remaining_s:
            if remaining_s > 0:
                await asyncio.sleep(remaining_s)
            raise ShardTimeout(
                f"budget spent: needed {latency_s * 1e3:.3f} ms, had {remaining_s * 1e3:.3f} ms"
            )
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        if draw.error:
            raise ShardError("simulated failure")
        return latency_s


# -- true top-k -------------------------------------------------------------------------------

# splitmix64's finaliser: a bijection on 64-bit words whose output bits each depend on every
# input bit, so "key xor query-hash" gives independent-looking uniform scores per document.
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_GOLDEN = 0x9E3779B97F4A7C15
_TO_UNIT = 2.0**-53


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def _doc_keys(seed: int, shard: str, doc_count: int) -> npt.NDArray[np.uint64]:
    base = np.uint64(_hash64(seed, "docs", shard))
    step = np.uint64(_GOLDEN)
    return _mix(np.arange(doc_count, dtype=np.uint64) * step + base)


def _scores(keys: npt.NDArray[np.uint64], seed: int, text: str) -> npt.NDArray[np.float64]:
    query_key = np.uint64(_hash64(seed, "query", text))
    bits = _mix(keys ^ query_key) >> _S11
    return bits.astype(np.float64) * _TO_UNIT


def _top_k_from_keys(
    keys: npt.NDArray[np.uint64], seed: int, shard: str, text: str, k: int
) -> tuple[Hit, ...]:
    n = len(keys)
    if n == 0 or k <= 0:
        return ()
    scores = _scores(keys, seed, text)
    if k < n:
        # argpartition finds the k best in O(n); only those k are then sorted.
        picked = np.argpartition(scores, n - k)[n - k :]
    else:
        picked = np.arange(n)
    # Best first; equal scores (rare: 53-bit scores) fall back to the lower document index.
    order = picked[np.lexsort((picked, -scores[picked]))]
    return tuple(Hit(f"{shard}-{i}", float(scores[i]), shard) for i in order.tolist())


def true_top_k(shard: str, doc_count: int, text: str, k: int, *, seed: int) -> tuple[Hit, ...]:
    """The ``k`` best hits of a simulated shard for ``text``, best first; no I/O, no async.

    Document ``i`` of shard ``shard`` has id ``"{shard}-{i}"`` and a score in [0, 1) that is a
    pure function of (seed, shard, i, text). The same value :class:`SimulatedShard` returns.
    """
    if not 0 <= doc_count <= MAX_DOCS_PER_SHARD:
        raise ConfigError(f"doc_count must be in 0..{MAX_DOCS_PER_SHARD}, got {doc_count!r}")
    return _top_k_from_keys(_doc_keys(seed, shard, doc_count), seed, shard, text, k)


# -- backends ---------------------------------------------------------------------------------


class SimulatedShard:
    """A shard of ``doc_count`` synthetic documents with a seeded :class:`Behaviour`.

    It returns its true top-k (:func:`true_top_k`) after the drawn latency, honours its
    deadline (sleeps to it, then raises :class:`ShardTimeout`), fails or hangs as drawn.
    ``behaviour`` may be a :class:`Behaviour`, a latency model or spec text.

    ``clock`` is where time is read (the deadline's clock and the degradation window);
    default the running loop's. ``replica`` labels a copy of the shard: replicas share
    name and documents but draw their latencies independently. With ``vary_by_call`` each
    call's draw also depends on how many calls the shard has served, so repeating one query
    explores the distribution (reproducible for a fixed call order); by default the same
    query always gets the same latency.
    """

    __slots__ = ("_cache", "_injector", "_keys", "doc_count", "name", "seed")

    def __init__(
        self,
        name: str,
        doc_count: int,
        behaviour: Behaviour | LatencyModel | str = Behaviour(),
        *,
        seed: int = 0,
        clock: Clock | None = None,
        replica: str = "",
        vary_by_call: bool = False,
    ) -> None:
        if not name:
            raise ConfigError("a simulated shard needs a non-empty name")
        if isinstance(doc_count, bool) or not 0 <= doc_count <= MAX_DOCS_PER_SHARD:
            raise ConfigError(f"doc_count must be in 0..{MAX_DOCS_PER_SHARD}, got {doc_count!r}")
        self.name = name
        self.doc_count = doc_count
        self.seed = seed
        self._keys = _doc_keys(seed, name, doc_count)
        self._cache: OrderedDict[tuple[str, int], tuple[Hit, ...]] = OrderedDict()
        self._injector = _Injector(
            as_behaviour(behaviour),
            seed=seed,
            shard=name,
            replica=replica,
            clock=clock,
            vary_by_call=vary_by_call,
        )

    def __repr__(self) -> str:
        return (
            f"SimulatedShard({self.name!r}, {self.doc_count}, {self.behaviour.spec!r}, "
            f"seed={self.seed})"
        )

    @property
    def behaviour(self) -> Behaviour:
        """How this shard behaves."""
        return self._injector.behaviour

    def top_k(self, text: str, k: int) -> tuple[Hit, ...]:
        """This shard's true top ``k`` for ``text`` (what :meth:`search` answers).

        Answers are a pure function of the query, so the last :data:`TOP_K_CACHE_SIZE` are
        memoised (least recently used evicted): a repeated query costs a dict lookup.
        """
        key = (text, k)
        cache = self._cache
        hits = cache.get(key)
        if hits is not None:
            cache.move_to_end(key)
            return hits
        hits = _top_k_from_keys(self._keys, self.seed, self.name, text, k)
        cache[key] = hits
        if len(cache) > TOP_K_CACHE_SIZE:
            cache.popitem(last=False)
        return hits

    def draw(self, text: str, call_index: int = 0) -> Draw:
        """The draw a call for ``text`` gets (``call_index`` matters with ``vary_by_call``)."""
        injector = self._injector
        return draw_call(
            injector.behaviour,
            seed=self.seed,
            shard=self.name,
            replica=injector.replica,
            text=text,
            call_index=call_index,
        )

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        """The true top ``query.k`` after the drawn latency.

        Raises :class:`ShardTimeout` at ``deadline`` when the latency would overrun it,
        :class:`ShardError` when an error is drawn; a drawn hang never returns.
        """
        latency_s = await self._injector.apply(query, deadline)
        hits = self.top_k(query.text, query.k)
        return ShardReply(self.name, self.doc_count, hits, took_ms=latency_s * 1e3)


class Delayed:
    """Any backend with a simulated behaviour in front of it.

    Each call first spends the behaviour's latency (or fails, hangs, or times out at the
    deadline, exactly as :class:`SimulatedShard` does), then delegates to ``inner.search``
    with the same deadline. ``name`` and ``doc_count`` are the inner backend's; the draws
    are seeded by (seed, name, replica, query text).
    """

    __slots__ = ("_injector", "inner")

    def __init__(
        self,
        inner: ShardBackend,
        behaviour: Behaviour | LatencyModel | str,
        *,
        seed: int = 0,
        clock: Clock | None = None,
        replica: str = "",
        vary_by_call: bool = False,
    ) -> None:
        self.inner = inner
        self._injector = _Injector(
            as_behaviour(behaviour),
            seed=seed,
            shard=inner.name,
            replica=replica,
            clock=clock,
            vary_by_call=vary_by_call,
        )

    def __repr__(self) -> str:
        return f"Delayed({self.inner!r}, {self.behaviour.spec!r})"

    @property
    def name(self) -> str:
        """The inner backend's name."""
        return self.inner.name

    @property
    def doc_count(self) -> int:
        """The inner backend's document count."""
        return self.inner.doc_count

    @property
    def behaviour(self) -> Behaviour:
        """The behaviour layered onto the inner backend."""
        return self._injector.behaviour

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        """The inner backend's reply, after the drawn latency; ``took_ms`` includes it."""
        latency_s = await self._injector.apply(query, deadline)
        reply = await self.inner.search(query, deadline)
        if isinstance(reply, ShardReply):  # anything else is left for the caller to reject
            reply = ShardReply(reply.shard, reply.docs, reply.hits, reply.took_ms + latency_s * 1e3)
        return reply


# -- clusters ---------------------------------------------------------------------------------


def simulated_cluster(
    n_shards: int,
    latency_spec: Behaviour | LatencyModel | str,
    *,
    seed: int = 0,
    docs_per_shard: int = 1000,
    slow: Mapping[int, Behaviour | LatencyModel | str] | None = None,
    clock: Clock | None = None,
    vary_by_call: bool = False,
) -> list[SimulatedShard]:
    """``n_shards`` simulated shards named ``shard-00``, ``shard-01``... sharing one seed.

    Every shard behaves as ``latency_spec`` except those in ``slow``, which maps a shard
    index to its own behaviour. Raises :class:`ConfigError` for a shard count outside
    1..:data:`MAX_SIM_SHARDS`, a bad document count or a ``slow`` index out of range, and
    :class:`InvalidSpec` for a bad spec.
    """
    if isinstance(n_shards, bool) or not 1 <= n_shards <= MAX_SIM_SHARDS:
        raise ConfigError(f"a simulated cluster needs 1..{MAX_SIM_SHARDS} shards, got {n_shards!r}")
    default = as_behaviour(latency_spec)
    overrides = {index: as_behaviour(spec) for index, spec in (slow or {}).items()}
    for index in overrides:
        if not 0 <= index < n_shards:
            raise ConfigError(f"slow shard index {index} is out of range 0..{n_shards - 1}")
    width = max(2, len(str(n_shards - 1)))
    return [
        SimulatedShard(
            f"shard-{i:0{width}d}",
            docs_per_shard,
            overrides.get(i, default),
            seed=seed,
            clock=clock,
            vary_by_call=vary_by_call,
        )
        for i in range(n_shards)
    ]
