"""Where repositories may be fetched from: transports, hosts, networks, local paths.

The same rules apply to spec.repository and to every submodule URL:

* the URL passes check_url (syntax, transports, no ambiguity);
* with WORKSPACE_ALLOWED_HOSTS set, its host matches one of the patterns;
* its host is not a loopback, link-local, private or otherwise non-public
  address -- as a literal (also `2130706433`-style) when validated, and as
  resolved by DNS right before the checkout -- unless private networks are
  allowed or the host is listed explicitly. The lookup runs on threads of its
  own, a few per namespace, with a hard deadline (git/resolver.py): a name server
  that never answers fails the Workspace (UpstreamUnavailable), and holds up
  neither the operator's other work nor other namespaces' lookups. A name can resolve differently
  when git connects moments later (DNS rebinding): this check stops honest
  mistakes and naive attacks, a NetworkPolicy on the operator's egress is the
  guarantee;
* a file:// path, symlinks resolved, lies below one of WORKSPACE_FILE_ROOTS and
  never on the workspace volume (another namespace's cache is a local path
  there). Without file roots no file:// URL is accepted at all.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from workspace_operator.git import origins
from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.resolver import Resolver, shared_resolver
from workspace_operator.git.runner import GitSettings
from workspace_operator.git.source import check_url, helper_syntax_refused, uses_remote_helper


def not_allowed(message: str) -> GitError:
    return GitError(Reason.HOST_NOT_ALLOWED, message, step="validate")


@dataclass(frozen=True)
class URLPolicy:
    settings: GitSettings
    root: Path  # the workspace volume
    resolver: Resolver = field(default_factory=shared_resolver, compare=False)

    def check(self, url: str, what: str = "repository") -> origins.Origin:
        """Every rule that needs no network; returns the parsed origin."""
        if isinstance(url, str) and uses_remote_helper(url):
            # Name the remote-helper syntax (ext::sh -c ...) even when other faults follow.
            raise helper_syntax_refused(what)
        check_url(url, self.settings.allowed_schemes, what)
        origin = origins.parse(url)
        if origin.scheme == "file":
            self._check_file(origin, what)
            return origin
        listed = self._listed(origin)
        if self.settings.allowed_hosts and not listed:
            raise not_allowed(f"{what}: host {origin.host!r} is not in WORKSPACE_ALLOWED_HOSTS")
        address = origins.literal_address(origin.host)
        if (
            address is not None
            and not listed
            and not self.settings.allow_private_networks
            and not origins.is_public(address)
        ):
            raise not_allowed(
                f"{what}: {address} is a loopback, link-local or private address; "
                "see WORKSPACE_ALLOW_PRIVATE_NETWORKS and WORKSPACE_ALLOWED_HOSTS"
            )
        return origin

    async def check_addresses(
        self, origin: origins.Origin, what: str = "repository", *, within: float | None = None, namespace: str = ""
    ) -> None:
        """Refuse a host name that resolves to a non-public address (see module doc).

        The lookup gets `settings.resolve_timeout_seconds`, or less when the caller
        has only `within` seconds left: running out of those is a GitTimeout. The
        namespace's lookups share a few threads of the resolver (git/resolver.py)."""
        if origin.scheme == "file" or self.settings.allow_private_networks or self._listed(origin):
            return
        limit = self.settings.resolve_timeout_seconds
        timeout = limit if within is None else min(limit, within)
        try:
            addresses = await self.resolver.addresses(origin.host, origin.port, timeout=timeout, namespace=namespace)
        except TimeoutError:
            if timeout < limit:
                raise GitError(
                    Reason.TIMEOUT, f"{what}: no time left to look up host {origin.host!r}", step="resolve"
                ) from None
            raise GitError(
                Reason.UNREACHABLE,
                f"{what}: looking up host {origin.host!r} got no answer within {limit:.0f}s",
                step="resolve",
            ) from None
        for found in addresses or ():
            address = ipaddress.ip_address(found.partition("%")[0])
            if not origins.is_public(address):
                raise not_allowed(
                    f"{what}: host {origin.host!r} resolves to {address}, a loopback, "
                    "link-local or private address; see WORKSPACE_ALLOW_PRIVATE_NETWORKS "
                    "and WORKSPACE_ALLOWED_HOSTS"
                )

    def _listed(self, origin: origins.Origin) -> bool:
        return origins.host_matches(origin.host, self.settings.allowed_hosts)

    def _check_file(self, origin: origins.Origin, what: str) -> None:
        roots = self.settings.file_roots
        if not roots:
            raise not_allowed(f"{what}: file:// repositories need WORKSPACE_FILE_ROOTS (none configured)")
        path = Path(origin.path).resolve()
        volume = self.root.resolve()
        if path == volume or volume in path.parents:
            raise not_allowed(f"{what}: file:// path lies on the workspace volume")
        if not any(path == r or r in path.parents for r in (root.resolve() for root in roots)):
            raise not_allowed(f"{what}: file:// path is not below WORKSPACE_FILE_ROOTS")
