"""Give memory back to the operating system after a burst of materializations.

While many Workspaces are materialized at once, kopf holds each one's event and
its next buffered ones, and our handlers their requests and responses: tens of
KB per Workspace in flight. When the burst drains that memory is free, but the
allocator keeps it mapped (fragmented heap pages), so the process stays at its
peak. Once the last materialization of a big enough burst ends, a full
collection and glibc's malloc_trim(0) return the free pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger("workspace_operator.memory")


def _malloc_trim() -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        return False


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration, ValueError):
        return 0.0


class BurstTrimmer:
    def __init__(self, threshold: int = 64) -> None:
        self.threshold = threshold
        self.peak = 0

    def observe(self, in_flight: int) -> None:
        """Called as materializations start and end, with how many are in flight now."""
        self.peak = max(self.peak, in_flight)
        if in_flight == 0 and self.peak >= self.threshold:
            peak, self.peak = self.peak, 0
            before = _rss_mb()
            gc.collect()
            trimmed = _malloc_trim()
            log.info(
                "burst of %d materializations drained; freed memory returned to the system (%s): RSS %.0f -> %.0f MB",
                peak,
                "trimmed" if trimmed else "nothing to trim",
                before,
                _rss_mb(),
            )
