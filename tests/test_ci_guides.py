"""The examples and CI recipes as shipped: every Kubernetes object passes a server-side dry run,
and the shell steps of each recipe, read from its files, run in an emulated job pod against the
real operator (the whole volume mounted read-only at the cache root, an empty directory, uid 65532,
the Role of examples/job-rbac.yaml)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, CustomObjectsApi

from cluster import REPO, OperatorProcess, Workspaces, load_yaml, wait_for
from pod import EmulatedPod, job_kubeconfig, job_token, ok
from upstreams import SmartHTTP, StandardRepo, git, publish

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
StartOperator = Callable[..., OperatorProcess]
EXAMPLES = REPO / "examples"
CI = EXAMPLES / "ci"
TEKTON_KINDS = ("Task", "Pipeline", "PipelineRun")


def kubernetes_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in examples/ (CI-system files such as workflows have no apiVersion)."""
    found = []
    for path in sorted([*EXAMPLES.rglob("*.yaml"), *EXAMPLES.rglob("*.yml")]):
        for doc in load_yaml(path):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                found.append((path, doc))
    return found


@pytest.fixture(scope="module")
def tekton_stand_ins(kubectl: Kubectl) -> None:
    """Tekton's CRDs cannot be fetched here: permissive stand-ins let the API server check the rest."""
    for kind in TEKTON_KINDS:
        plural = kind.lower() + "s"
        kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "apiextensions.k8s.io/v1",
                    "kind": "CustomResourceDefinition",
                    "metadata": {"name": f"{plural}.tekton.dev"},
                    "spec": {
                        "group": "tekton.dev",
                        "scope": "Namespaced",
                        "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                        "versions": [
                            {
                                "name": "v1",
                                "served": True,
                                "storage": True,
                                "schema": {
                                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                                },
                            }
                        ],
                    },
                }
            ),
        )
        kubectl("wait", "--for=condition=Established", f"crd/{plural}.tekton.dev", "--timeout=60s")


def test_every_example_object_passes_server_dry_run(kubectl: Kubectl, crd: None, tekton_stand_ins: None) -> None:
    objects = kubernetes_objects()
    for namespace in sorted({doc["metadata"].get("namespace") for _, doc in objects} - {None, "default"}):
        kubectl("create", "namespace", str(namespace), check=False)
    kinds = set()
    for path, doc in objects:
        verb = "create" if "generateName" in doc["metadata"] else "apply"
        result = kubectl(verb, "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
        assert result.returncode == 0, f"{path.relative_to(REPO)}: {doc['kind']}: {result.stderr}"
        kinds.add(doc["kind"])
        if doc["kind"] == "Secret":
            assert doc["metadata"].get("annotations", {}).get("crafting.dev/repositories"), (
                f"{path.relative_to(REPO)}: Secret without the crafting.dev/repositories annotation"
            )
    assert {"Job", "Workspace", "Role", "Secret", "ConfigMap", "Task", "Pipeline", "PipelineRun"} <= kinds
    job = (EXAMPLES / "job.yaml").read_text()
    assert "kubectl-workspace checkout" in job and "bitnami" not in job


# -- the recipes' shell steps in a pod --------------------------------------------------------


@pytest.fixture
def served_as_org_repo(upstream_repo: StandardRepo) -> StandardRepo:
    """The standard repository also served as org/repo.git, the shape of a forge's URLs."""
    assert upstream_repo.served_dir is not None
    publish(upstream_repo.src, upstream_repo.served_dir / "org" / "repo.git")
    return upstream_repo


@pytest.fixture
def ci_pod(
    pod: EmulatedPod,
    kubectl: Kubectl,
    kubeconfig: Path,
    api_client: ApiClient,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    smart_http: SmartHTTP,
    tmp_path: Path,
) -> tuple[EmulatedPod, OperatorProcess]:
    op = operator_factory()
    op.root.mkdir(parents=True, exist_ok=True)
    pod.mounts[pod.cache_root] = op.root  # the claim, read-only, at /workspaces (here: the cache root)
    pod.kubeconfig(
        job_kubeconfig(kubeconfig, job_token(kubectl, api_client, namespace), namespace, tmp_path / "job-kubeconfig")
    )
    # The recipes' Secret, listing the loopback repository instead of the example's.
    secret = next(doc for doc in load_yaml(CI / "gitlab" / "k8s.yaml") if doc["kind"] == "Secret")
    secret["metadata"].update(
        namespace=namespace, annotations={"crafting.dev/repositories": f"http://127.0.0.1:{smart_http.port}/org/"}
    )
    kubectl("apply", "-f", "-", input=json.dumps(secret))
    return pod, op


def checked_out(pod: EmulatedPod, directory: Path, commit: str) -> None:
    assert directory.stat().st_uid == 65532 and (directory / "README.md").stat().st_uid == 65532
    head = ok(pod.sh(f"cd {directory} && git rev-parse HEAD && git status --porcelain && echo clean"))
    assert head.split() == [commit, "clean"], head


def test_github_actions_recipe(
    ci_pod: tuple[EmulatedPod, OperatorProcess],
    workspaces: Workspaces,
    served_as_org_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    pod, _ = ci_pod
    job = yaml.safe_load((CI / "github-actions" / "workflow.yml").read_text())["jobs"]["test"]
    context = {"github.run_id": "4711", "github.run_attempt": "1", "strategy.job-index": "0"}

    def expand(text: str) -> str:
        return re.sub(r"\$\{\{\s*([\w.-]+)\s*\}\}", lambda m: context[m.group(1)], text)

    steps = {step["name"]: step["run"] for step in job["steps"]}
    env = {key: expand(value) for key, value in job["env"].items()}
    env.update(
        GITHUB_SERVER_URL=f"http://127.0.0.1:{smart_http.port}",
        GITHUB_REPOSITORY="org/repo",
        GITHUB_REF="refs/heads/main",
        GITHUB_SHA=served_as_org_repo.main,
        GITHUB_WORKSPACE=str(pod.empty_dir),
    )
    ok(pod.sh(steps["Checkout"], env=env))
    assert env["WS"] == "gh-4711-1-0" and workspaces.status("gh-4711-1-0")["phase"] == "Ready"
    assert workspaces.get("gh-4711-1-0")["spec"]["project"] == "repo"  # type: ignore[index]
    checked_out(pod, pod.empty_dir, served_as_org_repo.main)
    describe = ok(pod.sh(f"cd {pod.empty_dir} && git describe --tags"))
    assert describe == "v1.1"
    ok(pod.sh(steps["Release the Workspace"], env=env))
    workspaces.wait_gone("gh-4711-1-0")


def test_gitlab_recipe(
    ci_pod: tuple[EmulatedPod, OperatorProcess],
    workspaces: Workspaces,
    served_as_org_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    pod, _ = ci_pod
    pipeline = yaml.safe_load((CI / "gitlab" / "gitlab-ci.yml").read_text())
    job = pipeline["test"]
    env = {
        **pipeline["variables"],
        "CI_JOB_ID": "8123",
        "CI_COMMIT_SHA": served_as_org_repo.pull_42,
        "CI_PROJECT_URL": f"http://127.0.0.1:{smart_http.port}/org/repo",
        "CI_PROJECT_DIR": str(pod.empty_dir),
    }
    # before_script and script run in one shell; after_script in a new one.
    ok(pod.sh("set -eu\n" + "\n".join(job["before_script"]), env=env))
    assert workspaces.get("gl-8123")["spec"]["ref"] == {"commit": served_as_org_repo.pull_42}  # type: ignore[index]
    checked_out(pod, pod.empty_dir, served_as_org_repo.pull_42)
    ok(pod.sh("set -eu\n" + "\n".join(job["after_script"]), env=env))
    workspaces.wait_gone("gl-8123")


def test_tekton_task(
    ci_pod: tuple[EmulatedPod, OperatorProcess],
    api_client: ApiClient,
    namespace: str,
    kubectl: Kubectl,
    workspaces: Workspaces,
    tekton_stand_ins: None,
    served_as_org_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    pod, op = ci_pod
    task = yaml.safe_load((CI / "tekton" / "task.yaml").read_text())
    custom: Any = CustomObjectsApi(api_client)
    run = custom.create_namespaced_custom_object(
        "tekton.dev",
        "v1",
        namespace,
        "pipelineruns",
        {"apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "metadata": {"generateName": "build-"}, "spec": {}},
    )
    results = pod.base / "results"
    results.mkdir()
    results.chmod(0o777)
    url = f"http://127.0.0.1:{smart_http.port}/org/repo.git"
    values = {
        "params.project": "backend",
        "params.url": url,
        "params.revision": served_as_org_repo.v1_0,
        "params.refName": "refs/heads/main",
        "params.credentials": "git-creds",
        "params.pipelineRunName": run["metadata"]["name"],
        "params.pipelineRunUid": run["metadata"]["uid"],
        "workspaces.output.path": str(pod.empty_dir),
        "results.commit.path": str(results / "commit"),
        "results.url.path": str(results / "url"),
    }
    script = re.sub(r"\$\(([\w.]+)\)", lambda m: values[m.group(1)], task["spec"]["steps"][0]["script"])
    ok(pod.sh(script))
    assert (results / "commit").read_text() == served_as_org_repo.v1_0 and (results / "url").read_text() == url
    checked_out(pod, pod.empty_dir, served_as_org_repo.v1_0)
    [created] = [
        ws
        for ws in custom.list_namespaced_custom_object("crafting.dev", "v1", namespace, "workspaces")["items"]
        if ws["metadata"]["name"].startswith("tk-")
    ]
    name = created["metadata"]["name"]
    cache = op.root / workspaces.status(name)["cachePath"]
    assert git(cache, "rev-parse", f"refs/workspaces/{name}") == served_as_org_repo.v1_0

    # Cleanup by ownerReference: the garbage collector deletes the Workspace with its run.
    kubectl("delete", "pipelinerun", run["metadata"]["name"], "-n", namespace)
    workspaces.wait_gone(name, timeout=90)
    wait_for(lambda: name not in git(cache, "for-each-ref", "refs/workspaces/"), timeout=30, message="pin removed")
