"""Pareto set over (perplexity, decode ms/token, memory MB): candidates no other candidate beats on all three."""

from __future__ import annotations

from typing import Any

OBJECTIVES = ("ppl", "decode_ms", "memory_mb")


def _values(row: dict[str, Any]) -> tuple[float, ...]:
    return (row["ppl"], row["metrics"]["decode_ms"], row["metrics"]["memory_mb"])


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    va, vb = _values(a), _values(b)
    return all(x <= y for x, y in zip(va, vb, strict=True)) and va != vb


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with full quality, none dominated by another; sorted by perplexity."""
    scored = [r for r in rows if r.get("quality") and r.get("metrics")]
    front = [r for r in scored if not any(dominates(o, r) for o in scored if o is not r)]
    unique = {r["policy_hash"]: r for r in sorted(front, key=lambda r: r["number"])}
    return sorted(unique.values(), key=lambda r: r["ppl"])
