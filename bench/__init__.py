"""Benchmarks for the workspace operator (SPEC §12): `python -m bench [--quick]`."""
