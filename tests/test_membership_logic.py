"""Rendezvous shares and the member view: pure logic with a fake clock (no cluster)."""

from __future__ import annotations

import re
from collections import Counter

from workspace_operator.membership import LeaseRecord, MemberView, gained, member_lease_name, owner

PROJECTS = [(f"ns{n % 4}", f"project-{n}") for n in range(1200)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beat(holder: str, version: int, duration: float = 6.0) -> LeaseRecord:
    return LeaseRecord(
        name=member_lease_name(holder), holder=holder, duration_seconds=duration, resource_version=str(version)
    )


def test_every_project_has_exactly_one_owner_and_shares_are_balanced() -> None:
    members = {"a_1", "b_2", "c_3"}
    counts = Counter(owner(ns, p, members) for ns, p in PROJECTS)
    assert set(counts) == members
    for member in members:
        assert 300 <= counts[member] <= 500, counts  # 400 expected
    assert owner("ns", "p", set()) is None
    # Order of the member collection is irrelevant.
    assert all(owner(ns, p, ["c_3", "a_1", "b_2"]) == owner(ns, p, members) for ns, p in PROJECTS[:50])


def test_a_member_leaving_moves_only_its_own_projects() -> None:
    before = {"a_1", "b_2", "c_3"}
    after = before - {"b_2"}
    for ns, p in PROJECTS:
        was = owner(ns, p, before)
        if was != "b_2":
            assert owner(ns, p, after) == was


def test_a_member_joining_takes_only_projects_for_itself() -> None:
    before = {"a_1", "b_2"}
    after = before | {"d_4"}
    moved = [(ns, p) for ns, p in PROJECTS if owner(ns, p, before) != owner(ns, p, after)]
    assert moved and all(owner(ns, p, after) == "d_4" for ns, p in moved)
    assert 300 <= len(moved) <= 500  # about a third


def test_gained_lists_exactly_the_projects_that_moved_here() -> None:
    before, after = {"a_1", "b_2", "c_3"}, {"a_1", "c_3"}
    mine = set(gained(PROJECTS, "a_1", before, after))
    assert mine == {(ns, p) for ns, p in PROJECTS if owner(ns, p, before) == "b_2" and owner(ns, p, after) == "a_1"}
    # Joining (or rejoining under a new identity) gains the whole share.
    assert set(gained(PROJECTS, "a_1", set(), after)) == {(ns, p) for ns, p in PROJECTS if owner(ns, p, after) == "a_1"}
    assert gained(PROJECTS, "a_1", after, after) == []


def test_member_is_live_until_a_duration_passes_without_change_by_the_local_clock() -> None:
    clock = FakeClock()
    view = MemberView(clock, forget_after_seconds=60)
    view.observe([beat("a", 1), beat("b", 1)])
    assert view.live() == {"a", "b"}
    clock.now += 4
    view.observe([beat("a", 2), beat("b", 1)])  # a renewed, b did not
    clock.now += 2.5  # b unchanged for 6.5s > 6
    assert view.live() == {"a"}
    assert view.is_dead("b") and not view.is_dead("a")
    assert not view.is_dead("never-seen")  # unknown holders are judged by the Lease itself


def test_first_sighting_counts_as_a_change_so_an_old_record_is_not_trusted_dead_at_once() -> None:
    clock = FakeClock()
    view = MemberView(clock, forget_after_seconds=60)
    view.observe([beat("old", 7)])  # may have been written long ago: we cannot know
    clock.now += 5.9
    assert view.live() == {"old"}
    clock.now += 0.2
    assert view.live() == frozenset() and view.is_dead("old")


def test_a_vanished_heartbeat_means_dead_and_is_forgotten_later() -> None:
    clock = FakeClock()
    view = MemberView(clock, forget_after_seconds=60)
    view.observe([beat("a", 1), beat("b", 1)])
    view.observe([beat("a", 1)])  # b deleted its heartbeat on shutdown
    assert view.live() == {"a"} and view.is_dead("b")
    clock.now += 61
    view.observe([beat("a", 2)])
    assert not view.is_dead("b")  # forgotten: the project Lease's own expiry applies again


def test_stale_heartbeats_are_offered_for_deletion_after_the_grace() -> None:
    clock = FakeClock()
    view = MemberView(clock, forget_after_seconds=60)
    view.observe([beat("a", 1), beat("b", 3)])
    clock.now += 6 + 5.9
    view.observe([beat("a", 2), beat("b", 3)])
    assert view.stale(grace_seconds=6) == []
    clock.now += 0.2
    assert [r.holder for r in view.stale(grace_seconds=6)] == ["b"]
    assert view.stale(grace_seconds=6)[0].resource_version == "3"  # delete exactly what was judged


def test_member_lease_names_are_valid_object_names() -> None:
    name_rule = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for identity in ("workspace-operator-7d9f_0a1b2c3d4e5f", "OP_1", "___", "x" * 300, "pod.name_ab"):
        name = member_lease_name(identity)
        assert name_rule.match(name) and len(name) <= 63, name
    assert member_lease_name("a_1") != member_lease_name("a-1")
