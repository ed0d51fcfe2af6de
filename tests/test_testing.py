"""The conformance kit catches broken techniques (a kit that always passes would be worthless)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import Field

import autoslm
from autoslm import Float, Stage, Technique, TechniqueConfig
from autoslm.plugins import get_registry
from autoslm.testing import TechniqueConformance


class NoiseConfig(TechniqueConfig):
    scale: float = Field(0.01, ge=0.0)


class Unseeded(Technique):
    """Adds noise from the global RNG: not deterministic for a seed."""

    name = "test.unseeded"
    stage = Stage.PRUNE
    Config = NoiseConfig

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))))
        return model


class Grows(Technique):
    """Widens the lm_head input by adding an adapter: more parameters, not declared."""

    name = "test.grows"
    stage = Stage.PRUNE
    Config = NoiseConfig

    @classmethod
    def space(cls, info: dict[str, int], target: Any = None) -> dict[str, Any]:
        return {"scale": Float(low=0.0, high=1.0), "not_a_field": Float(low=0.0, high=1.0)}

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        model.extra = torch.nn.Linear(64, 64)
        return model


class Custom(torch.nn.Module):
    def __init__(self, inner: torch.nn.Linear) -> None:
        super().__init__()
        self.inner = inner
        self.gain = torch.nn.Parameter(torch.full((inner.out_features,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.gain


class NoCodec(Technique):
    """Creates a new module type without registering a Codec for it: its checkpoint cannot round-trip."""

    name = "test.nocodec"
    stage = Stage.PRUNE
    Config = NoiseConfig

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        mlp = model.model.layers[0].mlp
        mlp.down_proj = Custom(mlp.down_proj)
        return model


class _Plugin:
    @autoslm.hookimpl
    def register_techniques(self, register: Any) -> None:
        for cls in (Unseeded, Grows, NoCodec):
            register(cls)


@pytest.fixture(scope="module")
def kit_entries():
    registry = get_registry()
    registry.add(_Plugin(), name="broken-for-test", dist="broken-dist", version="9.9")
    yield {n: registry.technique(n) for n in ("test.unseeded", "test.grows", "test.nocodec")}
    registry.remove("broken-for-test")


def _kit(name: str) -> TechniqueConformance:
    return type("Kit", (TechniqueConformance,), {"technique": name})()


INFO = {"num_layers": 4, "hidden_size": 64, "vocab_size": 49152}


def test_kit_catches_nondeterminism(kit_entries) -> None:
    kit = _kit("test.unseeded")
    kit.test_config_round_trip(kit_entries["test.unseeded"], INFO)  # the parts that are fine pass
    with pytest.raises(AssertionError, match="differ"):
        kit.test_deterministic_for_a_seed(kit_entries["test.unseeded"], INFO)


def test_kit_catches_a_bad_space_and_growing_params(kit_entries) -> None:
    kit = _kit("test.grows")
    with pytest.raises(AssertionError, match="not_a_field"):
        kit.test_space_names_config_fields(kit_entries["test.grows"], INFO)
    kit_no_space = _kit("test.grows")
    kit_no_space.all_params = lambda entry, info: [{}]  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="parameters grew"):
        kit_no_space.test_apply_keeps_a_working_model(kit_entries["test.grows"], INFO)


def test_kit_catches_a_module_without_codec(kit_entries, tmp_path) -> None:
    kit = _kit("test.nocodec")
    with pytest.raises(ValueError, match=r"down_proj.*Custom has no codec"):
        kit.test_checkpoint_round_trip(kit_entries["test.nocodec"], INFO, tmp_path)
