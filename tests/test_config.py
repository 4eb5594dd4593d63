"""Settings parsing without a cluster: durations, the CA file, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from workspace_operator import config


def parse(**env: str) -> config.Config:
    return config.parse([], {"WORKSPACE_ROOT": "/tmp/volume", **env})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300", 300.0),
        ("300s", 300.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        ("0", 0.0),
        (" 90S ", 90.0),
        ("2.5", 2.5),
    ],
)
def test_durations_accept_plain_seconds_and_units(text: str, seconds: float) -> None:
    assert parse(WORKSPACE_LOCK_WAIT_SECONDS=text).lock_wait_seconds == seconds
    assert parse(WORKSPACE_GC_INTERVAL_SECONDS=text).gc_interval_seconds == seconds


@pytest.mark.parametrize("text", ["5x", "m", "-5", "1 h", "5m3", "1e3", "h1", "five", "1h-30m"])
def test_bad_durations_are_refused_with_the_setting_named(text: str) -> None:
    with pytest.raises(config.ConfigError, match="WORKSPACE_GIT_TIMEOUT_SECONDS: not a duration"):
        parse(WORKSPACE_GIT_TIMEOUT_SECONDS=text)


def test_integer_settings_take_whole_durations_only() -> None:
    assert parse(WORKSPACE_DEFAULT_TTL_SECONDS="1d").default_ttl_seconds == 86400
    assert parse(WORKSPACE_LEASE_SECONDS="30s").lease_seconds == 30
    assert isinstance(parse(WORKSPACE_LEASE_SECONDS="1m").lease_seconds, int)
    with pytest.raises(config.ConfigError, match="WORKSPACE_LEASE_SECONDS: not a whole number"):
        parse(WORKSPACE_LEASE_SECONDS="1.5s")


def test_every_duration_setting_uses_the_duration_parser() -> None:
    durations = {
        var for _flag, var, _name, kind, _help in config._SETTINGS if kind in (config._duration, config._whole_seconds)
    }
    seconds_settings = {var for _flag, var, *_rest in config._SETTINGS if var.endswith("_SECONDS")}
    assert seconds_settings <= durations


def test_flags_take_durations_too() -> None:
    parsed = config.parse(["--root", "/tmp/v", "--cache-unused-seconds", "30d"], {})
    assert parsed.cache_unused_seconds == 30 * 86400


def test_ca_file_must_exist(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert parse(WORKSPACE_CA_FILE=str(bundle)).git.ca_file == bundle
    with pytest.raises(config.ConfigError, match="WORKSPACE_CA_FILE: no such file"):
        parse(WORKSPACE_CA_FILE=str(tmp_path / "missing.pem"))


def test_submodule_budget_reaches_the_git_engine() -> None:
    assert parse().git.max_submodules == 64
    assert parse(WORKSPACE_MAX_SUBMODULES="8").git.max_submodules == 8
    with pytest.raises(config.ConfigError, match="WORKSPACE_MAX_SUBMODULES must be 0"):
        parse(WORKSPACE_MAX_SUBMODULES="-1")
