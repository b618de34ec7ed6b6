"""The project's whole error vocabulary.

Every exception the library raises on purpose is one of these. Library exceptions from the
edges (aiohttp, orjson, the OS) are translated at the boundary with ``raise X(...) from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.types import ShardOutcome

__all__ = [
    "AggregatorError",
    "ConfigError",
    "InvalidHit",
    "InvalidQuery",
    "InvalidReply",
    "InvalidSpec",
    "NoShardAnswered",
    "Overloaded",
    "ShardError",
    "ShardMalformedReply",
    "ShardRejected",
    "ShardTimeout",
    "ShardUnavailable",
]


class AggregatorError(Exception):
    """Base of every error this project raises on purpose."""


# -- bad input: the caller can fix these ------------------------------------------------------


class InvalidQuery(AggregatorError, ValueError):
    """A query, or one of its parameters (k, deadline, min coverage), is out of range."""


class InvalidSpec(AggregatorError, ValueError):
    """A latency or failure model spec could not be parsed."""


class ConfigError(AggregatorError, ValueError):
    """A cluster configuration is invalid; the message names the file and the key."""


# -- one shard misbehaved: becomes a per-shard outcome, never breaks the query ---------------


class ShardError(AggregatorError):
    """A shard call failed; the coordinator records it as an ``error`` outcome."""


class ShardTimeout(ShardError):
    """The shard gave up because the query's budget was spent (outcome ``timeout``)."""


class ShardRejected(ShardError):
    """The shard refused the call, e.g. because it is overloaded (outcome ``rejected``)."""


class ShardUnavailable(ShardError):
    """The shard could not be reached at all (refused or reset connection, 5xx)."""


class ShardMalformedReply(ShardError):
    """The shard answered with data of the wrong shape or type."""


class InvalidHit(ShardMalformedReply, ValueError):
    """A hit with an empty id or a score that is not a finite number."""


class InvalidReply(ShardMalformedReply, ValueError):
    """A shard reply with a bad document count or hits that are not a tuple of hits."""


# -- the query as a whole failed --------------------------------------------------------------


class NoShardAnswered(AggregatorError):
    """No shard answered successfully: an empty success would hide the failure.

    ``outcomes`` holds every shard's outcome so callers can report why.
    """

    def __init__(self, message: str, outcomes: Sequence[ShardOutcome] = ()) -> None:
        super().__init__(message)
        self.outcomes: tuple[ShardOutcome, ...] = tuple(outcomes)


class Overloaded(AggregatorError):
    """Admission control shed the query; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
