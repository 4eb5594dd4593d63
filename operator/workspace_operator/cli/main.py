"""`kubectl workspace`: create, wait for, check out and delete Workspaces from a job.

Installed as the console script `kubectl-workspace`, so `kubectl workspace ...`
works wherever it is on PATH, and usable as an init container's command (it is
in the operator's image). Reference and exit codes: docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workspace_operator.cli.api import WorkspaceApi, connect
from workspace_operator.cli.checkout import check_target, checkout, source_of
from workspace_operator.cli.errors import CliError, Exit
from workspace_operator.git import ALL_SCHEMES, GitSettings, URLRefused, normalize_host_pattern
from workspace_operator.spec import CACHE_ONLY, GROUP, KIND, MODES, VERSION

DEFAULT_CACHE_ROOT = "/workspaces"
OWNER_API_VERSIONS = {"Pod": "v1", "Job": "batch/v1", "PipelineRun": "tekton.dev/v1", "TaskRun": "tekton.dev/v1"}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kubectl workspace", description=__doc__.split("\n")[0])
    top.add_argument("-n", "--namespace", help="default: the pod's namespace, else the kubeconfig's")
    top.add_argument("--kubeconfig", help="default: the pod's ServiceAccount, else KUBECONFIG or ~/.kube/config")
    commands = top.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", help="create a Workspace; prints its name")
    names = create.add_mutually_exclusive_group(required=True)
    names.add_argument("--name")
    names.add_argument("--generate-name", metavar="PREFIX", help="let the API server append a random suffix")
    create.add_argument("--project", required=True, help="cache key: one per repository (a DNS-1123 label)")
    create.add_argument("--repository", required=True)
    refs = create.add_mutually_exclusive_group()
    refs.add_argument("--branch")
    refs.add_argument("--tag")
    refs.add_argument("--ref", help="a full ref name, e.g. refs/pull/42/head")
    create.add_argument("--commit", help="full SHA; alone or with --branch/--tag/--ref")
    create.add_argument(
        "--mode",
        choices=MODES,
        default=CACHE_ONLY,
        help="CacheOnly (default here): pin in the cache, for `checkout --into`; Worktree: a worktree on the volume",
    )
    create.add_argument("--sparse", action="append", default=[], metavar="DIR", help="repeatable")
    create.add_argument("--sub-path")
    create.add_argument("--submodules", action="store_true")
    create.add_argument("--tags", action="store_true", help="fetch every tag into the cache (git describe)")
    create.add_argument("--credentials", metavar="SECRET", help="Secret with the repository's credentials")
    create.add_argument("--ttl", type=int, metavar="SECONDS", help="ttlSecondsAfterReady")
    create.add_argument("--owner", metavar="KIND/NAME/UID", help="ownerReference: deleted with its owner")
    create.add_argument(
        "--owner-api-version", help="default by kind: Pod v1, Job batch/v1, PipelineRun and TaskRun tekton.dev/v1"
    )

    for name, text in (
        ("wait", "exit 0 once Ready; non-zero at once on a permanent failure"),
        ("checkout", "wait, then make a writable checkout in --into"),
        ("path", "wait, then print the worktree's directory (Worktree mode)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("name")
        command.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS")
        if name == "checkout":
            command.add_argument("--into", required=True, type=Path, metavar="DIR")
            command.add_argument("--clean", action="store_true", help="empty DIR first")
        if name in ("checkout", "path"):
            command.add_argument(
                "--cache-root",
                type=Path,
                default=Path(os.environ.get("WORKSPACE_CACHE_ROOT", DEFAULT_CACHE_ROOT)),
                help=f"where the workspace volume is mounted (env WORKSPACE_CACHE_ROOT; default {DEFAULT_CACHE_ROOT})",
            )
    delete = commands.add_parser("delete", help="delete a Workspace (absent is fine)")
    delete.add_argument("name")
    return top


def workspace_body(args: argparse.Namespace, namespace: str) -> dict[str, Any]:
    ref = {
        key: value
        for key, value in (("branch", args.branch), ("tag", args.tag), ("name", args.ref), ("commit", args.commit))
        if value
    }
    spec: dict[str, Any] = {"project": args.project, "repository": args.repository, "mode": args.mode}
    optional = {
        "ref": ref or None,
        "sparse": args.sparse or None,
        "subPath": args.sub_path,
        "submodules": args.submodules or None,
        "tags": args.tags or None,
        "ttlSecondsAfterReady": args.ttl,
        "credentials": {"secretName": args.credentials} if args.credentials else None,
    }
    spec.update({key: value for key, value in optional.items() if value is not None})
    metadata: dict[str, Any] = {"namespace": namespace}
    if args.name:
        metadata["name"] = args.name
    else:
        metadata["generateName"] = args.generate_name
    if args.owner:
        metadata["ownerReferences"] = [owner_reference(args.owner, args.owner_api_version)]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


def owner_reference(value: str, api_version: str | None) -> dict[str, str]:
    kind, _, rest = value.partition("/")
    name, _, uid = rest.partition("/")
    if not (kind and name and uid):
        raise CliError(Exit.USAGE, f"--owner {value!r}: expected KIND/NAME/UID, e.g. Pod/build-7f9c/<uid>")
    version = api_version or OWNER_API_VERSIONS.get(kind)
    if version is None:
        raise CliError(Exit.USAGE, f"--owner-api-version is needed for kind {kind}")
    return {"apiVersion": version, "kind": kind, "name": name, "uid": uid}


def git_settings(environ: Mapping[str, str]) -> GitSettings:
    """Where submodules may come from: the operator's URL policy, from the same variables (docs/cli.md)."""

    def csv(name: str, default: str = "") -> list[str]:
        return [item.strip() for item in environ.get(name, default).split(",") if item.strip()]

    private = environ.get("WORKSPACE_ALLOW_PRIVATE_NETWORKS", "").strip().lower()
    if private not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise CliError(Exit.USAGE, f"WORKSPACE_ALLOW_PRIVATE_NETWORKS: not a boolean: {private!r}")
    roots = [Path(item) for item in csv("WORKSPACE_FILE_ROOTS")]
    if not all(root.is_absolute() for root in roots):
        raise CliError(Exit.USAGE, "WORKSPACE_FILE_ROOTS: paths must be absolute")
    try:
        hosts = tuple(normalize_host_pattern(item) for item in csv("WORKSPACE_ALLOWED_HOSTS"))
    except (URLRefused, ValueError) as error:
        raise CliError(Exit.USAGE, f"WORKSPACE_ALLOWED_HOSTS: not a host pattern: {error}") from None
    return GitSettings(
        allowed_schemes=frozenset(s.lower() for s in csv("WORKSPACE_ALLOWED_SCHEMES", "https,ssh")) & ALL_SCHEMES,
        allowed_hosts=hosts,
        allow_private_networks=private in ("1", "true", "yes", "on"),
        file_roots=tuple(root.resolve() for root in roots),
    )


def run(args: argparse.Namespace) -> int:
    if args.command == "checkout":
        check_target(args.into.absolute())  # a bad --into fails now, before any call or wait
    client, namespace = connect(args.kubeconfig, args.namespace)
    api = WorkspaceApi(client, namespace)
    if args.command == "create":
        print(api.create(workspace_body(args, namespace))["metadata"]["name"])
    elif args.command == "delete":
        api.delete(args.name)
    elif args.command == "wait":
        api.wait(args.name, args.timeout)
    elif args.command == "path":
        status = api.wait(args.name, args.timeout).get("status") or {}
        if not status.get("workdir"):
            raise CliError(
                Exit.WRONG_MODE,
                f"Workspace {args.name} is CacheOnly: it has no worktree; use `checkout NAME --into DIR`",
            )
        print(args.cache_root / status["workdir"])
    elif args.command == "checkout":
        settings = git_settings(os.environ)
        source = source_of(api.wait(args.name, args.timeout), args.cache_root)
        print(asyncio.run(checkout(source, args.into.absolute(), clean=args.clean, settings=settings)))
    return Exit.OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except CliError as error:
        print(f"kubectl-workspace: {error.message}", file=sys.stderr)
        return int(error.code)
    except KeyboardInterrupt:
        return int(Exit.FAILED)


if __name__ == "__main__":
    sys.exit(main())
