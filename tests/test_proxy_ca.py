"""Corporate networks: https upstreams behind a private CA, and git through an HTTP proxy.

Real parts only: git http-backend served over TLS on loopback with a certificate
from a private CA made per test (tests/pki.py), and a CONNECT proxy on loopback
that logs every tunnel (tests/proxy.py).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, CoreV1Api, V1ObjectMeta, V1Secret

from cluster import OperatorProcess, Workspaces
from pki import PrivateCA
from proxy import ConnectProxy
from upstreams import SmartHTTP, StandardRepo, served_repo

pytestmark = pytest.mark.cluster
StartOperator = Callable[..., OperatorProcess]


def _ca_secret(api_client: ApiClient, namespace: str, name: str, pem: str, allowed: str) -> None:
    CoreV1Api(api_client).create_namespaced_secret(
        namespace,
        V1Secret(
            metadata=V1ObjectMeta(name=name, annotations={"crafting.dev/repositories": allowed}),
            type="Opaque",
            data={"ca.crt": base64.b64encode(pem.encode()).decode()},
        ),
    )


def test_private_ca_is_refused_without_trust_and_ready_with_the_secrets_ca(
    api_client: ApiClient,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    https_upstream: SmartHTTP,
    ca: PrivateCA,
    tmp_path: Path,
) -> None:
    op = operator_factory()
    url = https_upstream.url("repo")
    workspaces.create("untrusted", {"project": "untrusted", "repository": url})
    condition = workspaces.wait_reason("untrusted", "TLSVerificationFailed")
    assert workspaces.status("untrusted")["phase"] == "Failed", condition  # permanent: no retry loop

    _ca_secret(api_client, namespace, "corp-ca", ca.ca_pem, url)
    workspaces.create("trusted", {"project": "trusted", "repository": url, "credentials": {"secretName": "corp-ca"}})
    assert workspaces.wait_ready("trusted")["commit"] == upstream_repo.main
    # The bundle was only ever in a private scratch directory, gone after the checkout.
    pem_line = ca.ca_pem.splitlines()[1]
    assert not [p for p in op.root.rglob("*") if p.is_file() and pem_line.encode() in p.read_bytes()]
    assert not list(tmp_path.glob("wo-ca-*")), "CA scratch directory left behind"


def test_the_secrets_ca_reaches_the_submodules_it_covers(
    api_client: ApiClient,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    https_upstream: SmartHTTP,
    ca: PrivateCA,
) -> None:
    operator_factory()
    lib = https_upstream.url("lib")
    served_repo(
        https_upstream.base,
        "super",
        {"top.txt": "top\n"},
        {"vendor/lib": served_repo(https_upstream.base, "lib", {"lib.txt": "library\n"})},
        f'[submodule "lib"]\n\tpath = vendor/lib\n\turl = {lib}\n',
    )
    url = https_upstream.url("super")
    _ca_secret(api_client, namespace, "both", ca.ca_pem, f"{url}\n{lib}")
    _ca_secret(api_client, namespace, "super-only", ca.ca_pem, url)
    for name, secret in (("covered", "both"), ("uncovered", "super-only")):
        workspaces.create(
            name, {"project": name, "repository": url, "submodules": True, "credentials": {"secretName": secret}}
        )
    assert workspaces.wait_ready("covered")["phase"] == "Ready"
    condition = workspaces.wait_reason("uncovered", "TLSVerificationFailed")
    assert "vendor/lib" in condition["message"] or "lib.git" in condition["message"], condition


def test_ca_file_setting_trusts_the_private_ca_for_every_repository(
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    https_upstream: SmartHTTP,
    ca: PrivateCA,
) -> None:
    operator_factory(env={"WORKSPACE_CA_FILE": str(ca.ca_file)})
    workspaces.create("mounted", {"project": "mounted", "repository": https_upstream.url("repo", host="localhost")})
    assert workspaces.wait_ready("mounted")["commit"] == upstream_repo.main


@pytest.mark.parametrize("case", ["upper", "lower"])
def test_git_goes_through_the_proxy_and_no_proxy_exempts_hosts(
    case: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    https_upstream: SmartHTTP,
    ca: PrivateCA,
) -> None:
    with ConnectProxy() as proxy:
        names = ("HTTPS_PROXY", "NO_PROXY") if case == "upper" else ("https_proxy", "no_proxy")
        # The control plane is on 127.0.0.1 too: exempt, as a cluster's API server should be.
        operator_factory(env={"WORKSPACE_CA_FILE": str(ca.ca_file), names[0]: proxy.url, names[1]: "127.0.0.1"})
        port = https_upstream.port
        workspaces.create("proxied", {"project": "proxied", "repository": https_upstream.url("repo", host="localhost")})
        assert workspaces.wait_ready("proxied")["commit"] == upstream_repo.main
        assert f"localhost:{port}" in proxy.tunnels(), proxy.tunnels()

        workspaces.create("direct", {"project": "direct", "repository": https_upstream.url("repo")})
        assert workspaces.wait_ready("direct")["commit"] == upstream_repo.main
        assert f"127.0.0.1:{port}" not in proxy.tunnels(), proxy.tunnels()
