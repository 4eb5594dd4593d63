"""Logs: kopf's JSON format with the operator's structured fields, and plain text lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from workspace_operator.__main__ import setup_logging
from workspace_operator.logs import fields


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup_logging configures the root logger (and asyncio's): put both back afterwards."""
    root, aio = logging.getLogger(), logging.getLogger("asyncio")
    saved = root.handlers[:], root.level, aio.handlers[:], aio.propagate
    yield
    root.handlers[:], aio.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    aio.propagate = saved[3]


def last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_json_lines_carry_the_workspace_fields(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json", verbose=False)
    logging.getLogger("workspace_operator.materialize").info(
        "materialized %s/%s",
        "team-a",
        "ws-1",
        extra=fields("team-a", "ws-1", project="backend", reason="Materialized", commit="3f2a" * 10),
    )

    entry = json.loads(last_line(capsys))
    assert entry["message"] == "materialized team-a/ws-1" and entry["severity"] == "info"
    assert entry["object"] == {
        "apiVersion": "crafting.dev/v1",
        "kind": "Workspace",
        "namespace": "team-a",
        "name": "ws-1",
    }
    assert (entry["namespace"], entry["project"], entry["reason"], entry["commit"]) == (
        "team-a",
        "backend",
        "Materialized",
        "3f2a" * 10,
    )
    assert "timestamp" in entry


def test_project_fields_without_a_workspace(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json", verbose=False)
    logging.getLogger("workspace_operator.gc").warning(
        "gc: prune", extra=fields("team-a", project="backend", reason="prune")
    )
    entry = json.loads(last_line(capsys))
    assert "object" not in entry and (entry["project"], entry["reason"], entry["severity"]) == (
        "backend",
        "prune",
        "warn",
    )


def test_exceptions_are_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json", verbose=False)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("workspace_operator.gc").exception("gc pass failed")
    entry = json.loads(last_line(capsys))
    assert entry["message"] == "gc pass failed" and "ValueError: boom" in entry["exc_info"]


def test_text_lines_name_the_object(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("text", verbose=False)
    logging.getLogger("workspace_operator.teardown").info("removed worktree", extra=fields("team-a", "ws-1"))
    line = last_line(capsys)
    assert line.endswith(" INFO    workspace_operator.teardown: [team-a/ws-1] removed worktree"), line


def test_client_chatter_is_quiet_unless_verbose() -> None:
    setup_logging("text", verbose=False)
    assert logging.getLogger("urllib3").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger().level == logging.INFO
