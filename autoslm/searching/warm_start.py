"""Warm start: before the sampler explores, try each optional technique alone at its plugin's default parameters.

A space of a dozen dimensions is mostly sampled at random for the first trials (TPE's start-up), and a random policy
almost never switches every technique off but one. Yet a single technique at sensible settings (a numeric-format
change especially) is often the policy to beat. Enqueuing those first gives the sampler strong points to learn from
and guarantees the search is never worse than the single techniques it contains at their defaults.

Order: later pipeline stages first (numeric format before structure: cheap to apply, often near-lossless).
Techniques of the DISTILL stage are skipped: recovery alone compresses nothing. A space with required techniques
starts with those alone, then adds each optional one. At most a third of the trials.
"""

from __future__ import annotations

from typing import Any

from autoslm.searching.policy import choice_key, param_key
from autoslm.searching.space import SearchSpace, encode_choice
from autoslm.space import Categorical, Float, Int


def _project(dim: Any, value: Any) -> Any:
    """The plugin default, moved into the space's range (nearest allowed value)."""
    if isinstance(dim, Categorical):
        choices = [encode_choice(c) for c in dim.choices]
        enc = encode_choice(value)
        return enc if enc in choices else choices[0]
    if isinstance(dim, Int):
        v = min(max(int(value), dim.low), dim.high)
        return dim.low + round((v - dim.low) / dim.step) * dim.step
    if isinstance(dim, Float):
        return min(max(float(value), dim.low), dim.high)
    return value


def _defaults(space: SearchSpace, technique: str) -> dict[str, Any]:
    from autoslm.plugins import get_registry

    cls = get_registry().technique(technique).cls
    t = next(t for t in space.techniques if t.name == technique)
    fields = cls.Config.model_fields
    return {param_key(technique, p): _project(dim, fields[p].default) for p, dim in t.dims.items() if p in fields}


def warm_start_policies(space: SearchSpace, trials: int) -> list[dict[str, Any]]:
    """Optuna parameter dicts (as `sample_policy` names them), one per single-technique policy."""
    from autoslm.plugins import get_registry
    from autoslm.technique import Stage

    registry = get_registry()
    optional = [t.name for t in space.techniques if t.name not in space.required]
    stages = {n: registry.technique(n).cls.stage for n in optional}
    order = sorted((n for n in optional if stages[n] != Stage.DISTILL), key=lambda n: -stages[n])
    required_params: dict[str, Any] = {}
    for name in space.required:
        required_params |= _defaults(space, name)
    candidates: list[str | None] = [None, *order] if space.required else list(order)
    policies = []
    for name in candidates[: max(1, trials // 3)]:
        params: dict[str, Any] = dict(required_params)
        for group in space.groups:
            if any(t in space.required for t in group):
                continue  # a required choice is not sampled
            params[choice_key(group)] = name if name in group else None
        if name is not None:
            params |= _defaults(space, name)
        policies.append(params)
    return policies
