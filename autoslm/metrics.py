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
    column: bool = True  # a column of every trial table (the live view, the summary, report.html)
    digits: int = 1  # decimals shown

    @property
    def header(self) -> str:
        """'decode ms', 'memory MB', 'energy mJ': the name without its unit's suffix, then the unit."""
        return f"{self.name.removesuffix('_' + self.unit.lower()).replace('_', ' ')} {self.unit}"

    def format(self, value: float | None) -> str:
        return "-" if value is None else f"{value:.{self.digits}f}"


BUILTIN: tuple[Metric, ...] = (
    Metric("decode_ms", "ms", "median ms per generated token, batch 1, greedy, KV cache", timing=True),
    Metric("decode_p90_ms", "ms", "90th percentile ms per generated token", timing=True, column=False),
    Metric("prefill_ms", "ms", "median ms for one forward pass over the prompt", timing=True, column=False),
    Metric("memory_mb", "MB", "peak resident memory of the loaded model while in use", digits=0),
    Metric("size_mb", "MB", "weight files on disk", digits=0),
    Metric("bpw", "bits", "bits per weight: the weight tensors' bytes x 8 / the weights they hold", column=False),
)

# The Pareto set's axes: quality, then the two costs a user feels most.
OBJECTIVES: tuple[str, ...] = ("ppl", "decode_ms", "memory_mb")

_TABLE: dict[str, Metric] = {m.name: m for m in BUILTIN}
_OWNERS: dict[str, str] = {}  # metric -> the plugin that declared it first


def register(metric: Metric, plugin: str | None = None) -> None:
    """Add a metric (the registry calls this for each `register_metrics` hook implementation, naming the plugin)."""
    if not isinstance(metric, Metric) or not metric.name.isidentifier():
        raise ValueError(f"{metric!r} is not an autoslm.metrics.Metric with an identifier name")
    known = _TABLE.get(metric.name)
    if known is not None and known != metric:
        raise ValueError(f"metric '{metric.name}' is already declared differently ({known.unit}, {known.label})")
    if known is None and plugin is not None:
        _OWNERS[metric.name] = plugin
    _TABLE[metric.name] = metric


def forget(plugin: str) -> None:
    """Drop the metrics `plugin` declared (the registry removed it)."""
    for name in [n for n, owner in _OWNERS.items() if owner == plugin]:
        _TABLE.pop(name, None)
        _OWNERS.pop(name)


def all_metrics() -> dict[str, Metric]:
    """Every declared metric by name (built-in first, then those plugins registered)."""
    _load_plugins()
    return dict(_TABLE)


def columns() -> list[Metric]:
    """The metrics every trial table shows, in the table's order (a plugin's after the built-in ones)."""
    return [m for m in all_metrics().values() if m.column]


def budget_metrics() -> tuple[str, ...]:
    return tuple(n for n, m in all_metrics().items() if m.budget)


def timing_metrics() -> tuple[str, ...]:
    return tuple(n for n, m in all_metrics().items() if m.timing)


def _load_plugins() -> None:
    from autoslm.plugins import get_registry

    get_registry()  # registering plugins fills the table through the register_metrics hook


__all__ = [
    "BUILTIN", "OBJECTIVES", "Metric", "all_metrics", "budget_metrics", "columns", "forget", "register",
    "timing_metrics",
]  # fmt: skip
