"""Benchmarks: load generation, scenarios, reports, plots and quality evaluation.

Each ``python -m bench`` subcommand is one module exposing ``add_arguments`` and ``run``.
"""
