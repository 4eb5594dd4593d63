"""workspace-operator: git worktrees for CI jobs, from per-project bare caches on a shared volume."""

__version__ = "0.1.0"
