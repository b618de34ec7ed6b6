"""A cluster: shards, each with one or more replicas (backends that hold the same documents)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aggregator.backend import ShardBackend
from aggregator.errors import ConfigError

__all__ = ["Cluster", "Shard"]


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard: a name, its replicas (at least one) and its document count."""

    name: str
    replicas: tuple[ShardBackend, ...]
    doc_count: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a shard needs a non-empty name")
        if not self.replicas:
            raise ConfigError(f"shard {self.name!r} has no replicas")
        if self.doc_count < 0:
            raise ConfigError(f"shard {self.name!r} has a negative document count")


@dataclass(frozen=True, slots=True)
class Cluster:
    """The shards a query fans out to, in a fixed order."""

    shards: tuple[Shard, ...]

    def __post_init__(self) -> None:
        if not self.shards:
            raise ConfigError("a cluster needs at least one shard")
        names = [s.name for s in self.shards]
        if len(set(names)) != len(names):
            raise ConfigError(f"shard names must be unique, got {names}")

    @classmethod
    def of(cls, backends: Iterable[ShardBackend]) -> Cluster:
        """Group ``backends`` by name: backends sharing a name are replicas of one shard.

        The shard's document count is the largest its replicas report.
        """
        grouped: dict[str, list[ShardBackend]] = {}
        for backend in backends:
            grouped.setdefault(backend.name, []).append(backend)
        return cls(
            tuple(
                Shard(name, tuple(replicas), max(r.doc_count for r in replicas))
                for name, replicas in grouped.items()
            )
        )

    @property
    def doc_count(self) -> int:
        """Documents in the whole cluster."""
        return sum(s.doc_count for s in self.shards)

    def __len__(self) -> int:
        return len(self.shards)

    def names(self) -> Sequence[str]:
        """Shard names in order."""
        return [s.name for s in self.shards]
