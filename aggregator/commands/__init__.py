"""Subcommands of ``python -m aggregator``, one module each."""
