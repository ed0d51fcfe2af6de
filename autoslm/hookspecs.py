"""pluggy hook specifications for the `autoslm` entry-point group.

Each hook hands the plugin a `register` callback; the plugin calls it once per object it provides. Return values
are ignored. The core owns validation, naming and duplicate detection, so a plugin stays a few lines.
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
