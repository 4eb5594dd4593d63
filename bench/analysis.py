"""The "targets" commentary of the report: which targets were missed, and the numbers that say why.

Derived from the run's own data; hand-written findings from profiling live in
bench/NOTES.md and are appended verbatim.
"""

from __future__ import annotations

from pathlib import Path

from bench.scenarios import Result, Row

NOTES = Path(__file__).with_name("NOTES.md")


def analyse(results: list[Result], failures: list[str]) -> str:
    lines: list[str] = []
    for result in results:
        for row in result.rows:
            if row.met is False:
                lines.append(_missed(result, row))
    if failures:
        lines += ["", "Scenarios that failed to run:", ""] + [f"- {f}" for f in failures]
    out = ""
    if lines:
        out = "## Targets missed in this run\n\n" + "\n".join(lines) + "\n"
    if NOTES.exists():
        out += "\n" + NOTES.read_text()
    return out


# Where bench/NOTES.md discusses each kind of miss.
HINTS = {"cold": "Findings §2", "warm": "Findings §1 and §3", "memory": "Findings §5"}


def _hint(name: str) -> str:
    key = (
        "memory"
        if name.startswith("memory")
        else "cold"
        if name.startswith("cold")
        else "warm"
        if name.startswith("warm")
        else ""
    )
    return f" See {HINTS[key]}." if key in HINTS and NOTES.exists() else ""


def _missed(result: Result, row: Row) -> str:
    b = result.data.get("breakdown")
    name = row.scenario
    if not b:
        return f"- **{name}**: {row.note}.{_hint(name)}"
    git = b["fetch"] + b["checkout"]
    return (
        f"- **{name}** ({row.repo}): created→Ready {b['client']:.3f} s, of which git "
        f"{git:.3f} s (fetch {b['fetch']:.3f}, checkout {b['checkout']:.3f}), engine checks "
        f"{b['engine_other']:.3f} s, project Lease {b['lock_wait']:.3f} s and {b['outside_handler']:.3f} s "
        f"outside the handler (kopf + API + watch).{_hint(name)}"
    )
