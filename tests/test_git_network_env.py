"""What git gets for networks from the operator: proxies (both spellings), the CA file, a Secret's CA. No cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.runner import GitRunner, GitSettings
from workspace_operator.git.tls import ca_env

DEFAULT_SETTINGS = GitSettings()


def env_of(
    monkeypatch: pytest.MonkeyPatch, settings: GitSettings = DEFAULT_SETTINGS, **operator_env: str
) -> dict[str, str]:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in operator_env.items():
        monkeypatch.setenv(name, value)
    return GitRunner(settings).base_env()


def test_no_proxy_settings_no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_of(monkeypatch, KUBERNETES_SERVICE_HOST="10.0.0.1")
    assert not {k for k in env if k.lower().endswith("_proxy")}
    assert "KUBERNETES_SERVICE_HOST" not in env and "GIT_SSL_CAINFO" not in env


def test_upper_case_proxies_reach_git_in_both_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_of(monkeypatch, HTTP_PROXY="http://p:3128", HTTPS_PROXY="http://p:3129", NO_PROXY=".svc,10.0.0.1")
    # curl reads only the lower-case http_proxy: the upper-case setting must not be lost.
    assert env["http_proxy"] == env["HTTP_PROXY"] == "http://p:3128"
    assert env["https_proxy"] == env["HTTPS_PROXY"] == "http://p:3129"
    assert env["no_proxy"] == env["NO_PROXY"] == ".svc,10.0.0.1"


def test_lower_case_wins_when_both_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_of(monkeypatch, https_proxy="http://lower:1", HTTPS_PROXY="http://upper:2")
    assert env["https_proxy"] == env["HTTPS_PROXY"] == "http://lower:1"


def test_ca_file_becomes_git_ssl_cainfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = tmp_path / "corp.pem"
    env = env_of(monkeypatch, GitSettings(ca_file=bundle))
    assert env["GIT_SSL_CAINFO"] == str(bundle)


def test_a_secrets_ca_lives_in_a_private_file_for_the_block_only(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    with ca_env(pem, tmp_path) as env:
        path = Path(env["GIT_SSL_CAINFO"])
        assert path.read_text() == pem and path.stat().st_mode & 0o777 == 0o600
        assert path.parent.parent == tmp_path
    assert not path.exists() and not list(tmp_path.iterdir())
    with ca_env(None, tmp_path) as env:
        assert env == {}


def test_a_secrets_ca_without_a_certificate_is_a_permanent_tls_failure(tmp_path: Path) -> None:
    with pytest.raises(GitError) as failure, ca_env("not a certificate", tmp_path):
        pass
    assert failure.value.reason is Reason.TLS_VERIFY_FAILED and not failure.value.retryable
    assert not list(tmp_path.iterdir())
