"""The git engine: bare caches and worktrees on a volume. No Kubernetes in here.

This package's namespace is the engine's public interface: the rest of the operator
imports from `workspace_operator.git`, never from its submodules (an import contract).
"""

from workspace_operator.git.credentials import Credentials, allowed_by, invalid_credentials
from workspace_operator.git.engine import CheckoutRequest, CheckoutResult, Engine, Maintenance, Prepared, ValidRequest
from workspace_operator.git.errors import GitError, Reason, Redactor
from workspace_operator.git.fair import FairQueue, FairSlots
from workspace_operator.git.inventory import (
    ProjectState,
    cache_bytes,
    completed_worktrees,
    list_projects,
    project_present,
    project_state,
)
from workspace_operator.git.layout import DNS1123_LABEL, check_relpath, check_sparse_dir, invalid
from workspace_operator.git.mounted import MountedCache, open_mounted_cache
from workspace_operator.git.origins import URLRefused, normalize_host_pattern
from workspace_operator.git.runner import ALL_SCHEMES, UPSTREAM_STEPS, GitRunner, GitSettings, write_guard
from workspace_operator.git.source import SHA, Revision, check_ref_name
from workspace_operator.git.worktree import check_tree_path, workdir_of

__all__ = [
    "ALL_SCHEMES",
    "DNS1123_LABEL",
    "SHA",
    "UPSTREAM_STEPS",
    "CheckoutRequest",
    "CheckoutResult",
    "Credentials",
    "Engine",
    "FairQueue",
    "FairSlots",
    "GitError",
    "GitRunner",
    "GitSettings",
    "Maintenance",
    "MountedCache",
    "Prepared",
    "ProjectState",
    "Reason",
    "Redactor",
    "Revision",
    "URLRefused",
    "ValidRequest",
    "allowed_by",
    "cache_bytes",
    "check_ref_name",
    "check_relpath",
    "check_sparse_dir",
    "check_tree_path",
    "completed_worktrees",
    "invalid",
    "invalid_credentials",
    "list_projects",
    "normalize_host_pattern",
    "open_mounted_cache",
    "project_present",
    "project_state",
    "workdir_of",
    "write_guard",
]
