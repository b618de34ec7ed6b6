"""Latency models: seeded statistics, the compact text form and its errors."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.errors import InvalidSpec
from shards.latency import (
    MAX_LATENCY_S,
    Constant,
    Empirical,
    Exponential,
    LatencyModel,
    LogNormal,
    Mixture,
    Normal,
    Pareto,
    Uniform,
    format_duration,
    parse_duration_s,
    parse_latency,
)

N = 20_000


def _samples(model: LatencyModel, n: int = N, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [model.sample_s(rng) for _ in range(n)]


# -- statistics with a fixed seed ---------------------------------------------------------------


def test_constant_is_constant() -> None:
    """A constant model always returns its value."""
    assert set(_samples(parse_latency("constant:5ms"), 100)) == {0.005}


def test_uniform_stays_in_range_with_the_right_mean() -> None:
    """Uniform draws stay within [min, max] and average the midpoint."""
    samples = _samples(parse_latency("uniform:min=1ms,max=5ms"))
    assert min(samples) >= 0.001
    assert max(samples) <= 0.005
    assert statistics.fmean(samples) == pytest.approx(0.003, rel=0.02)


def test_normal_mean_and_sd() -> None:
    """A normal far from 0 keeps its mean and standard deviation."""
    samples = _samples(parse_latency("normal:mean=10ms,sd=2ms"))
    assert statistics.fmean(samples) == pytest.approx(0.010, rel=0.01)
    assert statistics.stdev(samples) == pytest.approx(0.002, rel=0.03)


def test_normal_is_truncated_at_zero() -> None:
    """A normal centred on 0 never yields a negative latency."""
    samples = _samples(Normal(0.0, 0.005))
    assert min(samples) >= 0.0
    # Half-normal mean is sd * sqrt(2 / pi).
    assert statistics.fmean(samples) == pytest.approx(0.005 * math.sqrt(2 / math.pi), rel=0.03)


def test_exponential_mean() -> None:
    """Exponential draws average their mean."""
    samples = _samples(parse_latency("exponential:mean=5ms"))
    assert min(samples) >= 0.0
    assert statistics.fmean(samples) == pytest.approx(0.005, rel=0.03)


def test_lognormal_median_and_p99() -> None:
    """Log-normal median and p99 match median and median * exp(2.326 sigma)."""
    samples = sorted(_samples(parse_latency("lognormal:median=8ms,sigma=0.6")))
    assert samples[N // 2] == pytest.approx(0.008, rel=0.03)
    assert samples[int(N * 0.99)] == pytest.approx(0.008 * math.exp(2.326 * 0.6), rel=0.08)


def test_pareto_minimum_and_median() -> None:
    """Pareto draws are at least the scale, with median scale * 2 ** (1 / alpha)."""
    samples = sorted(_samples(parse_latency("pareto:scale=5ms,alpha=1.5")))
    assert samples[0] >= 0.005
    assert samples[N // 2] == pytest.approx(0.005 * 2 ** (1 / 1.5), rel=0.03)


def test_heavy_tails_are_capped() -> None:
    """Even an absurd tail index never yields an infinite or over-long latency."""
    samples = _samples(Pareto(0.001, 0.001), 1000)
    assert max(samples) == MAX_LATENCY_S
    assert all(math.isfinite(s) for s in samples)


def test_mixture_tail_share() -> None:
    """A 99/1 mixture puts about 1% of draws at the slow component."""
    model = parse_latency("mixture:0.99*lognormal:median=8ms,sigma=0.5+0.01*constant:1s")
    samples = _samples(model)
    share = sum(1 for s in samples if s == 1.0) / N
    assert share == pytest.approx(0.01, abs=0.002)
    assert sorted(samples)[N // 2] == pytest.approx(0.008, rel=0.04)


def test_draws_are_determined_by_the_seed() -> None:
    """The same seed gives the same draws; another seed gives others."""
    model = parse_latency("lognormal:median=8ms,sigma=0.6")
    assert _samples(model, 50, seed=1) == _samples(model, 50, seed=1)
    assert _samples(model, 50, seed=1) != _samples(model, 50, seed=2)


# -- empirical ----------------------------------------------------------------------------------


def test_empirical_reads_ms_and_draws_only_its_samples(tmp_path: Path) -> None:
    """Samples in ms, one per line (CSV first column, header, comments) become seconds."""
    path = tmp_path / "lat.csv"
    path.write_text("latency_ms,host\n# warm-up dropped\n1.5,a\n\n3,b\n10,c\n")
    model = parse_latency(f"empirical:path={path}")
    assert isinstance(model, Empirical)
    assert model.samples_s == (0.0015, 0.003, 0.010)
    assert set(_samples(model, 300)) == {0.0015, 0.003, 0.010}
    assert parse_latency(model.spec) == model


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1\nabc\n", "line 2"),
        ("1\n-3\n", "line 2"),
        ("1\nnan\n", "line 2"),
        ("", "no samples"),
        ("header\nother-header\n", "line 2"),
    ],
)
def test_empirical_bad_file_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    """A bad sample file is an InvalidSpec naming the file and the offending line."""
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(InvalidSpec, match=message) as info:
        parse_latency(f"empirical:path={path}")
    assert str(path) in str(info.value)


def test_empirical_missing_file(tmp_path: Path) -> None:
    """A missing sample file is an InvalidSpec naming it."""
    with pytest.raises(InvalidSpec, match=r"missing\.txt"):
        parse_latency(f"empirical:path={tmp_path / 'missing.txt'}")


# -- the text form ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "model"),
    [
        ("constant:5ms", Constant(0.005)),
        ("constant:value=250us", Constant(0.00025)),
        ("uniform:min=1ms,max=5ms", Uniform(0.001, 0.005)),
        ("normal:mean=10ms,sd=2ms", Normal(0.010, 0.002)),
        ("exponential:mean=5ms", Exponential(0.005)),
        ("lognormal:median=8ms,sigma=0.6", LogNormal(0.008, 0.6)),
        ("pareto:scale=5ms,alpha=1.5", Pareto(0.005, 1.5)),
        (
            "mixture:0.99*lognormal:median=8ms,sigma=0.5+0.01*constant:1s",
            Mixture(((0.99, LogNormal(0.008, 0.5)), (0.01, Constant(1.0)))),
        ),
        (" LogNormal : sigma = 0.6 , median = 8 ms ", LogNormal(0.008, 0.6)),
        (
            "mixture:0.5*constant:1e+2ms+0.5*constant:1e-2s",
            Mixture(((0.5, Constant(0.1)), (0.5, Constant(0.01)))),
        ),
    ],
)
def test_parse_examples(text: str, model: LatencyModel) -> None:
    """The documented forms parse to the expected models (case and spaces tolerated)."""
    assert parse_latency(text) == model


def test_spec_is_the_canonical_text() -> None:
    """A model's spec is its shortest canonical text."""
    assert Constant(0.005).spec == "constant:5ms"
    assert Constant(1.0).spec == "constant:1s"
    assert LogNormal(0.008, 0.6).spec == "lognormal:median=8ms,sigma=0.6"
    assert format_duration(0.00025) == "250us"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gamma:shape=2", "unknown model 'gamma'"),
        ("lognormal", "expected MODEL:PARAMS"),
        ("constant:5", "needs a unit"),
        ("lognormal:median=8ms", "missing sigma"),
        ("lognormal:median=8ms,sigma=0.6,mu=1", "no parameter 'mu'"),
        ("uniform:min=1ms,min=2ms,max=3ms", "given twice"),
        ("constant:-1ms", "must not be negative"),
        ("constant:nanms", "NaN"),
        ("constant:infms", "finite"),
        ("constant:2h", "needs a unit"),
        ("constant:5000s", "longer than"),
        ("lognormal:median=8ms,sigma=nan", "NaN"),
        ("lognormal:median=8ms,sigma=0.6ms", "without a unit"),
        ("lognormal:median=0ms,sigma=0.6", "positive"),
        ("pareto:scale=5ms,alpha=0", "pareto alpha"),
        ("uniform:min=5ms,max=1ms", "below min"),
        ("normal:mean=10ms,sd", "KEY=VALUE"),
        ("mixture:0.5*constant:1ms+0.4*constant:2ms", "sum to 1"),
        ("mixture:0.5*constant:1ms+0.5", "WEIGHT\\*MODEL"),
        ("mixture:1*mixture:1*constant:1ms", "do not nest"),
        ("mixture:1.5*constant:1ms+-0.5*constant:1ms", "mixture weight"),
        ("empirical:file=x", "path=FILE"),
    ],
)
def test_bad_specs_say_what_is_wrong(text: str, message: str) -> None:
    """Each malformed spec is one InvalidSpec line naming the spec and the problem."""
    with pytest.raises(InvalidSpec, match=message) as info:
        parse_latency(text)
    assert "\n" not in str(info.value)
    assert repr(text.strip()) in str(info.value)


def test_parse_duration_units() -> None:
    """Durations take us, ms or s and nothing else."""
    assert parse_duration_s("250us") == pytest.approx(0.00025)
    assert parse_duration_s("5ms") == 0.005
    assert parse_duration_s("1.5s") == 1.5
    with pytest.raises(InvalidSpec, match="needs a unit"):
        parse_duration_s("5")


# -- round trip ---------------------------------------------------------------------------------

_durations = st.floats(min_value=0.0, max_value=MAX_LATENCY_S, allow_nan=False)
_positive_durations = st.floats(min_value=1e-9, max_value=MAX_LATENCY_S)

_simple_models: st.SearchStrategy[LatencyModel] = st.one_of(
    st.builds(Constant, _durations),
    st.tuples(_durations, _durations).map(lambda p: Uniform(min(p), max(p))),
    st.builds(Normal, _durations, _durations),
    st.builds(Exponential, _durations),
    st.builds(LogNormal, _positive_durations, st.floats(min_value=0.0, max_value=10.0)),
    st.builds(Pareto, _positive_durations, st.floats(min_value=1e-3, max_value=1000.0)),
)


@st.composite
def _mixtures(draw: st.DrawFn) -> Mixture:
    models = draw(st.lists(_simple_models, min_size=1, max_size=4))
    raw = draw(
        st.lists(
            st.floats(min_value=0.01, max_value=1.0), min_size=len(models), max_size=len(models)
        )
    )
    total = math.fsum(raw)
    return Mixture(tuple((w / total, m) for w, m in zip(raw, models, strict=True)))


@given(st.one_of(_simple_models, _mixtures()))
def test_spec_round_trips(model: LatencyModel) -> None:
    """spec -> parse -> spec gives the same text and an equal model."""
    parsed = parse_latency(model.spec)
    assert parsed == model
    assert parsed.spec == model.spec


@given(_durations)
def test_duration_text_round_trips_exactly(value_s: float) -> None:
    """format_duration's text parses back to exactly the same float."""
    assert parse_duration_s(format_duration(value_s)) == value_s
