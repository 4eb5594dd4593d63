"""Benchmarks for the workspace operator (targets: docs/design.md): `python -m bench [--quick]`."""
