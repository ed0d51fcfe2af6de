"""pluggy hook specifications for the `autoslm` entry-point group.

Each hook hands the plugin a `register` callback; the plugin calls it once per object it provides. Return values
are ignored. The core owns validation, naming and duplicate detection, so a plugin stays a few lines. The engine's
own targets, runtimes, search backends and samplers are registered through these same hooks
(`autoslm/builtins.py`), so a plugin adds one exactly as the engine does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("autoslm")
hookimpl = pluggy.HookimplMarker("autoslm")


@hookspec
def register_techniques(register: Callable[[type[Any]], None]) -> None:
    """Call `register(TechniqueClass)` for each compression technique (a `autoslm.Technique` subclass)."""


@hookspec
def register_codecs(register: Callable[[Any], None]) -> None:
    """Call `register(codec)` for each `autoslm.Codec`: how a module type a technique creates is saved and loaded."""


@hookspec
def register_targets(register: Callable[[type[Any]], None]) -> None:
    """Call `register(TargetClass)` for each `autoslm.targets.Target` subclass; its `schemes` say which
    `--target` specs it serves (`local`, `http`, ...)."""


@hookspec
def register_runtimes(register: Callable[[type[Any]], None]) -> None:
    """Call `register(RuntimeClass)` for each `autoslm.runtimes.Runtime` subclass: what executes a checkpoint on a
    target (`--runtime NAME`)."""


@hookspec
def register_search_backends(register: Callable[[type[Any]], None]) -> None:
    """Call `register(BackendClass)` for each `autoslm.searching.backends.SearchBackend` (`--backend NAME`)."""


@hookspec
def register_samplers(register: Callable[[str, Callable[[int], Any]], None]) -> None:
    """Call `register(name, factory)`; `factory(seed)` returns an Optuna sampler (`--sampler NAME`)."""


@hookspec
def register_metrics(register: Callable[[Any], None]) -> None:
    """Call `register(autoslm.metrics.Metric(...))` for each figure a runtime or target measures beyond the
    built-in ones."""
