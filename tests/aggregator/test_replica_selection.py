"""Load bookkeeping (peak EWMA, outstanding requests) and replica selection policies."""

from __future__ import annotations

import math
import random

import pytest

from aggregator.clock import ManualClock
from aggregator.replica_selection import (
    PowerOfTwoChoices,
    RandomOrder,
    ReplicaLoads,
    RoundRobin,
    make_selector,
)


def test_peak_ewma_jumps_up_at_once() -> None:
    """A sample above the average replaces it immediately."""
    loads = ReplicaLoads(ManualClock(), decay_s=10.0)
    loads.observe("s", 0, 0.010)
    loads.observe("s", 0, 0.500)
    assert loads.get("s", 0).ewma_s == pytest.approx(0.500)


def test_peak_ewma_decays_with_time_between_samples() -> None:
    """A lower sample pulls the average down by 1 - exp(-elapsed / decay)."""
    clock = ManualClock()
    loads = ReplicaLoads(clock, decay_s=10.0)
    loads.observe("s", 0, 0.100)
    clock.advance(10.0)
    loads.observe("s", 0, 0.0)
    assert loads.get("s", 0).ewma_s == pytest.approx(0.100 * math.exp(-1.0))


def test_outstanding_counts_and_fast_failures_leave_latency_alone() -> None:
    """Starts and ends move the outstanding count; an end without latency keeps the EWMA."""
    loads = ReplicaLoads(ManualClock())
    loads.on_start("s", 1)
    loads.on_start("s", 1)
    assert loads.get("s", 1).outstanding == 2
    loads.on_end("s", 1, 0.020)
    loads.on_end("s", 1, None)
    load = loads.get("s", 1)
    assert load.outstanding == 0
    assert load.ewma_s == pytest.approx(0.020)
    assert loads.cost("s", 1) == pytest.approx(0.020)


def test_cost_grows_with_outstanding_requests() -> None:
    """Cost is latency x (outstanding + 1)."""
    loads = ReplicaLoads(ManualClock())
    loads.observe("s", 0, 0.010)
    loads.on_start("s", 0)
    loads.on_start("s", 0)
    assert loads.cost("s", 0) == pytest.approx(0.030)


def test_p2c_with_two_candidates_always_leads_with_the_cheaper() -> None:
    """Between two replicas the cheaper one leads every time, whatever the draw."""
    loads = ReplicaLoads(ManualClock())
    loads.observe("s", 0, 0.200)
    loads.observe("s", 1, 0.010)
    selector = PowerOfTwoChoices(loads, random.Random(3))
    assert {selector.order("s", [0, 1]) for _ in range(50)} == {(1, 0)}


def test_p2c_never_leads_with_the_most_expensive_of_three() -> None:
    """The worst of three can never win a comparison of two; the rest follow by cost."""
    loads = ReplicaLoads(ManualClock())
    for replica, latency_s in ((0, 0.010), (1, 0.020), (2, 0.900)):
        loads.observe("s", replica, latency_s)
    selector = PowerOfTwoChoices(loads, random.Random(5))
    orders = {selector.order("s", [0, 1, 2]) for _ in range(200)}
    assert all(order[0] != 2 for order in orders)
    assert all(order[-1] == 2 for order in orders)
    assert {order[0] for order in orders} == {0, 1}


def test_round_robin_rotates_per_shard() -> None:
    """Each plan of a shard moves the lead one place; shards rotate independently."""
    selector = RoundRobin()
    assert [selector.order("a", [0, 1, 2]) for _ in range(4)] == [
        (0, 1, 2),
        (1, 2, 0),
        (2, 0, 1),
        (0, 1, 2),
    ]
    assert selector.order("b", [0, 1]) == (0, 1)


def test_random_order_is_a_permutation() -> None:
    """Random order keeps every candidate exactly once and varies the lead."""
    selector = RandomOrder(random.Random(2))
    orders = [selector.order("s", [0, 1, 2]) for _ in range(60)]
    assert all(sorted(o) == [0, 1, 2] for o in orders)
    assert len({o[0] for o in orders}) == 3


def test_single_candidate_is_returned_as_is() -> None:
    """One candidate: nothing to choose."""
    selector = PowerOfTwoChoices(ReplicaLoads(ManualClock()), random.Random(0))
    assert selector.order("s", [4]) == (4,)


def test_unknown_selector_is_rejected() -> None:
    """A misspelt policy name raises ValueError naming the choices."""
    with pytest.raises(ValueError, match="p2c, round_robin, random"):
        make_selector("fastest", ReplicaLoads(ManualClock()), random.Random(0))
