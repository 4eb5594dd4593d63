"""Repository URLs as origins: parsed, normalized, compared segment by segment.

Credentials are lent to an origin (scheme, host, port, path prefix), never to a
string prefix: `https://h/org/repo.git/../../other/x.git` starts with
`https://h/org/repo.git` but curl would ask for `/other/x.git`. So anything whose
meaning a server or client could read differently from us is refused outright
(dot segments, encoded `.` `/` `\\`, `//`, query, fragment, userinfo in http(s)),
and what remains is compared as (scheme, host, port, decoded path segments).

Equivalences: host names are case-insensitive, a trailing dot is dropped, and
international names compare in their IDNA (`xn--`) form; default ports equal no
port; one trailing `/` is ignored; a last segment `repo.git` equals `repo` (the
hosting services serve both), but only as the last segment: a grant for
`org/repo.git` covers `org/repo.git/...`, not `org/repo/...`. Paths are
case-sensitive. scp-like `user@host:path` is ssh with a home-relative path,
which compares equal to `ssh://user@host/~/path`, not to `ssh://host/path`.

git's credential helper (credential_helper.py) compares what git asks for
with origins parsed here, using the same equivalences.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote

DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_LIKE = re.compile(r"^([A-Za-z0-9._~-]+)@([^/:\[\]]+):(?!//)(.*)$")
_USER = re.compile(r"^[A-Za-z0-9._~-]+$")
_REG_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_BAD_ESCAPE = re.compile(r"%(2[eEfF]|5[cC]|[01][0-9a-fA-F]|7[fF])|%(?![0-9a-fA-F]{2})")
_NUMERIC_HOST = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)(\.(0[xX][0-9a-fA-F]+|[0-9]+)){0,3}$")


class URLRefused(ValueError):
    """The URL is malformed or ambiguous; the message says why, without the URL."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str  # lowercase ASCII, no trailing dot, IPv6 without brackets; "" for file
    port: int  # the default port when none is given; 0 for file
    segments: tuple[str, ...]  # percent-decoded path segments; ("~", ...) for home-relative ssh
    user: str = ""  # ssh only; http(s)/git URLs never carry one

    @property
    def path(self) -> str:
        return "/" + "/".join(self.segments)

    @property
    def authority(self) -> str:
        """Host, and port unless the scheme's default, as messages name a server."""
        if self.scheme == "file":
            return "a local path"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS.get(self.scheme) else f"{host}:{self.port}"

    def covers(self, other: Origin) -> bool:
        """`other` is this origin or below it: same scheme, host, port (and ssh user
        if this names one), and this path is a segment-wise prefix of other's."""
        if (self.scheme, self.host, self.port) != (other.scheme, other.host, other.port):
            return False
        if self.user and self.user != other.user:
            return False
        mine, theirs = self.segments, other.segments
        if len(theirs) < len(mine):
            return False
        if len(theirs) == len(mine):
            return mine[:-1] == theirs[:-1] and (not mine or _strip_git(mine[-1]) == _strip_git(theirs[-1]))
        return theirs[: len(mine)] == mine


def _strip_git(segment: str) -> str:
    return segment[:-4] if segment.endswith(".git") and len(segment) > 4 else segment


def parse(url: str, *, scope: bool = False) -> Origin:
    """Parse and normalize a repository URL; raise URLRefused for anything ambiguous.

    `scope=True` parses an entry of a Secret's list of repositories: the same
    rules, except that a Unicode host name is accepted (and IDNA-encoded) and
    the path may be empty (the whole host).
    """
    if not isinstance(url, str) or not url:
        raise URLRefused("the URL is empty")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise URLRefused("the URL contains whitespace or control characters")
    if not scope and not url.isascii():
        raise URLRefused("the URL must be ASCII: percent-encode the path, write host names in their xn-- form")
    if "\\" in url:
        raise URLRefused("the URL must not contain a backslash")
    if "?" in url or "#" in url:
        raise URLRefused(
            "the URL must not contain a query ('?') or fragment ('#'); "
            "put tokens in the credentials Secret, never in the URL"
        )
    if _BAD_ESCAPE.search(url):
        raise URLRefused(
            "the URL must not percent-encode '.', '/', '\\' or control characters, "
            "nor contain a '%' that starts no escape"
        )
    match = _SCHEME.match(url)
    if match is None:
        scp = _SCP_LIKE.match(url)
        if scp is None:
            raise URLRefused("not a URL (scheme://host/path) nor scp-like user@host:path")
        user, host, path = scp.groups()
        segments = _segments(path.removeprefix("/"), scope=scope)
        if not path.startswith("/"):
            segments = ("~", *segments)  # scp-like paths are relative to the login's home
        return Origin("ssh", _host(host, scope=scope), DEFAULT_PORTS["ssh"], segments, user)
    scheme = match.group(1).lower()
    rest = url[match.end() :]
    authority, slash, path = rest.partition("/")
    if scheme == "file":
        if authority:
            raise URLRefused("file URLs must be file:///absolute/path (no host)")
        return Origin("file", "", 0, _segments(path, scope=scope) if path else ())
    user, at, hostport = authority.rpartition("@")
    if at:
        if scheme != "ssh":
            raise URLRefused(
                "http(s) and git URLs must not contain user information ('user@'); use the credentials Secret"
            )
        if not _USER.match(user):
            raise URLRefused("the ssh user name may only contain letters, digits and '._~-' (no password)")
    host, port = _split_port(hostport, scheme)
    segments = _segments(path, scope=scope) if path or slash else ()
    if not scope and not segments:
        raise URLRefused("the URL has no repository path")
    return Origin(scheme, _host(host, scope=scope), port, segments, user)


def _split_port(hostport: str, scheme: str) -> tuple[str, int]:
    default = DEFAULT_PORTS.get(scheme)
    if default is None:
        raise URLRefused(f"unknown scheme {scheme!r}")
    if hostport.startswith("["):
        host, bracket, tail = hostport[1:].partition("]")
        if not bracket:
            raise URLRefused("unterminated IPv6 literal in the host")
        port_text = tail.removeprefix(":") if tail.startswith(":") else None
        if tail and port_text is None:
            raise URLRefused("garbage after the IPv6 literal")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise URLRefused("invalid IPv6 literal in the host") from None
    else:
        host, colon, port_text_or_empty = hostport.partition(":")
        port_text = port_text_or_empty if colon else None
    if port_text is None or port_text == "":
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise URLRefused("the port must be a number from 1 to 65535")
    return host, int(port_text)


def _host(host: str, *, scope: bool) -> str:
    if not host:
        raise URLRefused("the URL has no host")
    if ":" in host:  # an IPv6 literal, validated by _split_port
        return str(ipaddress.IPv6Address(host))
    if "%" in host:
        raise URLRefused("the host must not be percent-encoded")
    if not host.isascii():
        if not scope:
            raise URLRefused("write international host names in their xn-- form")
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise URLRefused("the host is not a valid international domain name") from None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not _REG_NAME.match(host) or ".." in host or host.startswith("-"):
        raise URLRefused("the host is not a valid host name")
    return host


def _segments(path: str, *, scope: bool) -> tuple[str, ...]:
    """Decoded segments of a path (after its leading '/'; one trailing '/' ignored)."""
    body = path
    if body.endswith("/"):
        body = body[:-1]
    if not body:
        if scope:
            return ()
        raise URLRefused("the URL has no repository path")
    raw = body.split("/")
    if any(part == "" for part in raw):
        raise URLRefused("the URL path must not contain empty segments ('//')")
    decoded = tuple(unquote(part) for part in raw)
    if any(part in (".", "..") for part in decoded):
        raise URLRefused("the URL path must not contain '.' or '..' segments")
    return decoded


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host names by itself, including the legacy forms
    (`2130706433`, `0x7f.1`, `127.1`) that resolvers accept as IPv4."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable: not loopback, link-local, private, shared, reserved or multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    """`example.com` matches that host only; `*.example.com` any name below it (not the apex)."""
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def normalize_host_pattern(pattern: str) -> str:
    """A WORKSPACE_ALLOWED_HOSTS entry in the form hosts are compared in."""
    wildcard = pattern.startswith("*.")
    name = pattern[2:] if wildcard else pattern
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    normalized = str(ipaddress.IPv6Address(name)) if ":" in name else _host(name, scope=True)
    return f"*.{normalized}" if wildcard else normalized
