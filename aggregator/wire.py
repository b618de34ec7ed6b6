"""The JSON shape of a response, shared by the CLI (``--json``) and the HTTP service."""

from __future__ import annotations

from typing import Any

import orjson

from aggregator.errors import AggregatorError, NoShardAnswered
from aggregator.types import Hit, SearchResponse, ShardOutcome

__all__ = ["dump_json", "error_to_dict", "hit_to_dict", "outcome_to_dict", "response_to_dict"]


def _ms(value: float) -> float:
    return round(value, 3)


def hit_to_dict(hit: Hit) -> dict[str, Any]:
    """``{"id", "score", "shard"[, "title"]}``."""
    out: dict[str, Any] = {"id": hit.doc_id, "score": hit.score, "shard": hit.shard}
    if hit.title is not None:
        out["title"] = hit.title
    return out


def outcome_to_dict(outcome: ShardOutcome) -> dict[str, Any]:
    """``{"shard", "status", "latency_ms", "hits", "reason", ...}``."""
    out: dict[str, Any] = {
        "shard": outcome.shard,
        "status": outcome.status.value,
        "latency_ms": _ms(outcome.latency_ms),
        "hits": outcome.hits,
        "docs": outcome.docs,
        "reason": outcome.reason,
        "attempts": outcome.attempts,
    }
    if outcome.replica is not None:
        out["replica"] = outcome.replica
    if outcome.hedged:
        out["hedged"] = True
    return out


def response_to_dict(response: SearchResponse) -> dict[str, Any]:
    """The response object of the CLI and the HTTP API."""
    c = response.completeness
    return {
        "hits": [hit_to_dict(h) for h in response.hits],
        "partial": c.partial,
        "took_ms": _ms(response.took_ms),
        "deadline_ms": None if response.deadline_ms is None else _ms(response.deadline_ms),
        "completeness": {
            "shards_total": c.shards_total,
            "shards_ok": c.shards_ok,
            "shards_timed_out": c.shards_timed_out,
            "shards_failed": c.shards_failed,
            "shards_skipped": c.shards_skipped,
            "docs_total": c.docs_total,
            "docs_searched": c.docs_searched,
            "coverage": round(c.coverage, 6),
        },
        "shards": [outcome_to_dict(o) for o in response.shards],
    }


def error_to_dict(error: AggregatorError | str, reason: str | None = None) -> dict[str, Any]:
    """``{"error": {"type", "reason"[, "shards"]}}``."""
    if isinstance(error, str):
        return {"error": {"type": error, "reason": reason or error}}
    body: dict[str, Any] = {"type": type(error).__name__, "reason": reason or str(error)}
    if isinstance(error, NoShardAnswered):
        body["shards"] = [outcome_to_dict(o) for o in error.outcomes]
    return {"error": body}


def dump_json(obj: Any, *, pretty: bool = False) -> bytes:
    """orjson bytes; ``pretty`` indents by two spaces."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if pretty else 0)
