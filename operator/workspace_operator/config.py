"""Operator settings: one typed, frozen object, read once from flags and WORKSPACE_* env.

The environment names are a contract (docs/design.md): manifests, docs and scripts use them.
Every flag has an environment equivalent; a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from workspace_operator.git import ALL_SCHEMES, GitSettings, URLRefused, normalize_host_pattern


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    root: Path
    volume_claim: str = "workspaces"
    namespaces: tuple[str, ...] = ()
    lease_namespace: str = "default"
    lease_seconds: int = 30
    lock_wait_seconds: float = 300.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    allowed_schemes: frozenset[str] = frozenset({"https", "ssh"})
    git_timeout_seconds: float = 600.0
    default_ttl_seconds: int = 86400
    metrics_port: int = 8080
    gc_interval_seconds: float = 300.0
    reconcile_interval_seconds: float = 60.0
    reconcile_jitter_seconds: float = 10.0
    failed_ttl_seconds: int = 86400
    active_deadline_seconds: int = 3600
    allow_no_ttl: bool = False
    max_workspaces_per_namespace: int = 0
    max_cache_bytes_per_namespace: int = 0
    orphan_grace_seconds: float = 3600.0
    cache_quiet_seconds: float = 604800.0
    cache_unused_seconds: float = 2592000.0
    disk_high_watermark: float = 0.85
    disk_low_watermark: float = 0.70
    replicas: int = 1
    replica_index: int = 0
    checkout_workers: int = 0
    partial_clone: bool = False
    checkout_concurrency: int = 0
    maintenance_budget_seconds: float = 0.5
    progress_delay_seconds: float = 2.0
    max_git_processes: int = 0
    log_format: str = "text"
    allowed_hosts: tuple[str, ...] = ()
    allow_private_networks: bool = False
    file_roots: tuple[Path, ...] = ()
    fsck_objects: bool = False
    ca_file: Path | None = None
    max_submodules: int = 64
    identity: str = field(default_factory=lambda: os.environ.get("HOSTNAME", "workspace-operator"))

    def __post_init__(self) -> None:
        if not 0 < self.disk_low_watermark < self.disk_high_watermark <= 1:
            raise ConfigError("watermarks must satisfy 0 < low < high <= 1")
        if not 0 <= self.replica_index < self.replicas:
            raise ConfigError("WORKSPACE_REPLICA_INDEX must be in [0, WORKSPACE_REPLICAS)")
        if self.lease_seconds < 3:
            raise ConfigError("WORKSPACE_LEASE_SECONDS must be at least 3")
        if self.checkout_concurrency < 0:
            raise ConfigError("WORKSPACE_CHECKOUT_CONCURRENCY must be 0 (from the CPUs) or more")
        if self.maintenance_budget_seconds < 0:
            raise ConfigError("WORKSPACE_MAINTENANCE_BUDGET_SECONDS must be 0 (off) or more")
        if self.progress_delay_seconds < 0:
            raise ConfigError("WORKSPACE_PROGRESS_DELAY_SECONDS must be 0 (at once) or more")
        if self.max_git_processes < 0:
            raise ConfigError("WORKSPACE_MAX_GIT_PROCESSES must be 0 (automatic) or more")
        if self.max_submodules < 0:
            raise ConfigError("WORKSPACE_MAX_SUBMODULES must be 0 (no submodules) or more")
        if self.reconcile_interval_seconds <= 0 or self.reconcile_jitter_seconds < 0:
            raise ConfigError("WORKSPACE_RECONCILE_INTERVAL_SECONDS must be > 0, the jitter >= 0")
        if (
            min(
                self.failed_ttl_seconds,
                self.active_deadline_seconds,
                self.max_workspaces_per_namespace,
                self.max_cache_bytes_per_namespace,
            )
            < 0
        ):
            raise ConfigError("TTLs, deadlines and per-namespace limits must be >= 0 (0 = none)")
        if self.log_format not in ("text", "json"):
            raise ConfigError("WORKSPACE_LOG_FORMAT must be text or json")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ConfigError(f"WORKSPACE_CA_FILE: no such file: {self.ca_file}")

    @property
    def git(self) -> GitSettings:
        return GitSettings(
            timeout_seconds=self.git_timeout_seconds,
            allowed_schemes=self.allowed_schemes,
            checkout_workers=self.checkout_workers,
            partial_clone=self.partial_clone,
            max_processes=self.max_git_processes,
            allowed_hosts=self.allowed_hosts,
            allow_private_networks=self.allow_private_networks,
            file_roots=self.file_roots,
            fsck_objects=self.fsck_objects,
            ca_file=self.ca_file,
            max_submodules=self.max_submodules,
        )


def _pod_namespace() -> str:
    try:
        return Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
    except OSError:
        return "default"


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {value!r}")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> float:
    """Seconds from `300`, `300s`, `5m`, `1h`, `1d`, `1.5h` or a sum like `1h30m` (no sign, no spaces)."""
    text = value.strip().lower()
    parts = _DURATION.findall(text)
    if (
        not text
        or "".join(number + unit for number, unit in parts) != text
        or (len(parts) > 1 and any(unit == "" for _number, unit in parts))
    ):
        raise ConfigError(f"not a duration (e.g. 300, 300s, 5m, 1h): {value!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _whole_seconds(value: str) -> int:
    seconds = _duration(value)
    if seconds != int(seconds):
        raise ConfigError(f"not a whole number of seconds: {value!r}")
    return int(seconds)


def _schemes(value: str) -> frozenset[str]:
    schemes = frozenset(s.lower() for s in _csv(value))
    unknown = schemes - ALL_SCHEMES
    if unknown or not schemes:
        raise ConfigError(f"WORKSPACE_ALLOWED_SCHEMES: unknown or empty: {', '.join(sorted(unknown)) or '(empty)'}")
    return schemes


def _hosts(value: str) -> tuple[str, ...]:
    try:
        return tuple(normalize_host_pattern(item) for item in _csv(value))
    except (URLRefused, ValueError) as error:
        raise ConfigError(f"not a host pattern (host, *.domain or an IP address): {error}") from None


def _paths(value: str) -> tuple[Path, ...]:
    paths = tuple(Path(item) for item in _csv(value))
    if not all(path.is_absolute() for path in paths):
        raise ConfigError("paths must be absolute")
    return tuple(path.resolve() for path in paths)


# (flag, env var, field, parser, help)
_SETTINGS: tuple[tuple[str, str, str, type | object, str], ...] = (
    ("--root", "WORKSPACE_ROOT", "root", Path, "volume root on this pod (required)"),
    ("--volume-claim", "WORKSPACE_VOLUME_CLAIM", "volume_claim", str, "PVC name reported in status"),
    ("--namespaces", "WORKSPACE_NAMESPACES", "namespaces", _csv, "comma-separated namespaces to watch; empty = all"),
    ("--lease-namespace", "WORKSPACE_LEASE_NAMESPACE", "lease_namespace", str, "where Leases live"),
    ("--lease-seconds", "WORKSPACE_LEASE_SECONDS", "lease_seconds", _whole_seconds, "Lease duration"),
    (
        "--lock-wait-seconds",
        "WORKSPACE_LOCK_WAIT_SECONDS",
        "lock_wait_seconds",
        _duration,
        "how long to wait for a project lock before LockTimeout",
    ),
    (
        "--retry-base-seconds",
        "WORKSPACE_RETRY_BASE_SECONDS",
        "retry_base_seconds",
        _duration,
        "first backoff after a transient failure; doubles per attempt",
    ),
    ("--retry-max-seconds", "WORKSPACE_RETRY_MAX_SECONDS", "retry_max_seconds", _duration, "backoff cap"),
    (
        "--allowed-schemes",
        "WORKSPACE_ALLOWED_SCHEMES",
        "allowed_schemes",
        _schemes,
        "comma-separated of https, ssh, http, git, file",
    ),
    ("--git-timeout-seconds", "WORKSPACE_GIT_TIMEOUT_SECONDS", "git_timeout_seconds", _duration, "per git call"),
    (
        "--default-ttl-seconds",
        "WORKSPACE_DEFAULT_TTL_SECONDS",
        "default_ttl_seconds",
        _whole_seconds,
        "TTL after Ready when the spec has none; 0 = none",
    ),
    ("--metrics-port", "WORKSPACE_METRICS_PORT", "metrics_port", int, "metrics and health port; 0 = off"),
    (
        "--gc-interval-seconds",
        "WORKSPACE_GC_INTERVAL_SECONDS",
        "gc_interval_seconds",
        _duration,
        "volume sweep interval (orphans, caches, eviction)",
    ),
    (
        "--reconcile-interval-seconds",
        "WORKSPACE_RECONCILE_INTERVAL_SECONDS",
        "reconcile_interval_seconds",
        _duration,
        "per-Workspace timer: TTL, deadline and worktree health check interval",
    ),
    (
        "--reconcile-jitter-seconds",
        "WORKSPACE_RECONCILE_JITTER_SECONDS",
        "reconcile_jitter_seconds",
        _duration,
        "random delay (0..jitter) before a Workspace's first timer run, spreading the checks",
    ),
    (
        "--failed-ttl-seconds",
        "WORKSPACE_FAILED_TTL_SECONDS",
        "failed_ttl_seconds",
        _whole_seconds,
        "how long a Failed Workspace is kept before it is deleted; 0 = kept",
    ),
    (
        "--active-deadline-seconds",
        "WORKSPACE_ACTIVE_DEADLINE_SECONDS",
        "active_deadline_seconds",
        _whole_seconds,
        "default deadline to become Ready (spec.activeDeadlineSeconds overrides); 0 = none",
    ),
    (
        "--allow-no-ttl",
        "WORKSPACE_ALLOW_NO_TTL",
        "allow_no_ttl",
        _bool,
        "honour ttlSecondsAfterReady: 0 (never expire); otherwise the default TTL applies",
    ),
    (
        "--max-workspaces-per-namespace",
        "WORKSPACE_MAX_WORKSPACES_PER_NAMESPACE",
        "max_workspaces_per_namespace",
        int,
        "worktrees materialized at once per namespace; more wait as QuotaExceeded; 0 = unlimited",
    ),
    (
        "--max-cache-bytes-per-namespace",
        "WORKSPACE_MAX_CACHE_BYTES_PER_NAMESPACE",
        "max_cache_bytes_per_namespace",
        int,
        "cache bytes per namespace above which its idle caches are evicted (LRU); 0 = unlimited",
    ),
    (
        "--orphan-grace-seconds",
        "WORKSPACE_ORPHAN_GRACE_SECONDS",
        "orphan_grace_seconds",
        _duration,
        "age before a worktree with no Workspace is removed",
    ),
    (
        "--cache-quiet-seconds",
        "WORKSPACE_CACHE_QUIET_SECONDS",
        "cache_quiet_seconds",
        _duration,
        "quiet time before git gc of a cache",
    ),
    (
        "--cache-unused-seconds",
        "WORKSPACE_CACHE_UNUSED_SECONDS",
        "cache_unused_seconds",
        _duration,
        "unused time before a cache is deleted",
    ),
    (
        "--disk-high-watermark",
        "WORKSPACE_DISK_HIGH_WATERMARK",
        "disk_high_watermark",
        float,
        "volume usage fraction that starts eviction",
    ),
    (
        "--disk-low-watermark",
        "WORKSPACE_DISK_LOW_WATERMARK",
        "disk_low_watermark",
        float,
        "volume usage fraction eviction brings usage down to",
    ),
    (
        "--replicas",
        "WORKSPACE_REPLICAS",
        "replicas",
        int,
        "deprecated: >1 pins a fixed share by index instead of live membership",
    ),
    (
        "--replica-index",
        "WORKSPACE_REPLICA_INDEX",
        "replica_index",
        int,
        "deprecated: this replica's fixed share, with WORKSPACE_REPLICAS > 1",
    ),
    (
        "--checkout-workers",
        "WORKSPACE_CHECKOUT_WORKERS",
        "checkout_workers",
        int,
        "git checkout.workers (parallel checkout); 0 = git default",
    ),
    ("--partial-clone", "WORKSPACE_PARTIAL_CLONE", "partial_clone", _bool, "create caches with --filter=blob:none"),
    (
        "--checkout-concurrency",
        "WORKSPACE_CHECKOUT_CONCURRENCY",
        "checkout_concurrency",
        int,
        "worktrees written in parallel, outside the project lock; 0 = one per CPU of the pod (at least 2)",
    ),
    (
        "--maintenance-budget-seconds",
        "WORKSPACE_MAINTENANCE_BUDGET_SECONDS",
        "maintenance_budget_seconds",
        _duration,
        "time box of one cache maintenance step between queued work; 0 = no such maintenance",
    ),
    (
        "--progress-delay-seconds",
        "WORKSPACE_PROGRESS_DELAY_SECONDS",
        "progress_delay_seconds",
        _duration,
        "write phase Materializing only for a Workspace not Ready within this; 0 = at once",
    ),
    (
        "--max-git-processes",
        "WORKSPACE_MAX_GIT_PROCESSES",
        "max_git_processes",
        int,
        "git processes running at once in this operator; 0 = 2 per CPU (cgroup quota), at least 4",
    ),
    ("--log-format", "WORKSPACE_LOG_FORMAT", "log_format", str, "text or json"),
    (
        "--ca-file",
        "WORKSPACE_CA_FILE",
        "ca_file",
        Path,
        "PEM bundle git trusts for https instead of the system roots (a Secret's ca.crt wins per repository)",
    ),
    (
        "--allowed-hosts",
        "WORKSPACE_ALLOWED_HOSTS",
        "allowed_hosts",
        _hosts,
        "comma-separated host patterns (host, *.domain) repositories may use; empty = any public host",
    ),
    (
        "--allow-private-networks",
        "WORKSPACE_ALLOW_PRIVATE_NETWORKS",
        "allow_private_networks",
        _bool,
        "accept hosts on loopback, link-local and private addresses",
    ),
    (
        "--file-roots",
        "WORKSPACE_FILE_ROOTS",
        "file_roots",
        _paths,
        "comma-separated directories file:// repositories must lie below; empty = no file:// at all",
    ),
    ("--fsck-objects", "WORKSPACE_FSCK_OBJECTS", "fsck_objects", _bool, "check every fetched object"),
    (
        "--max-submodules",
        "WORKSPACE_MAX_SUBMODULES",
        "max_submodules",
        int,
        "submodules one Workspace may check out, all nesting levels counted; more fail it (TooManySubmodules)",
    ),
    ("--identity", "WORKSPACE_IDENTITY", "identity", str, "Lease holder identity prefix (default: hostname)"),
)


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Flags over environment over defaults; raises ConfigError with the offending name."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m workspace_operator", description="Run the workspace operator against the current cluster."
    )
    for flag, var, _name, _kind, text in _SETTINGS:
        parser.add_argument(flag, metavar=var, help=f"{text} [env {var}]")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    values: dict[str, object] = {}
    for flag, var, name, kind, _text in _SETTINGS:
        raw = getattr(args, flag.lstrip("-").replace("-", "_"))
        if raw is None:
            raw = env.get(var)
        if raw is None or (raw == "" and name != "namespaces"):
            continue
        try:
            values[name] = kind(raw)  # type: ignore[operator]
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{var}: {error}") from None
    if "root" not in values:
        raise ConfigError("WORKSPACE_ROOT (--root) is required")
    values.setdefault("lease_namespace", env.get("POD_NAMESPACE") or _pod_namespace())
    values["root"] = Path(str(values["root"])).resolve()
    try:
        return Config(**values)  # type: ignore[arg-type]
    except TypeError as error:
        raise ConfigError(str(error)) from None


def verbose_requested(argv: Sequence[str] | None = None) -> bool:
    return "--verbose" in (argv or [])
