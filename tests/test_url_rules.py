"""URL rules, origin matching, the credential helper, redaction, settings: pure logic, no cluster."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from pathlib import Path

import pytest

from testsupport.wait import until
from workspace_operator import config
from workspace_operator.git import GitError, GitSettings, Reason, Redactor, credential_helper, origins
from workspace_operator.git.credentials import Credentials
from workspace_operator.git.policy import URLPolicy
from workspace_operator.git.resolver import Resolver
from workspace_operator.git.source import check_url
from workspace_operator.git.submodules import parse_gitmodules, resolve_relative
from workspace_operator.spec import credentials_allowed, credentials_from_secret

ALL = frozenset({"https", "ssh", "http", "git", "file"})
GRANT = "https://h.example/org/repo.git"

# -- the tricks: what a grant for https://h.example/org/repo.git must (not) cover ------------------

# (repository URL, covered by GRANT?) for URLs that parse.
COVERS = [
    ("https://h.example/org/repo.git", True),
    ("https://H.EXAMPLE/org/repo.git", True),  # host case
    ("HTTPS://h.example/org/repo.git", True),  # scheme case
    ("https://h.example./org/repo.git", True),  # trailing dot of the host
    ("https://h.example:443/org/repo.git", True),  # default port
    ("https://h.example/org/repo.git/", True),  # trailing slash
    ("https://h.example/org/repo", True),  # .git suffix of the last segment
    ("https://h.example/org/%72epo.git", True),  # an encoded unreserved character is that character
    ("https://h.example/org/repo.git/sub/x.git", True),  # below the grant
    ("https://h.example/org/Repo.git", False),  # paths are case-sensitive
    ("https://h.example/org/repo.github", False),  # a string prefix is not a segment prefix
    ("https://h.example/org/repo/sub.git", False),  # .git equivalence only for the last segment
    ("https://h.example/org", False),  # above the grant
    ("https://h.example/other/secret.git", False),
    ("https://h.example:8443/org/repo.git", False),  # other port
    ("http://h.example/org/repo.git", False),  # other scheme
    ("https://h.example.evil/org/repo.git", False),
    ("https://evil/h.example/org/repo.git", False),
    ("https://evil/@h.example/org/repo.git", False),  # '@' in the path is not userinfo
    ("ssh://git@h.example/org/repo.git", False),
]

# URLs refused outright (by check_url, before any comparison).
REFUSED = [
    "https://h.example/org/repo.git/../../other/secret.git",  # dot segments
    "https://h.example/org/repo.git/./x",
    "https://h.example/org/repo.git/%2e%2e/%2E%2E/other/secret.git",  # encoded dots, any case
    "https://h.example/org/repo.git/%2E./x",
    "https://h.example/org%2frepo.git",  # encoded slash
    "https://h.example/org%2Frepo.git",
    "https://h.example/org%5c..%5cx",  # encoded backslash
    "https://h.example/org\\..\\x",
    "https://h.example/org//repo.git",  # empty segment
    "https://h.example//org/repo.git",
    "file:///srv//repo.git",
    "git@h.example:org//repo.git",
    "https://h.example/org/repo.git?private_token=abc",  # query-string token
    "https://h.example/org/repo.git#frag",
    "https://tok@h.example/org/repo.git",  # userinfo, also a lone user (token as user name)
    "https://h.example@evil/org/repo.git",  # @-confusion: the host is evil
    "https://evil\\@h.example/org/repo.git",
    "ssh://git@h.example@evil/org/repo.git",
    "https://h\u00e9.example/org/repo.git",  # IDN must be written as xn--
    "https://h.example/org/%zz.git",  # a '%' that starts no escape
    "https://h.example/org/%00.git",
    "git@h.example:../x.git",
    "git@h.example:org/./x.git",
]


@pytest.mark.parametrize(("url", "covered"), COVERS)
def test_grant_covers_segment_wise(url: str, covered: bool) -> None:
    check_url(url, ALL)
    assert origins.parse(GRANT, scope=True).covers(origins.parse(url)) is covered
    annotations = {"crafting.dev/repositories": f"https://elsewhere.example/, {GRANT}"}
    assert credentials_allowed(annotations, url) is covered


@pytest.mark.parametrize("url", REFUSED)
def test_ambiguous_urls_are_refused(url: str) -> None:
    with pytest.raises(GitError) as caught:
        check_url(url, ALL)
    assert caught.value.reason is Reason.INVALID_SPEC
    assert not caught.value.retryable
    assert credentials_allowed({"crafting.dev/repositories": "https://h.example/"}, url) is False


def test_scopes_idn_ports_users_and_malformed_entries() -> None:
    # A Unicode host in the Secret's list compares in its xn-- form; lookalikes stay different.
    assert credentials_allowed(
        {"crafting.dev/repositories": "https://b\u00fccher.example/"}, "https://xn--bcher-kva.example/org/x.git"
    )
    assert not credentials_allowed(
        {"crafting.dev/repositories": "https://\u0435xample.com/"},  # Cyrillic e
        "https://example.com/org/x.git",
    )
    assert credentials_allowed({"crafting.dev/repositories": "https://h.example:8443/"}, "https://h.example:8443/x")
    # A whole host, and nothing but that host.
    assert credentials_allowed({"crafting.dev/repositories": "https://h.example"}, "https://h.example/any/x.git")
    assert not credentials_allowed({"crafting.dev/repositories": "https://h.example"}, "https://h.example.evil/x")
    # ssh: a user in the scope must match; scp-like paths are home-relative.
    scope = {"crafting.dev/repositories": "git@h.example:org/"}
    assert credentials_allowed(scope, "git@h.example:org/x.git")
    assert credentials_allowed(scope, "ssh://git@h.example/~/org/x.git")
    assert not credentials_allowed(scope, "ssh://git@h.example/org/x.git")  # /org is not ~/org
    assert not credentials_allowed(scope, "root@h.example:org/x.git")
    # Malformed entries cover nothing; the string-prefix trick of old is gone.
    for entry in ("https://h.example/org/repo.git/..", "not a url", "https://h.example/org?x", ""):
        assert not credentials_allowed({"crafting.dev/repositories": entry}, "https://h.example/org/repo.git/x")
    assert not credentials_allowed({}, GRANT)


def test_ipv6_and_ports_parse() -> None:
    assert origins.parse("https://[0:0::1]:8443/x").host == "::1"
    assert origins.parse("ssh://git@[::1]:2222/srv/repo.git").port == 2222
    for url in ("https://h:0/x", "https://h:65536/x", "https://h:x/x", "https://[zz]/x", "https://-h/x"):
        with pytest.raises(origins.URLRefused):
            origins.parse(url)


# -- the credential helper agrees with origins.py ------------------------------------------------


def _helper_answers(tmp_path: Path, grants: list[str], fields: dict[str, str]) -> str:
    directory = tmp_path / "helper"
    directory.mkdir(exist_ok=True)
    (directory / "username").write_text("u5er")
    (directory / "password").write_text("t0ken-secret")
    parsed = [origins.parse(g) for g in grants]
    (directory / credential_helper.GRANTS).write_text(
        "".join(f"{o.scheme}\t{o.host}\t{o.port}\t{'/'.join(o.segments)}\n" for o in parsed)
    )
    return credential_helper.answer(str(directory), fields)


@pytest.mark.parametrize(("url", "covered"), [(u, c) for u, c in COVERS if not u.startswith("ssh")])
def test_helper_answers_exactly_where_origins_cover(tmp_path: Path, url: str, covered: bool) -> None:
    target = origins.parse(url)
    hostport = target.host if target.port == origins.DEFAULT_PORTS[target.scheme] else f"{target.host}:{target.port}"
    # What git sends: protocol, host[:port] as written, decoded path without leading/trailing '/'.
    fields = {"protocol": target.scheme, "host": hostport, "path": "/".join(target.segments)}
    out = _helper_answers(tmp_path, [GRANT], fields)
    assert (out == "username=u5er\npassword=t0ken-secret\n") is covered
    assert out in ("", "username=u5er\npassword=t0ken-secret\n")


@pytest.mark.parametrize(
    "fields",
    [
        {"protocol": "https", "host": "attacker.example", "path": "org/repo.git"},
        {"protocol": "https", "host": "h.example", "path": "org/repo.git/../../other"},
        {"protocol": "https", "host": "h.example", "path": "other/secret.git"},
        {"protocol": "https", "host": "h.example"},  # no path (useHttpPath off): never
        {"protocol": "https", "host": "h.example:444", "path": "org/repo.git"},
        {"protocol": "http", "host": "h.example", "path": "org/repo.git"},
        {"protocol": "ssh", "host": "h.example", "path": "org/repo.git"},
        {"protocol": "https", "host": "h.example:x", "path": "org/repo.git"},
        {},
    ],
)
def test_helper_refuses_everything_else(tmp_path: Path, fields: dict[str, str]) -> None:
    assert _helper_answers(tmp_path, [GRANT], fields) == ""


def test_helper_main_speaks_the_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _helper_answers(tmp_path, ["http://127.0.0.1:8080/repo.git"], {})
    directory = str(tmp_path / "helper")
    monkeypatch.setattr("sys.stdin", io.StringIO("protocol=http\nhost=127.0.0.1:8080\npath=repo.git\n\n"))
    assert credential_helper.main([directory, "get"]) == 0
    assert capsys.readouterr().out == "username=u5er\npassword=t0ken-secret\n"
    for action in ("store", "erase"):
        assert credential_helper.main([directory, action]) == 0
    assert capsys.readouterr().out == ""


# -- submodule URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "url", "resolved"),
    [
        ("https://h/org/super.git", "../lib.git", "https://h/org/lib.git"),
        ("https://h/org/super.git/", "../lib.git", "https://h/org/lib.git"),
        ("https://h/org/super.git", "./lib.git", "https://h/org/super.git/lib.git"),
        ("https://h/org/super.git", "../../other/lib.git", "https://h/other/lib.git"),
        ("git@h:org/super.git", "../lib.git", "git@h:org/lib.git"),
        ("git@h:super.git", "../lib.git", "git@h:lib.git"),
        ("https://h/org/super.git", "https://x/y.git", "https://x/y.git"),
        ("https://h/super.git", "../../x.git", "https://x.git"),  # climbing into the host: git does that too
    ],
)
def test_relative_submodule_urls_resolve_like_git(base: str, url: str, resolved: str) -> None:
    assert resolve_relative(base, url) == resolved


def test_gitmodules_listing_is_parsed_by_name() -> None:
    text = "submodule.a.b.path\nvendor/a\0submodule.a.b.url\n../a.git\0core.x\ny\0submodule.c.url\nz\0"
    assert parse_gitmodules(text) == {"a.b": {"path": "vendor/a", "url": "../a.git"}, "c": {"url": "z"}}


# -- hosts, private networks, file roots -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "public"),
    [
        ("127.0.0.1", False),
        ("2130706433", False),
        ("0x7f.1", False),
        ("127.1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("fe80::1", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("fd00::1", False),
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
    ],
)
def test_literal_addresses(host: str, public: bool) -> None:
    address = origins.literal_address(host)
    assert address is not None
    assert origins.is_public(address) is public


def test_host_patterns() -> None:
    patterns = tuple(origins.normalize_host_pattern(p) for p in ("Git.Example.com", "*.corp.example", "[::1]"))
    assert patterns == ("git.example.com", "*.corp.example", "::1")
    assert origins.host_matches("git.example.com", patterns)
    assert origins.host_matches("a.b.corp.example", patterns)
    assert not origins.host_matches("corp.example", patterns)  # the wildcard needs a label
    assert not origins.host_matches("evilcorp.example", patterns)
    assert not origins.host_matches("git.example.com.evil", patterns)


def _policy(tmp_path: Path, **settings: object) -> URLPolicy:
    return URLPolicy(GitSettings(allowed_schemes=ALL, **settings), tmp_path / "volume")  # type: ignore[arg-type]


def test_policy_hosts_and_private_addresses(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    for url in (
        "http://127.0.0.1:8080/x.git",
        "https://2130706433/x.git",
        "git://[::1]/x",
        "ssh://g@10.0.0.1/x",
        "https://169.254.169.254/latest/meta-data",
    ):
        with pytest.raises(GitError) as caught:
            policy.check(url)
        assert caught.value.reason is Reason.HOST_NOT_ALLOWED and not caught.value.retryable
    policy.check("https://8.8.8.8/x.git")  # public literal: fine
    # A name resolving to loopback is refused at checkout time.
    with pytest.raises(GitError) as caught:
        asyncio.run(policy.check_addresses(policy.check("https://localhost/x.git")))
    assert caught.value.reason is Reason.HOST_NOT_ALLOWED and "resolves to" in caught.value.message
    # Unresolvable now: not this check's business (git reports it, or needs no network).
    asyncio.run(policy.check_addresses(policy.check("https://nonexistent.invalid/x.git")))

    listed = _policy(tmp_path, allowed_hosts=("localhost", "*.example.com"))
    asyncio.run(listed.check_addresses(listed.check("https://localhost/x.git")))  # listed: allowed
    listed.check("https://git.example.com/x.git")
    with pytest.raises(GitError) as caught:
        listed.check("https://github.com/x.git")
    assert caught.value.reason is Reason.HOST_NOT_ALLOWED and "WORKSPACE_ALLOWED_HOSTS" in caught.value.message
    private = _policy(tmp_path, allow_private_networks=True)
    private.check("http://127.0.0.1:8080/x.git")
    asyncio.run(private.check_addresses(private.check("https://localhost/x.git")))


# Bracketed IPv6 hosts: valid URLs (their '::' is no remote-helper syntax), and the
# private-network policy applies to them as to IPv4: (URL, allowed by default?).
IPV6 = [
    ("https://[2606:4700:4700::1111]/org/x.git", True),
    ("ssh://git@[2001:4860:4860::8888]:2222/org/x.git", True),
    ("https://[::1]/x.git", False),  # loopback
    ("http://[::1]:8080/x.git", False),
    ("ssh://git@[::1]:2222/srv/x.git", False),
    ("https://[::ffff:127.0.0.1]/x.git", False),  # IPv4-mapped loopback
    ("https://[::ffff:169.254.169.254]/latest/meta-data", False),
    ("https://[fe80::1]/x.git", False),  # link-local
    ("https://[fd00::1]/x.git", False),  # unique local
    ("https://[2001:db8::1]/x.git", False),  # documentation, not global
]


@pytest.mark.parametrize(("url", "public"), IPV6)
def test_ipv6_hosts_pass_the_url_rules_and_meet_the_network_policy(tmp_path: Path, url: str, public: bool) -> None:
    check_url(url, ALL)
    if public:
        _policy(tmp_path).check(url)
    else:
        with pytest.raises(GitError) as caught:
            _policy(tmp_path).check(url)
        assert caught.value.reason is Reason.HOST_NOT_ALLOWED, caught.value
        assert "WORKSPACE_ALLOW_PRIVATE_NETWORKS" in caught.value.message
        _policy(tmp_path, allow_private_networks=True).check(url)


@pytest.mark.parametrize("url", ["ext::sh%20-c%20id", "fd::7", "http::https://h/r.git", "::/srv/x.git"])
def test_the_remote_helper_syntax_is_refused_by_the_policy(tmp_path: Path, url: str) -> None:
    with pytest.raises(GitError) as caught:
        _policy(tmp_path, allow_private_networks=True).check(url)
    assert caught.value.reason is Reason.SCHEME_NOT_ALLOWED and "'<name>::' syntax" in caught.value.message


def test_policy_file_roots(tmp_path: Path) -> None:
    volume, mirrors, elsewhere = tmp_path / "volume", tmp_path / "mirrors", tmp_path / "elsewhere"
    for directory in (volume / "ns" / "p" / ".cache", mirrors, elsewhere):
        directory.mkdir(parents=True)
    (mirrors / "into-volume").symlink_to(volume / "ns" / "p" / ".cache")
    (mirrors / "out").symlink_to(elsewhere)
    with pytest.raises(GitError) as caught:
        _policy(tmp_path).check(f"file://{mirrors}/repo.git")
    assert caught.value.reason is Reason.HOST_NOT_ALLOWED and "WORKSPACE_FILE_ROOTS" in caught.value.message
    policy = _policy(tmp_path, file_roots=(mirrors, tmp_path / "volume"))
    policy.check(f"file://{mirrors}/repo.git")
    for url, why in (
        (f"file://{volume}/ns/p/.cache", "volume"),  # even when listed as a root
        (f"file://{mirrors}/into-volume", "volume"),  # symlink into the volume
        (f"file://{mirrors}/out/repo.git", "not below"),  # symlink out of the roots
        (f"file://{elsewhere}/repo.git", "not below"),
    ):
        with pytest.raises(GitError) as caught:
            policy.check(url)
        assert caught.value.reason is Reason.HOST_NOT_ALLOWED and why in caught.value.message, url


def test_settings_parse_and_default_safe(tmp_path: Path) -> None:
    defaults = config.parse([], {"WORKSPACE_ROOT": str(tmp_path)}).git
    assert (defaults.allowed_hosts, defaults.allow_private_networks, defaults.file_roots, defaults.fsck_objects) == (
        (),
        False,
        (),
        False,
    )
    assert GitSettings().allow_private_networks is False and GitSettings().file_roots == ()
    parsed = config.parse(
        [],
        {
            "WORKSPACE_ROOT": str(tmp_path),
            "WORKSPACE_ALLOWED_HOSTS": "Git.Example.com, *.corp",
            "WORKSPACE_ALLOW_PRIVATE_NETWORKS": "true",
            "WORKSPACE_FILE_ROOTS": f"{tmp_path},/srv",
        },
    )
    assert parsed.allowed_hosts == ("git.example.com", "*.corp")
    assert parsed.allow_private_networks is True
    assert parsed.file_roots == (tmp_path.resolve(), Path("/srv"))
    for var, value in (("WORKSPACE_FILE_ROOTS", "relative/dir"), ("WORKSPACE_ALLOWED_HOSTS", "bad host")):
        with pytest.raises(config.ConfigError, match=var):
            config.parse([], {"WORKSPACE_ROOT": str(tmp_path), var: value})


# -- secrets: short ones, user names, bad encodings ----------------------------------------------------


def test_short_secrets_are_masked_as_whole_tokens_only() -> None:
    redact = Redactor()
    Credentials(username="bob", password="p4ss").register(redact)
    assert redact("remote: user bob denied with p4ss.") == "remote: user *** denied with ***."
    assert redact("'bob' \"p4ss\" bob:p4ss") == "'***' \"***\" ***:***"
    # Innocent text keeps its words and paths.
    for text in ("bobcat p4ssword", "https://h/srv/bob.git", "/home/bob/x", "bob-the-builder", "bob_1", "~bob"):
        assert redact(text) == text
    # Known positions are masked whatever the value, registered or not.
    assert (
        redact("password=zz username=q Authorization: Basic Ym9iOnA0c3M=")
        == "password=*** username=*** Authorization: Basic ***"
    )
    # Documented placeholder user names are not secrets and would garble every message.
    conventional = Redactor()
    Credentials(username="git", password="long-enough-token").register(conventional)
    assert conventional("git fetch failed for long-enough-token") == "git fetch failed for ***"
    # A long user name (a token used as user name) is masked anywhere.
    token_user = Redactor()
    Credentials(username="ghp_0123456789abcdef").register(token_user)
    assert token_user("as ghp_0123456789abcdef.") == "as ***."


def test_secret_values_must_be_utf8_single_lines() -> None:
    creds = credentials_from_secret(
        {"username": b"bot", "password": b"tok\n", "other": b"\xff"},
        {"crafting.dev/repositories": "https://h/org/, https://h/lib.git"},
    )
    assert creds.password == "tok"  # `echo tok | base64` leaves a newline: dropped
    assert creds.scopes == ("https://h/org/", "https://h/lib.git")
    assert creds.allows("https://h/org/x.git") and not creds.allows("https://h/other.git")
    for data in (
        {"password": b"\xff\xfe"},
        {"username": b"caf\xe9"},
        {"ssh-privatekey": b"\x80"},
        {"password": b"two\nlines"},
        {"username": b"a\0b"},
    ):
        with pytest.raises(GitError) as caught:
            credentials_from_secret(data)
        assert caught.value.reason is Reason.INVALID_CREDENTIALS and not caught.value.retryable
        assert "\xff" not in caught.value.message and "two" not in caught.value.message


def test_helper_is_stdlib_only() -> None:
    """It runs with `python -I -S`: no site-packages, so no project imports."""
    source = Path(credential_helper.__file__).read_text()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "os", "sys"}, imports
    assert os.access(credential_helper.__file__, os.R_OK)


async def test_a_namespace_with_unanswered_lookups_leaves_the_other_threads_to_others() -> None:
    """Namespace a's names never resolve: its lookups hold at most 2 of the 4 threads, the
    rest of them wait (and are dropped unstarted at their deadline); b's lookup runs."""
    started: list[str] = []
    never = threading.Event()

    def lookup(host: str, port: int | None) -> list[str]:
        started.append(host)
        if host.endswith(".attacker.example"):
            never.wait()
        return ["192.0.2.1"]

    resolver = Resolver(threads=4, per_namespace=2, lookup=lookup)
    hostile = [
        asyncio.ensure_future(resolver.addresses(f"h{i}.attacker.example", 443, timeout=60, namespace="a"))
        for i in range(5)
    ]
    try:
        await until(lambda: len(started) == 2, message="a's first two lookups on their threads")
        with pytest.raises(TimeoutError):
            await resolver.addresses("late.attacker.example", 443, timeout=0.1, namespace="a")
        assert await resolver.addresses("git.example", 443, timeout=30, namespace="b") == ["192.0.2.1"]
        assert started == ["h0.attacker.example", "h1.attacker.example", "git.example"]
    finally:
        never.set()
    assert await asyncio.gather(*hostile) == [["192.0.2.1"]] * 5  # the rest ran once a's threads came back
    assert sorted(started) == sorted(["git.example", *(f"h{i}.attacker.example" for i in range(5))])


class _Unanswered(Resolver):
    """No answer, at once: records the time each lookup was given."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.given: list[float] = []

    async def addresses(self, host: str, port: int | None, *, timeout: float, namespace: str = "") -> list[str] | None:
        self.given.append(timeout)
        raise TimeoutError


async def test_an_unanswered_lookup_fails_by_whichever_deadline_comes_first(tmp_path: Path) -> None:
    """The lookup's own deadline: UpstreamUnavailable. Less time left in the caller's
    phase (submodules): that time, and GitTimeout."""
    unanswered = _Unanswered()
    policy = URLPolicy(GitSettings(resolve_timeout_seconds=10), tmp_path, resolver=unanswered)
    origin = policy.check("https://h.attacker.example/x.git")
    for within in (None, 60.0):
        with pytest.raises(GitError) as caught:
            await policy.check_addresses(origin, within=within)
        assert caught.value.reason is Reason.UNREACHABLE and caught.value.retryable
        assert caught.value.message == "repository: looking up host 'h.attacker.example' got no answer within 10s"
    with pytest.raises(GitError) as caught:
        await policy.check_addresses(origin, "submodule 'lib'", within=2.5)
    assert caught.value.reason is Reason.TIMEOUT
    assert caught.value.message == "submodule 'lib': no time left to look up host 'h.attacker.example'"
    assert unanswered.given == [10, 10, 2.5]
