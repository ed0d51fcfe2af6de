"""autoslm: automated compression search for small language models.

Public API (importing autoslm stays light: torch and transformers load only when a function needs them).
"""

from __future__ import annotations

from typing import Any

from autoslm.codec import Codec
from autoslm.hookspecs import hookimpl
from autoslm.space import Categorical, Float, Int
from autoslm.technique import ApplyContext, Stage, Technique, TechniqueConfig

__version__ = "0.1.0"

__all__ = [
    "ApplyContext",
    "Categorical",
    "Codec",
    "Float",
    "Int",
    "Stage",
    "Technique",
    "TechniqueConfig",
    "__version__",
    "hookimpl",
    "load_model",
]


def load_model(spec: str) -> Any:
    """Load a model by spec (smollm2-135m, tiny-llama, a directory, a .gguf file, a hub id)."""
    from autoslm.models import load_model as _load

    return _load(spec)
