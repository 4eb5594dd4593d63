"""BurstTrimmer without a cluster: memory is handed back once per drained burst, not per Workspace."""

from __future__ import annotations

import logging

import pytest

from workspace_operator.memory import BurstTrimmer


def test_trims_once_when_a_big_burst_drains(caplog: pytest.LogCaptureFixture) -> None:
    trimmer = BurstTrimmer(threshold=3)
    with caplog.at_level(logging.INFO, logger="workspace_operator.memory"):
        for n in (1, 2, 3, 2, 1):
            trimmer.observe(n)
        assert not caplog.records  # still in flight
        trimmer.observe(0)
        assert [r.getMessage().split(";")[0] for r in caplog.records] == ["burst of 3 materializations drained"]
        trimmer.observe(0)  # nothing new in flight: no second trim
        assert len(caplog.records) == 1


def test_small_bursts_cost_nothing(caplog: pytest.LogCaptureFixture) -> None:
    trimmer = BurstTrimmer(threshold=3)
    with caplog.at_level(logging.INFO, logger="workspace_operator.memory"):
        for n in (1, 2, 1, 0, 1, 0):
            trimmer.observe(n)
    assert not caplog.records
