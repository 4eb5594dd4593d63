"""Bounded memory and concurrency of git calls.

* A hostile upstream on loopback answers ls-remote with tens of MB of matching
  refs: the call fails with GitOutputTooLarge and the engine process's peak RSS
  (VmHWM, measured in a fresh process) stays within a few MB of a normal checkout.
* The runner streams: endless output is cut at the cap (git killed, no leftover),
  stderr keeps only its tail, and at most `max_processes` git processes run at once,
  granted round-robin over the namespaces waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine_fixtures import checkout, make_settings, processes_under, request, wait_no_processes
from testsupport.wait import until
from upstreams import GitDaemon, StandardRepo, served_repo
from workspace_operator.git import Engine, GitError, GitSettings, Reason, Redactor, Revision, write_guard
from workspace_operator.git.runner import GitRunner, available_cpus, default_max_processes, process_slots

REPO = Path(__file__).resolve().parents[1]
SHA = "1" * 40
REFS = 500_000  # ~ 40 MB of ls-remote output, like the report


def _pkt(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


class _Hostile(BaseHTTPRequestHandler):
    """Protocol v0 smart HTTP: a ref advertisement of REFS refs, every one matching refs/heads/main."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-git-upload-pack-advertisement")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(_pkt(b"# service=git-upload-pack\n") + b"0000")
            self.wfile.write(_pkt(f"{SHA} refs/heads/main\0multi_ack side-band-64k ofs-delta\n".encode()))
            batch: list[bytes] = []
            for index in range(REFS):
                batch.append(_pkt(f"{SHA} refs/pad/{index}/refs/heads/main\n".encode()))
                if len(batch) == 5000:
                    self.wfile.write(b"".join(batch))
                    batch.clear()
            self.wfile.write(b"".join(batch) + b"0000")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed mid-advertisement: expected

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def hostile_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/repo.git"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


_PROBE = """
import asyncio, json, sys
from pathlib import Path
from workspace_operator.git import CheckoutRequest, Engine, GitError, GitSettings, Revision

async def main() -> None:
    root, scratch, url = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    engine = Engine(root, GitSettings(allowed_schemes=frozenset({"http", "git"}), scratch_dir=scratch,
                                      timeout_seconds=120, allow_private_networks=True))
    # A full ref name: a new cache is then made by init + ls-remote + fetch (a branch or tag
    # would be cloned, and git's clone reads the advertisement, not the engine).
    request = CheckoutRequest(namespace="ns", project="p", name="w", repository=url,
                              revision=Revision(name="refs/heads/main"))
    outcome = "Ready"
    try:
        await engine.checkout(engine.validate(request))
    except GitError as error:
        outcome = error.reason.value
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    print(json.dumps({"outcome": outcome, "hwm_kb": int(status["VmHWM"].split()[0])}))

asyncio.run(main())
"""


def _probe(url: str, tmp: Path) -> dict[str, object]:
    for sub in ("root", "scratch"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp / "root"), str(tmp / "scratch"), url],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_hostile_ref_advertisement_keeps_engine_memory_bounded(
    hostile_upstream: str, ro_repo: StandardRepo, ro_daemon: GitDaemon, tmp_path: Path
) -> None:
    normal = _probe(ro_daemon.url("repo"), tmp_path / "normal")
    hostile = _probe(hostile_upstream, tmp_path / "hostile")
    print(f"VmHWM normal checkout {normal['hwm_kb']} kB, hostile ls-remote {hostile['hwm_kb']} kB")
    assert normal["outcome"] == "Ready"
    assert hostile["outcome"] == Reason.OUTPUT_TOO_LARGE.value
    # The output kept is capped at 64 KiB for ls-remote; 8 MB leaves room for
    # allocator noise, while buffering the ~40 MB answer whole would cost 100+ MB.
    assert int(str(hostile["hwm_kb"])) < int(str(normal["hwm_kb"])) + 8 * 1024
    assert not list((tmp_path / "hostile" / "root").rglob("*.lock"))


# -- the runner itself, with a stand-in binary for exact control over its output ------------------


def _fake_git(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-git"
    script.write_text(f"#!/bin/bash\n{body}\n")
    script.chmod(0o755)
    return str(script)


async def test_endless_output_is_cut_at_the_cap_and_git_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    runner = GitRunner(
        GitSettings(git_binary=_fake_git(tmp_path, f"echo $$ > {pidfile}; exec yes"), timeout_seconds=60)
    )
    with pytest.raises(GitError) as caught:
        await runner.run("endless", ["anything"], cwd=tmp_path, max_stdout=1 << 20)
    assert caught.value.reason is Reason.OUTPUT_TOO_LARGE and caught.value.retryable is False
    assert "more than 1048576 bytes" in caught.value.message
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists(), "the process outlived the call"


async def test_stderr_keeps_only_its_tail(tmp_path: Path) -> None:
    noisy = "head -c 2000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo the-last-line >&2"
    runner = GitRunner(GitSettings(git_binary=_fake_git(tmp_path, f"{noisy}; exit 0"), timeout_seconds=60))
    result = await runner.run("noisy", [], cwd=tmp_path)
    assert len(result.stderr) <= 16 * 1024 and result.stderr.rstrip().endswith("the-last-line")
    failing = GitRunner(GitSettings(git_binary=_fake_git(tmp_path, f"{noisy}; exit 1"), timeout_seconds=60))
    with pytest.raises(GitError) as caught:
        await failing.run("noisy", [], cwd=tmp_path)
    assert caught.value.message.endswith("the-last-line") and len(caught.value.message) < 20 * 1024


async def test_a_cancellation_while_git_starts_kills_its_whole_tree(tmp_path: Path) -> None:
    """Cancelled before asyncio has connected its pipes, git's grandchild (like
    git-remote-https on a silent server) holds them open: it must be killed with the
    tree, not waited for. (CI saw a cancelled clone take 60 s, git's low-speed limit.)"""
    work = tmp_path / "work"
    work.mkdir()
    runner = GitRunner(GitSettings(git_binary=_fake_git(tmp_path, "sleep 300 & exec sleep 301"), timeout_seconds=600))
    task = asyncio.create_task(runner.run("hang", ["fetch"], cwd=work))
    deadline = time.monotonic() + 30
    while not processes_under(work):  # one loop round per look: catches it right after the fork
        assert time.monotonic() < deadline and not task.done(), "git never started"
        await asyncio.sleep(0)
    task.cancel()
    try:
        done, _ = await asyncio.wait({task}, timeout=20)
        assert done, "the cancellation waited for a grandchild holding git's pipes"
        assert task.cancelled()
        await wait_no_processes(work, deadline_s=5)
    finally:
        for pid in processes_under(work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_secret_cut_by_the_stderr_tail_is_not_shown_in_part(tmp_path: Path) -> None:
    """A granted server pads a line so that the 16 KiB tail starts inside the secret it
    echoes: the remainder no longer matches the redactor, so the cut line goes whole."""
    secret = "ghp_S3cretTokenValue1234567890abcd"
    padding = 16 * 1024 - len(secret) // 2 - len("\nfatal: unable to access\n")
    body = f"printf 'remote: %s%s\\n' '{secret}' \"$(head -c {padding} /dev/zero | tr '\\0' x)\" >&2; "
    body += "echo 'fatal: unable to access' >&2; exit 128"
    runner = GitRunner(GitSettings(git_binary=_fake_git(tmp_path, body), timeout_seconds=60), Redactor([secret]))
    with pytest.raises(GitError) as caught:
        await runner.run("fetch", ["fetch"], cwd=tmp_path)
    tail = secret[len(secret) // 2 :]
    assert tail[:8] not in caught.value.message and "fatal: unable to access" in caught.value.message


async def test_at_most_max_processes_git_processes_at_once(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    body = (
        f'printf "%s +1\\n" "$(date +%s.%N)" >> {journal}; sleep 0.3; printf "%s -1\\n" "$(date +%s.%N)" >> {journal}'
    )
    settings = GitSettings(git_binary=_fake_git(tmp_path, body), timeout_seconds=60, max_processes=3)
    # Two namespaces: one alone would get all slots but one (the reserve, test_batching).
    runners = [GitRunner(settings, namespace=namespace) for namespace in ("team-a", "team-b")]
    await asyncio.gather(*(runners[i % 2].run(f"call-{i}", [], cwd=tmp_path) for i in range(12)))
    events = sorted(
        (float(ts), int(delta)) for ts, delta in (line.split() for line in journal.read_text().splitlines())
    )
    running = peak = 0
    for _ts, delta in events:
        running += delta
        peak = max(peak, running)
    assert len(events) == 24 and peak == 3, events


def test_default_process_bound_follows_the_cpus() -> None:
    cpus = available_cpus()
    assert 0 < cpus <= (os.cpu_count() or 1)
    assert default_max_processes() == max(4, int(2 * cpus + 0.5))


def _tarpit_engine(volume: Path, scratch: Path, daemon: GitDaemon, *, max_processes: int) -> tuple[Engine, Path, Path]:
    """An engine whose git calls to the served repository "tarpit" stand in for a server
    trickling bytes until the git timeout: each parks (a file in `parked`) until `gate` exists."""
    served_repo(daemon.base, "tarpit", {"a.txt": "a\n"})
    gate, parked = scratch.parent / "gate", scratch.parent / "parked"
    parked.mkdir()
    tarpit = (
        f'case " $* " in *tarpit*) touch {parked}/$$; while [ ! -e {gate} ]; do sleep 0.02; done;; esac\nexec git "$@"'
    )
    git_binary = _fake_git(scratch.parent, tarpit)
    return Engine(volume, make_settings(scratch, git_binary=git_binary, max_processes=max_processes)), gate, parked


async def test_git_process_slots_are_fair_between_namespaces(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, git_daemon: GitDaemon
) -> None:
    """One tenant's Workspaces on a tarpit upstream hold every git process slot; six of them
    are queued before another namespace's Workspace: that one gets the second slot that frees."""
    engine, gate, parked = _tarpit_engine(volume, scratch, git_daemon, max_processes=2)
    grants: list[str] = []  # who got each git process slot, in order

    async def workspace(namespace: str, project: str, url: str) -> None:
        write_guard.set(lambda: grants.append(namespace))  # called as each slot is granted
        await checkout(engine, request(url, Revision(branch="main"), namespace=namespace, project=project))

    slots = process_slots(2)
    attackers = [asyncio.ensure_future(workspace("tenant-a", f"p{i}", git_daemon.url("tarpit"))) for i in range(6)]
    await until(
        lambda: len(list(parked.iterdir())) == 2 and slots.waiting() == 4, message="the tarpit holds both slots"
    )
    victim = asyncio.ensure_future(workspace("tenant-b", "web", git_daemon.url("repo")))
    await until(lambda: slots.waiting() == 5, message="the victim queued")
    before = len(grants)
    gate.touch()
    await asyncio.gather(*attackers, victim)
    assert "tenant-b" in grants[before : before + 2], grants[before:]


async def test_a_tenant_whose_calls_all_hang_never_holds_every_slot(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, git_daemon: GitDaemon
) -> None:
    """4 slots, one tenant's Workspaces on a tarpit (their git calls hang until the git
    timeout): they get 3, and another namespace's Workspace is made Ready on the fourth
    while all of them still hang (round-robin alone would have waited for the timeout)."""
    engine, gate, parked = _tarpit_engine(volume, scratch, git_daemon, max_processes=4)

    async def workspace(namespace: str, project: str, url: str) -> None:
        await checkout(engine, request(url, Revision(branch="main"), namespace=namespace, project=project))

    slots = process_slots(4)
    attackers = [asyncio.ensure_future(workspace("tenant-a", f"p{i}", git_daemon.url("tarpit"))) for i in range(6)]
    await until(lambda: len(list(parked.iterdir())) == 3 and slots.waiting() == 3, message="the tarpit holds 3")
    try:
        victim = asyncio.ensure_future(workspace("tenant-b", "web", git_daemon.url("repo")))
        await asyncio.wait_for(victim, timeout=60)  # Ready while every tarpit call still hangs
        assert not any(task.done() for task in attackers) and len(list(parked.iterdir())) == 3
    finally:
        gate.touch()
        await asyncio.gather(*attackers)
