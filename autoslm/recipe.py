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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autoslm.errors import UserError

SCHEMA_VERSION = 1


class RecipeStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    technique: str
    plugin: str
    version: str = Field(description="version of the plugin distribution")
    config_version: int = Field(1, description="the technique's Config.version when the recipe was written")
    params: dict[str, Any]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    base_model: dict[str, str] = Field(description="name (spec), source, fingerprint (sha256 over weights)")
    steps: list[RecipeStep]
    calibration: dict[str, Any]
    seed: int
    target: dict[str, Any] = Field(default_factory=dict)
    budget: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    checkpoint_sha256: str | None = None

    def write(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, width=120))
        return path

    @classmethod
    def read(cls, path: Path) -> Recipe:
        try:
            doc = yaml.safe_load(Path(path).read_text())
            version = doc.get("schema_version") if isinstance(doc, dict) else None
            if version != SCHEMA_VERSION:
                raise UserError(
                    f"recipe '{path}' has schema_version {version!r}; this autoslm reads version {SCHEMA_VERSION}: "
                    "rebuild it with the autoslm that wrote it, or re-export it from its search"
                )
            return cls.model_validate(doc)
        except FileNotFoundError as exc:
            raise UserError(f"recipe '{path}' does not exist: check the path") from exc
        except (yaml.YAMLError, ValidationError) as exc:
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


def apply_recipe(path: Path | str, out: Path | str, *, model: str | None = None, force: bool = False) -> Path:
    """Rebuild the compressed checkpoint a recipe describes, from its base model, into `out`.

    Refuses (unless `force`) when the base model's fingerprint differs from the recipe's, and names the plugin
    package to install when a step's technique is missing. Applied twice, the weights file is byte-identical.
    """
    from autoslm import checkpoint
    from autoslm.models import load_model
    from autoslm.pipeline import Step, apply_planned, plan
    from autoslm.plugins import get_registry
    from autoslm.runtimes import check_policy, get_runtime
    from autoslm.technique import ApplyContext

    recipe = Recipe.read(Path(path))
    registry = get_registry()
    for step in recipe.steps:
        if step.technique not in registry.techniques:
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
    spec = model or recipe.base_model["name"]
    base = load_model(spec)
    if base.fingerprint != recipe.base_model["fingerprint"] and not force:
        raise UserError(
            f"base model '{spec}' has fingerprint {base.fingerprint[:16]}, the recipe was made from "
            f"{recipe.base_model['fingerprint'][:16]}: use the same base model, or pass --force to apply anyway"
        )
    teacher = {}

    def teacher_factory() -> object:
        if "model" not in teacher:
            teacher["model"] = load_model(spec).model
        return teacher["model"]

    ctx = ApplyContext(tokenizer=base.tokenizer, seed=recipe.seed, teacher_factory=teacher_factory)
    planned = plan([Step(technique=s.technique, params=s.params) for s in recipe.steps])
    runtime = recipe.target.get("runtime", "torch")
    check_policy(runtime, planned)
    compressed = apply_planned(base.model, planned, ctx)
    out = Path(out)
    fingerprint = recipe.base_model["fingerprint"]
    get_runtime(runtime).save(compressed, base.tokenizer, out, planned, base_fingerprint=fingerprint)
    made = checkpoint.sha256_file(checkpoint.weights_file(out))
    recipe = recipe.model_copy(update={"checkpoint_sha256": made})
    checkpoint.add_file(out, "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, width=120))
    return out
