"""A policy's ordered steps: validation before any work, then application in stage order.

Validation rejects, with one message naming the step: an unknown technique (and which plugin to install), invalid
parameters, a chain out of stage order (prune < lowrank < distill < quantize < cast), the same technique twice,
and pairs a technique declares incompatible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autoslm.errors import UserError
from autoslm.plugins import TechniqueEntry, get_registry
from autoslm.technique import ApplyContext, TechniqueConfig

log = logging.getLogger("autoslm.pipeline")


def policy_text(steps: list[dict[str, Any]]) -> str:
    """A policy in one line: `prune.depth(blocks=2) -> quant.gguf(type=Q4_K_M, ...)` (tables, logs, model cards)."""
    if not steps:
        return "(uncompressed)"
    parts = []
    for s in steps:
        params = ", ".join(f"{k}={_short(v)}" for k, v in s["params"].items() if not k.startswith("calibration"))
        parts.append(f"{s['technique']}({params})")
    return " -> ".join(parts)


def _short(v: Any) -> str:
    """A parameter for a table cell; a long mapping (a per-tensor assignment) as a count of each value."""
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict) and len(v) > 4:
        from collections import Counter

        counts = Counter(map(str, v.values())).most_common()
        return f"{{{len(v)} entries: {', '.join(f'{value} x{n}' for value, n in counts)}}}"
    return str(v)


class Step(BaseModel):
    """One technique with its parameters, as written in a recipe or sampled by the search."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    technique: str
    params: dict[str, Any] = Field(default_factory=dict)


@dataclass
class PlannedStep:
    entry: TechniqueEntry
    config: TechniqueConfig

    @property
    def name(self) -> str:
        return self.entry.cls.name


def plan(steps: list[Step]) -> list[PlannedStep]:
    """Validate a chain completely (no model touched) and return it with validated configs."""
    registry = get_registry()
    planned = [
        PlannedStep(registry.technique(s.technique), registry.technique(s.technique).cls.make_config(s.params))
        for s in steps
    ]
    names = [p.name for p in planned]
    for i, p in enumerate(planned):
        if names.count(p.name) > 1:
            raise UserError(f"technique '{p.name}' appears {names.count(p.name)} times in one policy: keep one")
        if i and p.entry.cls.stage < planned[i - 1].entry.cls.stage:
            order = " -> ".join(sorted(names, key=lambda n: registry.technique(n).cls.stage))
            raise UserError(
                f"'{p.name}' ({p.entry.cls.stage.name.lower()}) cannot come after '{planned[i - 1].name}' "
                f"({planned[i - 1].entry.cls.stage.name.lower()}): order the steps as {order}"
            )
        for other in planned:
            if other.name in p.entry.cls.incompatible_with or p.name in other.entry.cls.incompatible_with:
                raise UserError(f"techniques '{p.name}' and '{other.name}' cannot be combined: drop one of them")
    return planned


def apply_steps(model: Any, steps: list[Step], ctx: ApplyContext) -> Any:
    """Validate, then apply each step in order; returns the compressed model."""
    return apply_planned(model, plan(steps), ctx)


def apply_planned(model: Any, planned: list[PlannedStep], ctx: ApplyContext) -> Any:
    """Apply steps `plan` already validated, in order; returns the compressed model. Each step's config is first
    replaced by what its technique's `resolve` derives from the model (see `resolved_steps`)."""
    for p in planned:
        technique = p.entry.cls()
        p.config = technique.resolve(model, p.config, ctx)
        log.info("applying %s %s", p.name, p.config.model_dump())
        model = technique.apply(model, p.config, ctx)
    return model


def resolved_steps(
    steps: list[dict[str, Any]], before: list[TechniqueConfig], planned: list[PlannedStep]
) -> list[dict[str, Any]]:
    """`steps` as applied: each step's parameters plus those its technique's `resolve` derived (the configs were
    `before` before `apply_planned` ran), in the form a recipe and a trial record keep."""
    out = []
    for step, old, p in zip(steps, before, planned, strict=True):
        if p.config is old:
            out.append(step)
            continue
        was, now = old.model_dump(mode="json"), p.config.model_dump(mode="json")
        derived = {k: v for k, v in now.items() if was.get(k) != v}
        out.append({**step, "params": {**step.get("params", {}), **derived}})
    return out
