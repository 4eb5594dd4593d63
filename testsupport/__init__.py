"""What tests, benchmarks and dev scripts share: a hermetic git environment, free
ports, deadline-bounded waits, repository builders, loopback upstream servers
(git daemon, smart HTTP, sshd) and the operator as a subprocess.

Nothing here is a pytest plugin: `tests/upstreams.py` and `tests/cluster.py` wrap
these in fixtures; `bench/` and `hack/` use them directly. Importable from the
repository root (pytest's `pythonpath`, `python -m bench`, hack/ scripts add it).
"""
