"""Warm start: before the sampler explores, try each optional technique alone at its plugin's default parameters,
then at each of its presets.

A space of a dozen dimensions is mostly sampled at random for the first trials (TPE's start-up), and a random policy
almost never switches every technique off but one. Yet a single technique at sensible settings (a numeric-format
change especially) is often the policy to beat. Enqueuing those first gives the sampler strong points to learn from
and guarantees the search is never worse than the single techniques it contains at their defaults. A technique's
`presets` (e.g. quant.gguf's llama.cpp types: Q4_K_M with an importance matrix, Q4_0, ...) follow its defaults, so
a search is never worse than the presets its space can express either; a preset the space cannot express (a value
outside a range or the choices, a parameter fixed otherwise or not searched) is skipped.

Order: later pipeline stages first (numeric format before structure: cheap to apply, often near-lossless), each
technique's defaults before its presets. Techniques of the DISTILL stage are skipped: recovery alone compresses
nothing. A space with required techniques starts with those alone, then adds each optional one. At most a third of
the trials.
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


def _allowed(dim: Any, value: Any) -> bool:
    if isinstance(dim, Categorical):
        return encode_choice(value) in [encode_choice(c) for c in dim.choices]
    if isinstance(dim, Int):
        return isinstance(value, int) and dim.low <= value <= dim.high and (value - dim.low) % dim.step == 0
    if isinstance(dim, Float):
        return isinstance(value, int | float) and dim.low <= value <= dim.high
    return False


def _presets(space: SearchSpace, technique: str) -> list[dict[str, Any]]:
    """The technique's presets the space can express, as Optuna parameters (its other searched ones at defaults)."""
    from autoslm.plugins import get_registry

    t = next(t for t in space.techniques if t.name == technique)
    out = []
    for preset in get_registry().technique(technique).cls.presets.values():
        expressible = all(
            (p in t.dims and _allowed(t.dims[p], v)) or (p in t.fixed and t.fixed[p] == v) for p, v in preset.items()
        )
        if expressible:
            params = _defaults(space, technique)
            params |= {param_key(technique, p): encode_choice(v) if isinstance(t.dims.get(p), Categorical) else v
                       for p, v in preset.items() if p in t.dims}  # fmt: skip
            out.append(params)
    return out


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
    candidates: list[tuple[str | None, dict[str, Any]]] = [(None, {})] if space.required else []
    candidates += [(None, params) for name in space.required for params in _presets(space, name)]
    for name in order:
        candidates += [(name, params) for params in [_defaults(space, name), *_presets(space, name)]]
    policies: list[dict[str, Any]] = []
    for name, technique_params in candidates:
        params: dict[str, Any] = dict(required_params)
        for group in space.groups:
            if any(t in space.required for t in group):
                continue  # a required choice is not sampled
            params[choice_key(group)] = name if name in group else None
        params |= technique_params
        if params not in policies:
            policies.append(params)
    return policies[: max(1, trials // 3)]
