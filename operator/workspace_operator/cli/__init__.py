"""The job-side command `kubectl-workspace` (`kubectl workspace`). No kopf in here."""
