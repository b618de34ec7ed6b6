"""Shard backends: simulated latency/failure models, the BM25 index, the shard HTTP server.

Implements :class:`aggregator.backend.ShardBackend`; imports ``aggregator`` for the protocol,
values and errors, never the other way round (except the aggregator CLI's local cluster).
"""
