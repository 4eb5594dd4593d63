"""Run one named git step: hardened environment, hard timeout, redacted logging.

Every git invocation in the project goes through `GitRunner.run`, so the rules
below hold everywhere by construction:

* a timeout on every call; on timeout or cancellation the whole process group
  (git and its ssh / remote-https / index-pack children) is SIGKILLed;
* no prompts, no user or system config, no hooks, no credential helper but
  ours (credentials.py: it answers only granted origins), no fsmonitor; transports limited to the configured allow-list (GIT_ALLOW_PROTOCOL
  also covers submodules and redirects);
* user-supplied arguments are placed after `--` by callers, and anything that
  looks like an option where a ref belongs is refused before git runs;
* the logged command line and any error text pass through the Redactor --
  except the stderr of a call that talks to a server outside the credentials'
  grant (`conceal`): the caller's fixed text replaces it, in the error and the
  log, so what such a server says never reaches a message at all (redacting it
  would tell that server which of its guesses is a secret: they come back as
  `***`);
* bounded: at most `max_processes` git processes run at once per operator
  process, granted round-robin over the namespaces waiting (`GitRunner.namespace`,
  git/fair.py: a tenant's many calls to a slow upstream do not queue another
  namespace's calls behind all of them), stdout is kept only up to a per-call cap (beyond it the call fails
  with `GitOutputTooLarge`) and only a tail of stderr is kept, so a hostile
  upstream cannot grow the operator's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from workspace_operator.git.errors import GitError, Reason, Redactor, classify, explain
from workspace_operator.git.fair import FairSlots

log = logging.getLogger("workspace_operator.git")

ALL_SCHEMES = frozenset({"https", "ssh", "http", "git", "file"})
# Steps that talk to the upstream (counted by kind in the metrics).
UPSTREAM_STEPS = frozenset({"ls-remote", "fetch", "clone"})
# Proxy settings git (curl) reads, passed through from the operator's environment.
# curl ignores an upper-case HTTP_PROXY (a CGI safeguard that does not apply
# here), so each is passed in both spellings, the lower-case value winning.
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
# Kept small: stderr of a failed fetch is what users see; more is noise.
_STDERR_LIMIT = 16 * 1024
# Default cap on the stdout kept per call; callers that expect little pass less.
DEFAULT_STDOUT_LIMIT = 4 * 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class GitSettings:
    timeout_seconds: float = 600.0
    allowed_schemes: frozenset[str] = frozenset({"https", "ssh"})
    checkout_workers: int = 0  # 0 = git's default; >1 enables parallel checkout
    partial_clone: bool = False  # --filter=blob:none on cache creation
    git_binary: str = "git"
    # Where credential material is written: never the shared volume.
    scratch_dir: Path | None = None
    # Concurrent git processes in this operator process; 0 = sized from the CPUs.
    max_processes: int = 0
    # Host patterns repositories may name ("h", "*.h"); empty = any public host.
    allowed_hosts: tuple[str, ...] = ()
    # Loopback, link-local and private addresses are refused unless this is set
    # (or the host is listed in allowed_hosts).
    allow_private_networks: bool = False
    # Longest wait for the name server when checking a host's addresses (git/resolver.py).
    resolve_timeout_seconds: float = 10.0
    # Submodules of one worktree, every level counted, beyond which it fails (TooManySubmodules).
    max_submodules: int = 64
    # file:// repositories must lie below one of these (never below the volume root).
    file_roots: tuple[Path, ...] = ()
    # Check every object a fetch receives (transfer.fsckObjects); costly on cold clones.
    fsck_objects: bool = False
    # A PEM bundle trusted for https instead of the system roots (http.sslCAInfo).
    ca_file: Path | None = None
    # Repositories git may use although another uid owns them (safe.directory): every
    # one in the operator, which owns the volume; one exact cache in a job (git/mounted.py).
    safe_directories: tuple[str, ...] = ("*",)
    # HOME for git (curl's ~/.netrc, ~/.config); None = this process's.
    home: str | None = None
    # Called after every git call with (step, seconds, succeeded): the operator's metrics.
    observer: Callable[[str, float, bool], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        unknown = self.allowed_schemes - ALL_SCHEMES
        if unknown:
            raise ValueError(f"unknown git transports: {', '.join(sorted(unknown))}")


@dataclass(frozen=True)
class GitResult:
    stdout: str
    stderr: str
    seconds: float


# Options prepended to every git call. hooksPath=/dev/null disables all hooks,
# including ones shipped inside a cloned repository's config.
_HARDENING = (
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.askPass=",
    "-c",
    "protocol.version=2",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    "-c",
    "fetch.writeCommitGraph=false",
    "-c",
    "submodule.recurse=false",
    "-c",
    "advice.detachedHead=false",
    # refs/replace/* would make a pinned commit check out other content.
    "-c",
    "core.useReplaceRefs=false",
    # A redirect would take the request to a host the URL policy never checked
    # (a cloud metadata address, a cluster-internal service).
    "-c",
    "http.followRedirects=false",
)


# Set around work done under a lock (the operator's project Leases): called before
# every git process starts, it raises when the lock can no longer be trusted.
write_guard: ContextVar[Callable[[], None] | None] = ContextVar("write_guard", default=None)


def available_cpus() -> float:
    """CPUs this process may use: the cgroup v2 quota if one is set, else the affinity mask."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return max(int(quota) / int(period), 0.1)
    except (OSError, ValueError):
        pass
    return float(len(os.sched_getaffinity(0)))


def default_max_processes() -> int:
    """2 per CPU (git mostly waits on the network or the volume), at least 4."""
    return max(4, int(2 * available_cpus() + 0.5))


# One set of slots per event loop and limit: the bound is per operator process,
# whatever number of GitRunner objects the engine creates.
_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, FairSlots]] = weakref.WeakKeyDictionary()


def process_slots(limit: int) -> FairSlots:
    per_loop = _SLOTS.setdefault(asyncio.get_running_loop(), {})
    if limit not in per_loop:
        per_loop[limit] = FairSlots(limit, reserve=True)  # one tenant never holds them all
    return per_loop[limit]


def config_env(*pairs: tuple[str, str]) -> dict[str, str]:
    """git config passed through the environment (GIT_CONFIG_COUNT), not argv.

    Always starts by resetting credential.helper: git reads these entries
    before the `-c` ones, and an empty credential.helper clears the helpers
    configured before it, so the reset must come first and a helper after it.
    """
    entries = [("credential.helper", ""), *pairs]
    env = {"GIT_CONFIG_COUNT": str(len(entries))}
    for index, (key, value) in enumerate(entries):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


@dataclass
class GitRunner:
    settings: GitSettings
    redact: Redactor = field(default_factory=Redactor)
    # Whose calls these are: process slots are shared fairly between namespaces.
    namespace: str = ""

    def base_env(self) -> dict[str, str]:
        """A minimal environment: nothing from the operator's own env leaks into git."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.settings.home or os.environ.get("HOME", "/nonexistent"),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GCM_INTERACTIVE": "never",
            "GIT_ALLOW_PROTOCOL": ":".join(sorted(self.settings.allowed_schemes)),
            "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_NO_REPLACE_OBJECTS": "1",
            # Fail stalled HTTP transfers well before the hard timeout.
            "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
            "GIT_HTTP_LOW_SPEED_TIME": str(int(min(60.0, max(5.0, self.settings.timeout_seconds / 4)))),
            # Without explicit credentials, ssh must still never prompt or trust new hosts.
            "GIT_SSH_COMMAND": "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes "
            "-o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null",
            **config_env(),  # no credential helper unless credentials.py configures ours
        }
        for passthrough in ("TMPDIR", "GIT_TRACE_PACKET_DISABLED"):
            if passthrough in os.environ:
                env[passthrough] = os.environ[passthrough]
        for name in _PROXY_VARIABLES:
            value = os.environ.get(name, os.environ.get(name.upper()))
            if value is not None:
                env[name] = env[name.upper()] = value
        if self.settings.ca_file is not None:
            env["GIT_SSL_CAINFO"] = str(self.settings.ca_file)
        return env

    async def run(
        self,
        step: str,
        args: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        config: Sequence[str] = (),
        query: bool = False,
        max_stdout: int = DEFAULT_STDOUT_LIMIT,
        conceal: str | None = None,
    ) -> GitResult:
        """Run `git <args>` in cwd; raise GitError (classified, redacted) on failure.

        More than `max_stdout` bytes of output fail the call (`GitOutputTooLarge`):
        the process group is killed as soon as the cap is passed, so memory stays
        bounded whatever the other side sends. With `conceal`, a failure's message
        (and log line) is that text instead of git's stderr, which then only
        chooses the reason.
        """
        limit = timeout if timeout is not None else self.settings.timeout_seconds
        full_env = self.base_env()
        if env:
            full_env.update(env)
        extra_config: list[str] = []
        for item in (*(f"safe.directory={path}" for path in self.settings.safe_directories), *config):
            extra_config += ["-c", item]
        argv = [self.settings.git_binary, *_HARDENING, *extra_config, *args]
        shown = self.redact(" ".join(["git", *args]))
        async with process_slots(self.settings.max_processes or default_max_processes()).slot(self.namespace):
            guard = write_guard.get()
            if guard is not None:
                guard()
            started = time.monotonic()
            try:
                proc = await _start(argv, cwd=str(cwd), env=full_env)
            except OSError as error:  # e.g. E2BIG, ENOENT, EMFILE: a failure with a reason, not a crash
                raise GitError(Reason.GIT_FAILED, f"could not start git: {error.strerror}", step=step) from None
            try:
                stdout_b, stderr_b = await asyncio.wait_for(_collect(proc, max_stdout), timeout=limit)
            except TimeoutError:
                await _kill_tree(proc)
                seconds = time.monotonic() - started
                if self.settings.observer is not None:
                    self.settings.observer(step, seconds, False)
                log.warning("git step %s timed out after %.1fs: %s", step, seconds, shown)
                raise GitError(Reason.TIMEOUT, f"timed out after {limit:.0f}s", step=step) from None
            except _TooLarge:
                await _kill_tree(proc)
                log.warning("git step %s killed: more than %d bytes of output: %s", step, max_stdout, shown)
                raise GitError(
                    Reason.OUTPUT_TOO_LARGE,
                    f"git produced more than {max_stdout} bytes of output (a hostile or broken upstream?)",
                    step=step,
                ) from None
            except BaseException:
                # Cancellation (lease lost, shutdown): never leave git running unguarded.
                await _kill_tree(proc)
                raise
        seconds = time.monotonic() - started
        if self.settings.observer is not None:
            self.settings.observer(step, seconds, proc.returncode == 0)
        stdout = stdout_b.decode("utf-8", "replace")
        stderr = stderr_b.decode("utf-8", "replace")
        if proc.returncode != 0:
            reason = classify(stderr)
            detail = conceal or explain(
                reason, stderr, self.redact(_last_lines(stderr) or f"exit status {proc.returncode}")
            )
            if reason is Reason.GIT_FAILED and _WRITE_FAILURE.search(stderr) and _nearly_full(cwd):
                # git often reports ENOSPC only as "unable to write file": ask the filesystem.
                reason = Reason.DISK_FULL
                detail = f"no space left on the volume: {detail}"
            log.log(
                logging.DEBUG if query else logging.INFO,
                "git step %s failed in %.2fs (exit %s): %s: %s",
                step,
                seconds,
                proc.returncode,
                shown,
                detail,
            )
            raise GitError(reason, detail, step=step)
        log.debug("git step %s ok in %.2fs: %s", step, seconds, shown)
        return GitResult(stdout=stdout, stderr=stderr, seconds=seconds)

    async def ok(self, step: str, args: Sequence[str], *, cwd: Path, timeout: float | None = None) -> bool:
        """Run a local query whose non-zero exit is an answer ("no"), not a failure.

        No transport is allowed: in a partial clone git would otherwise fetch a
        missing object from the promisor remote to answer, so "is this commit
        cached?" would itself go to the network (without credentials, outside
        the fetch marker, and answer "yes").
        """
        try:
            await self.run(step, args, cwd=cwd, timeout=timeout, query=True, env={"GIT_ALLOW_PROTOCOL": ""})
        except GitError as error:
            if error.reason is Reason.TIMEOUT:
                raise
            return False
        return True


class _TooLarge(Exception):
    pass


async def _collect(proc: asyncio.subprocess.Process, max_stdout: int) -> tuple[bytes, bytes]:
    """Read both pipes as they fill: all of stdout up to the cap, the tail of stderr."""
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    err = bytearray()

    async def read_stdout(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_CHUNK):
            out.extend(chunk)
            if len(out) > max_stdout:
                raise _TooLarge

    cut = False

    async def read_stderr(stream: asyncio.StreamReader) -> None:
        nonlocal cut
        while chunk := await stream.read(_CHUNK):
            err.extend(chunk)
            if len(err) > _STDERR_LIMIT:
                del err[:-_STDERR_LIMIT]
                cut = True

    readers = [asyncio.ensure_future(read_stdout(proc.stdout)), asyncio.ensure_future(read_stderr(proc.stderr))]
    try:
        await asyncio.gather(*readers)
    except BaseException:
        for reader in readers:
            reader.cancel()
        await asyncio.wait(readers)  # stopped for good before anyone else reads the pipes
        raise
    await proc.wait()
    if cut:
        # The tail starts inside a line, perhaps inside a secret a server echoed,
        # whose remainder no longer matches the redactor: only whole lines are kept.
        newline = err.find(b"\n")
        del err[: newline + 1 if newline >= 0 else len(err)]
    return bytes(out), bytes(err)


async def _start(argv: Sequence[str], *, cwd: str, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """Start git in a process group of its own, so that the whole tree can be killed.

    A cancellation while asyncio is still connecting the pipes must kill that tree
    too: asyncio alone kills only the direct child and then waits for every pipe to
    close, which a grandchild (git-remote-https, ssh) holds open until it gives up
    by itself, a minute or more on a silent server.
    """
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    )
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        # A few milliseconds: the pipes being connected. If it never started, nothing to kill.
        with contextlib.suppress(Exception):
            await _kill_tree(await starting)
        raise


async def _kill_tree(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # Reap so no zombie or fd outlives the step. The pipes are read to their end
    # (and discarded): asyncio reports the exit only once both are closed.
    streams = [stream for stream in (proc.stdout, proc.stderr) if stream is not None]
    try:
        await asyncio.wait_for(asyncio.gather(*map(_discard, streams), proc.wait()), timeout=10)
    except (TimeoutError, OSError):
        pass


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(_CHUNK):
        pass


_WRITE_FAILURE = re.compile(r"unable to write|write error|short write|could not write|unable to create", re.I)


def _nearly_full(path: Path, min_free_bytes: int = 64 * 1024 * 1024, min_free_ratio: float = 0.01) -> bool:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return False
    return usage.free < min_free_bytes or usage.free < usage.total * min_free_ratio


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:])
