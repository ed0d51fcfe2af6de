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
    version: str
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
            technique=p.name, plugin=p.entry.dist, version=p.entry.version, params=p.config.model_dump(mode="json")
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
