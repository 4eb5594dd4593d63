"""Who serves which project: live members and rendezvous hashing. Pure: no I/O.

Every operator process announces itself with a heartbeat Lease (one per process
identity) and renews it; `MemberView` turns successive listings of those Leases
into the set of live members, judging expiry the way the project locks do: from
the local monotonic time at which this process last saw a record *change*, never
from the writer's timestamps (clock skew between nodes cannot shorten it).

A project belongs to the live member with the highest rendezvous weight for it
(highest-random-weight hashing): when a member joins or leaves, only the projects
it gains or loses move; everyone else's share stays put.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

MEMBER_LABEL = "crafting.dev/member"
_NOT_IN_NAME = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class LeaseRecord:
    """One Lease as listed: enough to judge change and to delete it safely."""

    name: str
    holder: str
    duration_seconds: float
    resource_version: str  # changes with every write, so it doubles as the change marker
    labels: Mapping[str, str] = field(default_factory=dict)


def member_lease_name(identity: str) -> str:
    """A valid object name for an identity (which may hold `_` or upper case)."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    readable = _NOT_IN_NAME.sub("-", identity.lower()).strip("-")[:40].rstrip("-")
    return f"wo-member-{readable}-{digest}" if readable else f"wo-member-{digest}"


def weight(member: str, namespace: str, project: str) -> int:
    digest = hashlib.sha256(f"{member}\x00{namespace}/{project}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owner(namespace: str, project: str, members: Collection[str]) -> str | None:
    """The member a project belongs to; None when there is no live member."""
    if not members:
        return None
    return max(members, key=lambda member: (weight(member, namespace, project), member))


def gained(
    projects: Iterable[tuple[str, str]], me: str, before: Collection[str], after: Collection[str]
) -> list[tuple[str, str]]:
    """The projects that are mine with `after` members and were not with `before`."""
    return [(ns, p) for ns, p in projects if owner(ns, p, after) == me and owner(ns, p, before) != me]


@dataclass
class _Seen:
    version: str
    seen_at: float
    record: LeaseRecord


class MemberView:
    """Live members from successive listings of heartbeat Leases (local clock only)."""

    def __init__(self, clock: Callable[[], float], *, forget_after_seconds: float) -> None:
        self.clock = clock
        self.forget_after = forget_after_seconds
        self._seen: dict[str, _Seen] = {}
        # Holders whose heartbeat disappeared (deleted on clean shutdown, or after
        # expiry by a peer): known dead, remembered for a while.
        self._vanished: dict[str, float] = {}

    def observe(self, heartbeats: Iterable[LeaseRecord]) -> None:
        now = self.clock()
        listed: dict[str, LeaseRecord] = {hb.holder: hb for hb in heartbeats if hb.holder}
        for holder in set(self._seen) - set(listed):
            del self._seen[holder]
            self._vanished[holder] = now
        for holder, hb in listed.items():
            seen = self._seen.get(holder)
            if seen is None or seen.version != hb.resource_version:
                self._seen[holder] = _Seen(hb.resource_version, now, hb)
            else:
                seen.record = hb
            self._vanished.pop(holder, None)
        for holder, since in list(self._vanished.items()):
            if now - since > self.forget_after:
                del self._vanished[holder]

    def _expired_for(self, holder: str) -> float | None:
        """Seconds since the holder's heartbeat expired by our clock; None if live or unknown."""
        seen = self._seen.get(holder)
        if seen is None:
            return None
        late = self.clock() - (seen.seen_at + seen.record.duration_seconds)
        return late if late >= 0 else None

    def live(self) -> frozenset[str]:
        return frozenset(h for h in self._seen if self._expired_for(h) is None)

    def is_dead(self, holder: str) -> bool:
        """Known dead: its heartbeat expired by our clock, or vanished after we saw it."""
        return holder in self._vanished or self._expired_for(holder) is not None

    def stale(self, grace_seconds: float) -> list[LeaseRecord]:
        """LeaseRecords expired for longer than `grace_seconds`: safe to delete (by resourceVersion)."""
        return [
            s.record
            for h, s in self._seen.items()
            if (late := self._expired_for(h)) is not None and late >= grace_seconds
        ]
