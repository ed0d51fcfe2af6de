"""Interference: what else the machine did while a measurement was timed.

A timing taken while another job used the CPU says little about the candidate (a baseline measured at 252.8
ms/token instead of ~40 ms made every verdict of one search noise). Around its timed runs a measurement reads
`/proc/stat` (CPU time of the whole machine, and steal time a hypervisor took) and `/proc/self/stat` (its own CPU
time), so it can report how many cores other processes used meanwhile, the share of time stolen, the load average
and the spread of its own timed runs, and call itself disturbed past a threshold. Before timing, a measurement can wait
(bounded) until the machine has been quiet for a few seconds (`wait_for_quiet`): on a machine with as few cores as
measuring threads, a timing taken beside other work is not rescued by any ratio (paired ratios move too). The search
re-measures a disturbed measurement and, when the machine never settles, judges timing beside the baseline in one
process and says so. Linux only; elsewhere nothing is reported and nothing waits.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OTHER_CORES_LIMIT = 0.3  # cores other processes may use during a measurement before it counts as disturbed
STEAL_LIMIT = 0.05  # share of CPU time a hypervisor may steal
QUIET_WINDOW_S = 3.0  # how long the machine must stay quiet before a measurement times
QUIET_POLL_S = 0.5


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU clock ticks at one instant: the machine's busy and steal time, and this process's own."""

    busy: int
    steal: int
    total: int
    own: int
    wall: float


def sample() -> CpuSample | None:
    """Read the counters (None where /proc is missing: not Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        stat = Path("/proc/self/stat").read_text()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks + [0] * (8 - len(ticks))
    # after "(comm)": state is field 3, utime/stime 14-15 (every thread of this process); the children's times
    # (cutime/cstime) are left out: a child that finished meanwhile is other work, not this measurement's
    own = stat.rsplit(")", 1)[1].split()
    return CpuSample(
        busy=user + nice + system + irq + softirq,
        steal=steal,
        total=sum(ticks),
        own=int(own[11]) + int(own[12]),
        wall=time.monotonic(),
    )


def figures(before: CpuSample | None, after: CpuSample | None, spread: float | None = None) -> dict[str, Any] | None:
    """What happened between two samples: cores used by other processes, steal share, load average, the timed runs'
    spread (p90 / median), and whether that counts as disturbed."""
    if before is None or after is None or after.wall <= before.wall:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    seconds = after.wall - before.wall
    other = max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / hz / seconds)
    steal = (after.steal - before.steal) / max(1, after.total - before.total)
    out: dict[str, Any] = {
        "other_cores": round(other, 3),
        "steal": round(steal, 4),
        "load1": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "seconds": round(seconds, 2),
    }
    if spread is not None:
        out["spread"] = round(spread, 3)
    out["disturbed"] = other > OTHER_CORES_LIMIT or steal > STEAL_LIMIT
    return out


def wait_for_quiet(
    max_s: float,
    window_s: float = QUIET_WINDOW_S,
    poll_s: float = QUIET_POLL_S,
    read: Callable[[], CpuSample | None] = sample,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any] | None:
    """Wait until, for `window_s` seconds in a row, other processes used at most OTHER_CORES_LIMIT cores and the
    hypervisor stole at most STEAL_LIMIT, but at most `max_s` seconds. Returns `{"waited_s", "quiet"}` (quiet:
    whether such a window was found), or None where the counters cannot be read (nothing was waited)."""
    start = read()
    if start is None:
        return None
    window = previous = start
    while True:
        sleep(poll_s)
        now = read()
        if now is None:
            return None
        seen = figures(previous, now)
        previous = now
        if seen is not None and seen["disturbed"]:
            window = now  # someone worked since the last look: the quiet window starts again
        elif now.wall - window.wall >= window_s:
            return {"waited_s": round(now.wall - start.wall, 2), "quiet": True}
        if now.wall - start.wall >= max_s:
            return {"waited_s": round(now.wall - start.wall, 2), "quiet": False}


def with_gate(figures: dict[str, Any] | None, gate: dict[str, Any] | None) -> dict[str, Any] | None:
    """A measurement's figures with how long it waited for quiet first (`wait_for_quiet`), when it waited."""
    return {**figures, **gate} if figures is not None and gate is not None else figures


def gate(max_s: float) -> dict[str, Any] | None:
    """`wait_for_quiet(max_s)` when asked to wait (max_s > 0); None otherwise."""
    return wait_for_quiet(max_s) if max_s > 0 else None


def describe(figures: dict[str, Any] | None) -> str:
    """One phrase for a console line or a report cell."""
    if not figures:
        return "no interference figures"
    return (
        f"other processes used {figures['other_cores']:.2f} cores, steal {figures['steal'] * 100:.0f}%, "
        f"load {figures.get('load1')}"
    )


__all__ = [
    "OTHER_CORES_LIMIT",
    "STEAL_LIMIT",
    "CpuSample",
    "describe",
    "figures",
    "gate",
    "sample",
    "wait_for_quiet",
    "with_gate",
]
