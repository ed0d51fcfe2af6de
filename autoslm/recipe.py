"""recipe.yaml: everything needed to rebuild a compressed checkpoint from its base model, and what it measured.

Schema version 1. Every technique parameter is written explicitly (defaults included), so a later change of a
default cannot silently change an old recipe.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autoslm import model_card
from autoslm.errors import UserError
from autoslm.plugins import DIST_NAME, VERSION

SCHEMA_VERSION = 1


class RecipeStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    technique: str = Field(max_length=100)
    plugin: str = Field(pattern=DIST_NAME, description="the plugin's distribution (a pip name)")
    version: str = Field(pattern=VERSION, description="version of the plugin distribution")
    config_version: int = Field(1, description="the technique's Config.version when the recipe was written")
    params: dict[str, Any]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    base_model: dict[str, str] = Field(description="name (spec), source, fingerprint (sha256 over weights)")
    steps: list[RecipeStep]
    calibration: dict[str, Any]
    seed: int = Field(ge=0, lt=2**63)
    target: dict[str, Any] = Field(default_factory=dict)
    budget: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    checkpoint_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    stock: dict[str, str] = Field(
        default_factory=dict,
        description="llama.cpp: the `llama-quantize` command that makes the same GGUF from the F32 export, and the "
        "files beside the checkpoint it reads (imatrix.gguf, tensor-types.txt); empty otherwise",
    )

    @field_validator("base_model")
    @classmethod
    def _names_the_base(cls, value: dict[str, str]) -> dict[str, str]:
        missing = [k for k in ("name", "fingerprint") if not value.get(k)]
        if missing:
            raise ValueError(f"base_model lacks {' and '.join(missing)}")
        return value

    def text(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, width=120)

    def write(self, path: Path) -> Path:
        path.write_text(self.text())
        return path

    @classmethod
    def read(cls, path: Path | str) -> Recipe:
        from autoslm.yamlfile import read_yaml

        doc = read_yaml(path, "recipe")
        try:
            version = doc.get("schema_version") if isinstance(doc, dict) else None
            if version != SCHEMA_VERSION:
                raise UserError(
                    f"recipe '{path}' has schema_version {version!r}; this autoslm reads version {SCHEMA_VERSION}: "
                    "rebuild it with the autoslm that wrote it, or re-export it from its search"
                )
            return cls.model_validate(doc)
        except ValidationError as exc:
            first = str(exc).splitlines()
            raise UserError(f"recipe '{path}' is invalid: {' '.join(first[:3])}") from exc


def build_steps(steps: list[dict[str, Any]]) -> list[RecipeStep]:
    """Validated, fully explicit steps with the plugin distribution and version that provides each technique."""
    from autoslm.pipeline import Step, plan

    return [
        RecipeStep(
            technique=p.name,
            plugin=p.entry.dist,
            version=p.entry.version,
            config_version=p.entry.cls.Config.version,
            params=p.config.model_dump(mode="json"),
        )
        for p in plan([Step(**s) for s in steps])
    ]


def environment() -> dict[str, str]:
    env = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "autoslm", "optuna", "neural-compressor-pt", "torch-pruning"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return env


def apply_recipe(
    path: Path | str, out: Path | str, *, model: str | None = None, force: bool = False, f32: bool = False
) -> Path:
    """Rebuild the compressed checkpoint a recipe describes, from its base model, into `out`. `f32` (llama.cpp):
    also write the F32 GGUF the policy's quantization started from, as the recipe's stock `llama-quantize` command
    reads it (`model-f32.gguf`, outside the manifest).

    Refuses (unless `force`) when the base model's fingerprint differs from the recipe's, and names the plugin
    package to install when a step's technique is missing. Applied twice, the weights file is byte-identical; when
    it differs from the recipe's `checkpoint_sha256` (other library versions), a UserError says so after writing
    (unless `force`).
    """
    from autoslm import checkpoint
    from autoslm.models import load_files, load_model
    from autoslm.pipeline import Step, apply_planned, plan
    from autoslm.plugins import get_registry
    from autoslm.runtimes import check_policy, get_runtime, works_from_files
    from autoslm.technique import ApplyContext

    recipe = Recipe.read(Path(path))
    registry = get_registry()
    for step in recipe.steps:
        if step.technique not in registry.techniques:
            note = registry.failed_note(step.plugin)
            if note:
                raise UserError(f"recipe step '{step.technique}': {note}")
            raise UserError(
                f"recipe step '{step.technique}' needs the plugin package '{step.plugin}' (version {step.version}), "
                f"which is not installed: pip install '{step.plugin}=={step.version}'"
            )
        installed = registry.techniques[step.technique].cls.Config.version
        if installed != step.config_version:
            entry = registry.techniques[step.technique]
            raise UserError(
                f"recipe step '{step.technique}' was written for its config version {step.config_version}; the "
                f"installed {entry.dist} {entry.version} has config version {installed}: install "
                f"'{step.plugin}=={step.version}' to replay it"
            )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file: give a directory for the rebuilt checkpoint")
    spec = model or recipe.base_model["name"]
    planned = plan([Step(technique=s.technique, params=s.params) for s in recipe.steps])
    runtime = recipe.target.get("runtime", "torch")
    # as the search made it: from the model's files where no step needs the torch model (Objective.apply_policy)
    files_only = works_from_files(runtime, [p.entry.cls for p in planned])
    files = load_files(spec)
    base = files if files_only else load_model(spec)
    subject = base if files_only else base.model
    _check_limits(recipe, subject, spec)
    _check_fingerprint(recipe, files, spec, force, None if files_only else base)
    teacher = {}

    def teacher_factory() -> object:
        if "model" not in teacher:
            teacher["model"] = load_model(spec).model
        return teacher["model"]

    ctx = ApplyContext(tokenizer=base.tokenizer, seed=recipe.seed, teacher_factory=teacher_factory)
    check_policy(runtime, planned, subject)
    compressed = apply_planned(subject, planned, ctx)
    fingerprint = recipe.base_model["fingerprint"]
    rt = get_runtime(runtime)
    if f32 and not callable(getattr(rt, "write_f32", None)):
        raise UserError(f"--f32: the {runtime} runtime writes no F32 GGUF; it applies to llama.cpp recipes")
    rt.save(compressed, base.tokenizer, out, planned, base_fingerprint=fingerprint)
    if f32:
        rt.write_f32(compressed, base.tokenizer, out)  # type: ignore[attr-defined]
    made = checkpoint.sha256_file(checkpoint.weights_file(out))
    expected = recipe.checkpoint_sha256
    recipe = recipe.model_copy(update={"checkpoint_sha256": made})
    checkpoint.add_file(out, "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, width=120))
    model_card.write(out, recipe)
    if expected and made != expected and not force:
        raise UserError(
            f"the rebuilt {checkpoint.weights_file(out).name} in '{out}' has sha256 {made[:16]}..., the recipe's "
            f"checkpoint_sha256 is {expected[:16]}...: not the searched checkpoint (compare the recipe's "
            "environment with this one: library versions change kernels); --force accepts it"
        )
    return out


def _check_fingerprint(recipe: Recipe, files: Any, spec: str, force: bool, loaded: Any = None) -> None:
    """The base model must be the recipe's: its weight files' fingerprint (`models.files_fingerprint`), or, for a
    recipe written before autoslm identified models by their files, the loaded model's state dict's (`loaded`, or
    loaded here only when the files' fingerprint differs)."""
    from autoslm.models import load_model

    wanted = recipe.base_model["fingerprint"]
    if force or files.fingerprint == wanted or (loaded or load_model(spec)).fingerprint == wanted:
        return
    raise UserError(
        f"base model '{spec}' has fingerprint {files.fingerprint[:16]}, the recipe was made from "
        f"{wanted[:16]}: use the same base model, or pass --force to apply anyway"
    )


def _check_limits(recipe: Recipe, model: Any, spec: str) -> None:
    """Each step's numbers within what its technique can do to this base model (`blocks: 99` on 30 blocks)."""
    from autoslm.models import model_info
    from autoslm.plugins import get_registry
    from autoslm.technique import outside

    info = model_info(model)
    for step in recipe.steps:
        for param, (low, high) in get_registry().techniques[step.technique].cls.limits(info).items():
            value = step.params.get(param)
            if outside((low, high), value):
                raise UserError(
                    f"recipe step '{step.technique}': {param}={value} is outside what model "
                    f"'{spec}' allows ({low}..{high}); fix the recipe"
                )
