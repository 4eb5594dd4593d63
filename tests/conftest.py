"""Three tiers. `make unit` runs `-m "not cluster and not upstreams"`: no control plane,
no build, no network, seconds. `make test` runs everything. Modules say what they need
with `pytestmark = pytest.mark.cluster` (the local API server) or `pytest.mark.upstreams`
(git servers on loopback); a test that reaches one of those fixtures without the marker
gets it here, so the fast tier can never start (or build) them.
"""

from __future__ import annotations

import pytest

# engine_fixtures comes after upstreams on purpose: its upstream_repo (a copy of one
# session-wide template, same SHAs and places) replaces the one built per test.
pytest_plugins = ["upstreams", "cluster", "runtime_fakes", "engine_fixtures", "attackers", "pod"]

NEEDS = {
    "cluster": {"control_plane"},
    "upstreams": {"git_daemon", "smart_http", "smart_http_auth", "https_upstream", "ssh_server", "ro_daemon"},
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in NEEDS.items():
            if used & fixtures and item.get_closest_marker(marker) is None:
                item.add_marker(marker)
