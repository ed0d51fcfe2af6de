"""A policy: the flat parameter dict a sampler proposes, and the ordered steps it stands for.

The key format lives here alone: `use:<a>|<b>` chooses one technique of an exclusive group (or none), and
`<technique>.<param>` is one of its parameters. Samplers propose in this format (`sample`), warm start enqueues in
it, and `steps` turns it into a pipeline; `canonical_hash` is a policy's identity for the cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from autoslm.searching.space import SearchSpace, decode_choice, encode_choice
from autoslm.space import Categorical, Float, Int


def choice_key(group: Iterable[str]) -> str:
    """The key of an exclusive group's choice: which of its techniques is used (None: none)."""
    return f"use:{'|'.join(group)}"


def param_key(technique: str, param: str) -> str:
    return f"{technique}.{param}"


def sample(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Define-by-run on an Optuna trial: choose techniques (one per exclusive group), then each one's parameters."""
    policy: dict[str, Any] = {}
    for group in space.groups:
        required = [t for t in group if t in space.required]
        choices: list[Any] = required or [None, *group]
        key = choice_key(group)
        policy[key] = choices[0] if len(choices) == 1 else trial.suggest_categorical(key, choices)
    chosen = set(policy.values()) | set(space.required)
    for t in space.techniques:
        if t.name not in chosen:
            continue
        for p, dim in t.dims.items():
            name = param_key(t.name, p)
            if isinstance(dim, Float):
                policy[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
            elif isinstance(dim, Int):
                policy[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step)
            elif isinstance(dim, Categorical):
                policy[name] = trial.suggest_categorical(name, [encode_choice(c) for c in dim.choices])
    return policy


def steps(space: SearchSpace, policy: dict[str, Any]) -> list[dict[str, Any]]:
    """Ordered steps from a flat policy."""
    chosen = {policy.get(choice_key(g)) for g in space.groups}
    out = []
    for t in space.techniques:
        if t.name not in chosen and t.name not in space.required:
            continue
        params = dict(t.fixed)
        for p in t.dims:
            key = param_key(t.name, p)
            if key in policy:
                params[p] = decode_choice(policy[key])
        out.append({"technique": t.name, "params": params})
    return out


def canonical_hash(planned: list[Any], extra: dict[str, Any]) -> str:
    """Identity of a policy: its validated configs (`pipeline.plan`; defaults made explicit), the distribution and
    version of the plugin behind each step (a fixed plugin never reuses a stale result) + what else determines the
    result (base model, seed, fidelity)."""
    body = {
        "steps": [[p.name, p.entry.dist, p.entry.version, p.config.model_dump(mode="json")] for p in planned],
        **extra,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


__all__ = ["canonical_hash", "choice_key", "param_key", "sample", "steps"]
