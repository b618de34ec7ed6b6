"""Admission control: how many queries run at once, how many wait, and who goes next.

Two layers, as everywhere in the project:

* :class:`AdmissionQueue` is the pure policy. It reads time from an injected
  :class:`~aggregator.clock.Clock`, never sleeps and never touches the event loop; each call
  returns the tickets whose state it changed, so tests drive it with a
  :class:`~aggregator.clock.ManualClock` and check decisions, not timings.
* :class:`Admission` is the thin async adapter the HTTP service uses: it parks a waiting query
  on a future, wakes it when the policy grants (or sheds) its ticket, and gives the slot back
  when the query ends, including when it is cancelled.

Overflow policy: at most ``max_in_flight`` queries run and at most ``max_waiting`` wait; any
excess is shed at once with :class:`~aggregator.errors.Overloaded` (HTTP 503 + Retry-After).
A waiting query is shed as soon as its deadline can no longer be met, so the service never
starts work that has already timed out. The queue is for bursts: once it has stood
non-empty for ``standing_queue_ms``, the service is overloaded and arrivals that find no
free slot are shed at once instead of queued, until none has been refused for as long.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum

from aggregator.clock import Clock, LoopClock
from aggregator.deadline import Deadline
from aggregator.errors import Overloaded

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_LOOP_BUSY",
    "DEFAULT_MAX_LOOP_LAG_MS",
    "DEFAULT_MAX_WAITING",
    "DEFAULT_MIN_BUDGET_MS",
    "DEFAULT_STANDING_QUEUE_MS",
    "Admission",
    "AdmissionLimits",
    "AdmissionQueue",
    "ShedReason",
    "Ticket",
    "TicketState",
]

#: Queries one aggregator process runs at once: the ceiling of the adaptive limit.
#:
#: Why 32, and why a ceiling rather than the working limit: a slot is held by two kinds of
#: query. With healthy shards a query costs ~2 ms of the loop's CPU and lives ~20 ms; with
#: one slow shard it lives the whole budget and costs the same CPU. A fixed count cannot
#: suit both: at 8, one shard answering after 1 s with a 100 ms deadline capped the service
#: at ~83 queries/s and shed 13% of a 95 queries/s load while the loop sat mostly idle
#: (``python -m bench http``). CPU overload is what the adaptive limit is for (see
#: :data:`DEFAULT_MAX_LOOP_LAG_MS`): it cuts the limit as soon as the loop lags or is busy,
#: and the standing-queue rule sheds arrivals while it binds, so the ceiling only has to bound
#: memory and connections. 32 is the shard client's connection pool per shard, so an admitted
#: query never waits for a connection to a shard. (Before the adaptive limit, 32 collapsed
#: goodput under 5x overload, which is why the limit was 8; with it, the soak at 5x admits
#: as much as at 8, see ``bench/RESULTS.md``.)
DEFAULT_MAX_IN_FLIGHT = 32
#: Queries allowed to wait for a slot while the limit binds. A short burst is absorbed, each
#: waiter waiting about one query lifetime divided by the slots; anything beyond is shed at
#: once (503 + Retry-After, in microseconds) rather than left to time out in a queue.
DEFAULT_MAX_WAITING = 8
#: Budget a waiting query must still have when it would start, in milliseconds (at most half
#: its own budget); with less, starting it is wasted work (every shard call would be cut
#: before it could answer), so it is shed. A query that finds a free slot is never shed.
DEFAULT_MIN_BUDGET_MS = 5.0
#: Event-loop lag above which the in-flight limit is lowered, in milliseconds.
#:
#: Why loop signals: the aggregator's work per query is CPU on one event loop, so when the
#: process is short of CPU, every callback waits behind the others: admitted queries overrun
#: their deadlines and even a 503 waits its turn (measured: shed p99 34-80 ms at 5x capacity
#: with a fixed limit of 8). The lag of a periodic timer is that wait, read directly; a
#: healthy loop shows 0-1 ms, so 2 ms means callbacks are queueing.
DEFAULT_MAX_LOOP_LAG_MS = 2.0
#: Share of the loop thread's time spent on CPU above which the limit is lowered too.
#:
#: Why also the busy share: uvloop's timers fire on whole milliseconds, so a lag sample is
#: coarse (0, 1 or 2 ms) and a loop can be nearly saturated with most samples reading 0.
#: CPU time per wall time is exact. Why 0.9 and not lower: at 0.7 the overload soak kept
#: the loop at 0.64 cores but admitted 100-137 queries/s against 233 with the lag alone, and
#: more of them came back partial (bench/RESULTS.md).
DEFAULT_MAX_LOOP_BUSY = 0.9
#: How long the wait queue may stay non-empty before the service counts as overloaded and
#: stops queueing, in milliseconds (CoDel's "standing queue"; its default interval).
#:
#: Why: a queue absorbs bursts, and a burst drains; a queue that has not been empty for
#: 100 ms is not a burst but more work arriving than the slots can take. Queueing then only
#: delays the inevitable: waiters are shed anyway when their deadline can no longer be met,
#: after waiting tens of milliseconds, and the overload soak measured exactly those slow
#: 503s as its shed p99 (20-50 ms). While overloaded, an arrival that finds no free slot is
#: shed at once, and the queue only drains; a 503 costs the client a round trip, not a wait.
#: The state ends once no arrival has been refused for as long. This is the policy of
#: "adaptive LIFO + CoDel" server queues (Maurer, "Fail at Scale", ACM Queue 2015) taken to
#: its limit: a queue timeout of zero under overload.
DEFAULT_STANDING_QUEUE_MS = 100.0
#: How long a free slot stays promised to an arrival that :meth:`AdmissionQueue.refuse_arrival`
#: let through, in seconds, unless that arrival reaches :meth:`AdmissionQueue.arrive` first.
#:
#: Why promise it: the front end checks arrivals as their bytes are read, and the handler
#: that takes the slot runs an iteration or two later. Without the promise, every arrival
#: read in the same iteration saw the same free slot, all went the slow way, and all but one
#: were shed by the handler (31-42% of the overload soak's 503s, at three times the cost and
#: latency of an early one). Why it expires: an arrival let through may never reach
#: ``arrive`` (a malformed query is answered 400 first); after this long its slot is free
#: again. 20 ms is several loop iterations even on the overloaded loop.
_CLAIM_TTL_S = 0.02
#: Weight of the newest query's slot-holding time in the running estimate (EWMA).
_HOLD_EWMA_ALPHA = 0.1
#: Share of the in-flight limit kept when the loop lags (multiplicative decrease).
_LIMIT_DECREASE = 0.75


class TicketState(StrEnum):
    """Where a ticket is in its life."""

    WAITING = "waiting"
    ADMITTED = "admitted"
    SHED = "shed"
    RELEASED = "released"


class ShedReason(StrEnum):
    """Why a query was shed; the label of the ``shed`` counters."""

    QUEUE_FULL = "queue_full"
    EVICTED = "evicted"
    DEADLINE = "deadline"
    QUEUE_TIMEOUT = "queue_timeout"
    OVERLOAD = "overload"


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """Bounds of admission control.

    ``max_in_flight`` (>= 1) queries run at once; ``max_waiting`` (>= 0) wait for a slot;
    ``min_budget_ms`` (>= 0) is the budget a query must still have when it gets its slot;
    ``retry_after_s`` (> 0) is the least a shed client is told to wait before retrying.
    ``max_loop_lag_ms`` (> 0, or ``None`` for a fixed limit): event-loop lag above which the
    limit on queries in flight is lowered below ``max_in_flight``; ``max_loop_busy`` (in
    (0, 1]): the same for the loop thread's busy share (see
    :meth:`AdmissionQueue.on_loop_sample`). ``max_queue_wait_ms`` (>= 0, or ``None``: only
    the deadline bounds the wait): longest a query waits for a slot before it is shed,
    however much budget it has. Off by default: at 3 ms, the overload soak's sheds got
    slower at the median (most waited the 3 ms out first) and bursts at half the capacity
    were shed (bench/RESULTS.md). ``standing_queue_ms`` (> 0, or ``None`` to always queue):
    how long the wait queue may stay non-empty before arrivals that find no free slot are
    shed at once instead of queued (see :data:`DEFAULT_STANDING_QUEUE_MS`).
    """

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_waiting: int = DEFAULT_MAX_WAITING
    min_budget_ms: float = DEFAULT_MIN_BUDGET_MS
    retry_after_s: float = 1.0
    max_loop_lag_ms: float | None = DEFAULT_MAX_LOOP_LAG_MS
    max_loop_busy: float = DEFAULT_MAX_LOOP_BUSY
    max_queue_wait_ms: float | None = None
    standing_queue_ms: float | None = DEFAULT_STANDING_QUEUE_MS

    def __post_init__(self) -> None:
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int):
            raise ValueError(f"max_in_flight must be an integer, got {self.max_in_flight!r}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if isinstance(self.max_waiting, bool) or not isinstance(self.max_waiting, int):
            raise ValueError(f"max_waiting must be an integer, got {self.max_waiting!r}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if not 0 <= self.min_budget_ms < math.inf:
            raise ValueError(f"min_budget_ms must be finite and >= 0, got {self.min_budget_ms!r}")
        if not 0 < self.retry_after_s < math.inf:
            raise ValueError(f"retry_after_s must be finite and > 0, got {self.retry_after_s!r}")
        if self.max_loop_lag_ms is not None and not 0 < self.max_loop_lag_ms < math.inf:
            raise ValueError(
                f"max_loop_lag_ms must be finite and > 0, or None, got {self.max_loop_lag_ms!r}"
            )
        if self.max_queue_wait_ms is not None and not 0 <= self.max_queue_wait_ms < math.inf:
            raise ValueError(
                f"max_queue_wait_ms must be finite and >= 0, or None, "
                f"got {self.max_queue_wait_ms!r}"
            )
        if not 0 < self.max_loop_busy <= 1:
            raise ValueError(f"max_loop_busy must be in (0, 1], got {self.max_loop_busy!r}")
        if self.standing_queue_ms is not None and not 0 < self.standing_queue_ms < math.inf:
            raise ValueError(
                f"standing_queue_ms must be finite and > 0, or None, got {self.standing_queue_ms!r}"
            )


@dataclass(eq=False, slots=True)
class Ticket:
    """One query's claim on a slot. Compared by identity.

    ``start_by_s`` is the last instant at which starting the query is still worth it (its
    deadline minus the minimum budget, or minus half its budget when that is smaller), or the
    end of the longest wait for a slot if that comes first (``wait_bounded``); ``reason``
    says why a shed ticket was shed.
    """

    client: str
    start_by_s: float
    arrived_at_s: float
    seq: int
    state: TicketState = TicketState.WAITING
    admitted_at_s: float | None = None
    wait_bounded: bool = False
    shed_reason: ShedReason | None = None
    reason: str | None = None
    waker: asyncio.Future[None] | None = field(default=None, repr=False)


@dataclass(slots=True)
class _Client:
    in_flight: int = 0
    waiting: deque[Ticket] = field(default_factory=deque)


class AdmissionQueue:
    """The pure admission policy: slots, a bounded wait queue and fairness between clients.

    Every method returns the tickets it changed other than the caller's own (so an adapter can
    wake their owners); a ticket's :attr:`Ticket.state` says what became of it.

    Fairness, and why this design: slots are never taken back from a running query (that
    would waste its work), so fairness is enforced on who gets the *next* free slot. When a
    slot frees, it goes to the waiting client holding the fewest slots (ties: the oldest
    waiting ticket). A client that grabbed every slot while the service was idle therefore
    loses one slot per finished query to the newcomers, until the slots are split evenly
    (max-min fair share: ``max_in_flight / active clients``); meanwhile nothing is left idle
    (work-conserving: one client alone may use every slot). The wait queue is shared, and a
    full queue drops from its longest per-client line (longest-queue drop): a newcomer whose
    client waits less than the heaviest client takes the heaviest client's newest place, so
    one flooding client cannot lock the others out of the queue either. Only clients with a
    ticket are tracked, so the bookkeeping is bounded by ``max_in_flight + max_waiting``.
    """

    __slots__ = (
        "_claims",
        "_clients",
        "_hold_s_ewma",
        "_in_flight",
        "_limit",
        "_overloaded_until_s",
        "_queue_since_s",
        "_seq",
        "_waiting",
        "admitted_total",
        "clock",
        "limits",
        "shed_total",
    )

    def __init__(self, limits: AdmissionLimits | None = None, clock: Clock | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self.clock: Clock = clock or LoopClock()
        self._clients: dict[str, _Client] = {}
        # Expiry times of slots promised by refuse_arrival, oldest first (at most the limit).
        self._claims: deque[float] = deque()
        self._in_flight = 0
        self._limit = self.limits.max_in_flight
        self._waiting = 0
        self._seq = 0
        self._hold_s_ewma = 0.0
        # When the wait queue last became non-empty (None while empty), and until when the
        # service counts as overloaded (see DEFAULT_STANDING_QUEUE_MS).
        self._queue_since_s: float | None = None
        self._overloaded_until_s = -math.inf
        self.admitted_total = 0
        self.shed_total: dict[ShedReason, int] = dict.fromkeys(ShedReason, 0)

    # -- reading the state ------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Queries holding a slot."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Queries waiting for a slot."""
        return self._waiting

    @property
    def claimed(self) -> int:
        """Free slots promised to arrivals :meth:`refuse_arrival` let through (unexpired)."""
        return self._live_claims(self.clock.now_s())

    @property
    def limit(self) -> int:
        """Queries allowed in flight now: ``max_in_flight``, or less while the loop lags."""
        return self._limit

    def overloaded(self) -> bool:
        """True while arrivals that find no free slot are shed at once (a standing queue)."""
        return self._standing(self.clock.now_s(), extend=False)

    def in_flight_of(self, client: str) -> int:
        """Slots ``client`` holds."""
        entry = self._clients.get(client)
        return 0 if entry is None else entry.in_flight

    def waiting_of(self, client: str) -> int:
        """Tickets ``client`` has waiting."""
        entry = self._clients.get(client)
        return 0 if entry is None else len(entry.waiting)

    @property
    def clients(self) -> int:
        """Clients with a running or waiting query."""
        return len(self._clients)

    def estimated_wait_s(self, position: int | None = None) -> float:
        """Expected seconds until the ``position``-th waiter (1-based) gets a slot.

        Slots free at about ``limit / hold`` per second (``hold``: running average of how long
        a query holds its slot), so the n-th in line waits ``n * hold / limit``. Defaults to
        the position of a new arrival. 0 while nothing has been measured.
        """
        n = self._waiting + 1 if position is None else position
        return n * self._hold_s_ewma / self._limit

    def retry_after_s(self) -> float:
        """Seconds a shed client should wait before retrying (at least the configured floor)."""
        return max(self.limits.retry_after_s, self.estimated_wait_s())

    # -- decisions --------------------------------------------------------------------------

    def arrive(self, client: str, deadline: Deadline) -> tuple[Ticket, list[Ticket]]:
        """A query from ``client`` with ``deadline`` asks for a slot.

        Returns its ticket (admitted, waiting or shed) and the other tickets this changed
        (at most one, evicted from the queue to make room). Never raises for overload: the
        caller reads the ticket's state.
        """
        now = self.clock.now_s()
        if self._claims:  # the arrival a slot was promised to (or one like it) is here
            self._claims.popleft()
        # The least budget worth starting with: min_budget_ms, but never more than half of
        # what the query has left, so a small budget the API accepts (say 2 ms) still runs.
        reserve_s = min(self.limits.min_budget_ms / 1000.0, deadline.remaining_s(now) / 2.0)
        start_by_s = deadline.expires_at_s - reserve_s
        max_wait_ms = self.limits.max_queue_wait_ms
        wait_until_s = math.inf if max_wait_ms is None else now + max_wait_ms / 1000.0
        self._seq += 1
        ticket = Ticket(client, min(start_by_s, wait_until_s), now, self._seq)
        ticket.wait_bounded = wait_until_s < start_by_s
        if deadline.is_expired(now):
            self._shed(ticket, ShedReason.DEADLINE, "the query's budget is already spent")
            return ticket, []
        if self._in_flight < self._limit and self._waiting == 0:
            # A free slot is never refused: with nothing to wait for, no deadline is at risk.
            self._admit(ticket, self._client(client), now)
            return ticket, []
        if self._standing(now, extend=True):
            self._shed(ticket, ShedReason.OVERLOAD, _OVERLOADED)
            return ticket, []
        # Shed now what would only time out in the queue: a fast 503 beats a slow one.
        wait_s = self.estimated_wait_s()
        if now + wait_s >= ticket.start_by_s:
            if ticket.wait_bounded:
                reason, after = ShedReason.QUEUE_TIMEOUT, "longer than a query may wait"
            else:
                reason, after = ShedReason.DEADLINE, "after the query's deadline"
            self._shed(
                ticket, reason, f"overloaded: a slot is expected in {wait_s * 1000:.0f} ms, {after}"
            )
            return ticket, []
        evicted: list[Ticket] = []
        if self._waiting >= self.limits.max_waiting:
            victim = self._longest_line_victim(client)
            if victim is None:
                self._shed(ticket, ShedReason.QUEUE_FULL, _QUEUE_FULL)
                return ticket, []
            self._remove_waiting(victim)
            self._shed(victim, ShedReason.EVICTED, "overloaded: the wait queue is full (evicted)")
            evicted.append(victim)
        self._client(client).waiting.append(ticket)
        self._waiting += 1
        if self._waiting == 1:
            self._queue_since_s = now
        return ticket, evicted

    def refuse_arrival(self) -> str | None:
        """Shed an arrival now if :meth:`arrive` would shed any arrival, whatever its client
        and budget (overloaded, and no free slot): count it and return the reason given.
        ``None`` otherwise: the arrival must go through :meth:`arrive`.

        For a front end that answers before it has parsed the request
        (:mod:`aggregator.http_protocol`). An arrival let through because a slot is free is
        promised that slot: later arrivals see it taken until the next :meth:`arrive` (or
        :data:`_CLAIM_TTL_S`), so a burst read at once is not all let through to one slot.
        """
        now = self.clock.now_s()
        if self._in_flight + self._live_claims(now) < self._limit and self._waiting == 0:
            self._claims.append(now + _CLAIM_TTL_S)
            return None
        if self._standing(now, extend=True):
            self.shed_total[ShedReason.OVERLOAD] += 1
            return _OVERLOADED
        if self.limits.max_waiting == 0:  # no queue at all, so no one to evict either
            self.shed_total[ShedReason.QUEUE_FULL] += 1
            return _QUEUE_FULL
        return None

    def release(self, ticket: Ticket) -> list[Ticket]:
        """``ticket``'s query ended (or gave up its place): free what it held.

        A running ticket frees its slot, which goes to the next fair waiter; a waiting ticket
        leaves the queue. Releasing twice, or releasing a shed ticket, does nothing. Returns
        the tickets admitted or shed as a result.
        """
        now = self.clock.now_s()
        if ticket.state is TicketState.WAITING:
            self._remove_waiting(ticket)
            ticket.state = TicketState.RELEASED
            return []
        if ticket.state is not TicketState.ADMITTED:
            return []
        ticket.state = TicketState.RELEASED
        self._in_flight -= 1
        entry = self._clients[ticket.client]
        entry.in_flight -= 1
        self._forget_if_idle(ticket.client, entry)
        assert ticket.admitted_at_s is not None
        hold_s = max(0.0, now - ticket.admitted_at_s)
        self._hold_s_ewma += _HOLD_EWMA_ALPHA * (hold_s - self._hold_s_ewma)
        return self._grant(now)

    def expire(self) -> list[Ticket]:
        """Shed every waiting ticket whose deadline can no longer be met; return them."""
        now = self.clock.now_s()
        shed: list[Ticket] = []
        for name in list(self._clients):
            entry = self._clients[name]
            for ticket in [t for t in entry.waiting if now >= t.start_by_s]:
                self._remove_waiting(ticket)
                self._shed_late(ticket)
                shed.append(ticket)
        return shed

    def on_loop_sample(self, lag_s: float, busy_share: float = 0.0) -> list[Ticket]:
        """One sample of the event loop (its lag, and its thread's busy share since the last
        sample): adapt the in-flight limit; return the tickets admitted because it rose.

        Additive increase, multiplicative decrease, as TCP and adaptive concurrency limiters
        do, and only while the limit is what holds queries back (every slot taken, or some
        waiting), so a service below its capacity never sheds for it: a lag over
        ``max_loop_lag_ms`` or a busy share over ``max_loop_busy`` cuts the limit to three
        quarters (at least 1); a lag under half of the first and a busy share a tenth under
        the second raise it by one, up to ``max_in_flight``. Queries already running keep
        their slots. Nothing changes when ``max_loop_lag_ms`` is ``None``.
        """
        limits = self.limits
        target_ms = limits.max_loop_lag_ms
        if target_ms is None:
            return []
        if self._in_flight < self._limit and self._waiting == 0:
            return []
        lag_ms = lag_s * 1000.0
        if lag_ms > target_ms or busy_share > limits.max_loop_busy:
            self._limit = max(1, int(self._limit * _LIMIT_DECREASE))
            return []
        if (
            lag_ms < target_ms / 2.0
            and busy_share < limits.max_loop_busy - 0.1
            and self._limit < limits.max_in_flight
        ):
            self._limit += 1
            return self._grant(self.clock.now_s())
        return []

    def time_out(self, ticket: Ticket) -> None:
        """Shed waiting ``ticket``: its owner's timer for the deadline fired.

        The owner's timer, not this clock, is the authority here: timers may fire a clock
        tick early, and a ticket left waiting with no one to wake would leak its place.
        """
        if ticket.state is TicketState.WAITING:
            self._remove_waiting(ticket)
            self._shed_late(ticket)

    # -- internals --------------------------------------------------------------------------

    def _client(self, client: str) -> _Client:
        entry = self._clients.get(client)
        if entry is None:
            entry = self._clients[client] = _Client()
        return entry

    def _live_claims(self, now: float) -> int:
        claims = self._claims
        while claims and claims[0] <= now:
            claims.popleft()
        return len(claims)

    def _forget_if_idle(self, client: str, entry: _Client) -> None:
        if entry.in_flight == 0 and not entry.waiting:
            del self._clients[client]

    def _admit(self, ticket: Ticket, entry: _Client, now: float) -> None:
        ticket.state = TicketState.ADMITTED
        ticket.admitted_at_s = now
        entry.in_flight += 1
        self._in_flight += 1
        self.admitted_total += 1

    def _shed(self, ticket: Ticket, reason: ShedReason, message: str) -> None:
        ticket.state = TicketState.SHED
        ticket.shed_reason = reason
        ticket.reason = message
        self.shed_total[reason] += 1

    def _shed_late(self, ticket: Ticket) -> None:
        """Shed a waiter whose ``start_by_s`` has come."""
        if ticket.wait_bounded:
            self._shed(ticket, ShedReason.QUEUE_TIMEOUT, _WAITED_TOO_LONG)
        else:
            self._shed(ticket, ShedReason.DEADLINE, _TOO_LATE)

    def _remove_waiting(self, ticket: Ticket) -> None:
        entry = self._clients[ticket.client]
        entry.waiting.remove(ticket)
        self._waiting -= 1
        if self._waiting == 0:
            self._queue_since_s = None
        self._forget_if_idle(ticket.client, entry)

    def _standing(self, now: float, *, extend: bool) -> bool:
        """Whether the service is overloaded now: its wait queue has stood (stayed non-empty)
        for ``standing_queue_ms``, or an arrival was refused for that reason less than
        ``standing_queue_ms`` ago. ``extend``: an arrival is being refused, so the state lasts
        another ``standing_queue_ms`` from now."""
        interval_ms = self.limits.standing_queue_ms
        if interval_ms is None:
            return False
        interval_s = interval_ms / 1000.0
        since_s = self._queue_since_s
        standing = now < self._overloaded_until_s or (
            since_s is not None and now - since_s >= interval_s
        )
        if standing and extend:
            self._overloaded_until_s = now + interval_s
        return standing

    def _grant(self, now: float) -> list[Ticket]:
        # Linear scans over the waiting clients: at most max_waiting of them, and a release
        # is rare next to the work of the query that just ended.
        changed: list[Ticket] = []
        while self._in_flight < self._limit and self._waiting:
            best: _Client | None = None
            for entry in self._clients.values():
                if not entry.waiting:
                    continue
                if best is None or (entry.in_flight, entry.waiting[0].seq) < (
                    best.in_flight,
                    best.waiting[0].seq,
                ):
                    best = entry
            assert best is not None
            ticket = best.waiting.popleft()
            self._waiting -= 1
            if self._waiting == 0:
                self._queue_since_s = None
            if now >= ticket.start_by_s:
                self._shed_late(ticket)
                self._forget_if_idle(ticket.client, best)
            else:
                self._admit(ticket, best, now)
            changed.append(ticket)
        return changed

    def _longest_line_victim(self, client: str) -> Ticket | None:
        own = self.waiting_of(client)
        heaviest: _Client | None = None
        for entry in self._clients.values():
            if heaviest is None or (len(entry.waiting), entry.in_flight) > (
                len(heaviest.waiting),
                heaviest.in_flight,
            ):
                heaviest = entry
        # Evict only when it makes the lines more even: after the swap the newcomer's client
        # must still wait no more than the victim's.
        if heaviest is None or len(heaviest.waiting) <= own + 1:
            return None
        return heaviest.waiting[-1]


def _is_admitted(ticket: Ticket) -> bool:
    return ticket.state is TicketState.ADMITTED


_QUEUE_FULL = "overloaded: the wait queue is full"
_OVERLOADED = "overloaded: no free slot, and the wait queue is not draining"
_TOO_LATE = "overloaded: the query waited for a slot until its deadline could not be met"
_WAITED_TOO_LONG = "overloaded: no slot freed within the longest wait allowed"


class Admission:
    """The async face of :class:`AdmissionQueue`, for use inside a request handler.

    ``async with admission.slot(client, deadline):`` runs the body once the query holds a
    slot and frees it afterwards, however the body ends. Raises
    :class:`~aggregator.errors.Overloaded` (with ``retry_after_s``) when the query is shed,
    either at once or after waiting. Cancellation while waiting gives the place up; it is
    never swallowed. Must be used from one event loop.
    """

    __slots__ = ("queue",)

    def __init__(self, limits: AdmissionLimits | None = None, clock: Clock | None = None) -> None:
        self.queue = AdmissionQueue(limits, clock)

    @property
    def limits(self) -> AdmissionLimits:
        """The queue's bounds."""
        return self.queue.limits

    @asynccontextmanager
    async def slot(self, client: str, deadline: Deadline) -> AsyncIterator[Ticket]:
        """Hold a slot for the duration of the ``async with`` body."""
        ticket = await self.acquire(client, deadline)
        try:
            yield ticket
        finally:
            self.release(ticket)

    async def acquire(self, client: str, deadline: Deadline) -> Ticket:
        """Wait for a slot; return the admitted ticket, which must be :meth:`release`\\ d.

        Raises :class:`Overloaded` if the query is shed.
        """
        queue = self.queue
        ticket, changed = queue.arrive(client, deadline)
        self._wake(changed)
        if ticket.state is TicketState.ADMITTED:
            return ticket
        if ticket.state is TicketState.WAITING:
            await self._wait(ticket)
            if _is_admitted(ticket):  # _wait changed the state
                return ticket
        raise Overloaded(ticket.reason or "overloaded", retry_after_s=queue.retry_after_s())

    def release(self, ticket: Ticket) -> None:
        """Give back what ``ticket`` holds and wake whoever that lets in."""
        self._wake(self.queue.release(ticket))

    def on_loop_sample(self, lag_s: float, busy_share: float = 0.0) -> None:
        """Feed one event-loop sample to the adaptive limit; wake whoever it lets in."""
        self._wake(self.queue.on_loop_sample(lag_s, busy_share))

    async def _wait(self, ticket: Ticket) -> None:
        loop = asyncio.get_running_loop()
        waker: asyncio.Future[None] = loop.create_future()
        ticket.waker = waker
        timeout_s = ticket.start_by_s - self.queue.clock.now_s()
        try:
            if math.isinf(timeout_s):
                await waker
            else:
                await asyncio.wait((waker,), timeout=max(0.0, timeout_s))
        except BaseException:
            # Cancelled while waiting (client gone): give up the place, or the slot if it
            # was granted in the same instant, then let the cancellation through.
            self.release(ticket)
            raise
        finally:
            ticket.waker = None
        if ticket.state is TicketState.WAITING:
            # Woken by the timer: the deadline can no longer be met; others may be late too.
            self.queue.time_out(ticket)
            self._wake(self.queue.expire())

    def _wake(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            waker = ticket.waker
            if waker is not None and not waker.done():
                waker.set_result(None)
