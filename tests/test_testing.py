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


class Scaled(torch.nn.Module):
    """A Linear whose output is multiplied by a per-channel gain (stored by the codecs below)."""

    def __init__(self, inner: torch.nn.Linear, gain: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("gain", gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.gain


class DropsMetadata(autoslm.Codec):
    """Forgets to store `out_features` in encode(); decode() needs it."""

    name = "test.drops_metadata"
    module_type = Scaled

    def encode(self, module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"weight": module.inner.weight, "gain": module.gain}, {"in_features": module.inner.in_features}

    def decode(self, tensors: dict[str, Any], meta: dict[str, Any]) -> Any:
        inner = torch.nn.Linear(meta["in_features"], meta["out_features"], bias=False)
        inner.weight.data = tensors["weight"]
        return Scaled(inner, tensors["gain"])


class Scaled2(Scaled):
    pass


class Lossy(autoslm.Codec):
    """Stores the gain nudged by one part in 10^6: logits differ by about 1e-6 after loading."""

    name = "test.lossy"
    module_type = Scaled2

    def encode(self, module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"weight": module.inner.weight, "gain": module.gain * (1 + 1e-6)}, {}

    def decode(self, tensors: dict[str, Any], meta: dict[str, Any]) -> Any:
        out, inp = tensors["weight"].shape
        inner = torch.nn.Linear(inp, out, bias=False)
        inner.weight.data = tensors["weight"]
        return Scaled2(inner, tensors["gain"])


class _ScaleDown(Technique):
    name = "test.scale_down"
    stage = Stage.PRUNE
    Config = NoiseConfig
    module = Scaled

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        mlp = model.model.layers[0].mlp
        mlp.down_proj = self.module(mlp.down_proj, torch.full((mlp.down_proj.out_features,), 0.5))
        return model


class ForgetsMetadata(_ScaleDown):
    name = "test.forgets_metadata"


class LossyRoundTrip(_ScaleDown):
    name = "test.lossy"
    module = Scaled2


class SharesMemory(Technique):
    """Makes the final norm share the first block's norm tensor without declaring a tie: the checkpoint cannot be
    written (safetensors refuses tensors that share memory)."""

    name = "test.shares_memory"
    stage = Stage.PRUNE
    Config = NoiseConfig

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        model.model.norm.weight = model.model.layers[0].input_layernorm.weight
        return model


class BigBuffer(Technique):
    """Registers a large buffer: parameters do not grow, but the model and its checkpoint do."""

    name = "test.big_buffer"
    stage = Stage.PRUNE
    Config = NoiseConfig

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        model.model.register_buffer("table", torch.zeros(4_000_000))
        return model


class SharedTable(torch.nn.Module):
    """One table serving as the token embedding ("embed") and as the output projection ("head"): a coded module
    pair that shares storage, as a clustered tied embedding would."""

    def __init__(self, table: torch.nn.Parameter, mode: str) -> None:
        super().__init__()
        self.table, self.mode = table, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(x, self.table) if self.mode == "embed" else x @ self.table.T


class SharedTableCodec(autoslm.Codec):
    name = "test.shared_table"
    module_type = SharedTable

    def encode(self, module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"table": module.table}, {"mode": module.mode}

    def decode(self, tensors: dict[str, Any], meta: dict[str, Any]) -> Any:
        table = tensors["table"]
        return SharedTable(table if isinstance(table, torch.nn.Parameter) else torch.nn.Parameter(table), meta["mode"])


class CodedTiedEmbedding(Technique):
    """Replaces the tied embedding and the lm_head by coded modules sharing one table."""

    name = "test.coded_tied_embedding"
    stage = Stage.PRUNE
    Config = NoiseConfig

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        table = model.model.embed_tokens.weight
        model.model.embed_tokens = SharedTable(table, "embed")
        model.lm_head = SharedTable(table, "head")
        return model


class Gathered(torch.nn.Module):
    """A Linear whose output keeps its first `count` channels, gathered by index: a wrong count is an IndexError
    in the forward pass, not at load."""

    def __init__(self, inner: torch.nn.Linear, count: int) -> None:
        super().__init__()
        self.inner, self.count = inner, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y[..., torch.arange(self.count)]


class GuessesCount(autoslm.Codec):
    """Forgets `count` in encode(); decode() guesses it (the input width): the module loads, the forward fails."""

    name = "test.guesses_count"
    module_type = Gathered

    def encode(self, module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"weight": module.inner.weight}, {}

    def decode(self, tensors: dict[str, Any], meta: dict[str, Any]) -> Any:
        out, inp = tensors["weight"].shape
        inner = torch.nn.Linear(inp, out, bias=False)
        inner.weight.data = tensors["weight"]
        return Gathered(inner, meta.get("count", inp))


class DropsAField(Technique):
    name = "test.drops_a_field"
    stage = Stage.PRUNE
    Config = NoiseConfig

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        mlp = model.model.layers[0].mlp
        mlp.down_proj = Gathered(mlp.down_proj, mlp.down_proj.out_features)
        return model


class TiedTwice(Technique):
    """Replaces the tied embedding and the lm_head by two coded modules holding equal copies of the table."""

    name = "test.tied_twice"
    stage = Stage.PRUNE
    Config = NoiseConfig

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        table = model.model.embed_tokens.weight.detach()
        model.model.embed_tokens = SharedTable(torch.nn.Parameter(table.clone()), "embed")
        model.lm_head = SharedTable(torch.nn.Parameter(table.clone()), "head")
        return model


class StrayBuffer(CodedTiedEmbedding):
    """Codes the tied embedding (so autoslm's own loader reads the checkpoint) and leaves a small buffer the
    architecture does not have."""

    name = "test.stray_buffer"

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        model = super().apply(model, config, ctx)
        model.model.register_buffer("stray", torch.zeros(4))
        return model


class BreaksAtTheTop(Technique):
    """Raises for scale above 0.5: only the high corner of its space breaks."""

    name = "test.breaks_at_the_top"
    stage = Stage.PRUNE
    Config = NoiseConfig

    @classmethod
    def space(cls, info: dict[str, int], target: Any = None) -> dict[str, Any]:
        return {"scale": Float(low=0.0, high=1.0)}

    def apply(self, model: Any, config: NoiseConfig, ctx: Any) -> Any:
        if config.scale > 0.5:
            raise IndexError("index 7 is out of bounds")
        return model


class _Plugin:
    @autoslm.hookimpl
    def register_techniques(self, register: Any) -> None:
        for cls in (Unseeded, Grows, NoCodec, ForgetsMetadata, LossyRoundTrip, SharesMemory, BigBuffer,
                    CodedTiedEmbedding, DropsAField, TiedTwice, StrayBuffer, BreaksAtTheTop):  # fmt: skip
            register(cls)

    @autoslm.hookimpl
    def register_codecs(self, register: Any) -> None:
        register(DropsMetadata())
        register(Lossy())
        register(SharedTableCodec())
        register(GuessesCount())


@pytest.fixture(scope="module")
def kit_entries():
    registry = get_registry()
    registry.add(_Plugin(), name="broken-for-test", dist="broken-dist", version="9.9")
    names = ("test.unseeded", "test.grows", "test.nocodec", "test.forgets_metadata", "test.lossy",
             "test.shares_memory", "test.big_buffer", "test.coded_tied_embedding", "test.drops_a_field",
             "test.tied_twice", "test.stray_buffer", "test.breaks_at_the_top")  # fmt: skip
    yield {n: registry.technique(n) for n in names}
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
    with pytest.raises(AssertionError, match=r"parameters \+ buffers grew"):
        kit_no_space.test_apply_keeps_a_working_model(kit_entries["test.grows"], INFO)


ORIGINAL_SIZE = 10**9  # bytes of the untouched model's checkpoint (the fixture's value; large: not under test here)


def test_kit_catches_a_module_without_codec(kit_entries, tmp_path) -> None:
    kit = _kit("test.nocodec")
    with pytest.raises(pytest.fail.Exception, match=r"does not save.*down_proj.*Custom has no codec"):
        kit.test_checkpoint_round_trip(kit_entries["test.nocodec"], INFO, ORIGINAL_SIZE, tmp_path)


@pytest.mark.parametrize(
    ("technique", "message"),
    [
        ("test.forgets_metadata", r"does not load.*decode\(\) must rebuild the module from exactly what"),
        ("test.lossy", r"logits differ after save/load \(max abs difference .*\): the codec must store"),
        ("test.shares_memory", r"(?s)does not save.*share memory"),
    ],
)
def test_kit_catches_checkpoints_that_do_not_round_trip(kit_entries, tmp_path, technique: str, message: str) -> None:
    kit = _kit(technique)
    with pytest.raises((pytest.fail.Exception, AssertionError), match=message):
        kit.test_checkpoint_round_trip(kit_entries[technique], INFO, ORIGINAL_SIZE, tmp_path)


def test_kit_catches_a_growing_model_and_checkpoint(kit_entries, tmp_path) -> None:
    kit = _kit("test.big_buffer")
    with pytest.raises(AssertionError, match="parameters \\+ buffers grew"):
        kit.test_apply_keeps_a_working_model(kit_entries["test.big_buffer"], INFO)
    with pytest.raises(AssertionError, match=r"checkpoint .* is larger than the original"):
        kit.test_checkpoint_round_trip(kit_entries["test.big_buffer"], INFO, 14_000_000, tmp_path)


def test_a_coded_embedding_shared_with_the_lm_head_round_trips_stored_once(kit_entries, tmp_path) -> None:
    """Two coded modules sharing one tensor (a clustered tied embedding): saved once, rebuilt sharing it."""
    from autoslm import checkpoint

    kit = _kit("test.coded_tied_embedding")
    original = checkpoint.save_dir(kit.fresh().model, None, tmp_path / "original")
    size = checkpoint.weights_file(original).stat().st_size
    kit.test_checkpoint_round_trip(kit_entries["test.coded_tied_embedding"], INFO, size, tmp_path)  # passes
    model, lm, _ = kit.apply(kit_entries["test.coded_tied_embedding"], {})
    saved = checkpoint.save_dir(model, lm.tokenizer, tmp_path / "shared")
    manifest = __import__("json").loads((saved / checkpoint.MANIFEST).read_text())
    assert manifest["modules"]["aliases"] == {"lm_head.table": "model.embed_tokens.table"}
    loaded = checkpoint.load_model(saved)
    assert loaded.lm_head.table.data_ptr() == loaded.model.embed_tokens.table.data_ptr()  # shared again


# --- hardening round two (#35 items 12, 13, 15) ---------------------------------------------------------------------


def test_kit_names_the_codec_and_the_field_its_encode_dropped(kit_entries, tmp_path) -> None:
    """Before: a raw IndexError from the reloaded model's forward, outside the kit's wrapped load."""
    kit = _kit("test.drops_a_field")
    with pytest.raises(pytest.fail.Exception, match=r"codec test\.guesses_count rebuilt module .*down_proj.* with "
                       r"count=192 where it was 64.*encode\(\) must write every field"):  # fmt: skip
        kit.test_checkpoint_round_trip(kit_entries["test.drops_a_field"], INFO, ORIGINAL_SIZE, tmp_path)


def test_kit_catches_a_tied_embedding_stored_twice(kit_entries, tmp_path) -> None:
    kit = _kit("test.tied_twice")
    with pytest.raises(pytest.fail.Exception, match=r"tied embedding is stored twice \(model\.embed_tokens and "
                       r"lm_head"):  # fmt: skip
        kit.test_checkpoint_round_trip(kit_entries["test.tied_twice"], INFO, ORIGINAL_SIZE, tmp_path)


def test_kit_says_what_a_stray_buffer_is_without_a_codec_hint(kit_entries, tmp_path) -> None:
    kit = _kit("test.stray_buffer")
    with pytest.raises(pytest.fail.Exception) as caught:
        kit.test_checkpoint_round_trip(kit_entries["test.stray_buffer"], INFO, ORIGINAL_SIZE, tmp_path)
    message = str(caught.value)
    assert "does not use" in message and "buffer" in message and "decode()" not in message, message


def test_kit_names_technique_configuration_and_corner_when_a_step_raises(kit_entries) -> None:
    kit = _kit("test.breaks_at_the_top")
    with pytest.raises(pytest.fail.Exception, match=r"test\.breaks_at_the_top raised IndexError \(index 7 is out "
                       r"of bounds\) applied with \{'scale': 1\.0\} \(the high corner of space\(\)\)"):  # fmt: skip
        kit.test_apply_keeps_a_working_model(kit_entries["test.breaks_at_the_top"], INFO)
