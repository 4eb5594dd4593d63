"""git's credential helper: answer only for the origins the credentials were granted to.

git runs `python -I -S credential_helper.py <dir> get` and writes what it wants
on stdin (`protocol=https`, `host=h[:port]`, `path=org/repo.git` thanks to
`credential.useHttpPath`). The helper prints `username=`/`password=` from the
0600 files in <dir> only when that request lies inside one of the origins
listed in <dir>/grants (written by credentials.py from origins.Origin, one per
line: scheme, host, port, '/'-joined decoded segments, tab-separated);
otherwise it prints nothing and git fails with an authentication error.

Nothing secret is on its command line or in its environment. It imports only
`sys` and `os` because it starts once per authenticated git call; the
normalization mirrors origins.py (tests check that the two agree).
"""

from __future__ import annotations

import os
import sys

GRANTS = "grants"
DEFAULT_PORTS = {"https": 443, "http": 80}


def requested(fields: dict[str, str]) -> tuple[str, str, int, tuple[str, ...]] | None:
    scheme = fields.get("protocol", "").lower()
    if scheme not in DEFAULT_PORTS:
        return None
    hostport = fields.get("host", "")
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ("" if not tail else "x")
    else:
        host, _, port_text = hostport.partition(":")
    host = host.lower().removesuffix(".")
    if not host or (port_text and not port_text.isdigit()):
        return None
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    raw = fields.get("path", "").strip("/")
    segments = tuple(raw.split("/")) if raw else ()
    if any(part in ("", ".", "..") for part in segments):
        return None
    return scheme, host, port, segments


def _strip_git(segment: str) -> str:
    return segment[:-4] if segment.endswith(".git") and len(segment) > 4 else segment


def covers(grant: tuple[str, str, int, tuple[str, ...]], wanted: tuple[str, str, int, tuple[str, ...]]) -> bool:
    if grant[:3] != wanted[:3]:
        return False
    mine, theirs = grant[3], wanted[3]
    if len(theirs) < len(mine):
        return False
    if len(theirs) == len(mine):
        return mine[:-1] == theirs[:-1] and (not mine or _strip_git(mine[-1]) == _strip_git(theirs[-1]))
    return theirs[: len(mine)] == mine


def read_grants(directory: str) -> list[tuple[str, str, int, tuple[str, ...]]]:
    found = []
    with open(os.path.join(directory, GRANTS)) as handle:
        for line in handle:
            scheme, host, port, path = line.rstrip("\n").split("\t")
            found.append((scheme, host, int(port), tuple(path.split("/")) if path else ()))
    return found


def answer(directory: str, fields: dict[str, str]) -> str:
    wanted = requested(fields)
    if wanted is None or not any(covers(grant, wanted) for grant in read_grants(directory)):
        return ""
    with open(os.path.join(directory, "username")) as handle:
        username = handle.read()
    with open(os.path.join(directory, "password")) as handle:
        password = handle.read()
    return f"username={username}\npassword={password}\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        return 2
    if argv[1] != "get":
        return 0  # store / erase: nothing is kept, nothing to forget
    fields: dict[str, str] = {}
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            break
        key, _, value = line.partition("=")
        fields.setdefault(key, value)
    sys.stdout.write(answer(argv[0], fields))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
