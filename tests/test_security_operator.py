"""Credential attacks against the real operator: API server, operator process, loopback servers.

A tenant who may only create Workspaces in a namespace holding an opted-in
Secret tries to get its user name and token sent elsewhere: dot segments and
other URL tricks (refused by the API server), a submodule on an attacker's
host, a non-UTF-8 Secret. Whatever happens, the attacker's server never sees a
credential and no secret appears in logs, status, events or files.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, CoreV1Api, V1ObjectMeta, V1Secret
from kubernetes.client.exceptions import ApiException

from attackers import CredentialSink
from cluster import OperatorProcess, Workspaces, wait_for
from test_credentials_origin import submodule
from upstreams import SmartHTTP, StandardRepo, served_repo

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
StartOperator = Callable[..., OperatorProcess]

USER = "u7x9q"  # short: must be masked too
TOKEN = "tok-" + secrets.token_hex(12)


def make_secret(core: CoreV1Api, namespace: str, name: str, data: dict[str, bytes], allowed: str) -> None:
    core.create_namespaced_secret(
        namespace,
        V1Secret(
            metadata=V1ObjectMeta(name=name, annotations={"crafting.dev/repositories": allowed}),
            type="Opaque",
            data={key: base64.b64encode(value).decode() for key, value in data.items()},
        ),
    )


@pytest.mark.parametrize(
    "trick",
    [
        "{base}/repo.git/../../other/secret.git",
        "{base}/repo.git/./x",
        "{base}/repo.git/%2e%2e/%2E%2E/other/secret.git",
        "{base}/org%2Fother.git",
        "{base}/org%5c..%5cother.git",
        "{base}/org\\..\\other.git",
        "{base}//other/secret.git",
        "{base}/repo.git?private_token=abc123",
        "{base}/repo.git#x",
        "http://evil@127.0.0.1/repo.git",
        "git@127.0.0.1:../other.git",
        "git@127.0.0.1:org//other.git",
    ],
)
def test_api_server_refuses_url_tricks(workspaces: Workspaces, trick: str) -> None:
    url = trick.format(base="https://git.example.com")
    with pytest.raises(ApiException) as caught:
        workspaces.create("trick", {"project": "p", "repository": url})
    assert caught.value.status == 422, caught.value.body
    assert "repository" in str(caught.value.body)


def test_api_server_accepts_ordinary_urls(workspaces: Workspaces) -> None:
    for index, url in enumerate(
        (
            "https://git.example.com/org/.github.git",
            "https://h.example/a/b.c/d-e_f~g.git",
            "ssh://git@h.example:2222/~/org/x.git",
            "git@h.example:org/x.git",
            "file:///srv/git/x.git",
            "https://h.example/org/caf%C3%A9.git",
        )
    ):
        workspaces.create(f"ok-{index}", {"project": "p", "repository": url})


def test_submodule_on_attacker_host_never_receives_the_secret(
    api_client: ApiClient,
    kubectl: Kubectl,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    credential_sink: CredentialSink,
    tmp_path: Path,
) -> None:
    assert upstream_repo.served_dir is not None
    served_repo(
        upstream_repo.served_dir,
        "super",
        {"top.txt": "top\n"},
        {"lib": upstream_repo.main},
        submodule("lib", "lib", credential_sink.url("org/lib.git")),
    )
    server = SmartHTTP(upstream_repo.served_dir, username=USER, password=TOKEN).start()
    try:
        op = operator_factory()
        core = CoreV1Api(api_client)
        url = server.url("super")
        make_secret(core, namespace, "git-creds", {"username": USER.encode(), "password": TOKEN.encode()}, url)
        make_secret(core, namespace, "latin1", {"username": USER.encode(), "password": b"caf\xe9-token"}, url)
        workspaces.create(
            "attack",
            {"project": "super", "repository": url, "submodules": True, "credentials": {"secretName": "git-creds"}},
        )
        workspaces.create("plain", {"project": "plain", "repository": url, "credentials": {"secretName": "git-creds"}})
        workspaces.create("latin1", {"project": "latin1", "repository": url, "credentials": {"secretName": "latin1"}})

        workspaces.wait_reason("attack", "AuthenticationFailed")
        assert workspaces.status("attack")["phase"] == "Failed"
        assert workspaces.wait_ready("plain")["commit"]  # the same Secret works for its repository
        invalid = workspaces.wait_reason("latin1", "InvalidCredentials")
        assert "UTF-8" in invalid["message"]
        # Permanent: not retried (the attempt count stays put while the operator keeps running).
        attempts = workspaces.status("latin1")["attempts"]
        time.sleep(3)  # several retry periods (base 0.5 s) in which nothing may happen
        assert workspaces.status("latin1")["attempts"] == attempts == 1
        assert workspaces.status("latin1")["phase"] == "Failed"

        assert credential_sink.received(), "the operator's git never contacted the attacker"
        assert all(r.authorization is None for r in credential_sink.received()), credential_sink.received()
        events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
        texts = [op.log(), events] + [json.dumps(workspaces.get(n)) for n in ("attack", "plain", "latin1")]
        for path in op.root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                texts.append(path.read_bytes().decode("utf-8", "replace"))
        for secret in (USER, TOKEN, "caf\xe9-token"):
            assert not any(secret in text for text in texts), f"secret {secret[:3]}... leaked"
        assert not list(tmp_path.glob("wo-cred-*")), "credential scratch directory left behind"
        wait_for(lambda: "AuthenticationFailed" in op.metrics(), timeout=10, message="failure metric")
    finally:
        server.stop()
