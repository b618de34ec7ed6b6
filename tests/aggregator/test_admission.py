"""Admission control: the pure policy on a manual clock, and its async adapter in loop time."""

from __future__ import annotations

import asyncio

import pytest

from aggregator import Deadline, ManualClock, Overloaded
from aggregator.admission import (
    Admission,
    AdmissionLimits,
    AdmissionQueue,
    ShedReason,
    Ticket,
    TicketState,
)


def _queue(
    max_in_flight: int = 2,
    max_waiting: int = 2,
    min_budget_ms: float = 0.0,
    max_queue_wait_ms: float = 60_000.0,
) -> tuple[AdmissionQueue, ManualClock]:
    """A queue on a manual clock; waits are bounded by deadlines only unless told otherwise;
    the loop's busy share is bounded at 0.7; a standing queue is never refused (the tests of
    that rule build their own)."""
    clock = ManualClock(100.0)
    limits = AdmissionLimits(
        max_in_flight,
        max_waiting,
        min_budget_ms=min_budget_ms,
        max_queue_wait_ms=max_queue_wait_ms,
        max_loop_busy=0.7,
        standing_queue_ms=None,
    )
    return AdmissionQueue(limits, clock), clock


def _far(clock: ManualClock) -> Deadline:
    return Deadline.after(clock.now_s(), 60_000)


#: The reason an arrival is refused while the service is overloaded.
_OVERLOADED = "overloaded: no free slot, and the wait queue is not draining"


def _arrive(queue: AdmissionQueue, clock: ManualClock, client: str) -> Ticket:
    ticket, evicted = queue.arrive(client, _far(clock))
    assert evicted == []
    return ticket


def test_admits_up_to_the_limit_then_queues_then_sheds() -> None:
    """C run at once, Q wait, the next is shed at once with reason queue_full."""
    queue, clock = _queue(max_in_flight=2, max_waiting=2)
    states = [_arrive(queue, clock, "a").state for _ in range(5)]
    assert states == ["admitted", "admitted", "waiting", "waiting", "shed"]
    assert (queue.in_flight, queue.waiting) == (2, 2)
    assert queue.shed_total[ShedReason.QUEUE_FULL] == 1


def test_release_admits_the_oldest_waiter_of_one_client() -> None:
    """Within one client, waiters are admitted first come, first served."""
    queue, clock = _queue(max_in_flight=1, max_waiting=3)
    running = _arrive(queue, clock, "a")
    first, second = _arrive(queue, clock, "a"), _arrive(queue, clock, "a")
    assert queue.release(running) == [first]
    assert first.state is TicketState.ADMITTED
    assert second.state is TicketState.WAITING


def test_freed_slot_goes_to_the_client_holding_fewest() -> None:
    """A client holding every slot loses the next free one to a newcomer, even one queued later."""
    queue, clock = _queue(max_in_flight=2, max_waiting=4)
    a1, _a2 = _arrive(queue, clock, "a"), _arrive(queue, clock, "a")
    a3 = _arrive(queue, clock, "a")  # waits first
    b1 = _arrive(queue, clock, "b")  # waits second, but b holds nothing
    assert queue.release(a1) == [b1]
    assert (queue.in_flight_of("a"), queue.in_flight_of("b")) == (1, 1)
    assert a3.state is TicketState.WAITING


def test_slots_converge_to_an_even_split() -> None:
    """With two busy clients, slots end up split evenly however the split started."""
    queue, clock = _queue(max_in_flight=4, max_waiting=16)
    running = [_arrive(queue, clock, "a") for _ in range(4)]
    for _ in range(4):
        _arrive(queue, clock, "a")
        _arrive(queue, clock, "b")
    for _ in range(8):  # each finished query frees a slot for the next fair waiter
        oldest = running.pop(0)
        running.extend(queue.release(oldest))
        assert queue.in_flight_of("a") >= 2 or queue.in_flight_of("b") <= 2
    assert (queue.in_flight_of("a"), queue.in_flight_of("b")) == (2, 2)


def test_alone_a_client_may_use_every_slot() -> None:
    """Fairness never leaves a slot idle: one client alone fills them all."""
    queue, clock = _queue(max_in_flight=3, max_waiting=0)
    assert [_arrive(queue, clock, "a").state for _ in range(3)] == ["admitted"] * 3


def test_full_queue_evicts_the_flooding_clients_newest_waiter() -> None:
    """Longest-queue drop: a newcomer takes the flooding client's newest place in line."""
    queue, clock = _queue(max_in_flight=1, max_waiting=3)
    _arrive(queue, clock, "a")
    waiting = [_arrive(queue, clock, "a") for _ in range(3)]
    ticket, evicted = queue.arrive("b", _far(clock))
    assert ticket.state is TicketState.WAITING
    assert evicted == [waiting[-1]]
    assert waiting[-1].state is TicketState.SHED
    assert waiting[-1].shed_reason is ShedReason.EVICTED
    assert (queue.waiting_of("a"), queue.waiting_of("b")) == (2, 1)


def test_full_queue_sheds_the_newcomer_when_lines_are_even() -> None:
    """No eviction when it would not even out the lines: the newcomer is shed instead."""
    queue, clock = _queue(max_in_flight=1, max_waiting=2)
    _arrive(queue, clock, "a")
    _arrive(queue, clock, "a")
    _arrive(queue, clock, "b")
    ticket, evicted = queue.arrive("b", _far(clock))
    assert evicted == []
    assert ticket.shed_reason is ShedReason.QUEUE_FULL


def test_query_with_spent_budget_is_shed_on_arrival() -> None:
    """A query whose deadline already passed (e.g. while its body was read) never starts."""
    queue, clock = _queue(min_budget_ms=5.0)
    deadline = Deadline.after(clock.now_s(), 4.0)
    clock.advance(0.004)
    ticket, _ = queue.arrive("a", deadline)
    assert ticket.shed_reason is ShedReason.DEADLINE
    assert queue.in_flight == 0


def test_small_budget_with_a_free_slot_is_admitted() -> None:
    """A budget under min_budget_ms still runs when a slot is free: nothing to wait for."""
    queue, clock = _queue(min_budget_ms=5.0)
    ticket, _ = queue.arrive("a", Deadline.after(clock.now_s(), 1.0))
    assert ticket.state is TicketState.ADMITTED


def test_small_budget_may_wait_half_of_itself() -> None:
    """A waiting query with a small budget is shed once half of it is gone, not at once."""
    queue, clock = _queue(max_in_flight=1, max_waiting=1, min_budget_ms=5.0)
    _arrive(queue, clock, "a")
    ticket, _ = queue.arrive("b", Deadline.after(clock.now_s(), 4.0))
    assert ticket.state is TicketState.WAITING
    assert ticket.start_by_s == pytest.approx(clock.now_s() + 0.002)
    clock.advance(0.0019)
    assert queue.expire() == []
    clock.advance(0.0002)
    assert queue.expire() == [ticket]


def test_waiter_whose_deadline_passed_is_shed_not_started() -> None:
    """When a slot frees, a waiter that can no longer meet its deadline is shed, the next runs."""
    queue, clock = _queue(max_in_flight=1, max_waiting=2)
    running = _arrive(queue, clock, "a")
    short, _ = queue.arrive("a", Deadline.after(clock.now_s(), 10))
    long_ = _arrive(queue, clock, "a")
    clock.advance(0.050)
    assert queue.release(running) == [short, long_]
    assert short.shed_reason is ShedReason.DEADLINE
    assert long_.state is TicketState.ADMITTED


def test_expire_sheds_only_the_late_waiters() -> None:
    """expire() sheds waiters past their last useful start and keeps the rest."""
    queue, clock = _queue(max_in_flight=1, max_waiting=3)
    _arrive(queue, clock, "a")
    short, _ = queue.arrive("b", Deadline.after(clock.now_s(), 10))
    long_ = _arrive(queue, clock, "c")
    clock.advance(0.020)
    assert queue.expire() == [short]
    assert long_.state is TicketState.WAITING
    assert queue.waiting == 1


def test_predicted_wait_past_the_deadline_is_shed_at_once() -> None:
    """Once slot-holding time is measured, a query that would only time out waiting is shed now."""
    queue, clock = _queue(max_in_flight=1, max_waiting=10)
    for _ in range(50):  # teach it that a query holds its slot for 100 ms
        ticket = _arrive(queue, clock, "a")
        clock.advance(0.100)
        queue.release(ticket)
    _arrive(queue, clock, "a")  # busy now
    hopeless, _ = queue.arrive("b", Deadline.after(clock.now_s(), 20))
    assert hopeless.shed_reason is ShedReason.DEADLINE
    assert "expected" in (hopeless.reason or "")
    patient, _ = queue.arrive("b", Deadline.after(clock.now_s(), 1000))
    assert patient.state is TicketState.WAITING
    assert queue.retry_after_s() >= 1.0


def test_release_is_idempotent_and_forgets_idle_clients() -> None:
    """Releasing twice frees one slot; a client with nothing left is no longer tracked."""
    queue, clock = _queue()
    ticket = _arrive(queue, clock, "a")
    queue.release(ticket)
    queue.release(ticket)
    assert (queue.in_flight, queue.clients) == (0, 0)
    assert ticket.state is TicketState.RELEASED


def test_releasing_a_waiting_ticket_leaves_the_queue() -> None:
    """A waiter that gives up its place is removed and admits no one."""
    queue, clock = _queue(max_in_flight=1, max_waiting=2)
    _arrive(queue, clock, "a")
    waiter = _arrive(queue, clock, "b")
    assert queue.release(waiter) == []
    assert (queue.waiting, queue.clients) == (0, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_in_flight": 0},
        {"max_waiting": -1},
        {"min_budget_ms": float("nan")},
        {"retry_after_s": 0.0},
        {"max_in_flight": True},
        {"max_loop_lag_ms": 0.0},
        {"max_loop_busy": 0.0},
        {"max_queue_wait_ms": -1.0},
    ],
)
def test_limits_reject_nonsense(kwargs: dict[str, object]) -> None:
    """Limits outside their ranges are refused on construction."""
    with pytest.raises(ValueError, match="must be"):
        AdmissionLimits(**kwargs)  # type: ignore[arg-type]


def test_a_waiter_is_shed_after_the_longest_wait_however_long_its_deadline() -> None:
    """With max_queue_wait_ms = 3, a waiter with a minute of budget is shed 3 ms after it
    arrived (reason queue_timeout); one admitted within 3 ms runs."""
    queue, clock = _queue(max_in_flight=1, max_waiting=4, max_queue_wait_ms=3.0)
    running = _arrive(queue, clock, "a")
    soon = _arrive(queue, clock, "b")
    clock.advance(0.002)
    assert queue.release(running) == [soon]
    assert soon.state is TicketState.ADMITTED
    late = _arrive(queue, clock, "c")
    clock.advance(0.003)
    assert queue.expire() == [late]
    assert late.shed_reason is ShedReason.QUEUE_TIMEOUT
    assert late.reason is not None
    assert "longest wait" in late.reason


def test_a_predicted_wait_over_the_longest_wait_is_shed_on_arrival() -> None:
    """Once slots are known to be held ~10 ms, a newcomer that would wait past the 3 ms bound
    is shed at once with reason queue_timeout, not queued."""
    queue, clock = _queue(max_in_flight=1, max_waiting=4, max_queue_wait_ms=3.0)
    for _ in range(20):
        ticket = _arrive(queue, clock, "a")
        clock.advance(0.010)
        queue.release(ticket)
    _arrive(queue, clock, "a")
    newcomer = _arrive(queue, clock, "b")
    assert newcomer.state is TicketState.SHED
    assert newcomer.shed_reason is ShedReason.QUEUE_TIMEOUT


def _saturate(queue: AdmissionQueue, clock: ManualClock) -> list[Ticket]:
    """Take every slot the queue's limit allows, so the limit is what holds queries back."""
    return [_arrive(queue, clock, "a") for _ in range(queue.limit)]


def test_a_lagging_or_busy_loop_cuts_the_limit_to_three_quarters_down_to_one() -> None:
    """While every slot is taken, each sample with lag over max_loop_lag_ms or a busy share
    over max_loop_busy cuts the limit to 3/4 (8, 6, 4, 3, 2, 1, 1); running queries keep
    their slots and new arrivals wait."""
    queue, clock = _queue(max_in_flight=8, max_waiting=8)
    running = _saturate(queue, clock)
    limits = []
    for lag_s, busy in [(0.005, 0.0), (0.0, 0.9), (0.005, 0.9), (0.003, 0.0), (0.0, 0.8)]:
        assert queue.on_loop_sample(lag_s, busy) == []
        limits.append(queue.limit)
    queue.on_loop_sample(0.010, 1.0)
    limits.append(queue.limit)
    assert limits == [6, 4, 3, 2, 1, 1]
    assert all(t.state is TicketState.ADMITTED for t in running)
    assert _arrive(queue, clock, "b").state is TicketState.WAITING


def test_below_its_limit_a_busy_loop_changes_nothing() -> None:
    """With slots free and nobody waiting, even a saturated loop leaves the limit alone: a
    service under its capacity never sheds for loop load."""
    queue, clock = _queue(max_in_flight=8, max_waiting=8)
    _arrive(queue, clock, "a")
    queue.on_loop_sample(0.050, 1.0)
    assert queue.limit == 8


def test_a_quiet_loop_raises_the_limit_by_one_while_it_binds() -> None:
    """Low lag and busy share raise the limit by one per sample and admit a waiter at once,
    up to max_in_flight; a sample between the bounds holds it."""
    queue, clock = _queue(max_in_flight=3, max_waiting=4)
    _saturate(queue, clock)
    queue.on_loop_sample(0.010, 0.0)
    queue.on_loop_sample(0.010, 0.0)
    assert queue.limit == 1
    waiter = _arrive(queue, clock, "b")
    assert waiter.state is TicketState.WAITING
    assert queue.on_loop_sample(0.0015, 0.3) == []  # lag between half the target and it
    assert queue.on_loop_sample(0.0, 0.65) == []  # busy within a tenth of the bound
    assert queue.limit == 1
    others = [_arrive(queue, clock, "c") for _ in range(3)]
    assert queue.on_loop_sample(0.0005, 0.2) == []  # 3 still run: the limit rises, no room
    assert queue.limit == 2
    queue.on_loop_sample(0.0, 0.2)
    queue.on_loop_sample(0.0, 0.2)
    assert queue.limit == 3
    assert [t.state for t in [waiter, *others]] == ["waiting"] * 4


def test_a_raised_limit_admits_waiters_at_once() -> None:
    """When the limit rises above the queries running, the next waiter is admitted."""
    queue, clock = _queue(max_in_flight=2, max_waiting=2)
    first, second = _saturate(queue, clock)
    queue.on_loop_sample(0.010, 0.0)
    assert queue.limit == 1
    queue.release(second)
    waiter = _arrive(queue, clock, "b")
    assert waiter.state is TicketState.WAITING
    assert queue.on_loop_sample(0.0, 0.0) == [waiter]
    assert (queue.limit, waiter.state) == (2, TicketState.ADMITTED)
    assert first.state is TicketState.ADMITTED


def test_a_fixed_limit_ignores_the_loop() -> None:
    """With max_loop_lag_ms = None the limit stays at max_in_flight whatever the loop does."""
    queue = AdmissionQueue(AdmissionLimits(4, 4, max_loop_lag_ms=None), ManualClock())
    for _ in range(4):
        queue.arrive("a", Deadline.after(0.0, 60_000))
    queue.on_loop_sample(1.0, 1.0)
    assert queue.limit == 4


# -- the async adapter, in loop time ----------------------------------------------------------


@pytest.mark.looptime
async def test_waiter_runs_when_a_slot_frees() -> None:
    """A waiting query starts the moment a running one releases its slot."""
    admission = Admission(
        AdmissionLimits(max_in_flight=1, max_waiting=1, min_budget_ms=0, max_queue_wait_ms=60_000)
    )
    loop = asyncio.get_running_loop()
    deadline = Deadline.after(loop.time(), 10_000)
    started: list[float] = []

    async def query(hold_s: float) -> None:
        async with admission.slot("a", deadline):
            started.append(loop.time())
            await asyncio.sleep(hold_s)

    t0 = loop.time()
    await asyncio.gather(query(1.0), query(1.0))
    assert [s - t0 for s in started] == pytest.approx([0.0, 1.0])
    assert (admission.queue.in_flight, admission.queue.waiting) == (0, 0)


@pytest.mark.looptime
async def test_waiter_is_shed_when_its_deadline_can_no_longer_be_met() -> None:
    """A waiter gets Overloaded at deadline minus the minimum budget, not later."""
    admission = Admission(
        AdmissionLimits(max_in_flight=1, max_waiting=1, min_budget_ms=5, max_queue_wait_ms=60_000)
    )
    loop = asyncio.get_running_loop()
    holder = await admission.acquire("a", Deadline.after(loop.time(), 10_000))
    t0 = loop.time()
    with pytest.raises(Overloaded, match="deadline") as info:
        await admission.acquire("b", Deadline.after(t0, 100))
    assert loop.time() - t0 == pytest.approx(0.095)
    assert info.value.retry_after_s >= 1.0
    assert admission.queue.waiting == 0
    admission.release(holder)
    assert admission.queue.in_flight == 0


@pytest.mark.looptime
async def test_cancelled_waiter_gives_up_its_place() -> None:
    """Cancelling a waiting query removes it from the queue; cancellation propagates."""
    admission = Admission(
        AdmissionLimits(max_in_flight=1, max_waiting=1, min_budget_ms=0, max_queue_wait_ms=60_000)
    )
    loop = asyncio.get_running_loop()
    holder = await admission.acquire("a", Deadline.after(loop.time(), 10_000))
    waiter = asyncio.create_task(admission.acquire("b", Deadline.after(loop.time(), 10_000)))
    await asyncio.sleep(0.001)
    assert admission.queue.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (admission.queue.waiting, admission.queue.clients) == (0, 1)
    admission.release(holder)
    assert admission.queue.in_flight == 0


@pytest.mark.looptime
async def test_evicted_waiter_is_woken_with_overloaded() -> None:
    """A waiter evicted by longest-queue drop learns it at once, not at its deadline."""
    admission = Admission(
        AdmissionLimits(max_in_flight=1, max_waiting=2, min_budget_ms=0, max_queue_wait_ms=60_000)
    )
    loop = asyncio.get_running_loop()
    far = Deadline.after(loop.time(), 10_000)
    holder = await admission.acquire("a", far)
    a_waiters = [asyncio.create_task(admission.acquire("a", far)) for _ in range(2)]
    await asyncio.sleep(0.001)
    b_waiter = asyncio.create_task(admission.acquire("b", far))
    t0 = loop.time()
    with pytest.raises(Overloaded, match="evicted"):
        await a_waiters[1]
    assert loop.time() == pytest.approx(t0)
    admission.release(holder)
    first = await a_waiters[0]  # a and b now hold nothing: the older waiter goes first
    admission.release(first)
    second = await b_waiter
    assert second.client == "b"
    admission.release(second)
    assert admission.queue.clients == 0


@pytest.mark.looptime
async def test_waiter_is_shed_at_the_longest_wait() -> None:
    """A waiter with ten seconds of budget gets Overloaded 3 ms after it started waiting."""
    admission = Admission(AdmissionLimits(max_in_flight=1, max_waiting=1, max_queue_wait_ms=3))
    loop = asyncio.get_running_loop()
    holder = await admission.acquire("a", Deadline.after(loop.time(), 10_000))
    t0 = loop.time()
    with pytest.raises(Overloaded, match="longest wait"):
        await admission.acquire("b", Deadline.after(t0, 10_000))
    assert loop.time() - t0 == pytest.approx(0.003)
    admission.release(holder)
    assert admission.queue.shed_total[ShedReason.QUEUE_TIMEOUT] == 1


def _standing_queue(standing_queue_ms: float = 100.0) -> tuple[AdmissionQueue, ManualClock]:
    """One slot, two places in line, and the standing-queue rule at ``standing_queue_ms``."""
    clock = ManualClock(100.0)
    limits = AdmissionLimits(1, 2, min_budget_ms=0.0, standing_queue_ms=standing_queue_ms)
    return AdmissionQueue(limits, clock), clock


def test_a_burst_that_drains_is_queued() -> None:
    """A queue that empties within standing_queue_ms is a burst: arrivals keep queueing."""
    queue, clock = _standing_queue()
    running = _arrive(queue, clock, "a")
    waiter = _arrive(queue, clock, "a")
    clock.advance(0.09)
    assert queue.release(running) == [waiter]  # the line emptied after 90 ms
    assert _arrive(queue, clock, "a").state is TicketState.WAITING
    assert not queue.overloaded()


def test_a_standing_queue_sheds_arrivals_at_once() -> None:
    """After the queue stood for standing_queue_ms, an arrival without a free slot is shed
    at once (reason overload) instead of queueing, while the waiters keep their places."""
    queue, clock = _standing_queue()
    running = _arrive(queue, clock, "a")
    waiter = _arrive(queue, clock, "a")
    clock.advance(0.101)  # past 100 ms (float steps)
    assert queue.overloaded()
    shed = _arrive(queue, clock, "b")
    assert shed.state is TicketState.SHED
    assert shed.shed_reason is ShedReason.OVERLOAD
    assert waiter.state is TicketState.WAITING
    assert queue.release(running) == [waiter]


def test_overload_ends_once_no_arrival_was_refused_for_the_interval() -> None:
    """Each refusal keeps the overload state for another standing_queue_ms, even after the
    line has emptied; after a quiet interval arrivals queue again."""
    queue, clock = _standing_queue()
    running = _arrive(queue, clock, "a")
    waiter = _arrive(queue, clock, "a")
    clock.advance(0.101)  # past 100 ms (float steps)
    assert _arrive(queue, clock, "b").shed_reason is ShedReason.OVERLOAD
    assert queue.release(running) == [waiter]  # the line is empty, the slot taken again
    clock.advance(0.05)
    assert _arrive(queue, clock, "b").shed_reason is ShedReason.OVERLOAD  # refused: extends
    clock.advance(0.099)
    assert queue.overloaded()
    clock.advance(0.002)
    assert not queue.overloaded()
    assert _arrive(queue, clock, "b").state is TicketState.WAITING


def test_a_free_slot_is_never_refused_while_overloaded() -> None:
    """Overload refuses only arrivals that would have to wait."""
    queue, clock = _standing_queue()
    running = _arrive(queue, clock, "a")
    waiter = _arrive(queue, clock, "a")
    clock.advance(0.101)  # past 100 ms (float steps)
    assert _arrive(queue, clock, "b").state is TicketState.SHED
    assert queue.release(running) == [waiter]
    assert queue.release(waiter) == []
    assert queue.overloaded()
    assert _arrive(queue, clock, "c").state is TicketState.ADMITTED


def test_standing_queue_rule_can_be_turned_off() -> None:
    """standing_queue_ms=None: a queue may stand for ever, arrivals keep queueing."""
    queue, clock = _queue(max_in_flight=1, max_waiting=3)
    _arrive(queue, clock, "a")
    _arrive(queue, clock, "a")
    clock.advance(10.0)
    assert not queue.overloaded()
    assert _arrive(queue, clock, "a").state is TicketState.WAITING


def test_refuse_arrival_answers_only_when_any_arrival_would_be_shed() -> None:
    """refuse_arrival sheds (and counts) only when arrive would shed whoever arrived."""
    queue, clock = _standing_queue()
    assert queue.refuse_arrival() is None  # a free slot
    running = _arrive(queue, clock, "a")
    assert queue.refuse_arrival() is None  # no slot, but a place in line (client-dependent)
    _arrive(queue, clock, "a")
    clock.advance(0.101)  # past 100 ms (float steps)
    reason = queue.refuse_arrival()
    assert reason is not None
    assert reason.startswith("overloaded")
    assert queue.shed_total[ShedReason.OVERLOAD] == 1
    queue.release(running)
    no_line, line_clock = _queue(max_in_flight=1, max_waiting=0)
    _arrive(no_line, line_clock, "a")
    assert no_line.refuse_arrival() == "overloaded: the wait queue is full"
    assert no_line.shed_total[ShedReason.QUEUE_FULL] == 1


def test_refuse_arrival_promises_the_free_slot_it_lets_an_arrival_through_for() -> None:
    """While overloaded, the arrival let through to the one free slot is promised it: the
    arrivals read after it, before it reaches arrive, are refused; once it arrives, the
    promise is spent and the next refusal counts the slot as taken for real."""
    queue, clock = _standing_queue()
    running = _arrive(queue, clock, "a")
    waiter = _arrive(queue, clock, "a")
    clock.advance(0.101)
    assert queue.refuse_arrival() is not None  # overloaded, no free slot
    assert queue.release(running) == [waiter]
    assert queue.release(waiter) == []  # a free slot, still overloaded
    assert queue.refuse_arrival() is None  # let through, and promised the slot
    assert queue.claimed == 1
    assert [queue.refuse_arrival() for _ in range(3)] == [_OVERLOADED] * 3
    assert _arrive(queue, clock, "b").state is TicketState.ADMITTED
    assert queue.claimed == 0
    assert queue.refuse_arrival() == _OVERLOADED
    assert queue.shed_total[ShedReason.OVERLOAD] == 5


def test_a_promised_slot_is_free_again_after_the_promise_expires() -> None:
    """An arrival let through that never reaches arrive (say, a malformed query answered
    400) holds its slot's promise for 20 ms only."""
    queue, clock = _standing_queue()
    running = _arrive(queue, clock, "a")
    waiter = _arrive(queue, clock, "a")
    clock.advance(0.101)
    assert queue.refuse_arrival() is not None
    queue.release(running)
    queue.release(waiter)
    assert queue.refuse_arrival() is None
    clock.advance(0.019)
    assert queue.refuse_arrival() == _OVERLOADED
    clock.advance(0.002)
    assert queue.claimed == 0
    assert queue.refuse_arrival() is None  # the slot is offered again
    assert queue.claimed == 1


def test_promises_never_exceed_the_free_slots() -> None:
    """Without overload, arrivals beyond the promised slots are let through unpromised (the
    handler queues or sheds them), and promises are bounded by the limit."""
    queue, clock = _queue(max_in_flight=2, max_waiting=2)
    assert [queue.refuse_arrival() for _ in range(5)] == [None] * 5
    assert queue.claimed == 2
    _arrive(queue, clock, "a")
    assert queue.claimed == 1
