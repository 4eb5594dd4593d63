"""Real git upstreams on loopback: repository builders plus a git daemon, a
smart-HTTP server (the real ``git http-backend`` behind a tiny CGI host) and an
OpenSSH server. The pytest fixtures over them are in tests/upstreams.py.

Everything here talks to the real git binaries so the operator is tested
against the same wire protocols it meets in production. Every process started
here is owned by an object whose ``stop()`` terminates it by pid (also as a
context manager), so callers stop it even when they fail.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import traceback
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, cast
from urllib.parse import unquote, urlsplit

from testsupport.gitenv import BASE_EPOCH, GIT_TIMEOUT, git, git_env, run_git
from testsupport.net import free_port, port_accepts
from testsupport.wait import wait_for

READY_DEADLINE = 10.0
SSHD = Path("/usr/sbin/sshd")


# --------------------------------------------------------------------------
# git helpers and repository builders
# --------------------------------------------------------------------------


def init_upstream(path: Path, *, default_branch: str = "main") -> Path:
    """Create a non-bare repository (with a work tree to commit into)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", default_branch)
    return path


def _head(repo: Path) -> str | None:
    proc = run_git("-C", str(repo), "rev-parse", "--verify", "-q", "HEAD", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def commit(repo: Path, files: Mapping[str, str], message: str) -> str:
    """Write ``files`` (path relative to the work tree -> content), commit them
    on the current branch and return the new commit's full SHA."""
    for rel, content in files.items():
        target = repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    if files:
        git(repo, "add", "--", *files)
    # The date only depends on the commit's depth, so SHAs are reproducible
    # while commits still have distinct, increasing timestamps.
    depth = int(git(repo, "rev-list", "--count", "HEAD")) if _head(repo) else 0
    date = f"@{BASE_EPOCH + 60 * (depth + 1)} +0000"
    git(repo, "commit", "-q", "--allow-empty", "-m", message, env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
    return git(repo, "rev-parse", "HEAD")


def publish(src_repo: Path, dest: Path) -> Path:
    """Publish ``src_repo`` as the bare mirror ``dest`` (e.g. served/name.git).

    The first call clones; a local clone copies the whole object store, so
    objects no ref reaches (``StandardRepo.dangling``) are served too. Later
    calls ``push --mirror``: new/moved/deleted refs follow the source, but only
    reachable objects are transferred.
    """
    if not (dest / "HEAD").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        git(dest.parent, "clone", "-q", "--mirror", "--no-hardlinks", str(src_repo), str(dest))
    else:
        git(src_repo, "push", "-q", "--mirror", str(dest))
        head = run_git("-C", str(src_repo), "symbolic-ref", "-q", "HEAD", check=False).stdout.strip()
        if head:
            git(dest, "symbolic-ref", "HEAD", head)
    serve_config(dest)
    return dest


# What a forge sets on a served repository.
SERVE_CONFIG = (
    # Lets clients fetch by SHA, including commits no ref points at.
    ("uploadpack.allowAnySHA1InWant", "true"),
    ("uploadpack.allowReachableSHA1InWant", "true"),
    ("uploadpack.allowTipSHA1InWant", "true"),
    # Partial clones (--filter=blob:none) must work like on real forges.
    ("uploadpack.allowFilter", "true"),
    # Never let an auto-gc prune the dangling commit mid-test.
    ("gc.auto", "0"),
    ("gc.pruneExpire", "never"),
)


def serve_config(repo: Path, extra: tuple[tuple[str, str], ...] = ()) -> None:
    for key, value in (*SERVE_CONFIG, *extra):
        git(repo, "config", key, value)


def served_repo(
    served: Path,
    name: str,
    files: dict[str, str],
    gitlinks: dict[str, str] | None = None,
    gitmodules: str | None = None,
) -> str:
    """Build and publish served/<name>.git with files (+ submodule gitlinks); return its commit."""
    src = served.parent / f"{name}-src"
    git(served.parent, "init", "-q", "-b", "main", str(src))
    for path, sha in (gitlinks or {}).items():
        git(src, "update-index", "--add", "--cacheinfo", f"160000,{sha},{path}")
    if gitmodules is not None:
        files = {**files, ".gitmodules": gitmodules}
    sha = commit(src, files, f"{name} content")
    publish(src, served / f"{name}.git")
    return sha


def submodule(name: str, path: str, url: str) -> str:
    """One `.gitmodules` entry."""
    return f'[submodule "{name}"]\n\tpath = {path}\n\turl = {url}\n'


def served_super(repo: StandardRepo, url: str, name: str = "super") -> str:
    """served/<name>.git: one file and the submodule `lib` (repo's main commit) at `url`."""
    assert repo.served_dir is not None
    return served_repo(repo.served_dir, name, {"top.txt": "top\n"}, {"lib": repo.main}, submodule("lib", "lib", url))


def _repo_dir(name: str) -> str:
    """``url(name)`` accepts "name" or "name.git"; served repos are name.git."""
    return name if name.endswith(".git") else f"{name}.git"


@dataclass(frozen=True)
class StandardRepo:
    """The SHAs of the repository built by ``make_standard_repo``."""

    src: Path  # non-bare source repository (commit here, then republish())
    main_commits: tuple[str, ...]  # oldest first; main == main_commits[-1]
    feature: str  # tip of FEATURE_BRANCH (one commit on top of main)
    v1_0: str  # lightweight tag -> main_commits[1]
    v1_1_tag: str  # annotated tag object
    v1_1: str  # commit the annotated tag peels to (main's tip)
    pull_42: str  # refs/pull/42/head, on no branch
    dangling: str  # in the object store, reachable from no ref at all
    served_dir: Path | None = None  # directory the servers serve (if published)
    name: str = "repo"

    FEATURE_BRANCH = "feature/x/y"
    PULL_REF = "refs/pull/42/head"

    @property
    def main(self) -> str:
        return self.main_commits[-1]

    @property
    def old(self) -> str:
        return self.main_commits[0]

    @property
    def bare(self) -> Path:
        """The published bare mirror (served_dir / "repo.git")."""
        if self.served_dir is None:
            raise ValueError("this StandardRepo was not published (no served_dir)")
        return self.served_dir / _repo_dir(self.name)

    def republish(self) -> Path:
        return publish(self.src, self.bare)

    def advertised_refs(self) -> dict[str, str]:
        """What ``git ls-remote`` prints for the upstream: ref -> SHA."""
        return {
            "HEAD": self.main,
            "refs/heads/main": self.main,
            f"refs/heads/{self.FEATURE_BRANCH}": self.feature,
            self.PULL_REF: self.pull_42,
            "refs/tags/v1.0": self.v1_0,
            "refs/tags/v1.1": self.v1_1_tag,
            "refs/tags/v1.1^{}": self.v1_1,
        }


def make_standard_repo(path: Path, *, served_dir: Path | None = None, name: str = "repo") -> StandardRepo:
    """Build the standard upstream in ``path`` (and publish it as
    ``served_dir/name.git`` when ``served_dir`` is given)."""
    repo = init_upstream(path)
    c1 = commit(repo, {"README.md": "# demo\n", "libs/util.py": "def util():\n    return 1\n"}, "initial")
    c2 = commit(repo, {"services/api/app.py": "print('api')\n"}, "add api service")
    git(repo, "tag", "v1.0", c2)
    c3 = commit(repo, {"README.md": "# demo\n\nv1.1\n", "services/api/app.py": "print('api v1.1')\n"}, "api v1.1")
    git(repo, "tag", "-a", "v1.1", "-m", "release 1.1", c3)
    v1_1_tag = git(repo, "rev-parse", "refs/tags/v1.1")

    git(repo, "checkout", "-q", "-b", StandardRepo.FEATURE_BRANCH, c3)
    feature = commit(repo, {"services/api/feature.py": "FEATURE = True\n"}, "feature x/y")

    # A pull-request head that is on no branch, like forges' refs/pull/N/head.
    git(repo, "checkout", "-q", "-b", "tmp/pull", c2)
    pull_42 = commit(repo, {"libs/pr.py": "PR = 42\n"}, "pull request 42")
    git(repo, "update-ref", StandardRepo.PULL_REF, pull_42)

    # A commit that stays in the object store after its branch is deleted.
    git(repo, "checkout", "-q", "-b", "tmp/dangling", c3)
    dangling = commit(repo, {"libs/dangling.py": "GONE = True\n"}, "dangling commit")

    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "-q", "-D", "tmp/pull", "tmp/dangling")
    sr = StandardRepo(
        src=repo,
        main_commits=(c1, c2, c3),
        feature=feature,
        v1_0=c2,
        v1_1_tag=v1_1_tag,
        v1_1=c3,
        pull_42=pull_42,
        dangling=dangling,
        name=name,
    )
    if served_dir is not None:
        sr = dataclasses.replace(sr, served_dir=served_dir)
        sr.republish()
    return sr


# --------------------------------------------------------------------------
# process helpers
# --------------------------------------------------------------------------


def _quick(what: str) -> dict[str, Any]:
    """A server's own readiness: a short deadline, a fast poll, predicate errors propagate."""
    return {"timeout": READY_DEADLINE, "interval": 0.02, "message": what, "swallow": False}


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class _LoggedServer:
    """A server process on a free loopback port that says in its log when it
    is listening. Readiness is read from *our* process's log line, not from a
    connect, because after a port collision a connect would reach the other
    process that took the port."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _ready_line(self, port: int) -> str:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> Self:
        if self._proc is not None:
            return self
        errors: list[str] = []
        for _attempt in range(5):
            port = free_port()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - open while the server runs; truncates the last attempt's log
            proc = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self._env(),
            )
            self._proc = proc
            ready = self._ready_line(port)
            try:
                wait_for(
                    lambda: proc.poll() is not None or ready in self.log_text(),
                    **_quick(f"{ready!r} in {self.log_path}"),
                )
                if proc.poll() is None:
                    # Belt and braces; the probe leaves one aborted connection
                    # in the log ("hung up" / "Connection closed"), never a request.
                    wait_for(lambda: port_accepts(port), **_quick(f"port {port}"))
            except BaseException:
                self.stop()
                raise
            if proc.poll() is None:
                self.port = port
                return self
            errors.append(self.log_text())  # most likely the port was taken: retry
            self._terminate()
        self.stop()
        raise RuntimeError(f"{type(self).__name__} failed to start:\n" + "\n---\n".join(errors))

    def stop(self) -> None:
        self._terminate()

    def _terminate(self) -> None:
        try:
            _stop_process(self._proc)
        finally:
            self._proc = None
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------
# git daemon
# --------------------------------------------------------------------------


class GitDaemon(_LoggedServer):
    """``git daemon`` serving every repository under ``base`` over git://."""

    _REQUEST = re.compile(r"Request upload-pack for '([^']*)'")

    def __init__(self, base: Path, *, workdir: Path | None = None) -> None:
        self.base = base.resolve()
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="git-daemon-")) if workdir is None else workdir
        super().__init__(self.workdir / "git-daemon.log")
        self._final_log: str | None = None

    def _command(self, port: int) -> list[str]:
        return [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--enable=upload-pack",
            "--informative-errors",
            f"--base-path={self.base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            "--verbose",
            "--log-destination=stderr",
        ]

    def _ready_line(self, port: int) -> str:
        return "Ready to rumble"

    def _env(self) -> dict[str, str]:
        return git_env()

    def start(self) -> Self:
        self._final_log = None
        return super().start()

    def log_text(self) -> str:
        return self._final_log if self._final_log is not None else super().log_text()

    def stop(self) -> None:
        super().stop()
        if self._own_workdir and self.workdir.exists():
            self._final_log = super().log_text()  # requests() keeps working after stop
            shutil.rmtree(self.workdir, ignore_errors=True)

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{_repo_dir(name)}"

    def requests(self) -> list[str]:
        """One entry per upload-pack connection (a clone, fetch or ls-remote
        each open one), the requested path, e.g. "/repo.git"."""
        return self._REQUEST.findall(self.log_text())

    def count(self, name: str | None = None) -> int:
        paths = self.requests()
        return len(paths) if name is None else paths.count(f"/{_repo_dir(name)}")


# --------------------------------------------------------------------------
# smart HTTP
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HTTPRequest:
    method: str
    path: str  # URL path, e.g. "/repo.git/git-upload-pack"
    query: str
    status: int | None  # None: no answer was sent (fault "hang" or "drop")
    user: str | None  # authenticated user
    command: str | None = None  # protocol v2 command of a POST ("ls-refs", "fetch")


FAULTS = ("hang", "500", "drop")


class _HTTPServer(ThreadingHTTPServer):
    # Non-daemon handler threads so server_close() joins them: stop() then
    # guarantees no handler (nor its CGI child) outlives the server.
    daemon_threads = False
    owner: SmartHTTP

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner.errors.append(traceback.format_exc())


def _pkt_command(body: bytes) -> str | None:
    """The command of a protocol v2 request ("0014command=ls-refs\\n...")."""
    try:
        size = int(body[:4], 16)  # pkt-line length includes its 4 hex digits
    except ValueError:
        return None
    line = body[4:size].rstrip(b"\n")  # the trailing LF is optional in pkt-lines
    return line[8:].decode(errors="replace") if line.startswith(b"command=") else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # so Expect: 100-continue is honoured
    timeout = 60  # a stalled client cannot pin a handler thread forever

    @property
    def owner(self) -> SmartHTTP:
        return cast(_HTTPServer, self.server).owner

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is requests(); keep pytest output clean

    def setup(self) -> None:
        tls = self.owner.tls
        if tls is not None:
            # The handshake runs here, in the handler's thread: a client that
            # rejects the certificate fails this connection only.
            self.request.settimeout(self.timeout)
            self.request = tls.wrap_socket(self.request, server_side=True)
        super().setup()
        self.owner._track_conn(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
            if isinstance(self.connection, ssl.SSLSocket):
                # Responses end when the connection closes: TLS clients need a
                # close_notify to tell that end from a truncation.
                try:
                    self.connection.settimeout(2)
                    self.connection.unwrap()
                except (OSError, ValueError):
                    pass
        finally:
            self.owner._track_conn(self.connection, False)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> Iterator[bytes]:
        """The request body as sent (still gzip-encoded if it was), de-chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield from self._read_exactly(size)
                self.rfile.readline(1024)
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, size: int) -> Iterator[bytes]:
        remaining = size
        while remaining:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                raise ConnectionError("client closed mid-body")
            remaining -= len(chunk)
            yield chunk

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        for _ in self._body():
            pass  # drain, or closing with unread data resets the connection
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")  # see SmartHTTP: close-delimited
        self.end_headers()
        self.wfile.write(body)

    def _user(self) -> str | None:
        """The authenticated user; None when auth is required and failed."""
        owner = self.owner
        if owner.username is None:
            return ""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except ValueError:
            return None
        # Compare both (as bytes: compare_digest rejects non-ASCII str) to keep timing flat.
        ok_user = hmac.compare_digest(user.encode(), owner.username.encode())
        ok_password = hmac.compare_digest(password.encode(), (owner.password or "").encode())
        return user if ok_user and ok_password else None

    def _serve(self) -> None:
        owner = self.owner
        url = urlsplit(self.path)
        path, query = unquote(url.path), url.query
        self.close_connection = True  # one request per connection: simple and enough

        def record(status: int | None, user: str | None = None, command: str | None = None) -> None:
            owner._record(HTTPRequest(self.command, path, query, status, user or None, command))

        fault = owner.fault
        if fault == "hang":
            record(None)
            owner._stopping.wait()  # released by stop()
            return
        if fault == "drop":
            record(None)
            return  # the server closes the socket: the client sees an empty reply
        if fault == "500":
            self._reply(500, b"injected fault\n")
            record(500)
            return
        if fault is not None:
            raise ValueError(f"unknown fault {fault!r}; use one of {FAULTS} or None")

        user = self._user()
        if user is None:
            self._reply(401, b"authentication required\n", {"WWW-Authenticate": 'Basic realm="git"'})
            record(401)
            return
        status, command = self._run_cgi(path, query, user)
        record(status, user, command)

    def _run_cgi(self, path: str, query: str, user: str) -> tuple[int | None, str | None]:
        owner = self.owner
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(owner.base),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(owner.port),
            "REMOTE_ADDR": self.client_address[0],
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
        }
        for header, var in (
            ("Content-Type", "CONTENT_TYPE"),
            # Unset for a chunked body: http-backend then reads stdin to EOF.
            ("Content-Length", "CONTENT_LENGTH"),
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),  # http-backend inflates gzip
            ("Git-Protocol", "HTTP_GIT_PROTOCOL"),  # without it, no protocol v2
        ):
            if (value := self.headers.get(header)) is not None:
                env[var] = value
        if user:
            env["REMOTE_USER"] = user
            env["AUTH_TYPE"] = "Basic"

        sniffed: list[str | None] = [None]
        gzipped = self.headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip")

        def feed(stdin: IO[bytes]) -> None:
            # Streams the body to the CGI and peeks at its first bytes to tell a
            # v2 "fetch" from an "ls-refs" (both are POSTs to git-upload-pack).
            head = b""
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
            try:
                for chunk in self._body():
                    if len(head) < 64:
                        try:
                            head += inflater.decompress(chunk, 64) if inflater else chunk[:64]
                        except zlib.error:
                            pass
                    stdin.write(chunk)
            except (OSError, ValueError):
                pass  # CGI exited early or client went away: the CGI sees EOF
            finally:
                sniffed[0] = _pkt_command(head)
                try:
                    stdin.close()
                except OSError:
                    pass

        with tempfile.TemporaryFile() as errfile:
            proc = subprocess.Popen(
                [str(owner.backend)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errfile,
                env=env,
                cwd=owner.base,
            )
            assert proc.stdin is not None and proc.stdout is not None
            owner._track_proc(proc, True)
            feeder = threading.Thread(target=feed, args=(proc.stdin,), daemon=True)
            feeder.start()
            status: int | None = None
            try:
                status = self._relay_cgi_response(proc.stdout)
            except OSError:
                pass  # client disconnected mid-response
            finally:
                if proc.poll() is None:
                    try:
                        proc.wait(timeout=GIT_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                proc.stdout.close()
                feeder.join(timeout=GIT_TIMEOUT)
                owner._track_proc(proc, False)
                errfile.seek(0)
                if err := errfile.read().decode(errors="replace").strip():
                    owner.cgi_stderr.append(err)
        return status, sniffed[0]

    def _relay_cgi_response(self, out: IO[bytes]) -> int:
        status, reason = 200, "OK"
        headers: list[tuple[str, str]] = []
        while (line := out.readline(65536)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code)
            elif name.strip().lower() != "content-length":  # see SmartHTTP: close-delimited
                headers.append((name.strip(), value.strip()))
        if not line:  # EOF before the end of the headers: the CGI failed
            status, reason, headers = 502, "Bad Gateway", []
        self.send_response(status, reason or None)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        while chunk := out.read1(65536):  # type: ignore[attr-defined]
            self.wfile.write(chunk)
        return status


class SmartHTTP:
    """The real ``git http-backend`` served over HTTP on loopback.

    ``fault`` can be changed at any time: "hang" (never answer until stop()),
    "500" (answer 500) or "drop" (close the connection without answering).

    Every response is delimited by closing the connection (no Content-Length)
    and requests are recorded before that close, so ``requests()`` and
    ``count()`` are complete as soon as the client has its answer.
    """

    def __init__(
        self, base: Path, *, username: str | None = None, password: str | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.base = base.resolve()
        self.tls = tls  # serve https with this server context
        self.username = username
        self.password = password
        self.fault: str | None = None
        self.port = 0
        exec_path = subprocess.run(
            ["git", "--exec-path"], capture_output=True, text=True, check=True, timeout=GIT_TIMEOUT
        ).stdout.strip()
        self.backend = Path(exec_path) / "git-http-backend"
        self.errors: list[str] = []  # handler tracebacks (debugging aid)
        self.cgi_stderr: list[str] = []  # http-backend's stderr, one entry per request
        self._log: list[HTTPRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._conns: set[socket.socket] = set()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _record(self, req: HTTPRequest) -> None:
        with self._lock:
            self._log.append(req)

    def _track_proc(self, proc: subprocess.Popen[bytes], add: bool) -> None:
        with self._lock:
            (self._procs.add if add else self._procs.discard)(proc)

    def _track_conn(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _HTTPServer(("127.0.0.1", 0), _Handler)
        server.owner = self
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"smart-http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        try:
            wait_for(lambda: port_accepts(self.port), **_quick(f"smart HTTP on {self.port}"))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # releases "hang" handlers
        server.shutdown()  # no new connections
        with self._lock:
            procs, conns = list(self._procs), list(self._conns)
        for proc in procs:  # CGI children still running: ours, stop by pid
            if proc.poll() is None:
                proc.kill()
        for conn in conns:  # unblock handlers reading from stalled clients
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()  # joins every handler thread
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def url(self, name: str, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/{_repo_dir(name)}"

    def requests(self) -> list[HTTPRequest]:
        with self._lock:
            return list(self._log)

    def count(self, service: str = "git-upload-pack", name: str | None = None) -> int:
        """Successful POSTs to ``service`` (optionally for repo ``name``),
        i.e. real fetches: the v2 commands that only list refs do not count.
        An incremental fetch that negotiates in several rounds counts each."""
        n = 0
        for r in self.requests():
            repo, _, svc = r.path.rpartition("/")
            if r.method != "POST" or r.status != 200 or svc != service:
                continue
            if name is not None and repo != f"/{_repo_dir(name)}":
                continue
            if r.command not in (None, "fetch"):
                continue
            n += 1
        return n


# --------------------------------------------------------------------------
# SSH
# --------------------------------------------------------------------------


class SSHDMissingError(RuntimeError):
    pass


class SSHServer(_LoggedServer):
    """Debian's OpenSSH sshd on a loopback port, accepting only ``client_key``
    for the current user; git runs as that user on ``base``'s repositories."""

    def __init__(self, base: Path, workdir: Path) -> None:
        if not SSHD.exists() or shutil.which("ssh-keygen") is None:
            raise SSHDMissingError(f"{SSHD} (or ssh-keygen) is missing: run `apt-get install -y openssh-server`")
        self.base = base.resolve()
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.workdir / "sshd.log")
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.config_path = self.workdir / "sshd_config"
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "client_ed25519"
        self.authorized_keys = self.workdir / "authorized_keys"
        for key, comment in ((self.host_key, "upstream-host"), (self.client_key, "upstream-client")):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
                    check=True,
                    capture_output=True,
                    timeout=GIT_TIMEOUT,
                )
        self.client_key_text = self.client_key.read_text()
        self.authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())
        self._host_pub = " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    def _command(self, port: int) -> list[str]:
        self.config_path.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",  # tests run as root
                    "StrictModes no",  # pytest's tmp dirs need not satisfy sshd's ownership rules
                    "UsePAM no",
                    "AcceptEnv GIT_PROTOCOL",  # protocol v2 over ssh
                    "MaxStartups 100",  # concurrent clones must not be dropped
                    "UseDNS no",
                    "PrintMotd no",
                    "LogLevel INFO",
                    "",
                ]
            )
        )
        # Absolute binary path: sshd re-executes itself for every connection.
        return [str(SSHD), "-D", "-e", "-f", str(self.config_path)]

    def _ready_line(self, port: int) -> str:
        return f"Server listening on 127.0.0.1 port {port}"

    def start(self) -> Self:
        try:  # privilege-separation directory; Debian creates it only via systemd
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        except PermissionError:
            pass
        return super().start()

    def url(self, name: str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{self.base / _repo_dir(name)}"

    @property
    def known_hosts_text(self) -> str:
        return f"[127.0.0.1]:{self.port} {self._host_pub}\n"

    def ssh_command(self, known_hosts: Path) -> str:
        """A GIT_SSH_COMMAND using client_key and verifying the host key
        against ``known_hosts`` (a file holding known_hosts_text)."""
        return (
            f"ssh -F /dev/null -i {self.client_key} -o IdentitiesOnly=yes -o BatchMode=yes "
            f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts}"
        )

    def connections(self) -> int:
        return self.log_text().count("Accepted publickey")
