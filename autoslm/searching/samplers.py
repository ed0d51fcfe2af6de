"""The engine's samplers, registered by name (`--sampler NAME`) through the `register_samplers` hook.

Every backend asks Optuna for policies, so a sampler is an Optuna sampler; a plugin adds one with
`register("cmaes", lambda seed: optuna.samplers.CmaEsSampler(seed=seed))`.
"""

from __future__ import annotations

from typing import Any


def tpe(seed: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5, constant_liar=True)


def nsga2(seed: int) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)


def random(seed: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


BUILTIN = {"tpe": tpe, "nsga2": nsga2, "random": random}


def make_sampler(name: str, seed: int) -> Any:
    """The sampler registered under `name`, seeded; a UserError lists the known ones."""
    from autoslm.plugins import get_registry

    return get_registry().lookup("samplers", name, "--sampler")(seed)
