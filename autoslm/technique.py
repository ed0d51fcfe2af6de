"""The Technique base class: what every compression technique (built-in or third-party) provides.

A technique is a small class with:
  name                  dotted and unique, e.g. "prune.depth"
  Config                a pydantic model (frozen, extra="forbid"): every parameter explicit, validated, versioned
  stage                 where it runs in a pipeline (prune < lowrank < distill < quantize < cast)
  requires_calibration  whether apply() reads ctx.calibration()
  incompatible_with     names of techniques it cannot be combined with
  runtime               None (a torch-side step, any runtime that accepts it) or the runtime that applies it
  space(info, target)   its default search space: {parameter: Dimension}
  limits(info)          optional hard bounds for this model: {parameter: (low, high)}; spaces are clamped to them
  presets               named settings worth trying on their own ({"Q4_K_M": {"type": "Q4_K_M"}}): the search's
                        warm start tries each one its space allows, after the defaults
  resolve(model, config, ctx) -> config  optional: parameters derived from the model just before `apply` (a
                        per-tensor assignment from searched fractions); the recipe records what it returns
  apply(model, config, ctx) -> model   deterministic for a given ctx.seed
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from autoslm.errors import UserError
from autoslm.space import Dimension

if TYPE_CHECKING:
    import torch


class Stage(IntEnum):
    """Pipeline order: structural changes first, numeric format last."""

    PRUNE = 10
    LOWRANK = 20
    DISTILL = 30
    QUANTIZE = 40
    CAST = 50
    EXPORT = 60  # applied by a runtime when it writes what it loads (e.g. llama.cpp's own quantization)


class TechniqueConfig(BaseModel):
    """Base of every technique's Config: frozen plain data that round-trips through JSON/YAML."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: ClassVar[int] = 1


@dataclass
class ApplyContext:
    """What a technique may use while it applies: calibration text, the original model, a seed, a logger."""

    tokenizer: Any
    seed: int = 0
    device: str = "cpu"
    calibration_corpus: str = "calibration"
    calibration_samples: int = 32
    calibration_seq_len: int = 256
    teacher_factory: Callable[[], Any] | None = None
    run_dir: Path | None = None  # a search's run directory: a technique may keep what it measured there
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("autoslm.technique"))

    def calibration(self, samples: int | None = None, seq_len: int | None = None) -> torch.Tensor:
        """Deterministic calibration token windows, shape (samples, seq_len)."""
        from autoslm import data

        return data.token_windows(
            self.tokenizer,
            self.calibration_corpus,
            seq_len=seq_len or self.calibration_seq_len,
            count=samples or self.calibration_samples,
            seed=self.seed,
        )

    def teacher(self) -> Any:
        """The uncompressed model (for distillation); built on first use."""
        if self.teacher_factory is None:
            raise RuntimeError("this context has no teacher model")
        return self.teacher_factory()


class Technique:
    """Subclass this, set the class attributes, define `Config`, `space()` and `apply()`."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    description: ClassVar[str] = ""
    requires_calibration: ClassVar[bool] = False
    incompatible_with: ClassVar[tuple[str, ...]] = ()
    runtime: ClassVar[str | None] = None  # set: the runtime applies it at save time; `apply` leaves the model as is
    removes_blocks: ClassVar[bool] = False  # it drops whole decoder blocks (a runtime may refuse that on some models)
    # False: `resolve`, `apply` and `refuses_model` never look inside the torch model (a runtime technique that only
    # reads the weight files the runtime exports, as quant.gguf does): a search whose steps all say so, in a runtime
    # that `takes_files`, gets the model as `autoslm.models.ModelFiles` and never loads it into torch
    needs_torch_model: ClassVar[bool] = True
    Config: ClassVar[type[TechniqueConfig]] = TechniqueConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # name -> parameters (each a valid Config)

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Dimension]:
        """Default search space for a model described by `info` (see `autoslm.models.model_info`)."""
        return {}

    @classmethod
    def refuses_model(cls, model: Any) -> str | None:
        """Why this technique cannot apply to `model` at all, in any runtime (None: it can): a structure it does not
        know (a fused projection, say). Asked before a search or `apply` does any work."""
        return None

    @classmethod
    def limits(cls, info: dict[str, int]) -> dict[str, tuple[float, float]]:
        """Hard bounds of numeric parameters for this model (what `apply` can do: at most num_layers - 1 blocks
        removed). A search space's ranges are clamped to them; a fixed value outside is refused up front."""
        return {}

    @classmethod
    def make_config(cls, params: dict[str, Any] | None = None) -> TechniqueConfig:
        """Validate parameters into a Config, or raise a UserError naming the technique and the problem."""
        try:
            return cls.Config.model_validate(params or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise UserError(f"invalid parameters for technique '{cls.name}': {problems}") from exc

    def resolve(self, model: Any, config: Any, ctx: ApplyContext) -> TechniqueConfig:
        """Parameters derived from the model as the earlier steps left it, just before `apply` (e.g. searched
        fractions turned into an explicit per-tensor assignment from a sensitivity table). The search records the
        returned config in the trial and the recipe, so a replay never derives again; given a config that is already
        explicit, return it (after checking it fits the model). Default: the config unchanged."""
        return config

    def apply(self, model: Any, config: Any, ctx: ApplyContext) -> Any:
        """Return the compressed model (may modify `model` in place). Must be deterministic for ctx.seed."""
        raise NotImplementedError


def outside(bounds: tuple[float, float], value: Any) -> bool:
    """Whether `value` is a number outside a technique's `limits` entry `bounds` (non-numbers are not judged)."""
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return numeric and not bounds[0] <= value <= bounds[1]


def check_technique_class(cls: Any) -> None:
    """Raise ValueError when a registered object is not a usable Technique subclass."""
    if not (isinstance(cls, type) and issubclass(cls, Technique)):
        raise ValueError(f"{cls!r} is not a subclass of autoslm.Technique")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"{cls.__name__} has no valid `name`")
    if not isinstance(getattr(cls, "stage", None), Stage):
        raise ValueError(f"technique '{name}' has no `stage` (an autoslm.Stage)")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, TechniqueConfig)):
        raise ValueError(f"technique '{name}': Config must subclass autoslm.TechniqueConfig")
    presets = getattr(cls, "presets", {})
    if not isinstance(presets, dict):
        raise ValueError(f"technique '{name}': `presets` must be a dict of name -> parameters")
    for preset, params in presets.items():
        try:
            cls.Config.model_validate(params)
        except (ValidationError, TypeError) as exc:
            raise ValueError(f"technique '{name}': preset {preset!r} is not a valid Config: {exc}") from exc


@contextlib.contextmanager
def scratch_cwd(prefix: str = "autoslm-scratch-") -> Iterator[None]:
    """Run with a fresh temporary directory as the current one, for a library that writes into it (neural-compressor
    writes ./nc_workspace): the user's directory stays clean, and the directory is removed afterwards."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)
