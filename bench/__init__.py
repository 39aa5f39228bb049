"""Benchmarks and experiments. Run each from the repository root as a module, e.g. ``python -m bench.gate_rates``."""
