"""The git engine: bare caches and worktrees on a volume. No Kubernetes in here."""

from workspace_operator.git.credentials import Credentials
from workspace_operator.git.engine import CheckoutRequest, CheckoutResult, Engine, Prepared, ValidRequest
from workspace_operator.git.errors import GitError, Reason, Redactor
from workspace_operator.git.runner import GitSettings
from workspace_operator.git.source import Revision

__all__ = [
    "CheckoutRequest",
    "CheckoutResult",
    "Credentials",
    "Engine",
    "GitError",
    "GitSettings",
    "Prepared",
    "Reason",
    "Redactor",
    "Revision",
    "ValidRequest",
]
