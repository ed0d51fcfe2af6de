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
    "apply_recipe",
    "hookimpl",
    "load",
    "load_model",
    "search",
]


def search(*, resume: bool = False, progress: Any = None, **options: Any) -> Any:
    """Search compression policies under a measured budget; returns a `SearchResult` and writes RUN/report.html.

    Options are `SearchSettings` fields (model, budget, space, trials, out, seed, sampler, backend, target,
    runtime, ...), all validated before anything is written. Example:

        autoslm.search(model="smollm2-135m", budget="decode_ms<=0.7x", trials=12, out="runs/x")
    """
    from autoslm import report
    from autoslm.searching import SearchSettings, run_search

    settings = SearchSettings.create(**{k: str(v) if k == "out" else v for k, v in options.items()})
    result = run_search(settings, resume=resume, progress=progress)
    result.report_path, _ = report.write(result.run_dir, result.settings.storage, result.settings.study)
    return result


def load(directory: str) -> Any:
    """Load a compressed checkpoint (or any model directory) in a fresh process: returns (model, tokenizer).

    Checksums are verified first; weights come from safetensors only.
    """
    from pathlib import Path

    from autoslm.checkpoint import load_dir
    from autoslm.errors import UserError

    path = Path(directory)
    if not path.is_dir():
        raise UserError(
            f"autoslm.load('{directory}'): not a directory; autoslm.load reads a checkpoint folder, "
            "autoslm.load_model takes any model spec (smollm2-135m, tiny-llama, a .gguf file, ...)"
        )
    return load_dir(path)


def apply_recipe(recipe: str, out: str, model: str | None = None, force: bool = False, f32: bool = False) -> Any:
    """Rebuild the checkpoint a recipe.yaml describes from its base model (see autoslm.recipe.apply_recipe); `f32`
    (llama.cpp): also write the F32 export the recipe's stock llama-quantize command reads."""
    from autoslm.recipe import apply_recipe as _apply

    return _apply(recipe, out, model=model, force=force, f32=f32)


def load_model(spec: str) -> Any:
    """Load a model by spec (smollm2-135m, tiny-llama, a directory, a .gguf file, a hub id)."""
    from autoslm.models import load_model as _load

    return _load(spec)
