"""Simulated shards in virtual time: seeded draws, true top-k, deadlines, faults, the wrapper."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator import Coordinator, Deadline, Query, ShardReply
from aggregator.backend import ShardBackend
from aggregator.errors import ConfigError, InvalidSpec, ShardError, ShardTimeout
from aggregator.merge import merge_top_k
from shards.latency import Constant, LogNormal
from shards.sim import (
    Behaviour,
    DegradeWindow,
    Delayed,
    SimulatedShard,
    parse_behaviour,
    simulated_cluster,
    true_top_k,
)
from tests.aggregator.fakes import ScriptedShard


def _deadline(budget_ms: float | None) -> Deadline:
    return Deadline.after(asyncio.get_running_loop().time(), budget_ms)


async def _timed(
    backend: ShardBackend, query: Query, budget_ms: float | None
) -> tuple[float, ShardReply]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await backend.search(query, _deadline(budget_ms))
    return loop.time() - start, reply


# -- hits ---------------------------------------------------------------------------------------


def test_top_k_is_the_best_of_all_documents() -> None:
    """top_k(k) is the k best of the shard's full ranking, best first, with stable ids."""
    shard = SimulatedShard("s", 500, seed=3)
    everything = shard.top_k("q", 500)
    assert len(everything) == 500
    assert sorted(h.doc_id for h in everything) == sorted(f"s-{i}" for i in range(500))
    scores = [h.score for h in everything]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s < 1.0 for s in scores)
    assert shard.top_k("q", 7) == everything[:7]
    assert shard.top_k("q", 10_000) == everything


def test_hits_are_a_function_of_seed_query_and_document() -> None:
    """Same seed and query give the same hits; another seed or query gives others."""
    a = SimulatedShard("s", 1000, seed=1)
    b = SimulatedShard("s", 1000, seed=1)
    assert (
        a.top_k("hello", 10) == b.top_k("hello", 10) == true_top_k("s", 1000, "hello", 10, seed=1)
    )
    assert a.top_k("hello", 10) != a.top_k("world", 10)
    assert a.top_k("hello", 10) != SimulatedShard("s", 1000, seed=2).top_k("hello", 10)


def test_empty_shard_has_no_hits() -> None:
    """A shard without documents returns no hits."""
    assert SimulatedShard("s", 0).top_k("q", 10) == ()


@pytest.mark.looptime
async def test_merged_answer_is_the_top_k_of_the_union() -> None:
    """The coordinator's merged top-k over simulated shards equals the union's true top-k."""
    shards = simulated_cluster(8, "uniform:min=1ms,max=20ms", seed=5, docs_per_shard=300)
    response = await Coordinator(shards).search(Query("union", k=25, deadline_ms=1000))
    union = [h for s in shards for h in true_top_k(s.name, 300, "union", 300, seed=5)]
    expected = merge_top_k([union], 25)
    assert [h.doc_id for h in response.hits] == [h.doc_id for h in expected]
    assert not response.partial


# -- latency and determinism --------------------------------------------------------------------


@pytest.mark.looptime
async def test_same_seed_and_query_give_the_same_latency() -> None:
    """Two shards with the same seed, name and query take the same time."""
    behaviour = "lognormal:median=8ms,sigma=0.6"
    a = SimulatedShard("s", 100, behaviour, seed=9)
    b = SimulatedShard("s", 100, behaviour, seed=9)
    took_a, reply_a = await _timed(a, Query("q"), None)
    took_b, reply_b = await _timed(b, Query("q"), None)
    assert took_a == pytest.approx(took_b, abs=1e-6)
    assert took_a == pytest.approx(a.draw("q").latency_s, abs=1e-6)
    assert reply_a == reply_b
    assert reply_a.took_ms == pytest.approx(took_a * 1e3, abs=1e-3)


def test_draws_differ_by_query_replica_and_call_when_asked() -> None:
    """Queries and replicas draw independently; vary_by_call spreads one query's draws."""
    spec = "lognormal:median=8ms,sigma=0.6"
    shard = SimulatedShard("s", 10, spec, seed=1)
    assert shard.draw("a") == shard.draw("a")
    assert len({shard.draw(f"q{i}").latency_s for i in range(50)}) == 50
    other = SimulatedShard("s", 10, spec, seed=1, replica="1")
    assert other.draw("a") != shard.draw("a")
    assert shard.top_k("a", 5) == other.top_k("a", 5)
    assert len({shard.draw("a", call_index=i).latency_s for i in range(50)}) == 50


@pytest.mark.looptime
async def test_vary_by_call_changes_latency_between_repeats() -> None:
    """With vary_by_call, repeating a query does not repeat its latency."""
    shard = SimulatedShard("s", 10, "lognormal:median=8ms,sigma=0.6", vary_by_call=True)
    took = [(await _timed(shard, Query("q"), None))[0] for _ in range(5)]
    assert len(set(took)) == 5
    assert took[0] == pytest.approx(shard.draw("q", 0).latency_s, abs=1e-6)
    assert took[3] == pytest.approx(shard.draw("q", 3).latency_s, abs=1e-6)


async def test_zero_latency_answers_without_suspending() -> None:
    """A latency-0 shard answers in one step, never yielding to the event loop."""
    shard = SimulatedShard("s", 1000)
    coro = shard.search(Query("q", k=3), _deadline(50))
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    reply = done.value.value
    assert isinstance(reply, ShardReply)
    assert reply.hits == shard.top_k("q", 3)
    assert reply.took_ms == 0.0


# -- deadlines and faults -----------------------------------------------------------------------


@pytest.mark.looptime
async def test_deadline_is_honoured_exactly() -> None:
    """A latency beyond the budget sleeps to the deadline, then raises ShardTimeout."""
    loop = asyncio.get_running_loop()
    shard = SimulatedShard("s", 100, "constant:100ms")
    deadline = _deadline(30)
    with pytest.raises(ShardTimeout, match="budget spent"):
        await shard.search(Query("q"), deadline)
    assert loop.time() == pytest.approx(deadline.expires_at_s, abs=1e-6)


@pytest.mark.looptime
async def test_spent_budget_times_out_at_once() -> None:
    """A call arriving after its deadline raises ShardTimeout without waiting."""
    loop = asyncio.get_running_loop()
    deadline = _deadline(10)
    await asyncio.sleep(0.02)
    start = loop.time()
    with pytest.raises(ShardTimeout):
        await SimulatedShard("s", 10, "constant:1ms").search(Query("q"), deadline)
    assert loop.time() == start


@pytest.mark.looptime
async def test_latency_within_budget_answers() -> None:
    """A latency inside the budget answers after exactly that latency."""
    took, reply = await _timed(SimulatedShard("s", 10, "constant:20ms"), Query("q"), 30)
    assert took == pytest.approx(0.020, abs=1e-6)
    assert len(reply.hits) == 10


@pytest.mark.looptime
async def test_hang_never_answers_and_ignores_its_deadline() -> None:
    """A hanging shard neither answers nor times out; only cancellation ends it."""
    loop = asyncio.get_running_loop()
    shard = SimulatedShard("s", 10, "constant:1ms;hang=1")
    task = asyncio.ensure_future(shard.search(Query("q"), _deadline(50)))
    done, _ = await asyncio.wait({task}, timeout=3600)
    assert not done
    start = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() == start


@pytest.mark.looptime
async def test_error_is_raised_after_the_latency() -> None:
    """error=1 fails with a ShardError (not a timeout) once the latency has passed."""
    shard = SimulatedShard("s", 10, "constant:5ms;error=1")
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ShardError, match="simulated failure") as info:
        await shard.search(Query("q"), _deadline(50))
    assert not isinstance(info.value, ShardTimeout)
    assert loop.time() - start == pytest.approx(0.005, abs=1e-6)


def test_error_and_hang_probabilities() -> None:
    """error=0.3 and hang=0.05 fire on about 30% and 5% of distinct queries."""
    shard = SimulatedShard("s", 10, "constant:1ms;error=0.3;hang=0.05", seed=4)
    draws = [shard.draw(f"q{i}") for i in range(20_000)]
    assert sum(d.error for d in draws) / len(draws) == pytest.approx(0.3, abs=0.015)
    assert sum(d.hang for d in draws) / len(draws) == pytest.approx(0.05, abs=0.006)


@pytest.mark.looptime
async def test_degradation_window_multiplies_latency() -> None:
    """Calls starting inside the window take factor x latency; before and after, normal."""
    loop = asyncio.get_running_loop()
    shard = SimulatedShard("s", 10, "constant:10ms;degrade=1s-2s*10")
    born = loop.time()
    took_before, _ = await _timed(shard, Query("q"), None)
    await asyncio.sleep(born + 1.5 - loop.time())
    took_during, reply = await _timed(shard, Query("q"), None)
    await asyncio.sleep(born + 2.5 - loop.time())
    took_after, _ = await _timed(shard, Query("q"), None)
    assert took_before == pytest.approx(0.010, abs=1e-6)
    assert took_during == pytest.approx(0.100, abs=1e-6)
    assert reply.took_ms == pytest.approx(100.0)
    assert took_after == pytest.approx(0.010, abs=1e-6)


@pytest.mark.looptime
async def test_degradation_counts_against_the_deadline() -> None:
    """A degraded call that no longer fits its budget times out at the deadline."""
    loop = asyncio.get_running_loop()
    shard = SimulatedShard("s", 10, "constant:10ms;degrade=0s-*10")
    deadline = _deadline(50)
    with pytest.raises(ShardTimeout):
        await shard.search(Query("q"), deadline)
    assert loop.time() == pytest.approx(deadline.expires_at_s, abs=1e-6)


# -- the wrapper --------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_delayed_adds_latency_then_delegates() -> None:
    """Delayed spends its latency, then returns the inner backend's reply under its name."""
    inner = ScriptedShard("bm25-0", 0.005, docs=42, hits=[("d1", 2.0), ("d2", 1.0)])
    wrapped = Delayed(inner, "constant:20ms", seed=1)
    assert (wrapped.name, wrapped.doc_count) == ("bm25-0", 42)
    assert isinstance(wrapped, ShardBackend)
    took, reply = await _timed(wrapped, Query("q"), 100)
    assert took == pytest.approx(0.025, abs=1e-6)
    assert [h.doc_id for h in reply.hits] == ["d1", "d2"]
    assert reply.took_ms == pytest.approx(20.0)
    assert inner.calls == 1


@pytest.mark.looptime
async def test_delayed_cuts_at_the_deadline_without_calling_inner() -> None:
    """A wrapper latency beyond the budget times out at the deadline; inner is never called."""
    loop = asyncio.get_running_loop()
    inner = ScriptedShard("bm25-0", 0.0)
    deadline = _deadline(30)
    with pytest.raises(ShardTimeout):
        await Delayed(inner, "constant:100ms").search(Query("q"), deadline)
    assert loop.time() == pytest.approx(deadline.expires_at_s, abs=1e-6)
    assert inner.calls == 0


@pytest.mark.looptime
async def test_delayed_passes_the_same_deadline_down() -> None:
    """The inner backend gets the query's own deadline, already partly spent."""
    seen: list[Deadline] = []

    class Recorder(ScriptedShard):
        async def search(self, query: Query, deadline: Deadline) -> ShardReply:
            seen.append(deadline)
            return await super().search(query, deadline)

    deadline = _deadline(100)
    await Delayed(Recorder("r", 0.0), "constant:10ms").search(Query("q"), deadline)
    assert seen == [deadline]


# -- clusters -----------------------------------------------------------------------------------


def test_simulated_cluster_names_and_slow_overrides() -> None:
    """The cluster names shards in order and gives slow ones their own behaviour."""
    shards = simulated_cluster(12, "constant:5ms", seed=2, docs_per_shard=50, slow={3: "hang=1"})
    assert [s.name for s in shards][:3] == ["shard-00", "shard-01", "shard-02"]
    assert all(s.doc_count == 50 for s in shards)
    assert shards[3].behaviour == Behaviour(Constant(0.0), hang_p=1.0)
    assert shards[4].behaviour == Behaviour(Constant(0.005))


@pytest.mark.parametrize(
    ("n_shards", "slow", "message"),
    [
        (0, {}, "1..4096 shards"),
        (4, {4: "constant:1s"}, "out of range 0..3"),
        (4, {-1: "constant:1s"}, "out of range"),
    ],
)
def test_simulated_cluster_rejects_bad_shapes(
    n_shards: int, slow: dict[int, str], message: str
) -> None:
    """No shards, or a slow index outside the cluster, is a ConfigError."""
    with pytest.raises(ConfigError, match=message):
        simulated_cluster(n_shards, "constant:1ms", slow=slow)


@pytest.mark.looptime
async def test_coordinator_over_a_cluster_with_stuck_and_slow_shards() -> None:
    """16 shards, one hung and one slow: 14 ok, 2 timeouts, an answer at exactly 50 ms."""
    loop = asyncio.get_running_loop()
    shards = simulated_cluster(
        16, "uniform:min=1ms,max=20ms", slow={2: "constant:1ms;hang=1", 7: "constant:1s"}
    )
    start = loop.time()
    response = await Coordinator(shards).search(Query("q", deadline_ms=50))
    assert loop.time() - start == pytest.approx(0.050, abs=1e-6)
    statuses = [o.status.value for o in response.shards]
    assert statuses.count("ok") == 14
    assert statuses[2] == statuses[7] == "timeout"
    assert response.completeness.coverage == pytest.approx(14 / 16)


# -- the behaviour text form --------------------------------------------------------------------


def test_behaviour_spec_parses_every_clause() -> None:
    """Latency, error, hang and degrade clauses parse to one Behaviour."""
    behaviour = parse_behaviour(
        "lognormal:median=8ms,sigma=0.6;error=0.01;hang=0.001;degrade=2s-5s*10"
    )
    assert behaviour == Behaviour(
        LogNormal(0.008, 0.6), error_p=0.01, hang_p=0.001, degrade=(DegradeWindow(2.0, 5.0, 10.0),)
    )
    assert parse_behaviour("error=1") == Behaviour(error_p=1.0)
    assert parse_behaviour("constant:1ms;degrade=2s-*3").degrade[0].end_s == math.inf


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("constant:1ms;error=2", "error probability must be in"),
        ("constant:1ms;hang=nan", "hang probability"),
        ("constant:1ms;error=x", "must be a number"),
        ("constant:1ms;timeout=1", "unknown clause"),
        ("constant:1ms;error=0.1;error=0.2", "given twice"),
        ("constant:1ms;degrade=5s-2s*3", "end after it starts"),
        ("constant:1ms;degrade=2s*3", "not START-END"),
        ("constant:1ms;degrade=2s-5s", "START-END\\*FACTOR"),
        ("constant:1ms;degrade=2s-5s*0", "factor"),
        ("constant:1ms;degrade=2-5s*3", "needs a unit"),
        ("bogus:1ms;error=0.1", "unknown model"),
    ],
)
def test_bad_behaviour_specs(text: str, message: str) -> None:
    """Each malformed behaviour is one InvalidSpec line naming the problem."""
    with pytest.raises(InvalidSpec, match=message) as info:
        parse_behaviour(text)
    assert "\n" not in str(info.value)


_windows = st.builds(
    lambda start, length, factor: DegradeWindow(start, start + length, factor),
    st.floats(min_value=0.0, max_value=100.0),
    st.one_of(st.floats(min_value=0.001, max_value=100.0), st.just(math.inf)),
    st.floats(min_value=0.01, max_value=1000.0),
)


@given(
    st.builds(
        Behaviour,
        st.builds(LogNormal, st.floats(min_value=1e-6, max_value=1.0), st.floats(0.0, 3.0)),
        st.floats(0.0, 1.0),
        st.floats(0.0, 1.0),
        st.lists(_windows, max_size=3).map(tuple),
    )
)
def test_behaviour_spec_round_trips(behaviour: Behaviour) -> None:
    """Behaviour spec -> parse -> spec round-trips."""
    assert parse_behaviour(behaviour.spec) == behaviour
