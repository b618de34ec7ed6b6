"""Subcommands of ``python -m shards``, one module each."""
