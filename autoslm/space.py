"""Backend-neutral search-space types. Techniques declare their parameters with these; backends translate them.

A technique's `space()` returns `{param_name: Dimension}`. YAML search-space files can narrow, widen or fix each
dimension without touching the plugin.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Dim(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Float(_Dim):
    """A continuous range [low, high], optionally sampled on a log scale."""

    kind: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> Float:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self

    def contains(self, value: Any) -> bool:
        return isinstance(value, int | float) and self.low <= value <= self.high


class Int(_Dim):
    """An integer range [low, high] with a step."""

    kind: Literal["int"] = "int"
    low: int
    high: int
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Int:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high and (value - self.low) % self.step == 0


class Categorical(_Dim):
    """A choice among fixed values (numbers, strings, booleans, or null)."""

    kind: Literal["categorical"] = "categorical"
    choices: tuple[Any, ...] = Field(min_length=1)

    def contains(self, value: Any) -> bool:
        return value in self.choices


Dimension = Annotated[Float | Int | Categorical, Field(discriminator="kind")]


def size(space: dict[str, Dimension]) -> float:
    """Number of distinct points (inf when any dimension is continuous)."""
    total = 1.0
    for dim in space.values():
        if isinstance(dim, Float):
            return float("inf") if dim.low != dim.high else total
        total *= len(dim.choices) if isinstance(dim, Categorical) else (dim.high - dim.low) // dim.step + 1
    return total


def describe(dim: Float | Int | Categorical) -> str:
    if isinstance(dim, Float):
        return f"float [{dim.low:g}, {dim.high:g}]" + (" log" if dim.log else "")
    if isinstance(dim, Int):
        return f"int [{dim.low}, {dim.high}]" + (f" step {dim.step}" if dim.step != 1 else "")
    return "one of " + ", ".join(map(str, dim.choices))
