"""The metrics table: every figure a target measures or a search judges, declared once.

Budgets (`decode_ms<=0.7x`), the Pareto set, the report, `trials.json` and the CLI tables all read names, units
and directions from here. A runtime or plugin that measures something new adds a row through the
`register_metrics` hook; nothing else needs an edit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One measured figure. `timing` metrics drift with the machine (close calls re-time them beside the
    baseline); the others (memory, size) are steady to about 1%."""

    name: str
    unit: str
    label: str
    timing: bool = False
    lower_is_better: bool = True
    budget: bool = True  # may appear in a --budget


BUILTIN: tuple[Metric, ...] = (
    Metric("decode_ms", "ms", "median ms per generated token, batch 1, greedy, KV cache", timing=True),
    Metric("decode_p90_ms", "ms", "90th percentile ms per generated token", timing=True),
    Metric("prefill_ms", "ms", "median ms for one forward pass over the prompt", timing=True),
    Metric("memory_mb", "MB", "peak resident memory of the loaded model while in use"),
    Metric("size_mb", "MB", "weight files on disk"),
    Metric("bpw", "bits", "bits per weight: the weight tensors' bytes x 8 / the weights they hold"),
)

# The Pareto set's axes: quality, then the two costs a user feels most.
OBJECTIVES: tuple[str, ...] = ("ppl", "decode_ms", "memory_mb")

_TABLE: dict[str, Metric] = {m.name: m for m in BUILTIN}


def register(metric: Metric) -> None:
    """Add a metric (the registry calls this for each `register_metrics` hook implementation)."""
    if not isinstance(metric, Metric) or not metric.name.isidentifier():
        raise ValueError(f"{metric!r} is not an autoslm.metrics.Metric with an identifier name")
    known = _TABLE.get(metric.name)
    if known is not None and known != metric:
        raise ValueError(f"metric '{metric.name}' is already declared differently ({known.unit}, {known.label})")
    _TABLE[metric.name] = metric


def all_metrics() -> dict[str, Metric]:
    """Every declared metric by name (built-in first, then those plugins registered)."""
    _load_plugins()
    return dict(_TABLE)


def budget_metrics() -> tuple[str, ...]:
    return tuple(n for n, m in all_metrics().items() if m.budget)


def timing_metrics() -> tuple[str, ...]:
    return tuple(n for n, m in all_metrics().items() if m.timing)


def _load_plugins() -> None:
    from autoslm.plugins import get_registry

    get_registry()  # registering plugins fills the table through the register_metrics hook


__all__ = ["BUILTIN", "OBJECTIVES", "Metric", "all_metrics", "budget_metrics", "register", "timing_metrics"]
