"""Pareto set over the metrics table's objectives (perplexity, decode ms/token, memory MB): candidates no other
candidate beats on all of them."""

from __future__ import annotations

from autoslm.metrics import OBJECTIVES
from autoslm.searching.trials import TrialRecord


def _values(row: TrialRecord) -> tuple[float, ...]:
    return tuple(float(row.ppl if name == "ppl" else row.metrics[name]) for name in OBJECTIVES)  # type: ignore[arg-type]


def dominates(a: TrialRecord, b: TrialRecord) -> bool:
    va, vb = _values(a), _values(b)
    return all(x <= y for x, y in zip(va, vb, strict=True)) and va != vb


def pareto_front(rows: list[TrialRecord]) -> list[TrialRecord]:
    """Rows with full quality, none dominated by another; sorted by perplexity (one row per policy)."""
    scored = [r for r in rows if r.scored and r.ppl is not None]
    front = [r for r in scored if not any(dominates(o, r) for o in scored if o is not r)]
    unique = {r.policy_hash: r for r in sorted(front, key=lambda r: r.number)}
    return sorted(unique.values(), key=lambda r: r.ppl or 0.0)
