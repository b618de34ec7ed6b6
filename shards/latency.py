"""Latency models for simulated shards, and their compact text form.

A model is a frozen value with a ``spec`` (its text form) and ``sample_s(rng)``, which draws
one latency in seconds from the :class:`random.Random` it is given; the model holds no state,
so the caller's seeded generator decides every draw.

Text form, usable on the command line and in config files (durations need a unit: ``us``,
``ms`` or ``s``; ``sigma``, ``alpha`` and mixture weights are plain numbers)::

    constant:5ms
    uniform:min=1ms,max=5ms
    normal:mean=10ms,sd=2ms                 truncated at 0: negative draws are redrawn
    exponential:mean=5ms
    lognormal:median=8ms,sigma=0.6
    pareto:scale=5ms,alpha=1.5              scale is the minimum latency
    mixture:0.99*lognormal:median=8ms,sigma=0.5+0.01*constant:1s
    empirical:path=FILE                     samples in ms, one per line (first CSV column)

Mixture weights must sum to 1; mixtures do not nest. An empirical path must not contain
``+`` inside a mixture, nor ``;`` inside a shard behaviour spec (see :mod:`shards.sim`).
:func:`parse_latency` raises :class:`aggregator.errors.InvalidSpec` with a one-line message
naming what is wrong, and ``parse_latency(model.spec) == model`` for every model.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from aggregator.errors import InvalidSpec

__all__ = [
    "MAX_EMPIRICAL_SAMPLES",
    "MAX_LATENCY_S",
    "MODEL_NAMES",
    "Constant",
    "Empirical",
    "Exponential",
    "LatencyModel",
    "LogNormal",
    "Mixture",
    "Normal",
    "Pareto",
    "Uniform",
    "format_duration",
    "format_number",
    "parse_duration_s",
    "parse_latency",
    "sample_array",
]

#: Largest latency a model may be configured with (one hour); larger is a typo.
MAX_LATENCY_S = 3600.0
#: Most samples an empirical model reads from its file.
MAX_EMPIRICAL_SAMPLES = 1_000_000

# Unit name -> how many of that unit make one second. A parsed value is ``number / factor``.
_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e3, "us": 1e6}
_DURATION = re.compile(r"^(?P<number>.*?)\s*(?P<unit>us|ms|s)$")
# A mixture's components are joined by "+"; a "+" right after a number's "e" is an exponent
# (as in "1e+2ms") and does not split.
_COMPONENT_SPLIT = re.compile(r"(?<![0-9.][eE])\+")
_COMPONENT = re.compile(r"^\s*(?P<weight>[^*]+?)\s*\*\s*(?P<spec>.+?)\s*$")
_HEADER = re.compile(r"^[A-Za-z_][\w ,.()-]*$")
_WEIGHT_TOLERANCE = 1e-9
# A truncated normal redraws negative samples; with mean >= 0 a draw is kept with
# probability >= 1/2, so this bound is reached with probability <= 2**-64.
_MAX_REDRAWS = 64
# Heavy tails are capped at MAX_LATENCY_S; exp() of more than this would overflow anyway.
_MAX_EXPONENT = 700.0


class LatencyModel(Protocol):
    """A distribution of latencies in seconds."""

    @property
    def spec(self) -> str:
        """The compact text form; ``parse_latency(spec)`` gives an equal model back."""
        ...

    def sample_s(self, rng: random.Random) -> float:
        """One latency in seconds (finite, >= 0), drawn from ``rng``."""
        ...


# -- numbers and durations --------------------------------------------------------------------


def format_number(value: float) -> str:
    """``value`` as the shortest text that reads back exactly (``5.0`` -> ``"5"``)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def format_duration(value_s: float) -> str:
    """The shortest text in ``s``, ``ms`` or ``us`` that :func:`parse_duration_s` reads back
    as exactly ``value_s``: ``0.005`` -> ``"5ms"``, ``1.0`` -> ``"1s"``."""
    best = format_number(value_s) + "s"
    for unit, factor in _UNITS.items():
        text = format_number(value_s * factor)
        if float(text) / factor == value_s and len(text) + len(unit) < len(best):
            best = text + unit
    return best


def parse_duration_s(text: str, *, what: str = "duration") -> float:
    """Seconds in ``text`` such as ``5ms``, ``250us`` or ``1.5s``.

    Raises :class:`InvalidSpec` for a missing unit, a non-number, NaN, infinity, a negative
    value or one above :data:`MAX_LATENCY_S`.
    """
    raw = text.strip()
    match = _DURATION.match(raw)
    if match is None:
        raise InvalidSpec(f"{what} {raw!r} needs a unit (us, ms or s)")
    number = _parse_float(match["number"], what=what, shown=raw)
    value_s = number / _UNITS[match["unit"]]
    if value_s < 0:
        raise InvalidSpec(f"{what} must not be negative, got {raw!r}")
    if value_s > MAX_LATENCY_S:
        raise InvalidSpec(f"{what} {raw!r} is longer than {MAX_LATENCY_S:g} s")
    return value_s


def _parse_float(text: str, *, what: str, shown: str | None = None) -> float:
    shown = text.strip() if shown is None else shown
    try:
        value = float(text)
    except ValueError:
        raise InvalidSpec(f"{what} must be a number, got {shown!r}") from None
    if math.isnan(value):
        raise InvalidSpec(f"{what} must not be NaN")
    if math.isinf(value):
        raise InvalidSpec(f"{what} must be finite, got {shown!r}")
    return value


def _parse_plain(text: str, *, what: str) -> float:
    raw = text.strip()
    if raw and raw[-1].isalpha() and raw.lower() not in {"nan", "inf", "infinity"}:
        raise InvalidSpec(f"{what} is a plain number without a unit, got {raw!r}")
    return _parse_float(raw, what=what)


def _check_duration(value_s: float, what: str, *, positive: bool = False) -> None:
    if math.isnan(value_s):
        raise InvalidSpec(f"{what} must not be NaN")
    if value_s < 0 or (positive and value_s == 0):
        bound = "positive" if positive else "non-negative"
        raise InvalidSpec(f"{what} must be {bound}, got {value_s!r} s")
    if value_s > MAX_LATENCY_S:
        raise InvalidSpec(f"{what} must be at most {MAX_LATENCY_S:g} s, got {value_s!r} s")


def _check_plain(value: float, what: str, *, low: float, high: float, positive: bool) -> None:
    if math.isnan(value):
        raise InvalidSpec(f"{what} must not be NaN")
    if value < low or (positive and value == low) or value > high:
        bracket = "(" if positive else "["
        raise InvalidSpec(f"{what} must be in {bracket}{low:g}, {high:g}], got {value!r}")


# -- the models -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Constant:
    """Always ``value_s`` seconds. Text: ``constant:5ms``."""

    value_s: float
    name: ClassVar[str] = "constant"

    def __post_init__(self) -> None:
        _check_duration(self.value_s, "constant latency")

    @property
    def spec(self) -> str:
        """``constant:VALUE``."""
        return f"constant:{format_duration(self.value_s)}"

    def sample_s(self, rng: random.Random) -> float:
        """``value_s``; ``rng`` is not consumed."""
        return self.value_s


@dataclass(frozen=True, slots=True)
class Uniform:
    """Uniform on ``[min_s, max_s]``. Text: ``uniform:min=1ms,max=5ms``."""

    min_s: float
    max_s: float
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        _check_duration(self.min_s, "uniform min")
        _check_duration(self.max_s, "uniform max")
        if self.max_s < self.min_s:
            raise InvalidSpec(f"uniform max ({self.max_s!r} s) is below min ({self.min_s!r} s)")

    @property
    def spec(self) -> str:
        """``uniform:min=A,max=B``."""
        return f"uniform:min={format_duration(self.min_s)},max={format_duration(self.max_s)}"

    def sample_s(self, rng: random.Random) -> float:
        """One uniform draw."""
        return rng.uniform(self.min_s, self.max_s)


@dataclass(frozen=True, slots=True)
class Normal:
    """Normal with ``mean_s`` and ``sd_s``, truncated at 0 (negative draws are redrawn).

    Text: ``normal:mean=10ms,sd=2ms``.
    """

    mean_s: float
    sd_s: float
    name: ClassVar[str] = "normal"

    def __post_init__(self) -> None:
        _check_duration(self.mean_s, "normal mean")
        _check_duration(self.sd_s, "normal sd")

    @property
    def spec(self) -> str:
        """``normal:mean=M,sd=S``."""
        return f"normal:mean={format_duration(self.mean_s)},sd={format_duration(self.sd_s)}"

    def sample_s(self, rng: random.Random) -> float:
        """One draw from the truncated normal."""
        for _ in range(_MAX_REDRAWS):
            value = rng.gauss(self.mean_s, self.sd_s)
            if value >= 0:
                return value
        return 0.0


@dataclass(frozen=True, slots=True)
class Exponential:
    """Exponential with mean ``mean_s``. Text: ``exponential:mean=5ms``."""

    mean_s: float
    name: ClassVar[str] = "exponential"

    def __post_init__(self) -> None:
        _check_duration(self.mean_s, "exponential mean")

    @property
    def spec(self) -> str:
        """``exponential:mean=M``."""
        return f"exponential:mean={format_duration(self.mean_s)}"

    def sample_s(self, rng: random.Random) -> float:
        """One exponential draw (0 when the mean is 0, still consuming one draw)."""
        value = -math.log1p(-rng.random()) * self.mean_s
        return value if value > 0 else 0.0


@dataclass(frozen=True, slots=True)
class LogNormal:
    """Log-normal with median ``median_s`` and log-space deviation ``sigma``.

    The p99 is ``median_s * exp(2.326 * sigma)``. Text: ``lognormal:median=8ms,sigma=0.6``.
    """

    median_s: float
    sigma: float
    name: ClassVar[str] = "lognormal"

    def __post_init__(self) -> None:
        _check_duration(self.median_s, "lognormal median", positive=True)
        _check_plain(self.sigma, "lognormal sigma", low=0.0, high=10.0, positive=False)

    @property
    def spec(self) -> str:
        """``lognormal:median=M,sigma=S``."""
        return (
            f"lognormal:median={format_duration(self.median_s)},sigma={format_number(self.sigma)}"
        )

    def sample_s(self, rng: random.Random) -> float:
        """One log-normal draw, capped at :data:`MAX_LATENCY_S`."""
        exponent = self.sigma * rng.gauss(0.0, 1.0)
        return min(self.median_s * math.exp(min(exponent, _MAX_EXPONENT)), MAX_LATENCY_S)


@dataclass(frozen=True, slots=True)
class Pareto:
    """Pareto with minimum ``scale_s`` and tail index ``alpha`` (heavier tail as alpha falls).

    Text: ``pareto:scale=5ms,alpha=1.5``.
    """

    scale_s: float
    alpha: float
    name: ClassVar[str] = "pareto"

    def __post_init__(self) -> None:
        _check_duration(self.scale_s, "pareto scale", positive=True)
        _check_plain(self.alpha, "pareto alpha", low=0.0, high=1000.0, positive=True)

    @property
    def spec(self) -> str:
        """``pareto:scale=X,alpha=A``."""
        return f"pareto:scale={format_duration(self.scale_s)},alpha={format_number(self.alpha)}"

    def sample_s(self, rng: random.Random) -> float:
        """One Pareto draw, at least ``scale_s`` and capped at :data:`MAX_LATENCY_S`."""
        # Inverse CDF: scale * (1 - u) ** (-1 / alpha), computed in log space so a small
        # alpha cannot overflow a float.
        exponent = -math.log1p(-rng.random()) / self.alpha
        return min(self.scale_s * math.exp(min(exponent, _MAX_EXPONENT)), MAX_LATENCY_S)


@dataclass(frozen=True, slots=True)
class Empirical:
    """Draws uniformly from measured latencies read from ``path``.

    The file holds milliseconds, one sample per line (the first comma-separated column is
    used, so a CSV works); blank lines, ``#`` comments and one header line are skipped.
    Text: ``empirical:path=FILE``. Build it with :meth:`from_file`.
    """

    path: str
    samples_s: tuple[float, ...]
    name: ClassVar[str] = "empirical"

    def __post_init__(self) -> None:
        if not self.samples_s:
            raise InvalidSpec(f"empirical model {self.path!r} has no samples")
        for value in self.samples_s:
            _check_duration(value, f"empirical sample in {self.path!r}")

    @classmethod
    def from_file(cls, path: str) -> Empirical:
        """Read samples (ms) from ``path``.

        Raises :class:`InvalidSpec` naming the file (and line) if it cannot be read, holds
        something other than non-negative finite numbers, is empty, or holds more than
        :data:`MAX_EMPIRICAL_SAMPLES` samples.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InvalidSpec(f"empirical file {path!r}: cannot read it: {reason}") from None
        samples: list[float] = []
        seen_data = False
        for line_no, line in enumerate(text.splitlines(), start=1):
            field = line.split("#", 1)[0].split(",", 1)[0].strip()
            if not field:
                continue
            try:
                value_ms = float(field)
            except ValueError:
                if not seen_data and _HEADER.match(field):
                    seen_data = True  # one header line is allowed, before any sample
                    continue
                raise InvalidSpec(
                    f"empirical file {path!r} line {line_no}: not a number of ms: {field!r}"
                ) from None
            seen_data = True
            if not math.isfinite(value_ms) or value_ms < 0:
                raise InvalidSpec(
                    f"empirical file {path!r} line {line_no}: sample must be a finite "
                    f"non-negative number of ms, got {field!r}"
                )
            if value_ms / 1e3 > MAX_LATENCY_S:
                raise InvalidSpec(
                    f"empirical file {path!r} line {line_no}: sample {field!r} ms is longer "
                    f"than {MAX_LATENCY_S:g} s"
                )
            if len(samples) >= MAX_EMPIRICAL_SAMPLES:
                raise InvalidSpec(
                    f"empirical file {path!r}: more than {MAX_EMPIRICAL_SAMPLES} samples"
                )
            samples.append(value_ms / 1e3)
        if not samples:
            raise InvalidSpec(f"empirical file {path!r} holds no samples")
        return cls(path, tuple(samples))

    @property
    def spec(self) -> str:
        """``empirical:path=FILE``."""
        return f"empirical:path={self.path}"

    def sample_s(self, rng: random.Random) -> float:
        """One of the samples, uniformly."""
        return self.samples_s[rng.randrange(len(self.samples_s))]


@dataclass(frozen=True, slots=True)
class Mixture:
    """Picks component ``i`` with probability ``weights[i]``, then draws from it.

    Weights are positive and sum to 1 (within 1e-9); components are not mixtures.
    Text: ``mixture:0.99*lognormal:median=8ms,sigma=0.5+0.01*constant:1s``.
    """

    components: tuple[tuple[float, LatencyModel], ...]
    name: ClassVar[str] = "mixture"

    def __post_init__(self) -> None:
        if not self.components:
            raise InvalidSpec("a mixture needs at least one component")
        for weight, model in self.components:
            _check_plain(weight, "mixture weight", low=0.0, high=1.0, positive=True)
            if isinstance(model, Mixture):
                raise InvalidSpec("mixtures do not nest; flatten the weights instead")
        total = math.fsum(w for w, _ in self.components)
        if abs(total - 1.0) > _WEIGHT_TOLERANCE:
            raise InvalidSpec(f"mixture weights must sum to 1, got {total!r}")

    @property
    def spec(self) -> str:
        """``mixture:W*SPEC+W*SPEC...``."""
        parts = (f"{format_number(w)}*{m.spec}" for w, m in self.components)
        return "mixture:" + "+".join(parts)

    def sample_s(self, rng: random.Random) -> float:
        """Choose a component by weight (one draw), then draw from it."""
        u = rng.random()
        cumulative = 0.0
        for weight, model in self.components:
            cumulative += weight
            if u < cumulative:
                return model.sample_s(rng)
        return self.components[-1][1].sample_s(rng)  # u landed in the rounding slack


# -- the parser -------------------------------------------------------------------------------

# name -> (parameter name -> (kind, field)), in the order the constructor takes them.
_Param = tuple[str, str]
_SIMPLE: dict[str, tuple[Callable[..., LatencyModel], dict[str, _Param]]] = {
    "constant": (Constant, {"value": ("duration", "value_s")}),
    "uniform": (Uniform, {"min": ("duration", "min_s"), "max": ("duration", "max_s")}),
    "normal": (Normal, {"mean": ("duration", "mean_s"), "sd": ("duration", "sd_s")}),
    "exponential": (Exponential, {"mean": ("duration", "mean_s")}),
    "lognormal": (LogNormal, {"median": ("duration", "median_s"), "sigma": ("plain", "sigma")}),
    "pareto": (Pareto, {"scale": ("duration", "scale_s"), "alpha": ("plain", "alpha")}),
}
MODEL_NAMES = (*_SIMPLE, "mixture", "empirical")


def sample_array(
    model: LatencyModel, rng: np.random.Generator, shape: int | tuple[int, ...]
) -> npt.NDArray[np.float64]:
    """Many independent latencies in seconds from ``model`` at once, as a numpy array.

    The same distributions as :meth:`LatencyModel.sample_s` (truncation and caps included),
    drawn from a numpy generator, for models that simulate millions of calls (``python -m
    bench model``). Raises :class:`TypeError` for a model of a type it does not know.
    """
    if isinstance(model, Constant):
        return np.full(shape, model.value_s)
    if isinstance(model, Uniform):
        return rng.uniform(model.min_s, model.max_s, shape)
    if isinstance(model, Normal):
        return np.maximum(rng.normal(model.mean_s, model.sd_s, shape), 0.0)
    if isinstance(model, Exponential):
        return rng.exponential(model.mean_s, shape)
    if isinstance(model, LogNormal):
        exponent = np.minimum(model.sigma * rng.standard_normal(shape), _MAX_EXPONENT)
        return np.minimum(model.median_s * np.exp(exponent), MAX_LATENCY_S)
    if isinstance(model, Pareto):
        exponent = np.minimum(rng.standard_exponential(shape) / model.alpha, _MAX_EXPONENT)
        return np.minimum(model.scale_s * np.exp(exponent), MAX_LATENCY_S)
    if isinstance(model, Empirical):
        return np.asarray(model.samples_s)[rng.integers(0, len(model.samples_s), shape)]
    if isinstance(model, Mixture):
        # Draw every component's sample, then pick one per cell by the weights.
        weights = np.array([w for w, _ in model.components])
        choice = rng.choice(len(weights), size=shape, p=weights / weights.sum())
        out = np.empty(shape)
        for index, (_, component) in enumerate(model.components):
            mask = choice == index
            out[mask] = sample_array(component, rng, int(mask.sum()))
        return out
    raise TypeError(f"no vectorised sampler for {type(model).__name__}")


def parse_latency(text: str) -> LatencyModel:
    """The latency model described by ``text`` (see the module docstring for the forms).

    Raises :class:`InvalidSpec` with a one-line message naming the problem: an unknown model,
    a missing, unknown or repeated parameter, a missing unit, a negative, NaN or infinite
    value, mixture weights that do not sum to 1, or an unreadable empirical file.
    """
    if not isinstance(text, str):
        raise InvalidSpec(f"a latency spec must be text, got {type(text).__name__}")
    try:
        return _parse_model(text, allow_mixture=True)
    except InvalidSpec as exc:
        raise InvalidSpec(f"invalid latency spec {text.strip()!r}: {exc}") from None


def _parse_model(text: str, *, allow_mixture: bool) -> LatencyModel:
    head, sep, body = text.strip().partition(":")
    name = head.strip().lower()
    if not sep:
        raise InvalidSpec(
            f"expected MODEL:PARAMS, e.g. 'lognormal:median=8ms,sigma=0.6'; "
            f"models: {', '.join(MODEL_NAMES)}"
        )
    if name == "mixture":
        if not allow_mixture:
            raise InvalidSpec("mixtures do not nest; flatten the weights instead")
        return _parse_mixture(body)
    if name == "empirical":
        key, eq, path = body.strip().partition("=")
        if key.strip().lower() != "path" or not eq or not path.strip():
            raise InvalidSpec("empirical needs path=FILE")
        return Empirical.from_file(path.strip())
    if name not in _SIMPLE:
        raise InvalidSpec(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    factory, params = _SIMPLE[name]
    values = _parse_params(name, body, params)
    return factory(**values)


def _parse_params(model: str, body: str, params: Mapping[str, _Param]) -> dict[str, float]:
    raw: dict[str, str] = {}
    items = [item.strip() for item in body.split(",")]
    if len(params) == 1 and len(items) == 1 and "=" not in items[0]:
        items = [f"{next(iter(params))}={items[0]}"]  # "constant:5ms" needs no "value="
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise InvalidSpec(f"{model} expects KEY=VALUE parameters, got {item!r}")
        if key not in params:
            raise InvalidSpec(f"{model} has no parameter {key!r}; it takes {', '.join(params)}")
        if key in raw:
            raise InvalidSpec(f"{model} parameter {key!r} is given twice")
        raw[key] = value
    missing = [key for key in params if key not in raw]
    if missing:
        raise InvalidSpec(f"{model} is missing {', '.join(missing)}")
    values: dict[str, float] = {}
    for key, (kind, field) in params.items():
        what = f"{model} {key}"
        if kind == "duration":
            values[field] = parse_duration_s(raw[key], what=what)
        else:
            values[field] = _parse_plain(raw[key], what=what)
    return values


def _parse_mixture(body: str) -> Mixture:
    components: list[tuple[float, LatencyModel]] = []
    for part in _COMPONENT_SPLIT.split(body):
        match = _COMPONENT.match(part)
        if match is None:
            raise InvalidSpec(f"mixture component {part.strip()!r} is not WEIGHT*MODEL:PARAMS")
        weight = _parse_plain(match["weight"], what="mixture weight")
        components.append((weight, _parse_model(match["spec"], allow_mixture=False)))
    return Mixture(tuple(components))
