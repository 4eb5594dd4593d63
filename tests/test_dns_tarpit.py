"""A tenant's host names whose name server never answers: they fail that tenant's
Workspaces within the lookup deadline, and nothing else of the replica waits for them
(Lease renewals, heartbeats, other namespaces' lookups).

The attack for real: a private network and mount namespace (`unshare`, as root, which
the tests run as) where /etc/resolv.conf names a loopback name server that reads every
query and never replies, so each lookup blocks its thread for the resolver's full
timeout (30 s here). Before the fix, lookups ran on the thread pool every Kubernetes
call uses: 200 of them held all its threads, no Lease renewal or heartbeat got through
within the renew deadline, and every Lease of the replica was lost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).parent / "helpers" / "dns_tarpit.py"
WORKSPACES = 200
RESOLVE_TIMEOUT = 2.0

pytestmark = [
    pytest.mark.upstreams,  # a loopback server and seconds of waiting: not in `make unit`
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (namespaces)"
    ),
]


def test_unanswered_lookups_fail_their_workspaces_and_hold_up_no_lease(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:30 attempts:1\n")
    (tmp_path / "volume").mkdir()
    setup = 'ip link set lo up && mount --bind "$RESOLV" /etc/resolv.conf && exec "$@"'
    done = subprocess.run(
        [
            *("unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c", setup, "tarpit"),
            *(sys.executable, str(HELPER), str(tmp_path / "volume"), str(WORKSPACES), str(RESOLVE_TIMEOUT)),
        ],
        env={**os.environ, "RESOLV": str(resolv)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    # Every hostile Workspace failed with the clear, retryable reason, within the lookup
    # deadline (with slack for a busy machine; the name server would have held them 30 s).
    expected = "UpstreamUnavailable: repository: looking up host {!r} got no answer within 2s"
    assert sum(result["outcomes"].values()) == WORKSPACES, result
    assert all(o.startswith("UpstreamUnavailable: repository: looking up host") for o in result["outcomes"]), result
    assert expected.format("h0.attacker.example") in result["outcomes"], result
    assert result["seconds"] < RESOLVE_TIMEOUT + 8, result
    # Another namespace's lookup, made while the attacker's hung, was not queued behind them:
    # its name (localhost, from /etc/hosts) was checked, and refused as a loopback address.
    assert result["victim"].startswith("HostNotAllowed: repository: host 'localhost' resolves to"), result
    # Meanwhile, and after, while the lookups' threads still hung: the other tenant's Lease
    # was renewed every time within its renew deadline, and the membership heartbeat too.
    assert not result["lease_lost"] and result["heartbeat_alive"], result
    assert result["lease_renewals"] >= 2, result
