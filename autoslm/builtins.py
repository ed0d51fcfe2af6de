"""The engine's own targets, runtimes, search backends and samplers, registered through the same hooks a plugin
uses (the built-in techniques live in plugins/, as entry points). Imports here stay light: no torch, no Ray."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autoslm.hookspecs import hookimpl


@hookimpl
def register_targets(register: Callable[[type[Any]], None]) -> None:
    from autoslm.targets.local import LocalTarget
    from autoslm.targets.remote import RemoteTarget

    register(LocalTarget)
    register(RemoteTarget)


@hookimpl
def register_runtimes(register: Callable[[type[Any]], None]) -> None:
    from autoslm.runtimes.llamacpp import LlamaCppRuntime
    from autoslm.runtimes.torch import TorchRuntime

    register(TorchRuntime)
    register(LlamaCppRuntime)


@hookimpl
def register_search_backends(register: Callable[[type[Any]], None]) -> None:
    from autoslm.searching.backends.optuna import OptunaBackend
    from autoslm.searching.backends.ray import RayBackend

    register(OptunaBackend)
    register(RayBackend)


@hookimpl
def register_samplers(register: Callable[..., None]) -> None:
    from autoslm.searching.samplers import BUILTIN

    for name, factory in BUILTIN.items():
        register(name, factory)
