"""Two tiers: `make unit` runs `-m "not cluster"` (no control plane, no build, seconds);
`make test` runs everything. Modules that need the control plane say so with
`pytestmark = pytest.mark.cluster`; a test that reaches the `control_plane` fixture
without the marker gets it here, so the fast tier can never start (or build) one.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["upstreams", "cluster", "runtime_fakes"]

CLUSTER_FIXTURE = "control_plane"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURE in getattr(item, "fixturenames", ()) and item.get_closest_marker("cluster") is None:
            item.add_marker(pytest.mark.cluster)
