"""Credential attacks against the real operator: API server, operator process, loopback servers.

A tenant who may only create Workspaces in a namespace holding an opted-in
Secret tries to get its user name and token sent elsewhere: dot segments and
other URL tricks (refused by the API server), a submodule on an attacker's
host, a non-UTF-8 Secret. Whatever happens, the attacker's server never sees a
credential and no secret appears in logs, status, events or files; nor can that
server confirm a guessed secret by echoing it into its errors. A fan-out of
nested submodules stops at the Workspace's submodule budget.
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

from attackers import CredentialSink, error_advertisement
from cluster import OperatorProcess, Workspaces, wait_for
from test_submodule_attacks import fan_out
from upstreams import GitDaemon, SmartHTTP, StandardRepo, served_repo, served_super, submodule

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
        "git@127.0.0.1::x.git",  # '::' before any '/' or '[': git's <transport>::<address> form
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
            "https://[2001:db8::1]/org/x.git",  # IPv6: its '::' is no remote-helper syntax
            "ssh://git@[2001:db8::1]:2222/org/x.git",
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
    served_super(upstream_repo, credential_sink.url("org/lib.git"))
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


def test_submodule_server_cannot_confirm_a_guessed_secret(
    api_client: ApiClient,
    kubectl: Kubectl,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    tmp_path: Path,
) -> None:
    """The attacker's server echoes the real user name and token into one Workspace's
    submodule error and wrong guesses into the other's: what either reports is the same."""
    names = ("right", "wrong")
    guesses = {"/right/": f"{USER} {TOKEN}", "/wrong/": f"u8z3w tok-{secrets.token_hex(12)}"}

    def echo(path: str) -> bytes:
        said = next(text for prefix, text in guesses.items() if path.startswith(prefix))
        return error_advertisement(f"access denied for {said}")

    def events(name: str) -> list[str]:
        listed = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
        return [e["message"] for e in listed if e["involvedObject"]["name"] == name]

    assert upstream_repo.served_dir is not None
    with (
        CredentialSink(200, echo, "application/x-git-upload-pack-advertisement") as attacker,
        SmartHTTP(upstream_repo.served_dir, username=USER, password=TOKEN) as server,
    ):
        for name in names:
            served_repo(
                upstream_repo.served_dir,
                f"super-{name}",
                {"top.txt": "top\n"},
                {"lib": upstream_repo.main},
                submodule("lib", "lib", attacker.url(f"{name}/lib.git")),
            )
        op = operator_factory()
        allowed = ",".join(server.url(f"super-{name}") for name in names)
        secret = {"username": USER.encode(), "password": TOKEN.encode()}
        make_secret(CoreV1Api(api_client), namespace, "git-creds", secret, allowed)
        for name in names:
            spec = {"project": name, "repository": server.url(f"super-{name}"), "submodules": True}
            workspaces.create(name, {**spec, "credentials": {"secretName": "git-creds"}})
        right, wrong = (workspaces.wait_reason(name, "AuthenticationFailed")["message"] for name in names)
        assert {r.path.split("/")[1] for r in attacker.received()} == set(names), "the attack did not run"
        assert right == wrong  # byte for byte
        assert f"submodule 'lib' at 127.0.0.1:{attacker.port} failed" in right
        # Events too (posted when the create handler, not a takeover, ran the attempt).
        assert {message for name in names for message in events(name)} <= {right}
    texts = [op.log(), kubectl("get", "events", "-n", namespace, "-o", "json").stdout]
    texts += [json.dumps(workspaces.get(name)) for name in names]
    for text in texts:
        for said in (USER, TOKEN, *guesses["/wrong/"].split(), "***", "remote error"):
            assert said not in text, f"{said[:3]}... reported"


def test_submodule_fan_out_fails_at_the_budget(
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    git_daemon: GitDaemon,
) -> None:
    fan_out(git_daemon.base, 4)  # 4 + 16 submodules
    op = operator_factory(env={"WORKSPACE_MAX_SUBMODULES": "6"})
    workspaces.create("fan", {"project": "fan", "repository": git_daemon.url("super"), "submodules": True})
    condition = workspaces.wait_reason("fan", "TooManySubmodules")
    assert condition["status"] == "False" and workspaces.status("fan")["phase"] == "Failed"
    assert "more than 6 submodules" in condition["message"] and "WORKSPACE_MAX_SUBMODULES" in condition["message"]
    assert not (op.root / workspaces.namespace / "fan" / ".ready" / "fan").exists()
    # The first level (4) was cloned; the second was counted (4 + 4 > 6) before any fetch.
    assert git_daemon.count("mid") <= 6 and git_daemon.count("leaf") == 0, git_daemon.requests()
