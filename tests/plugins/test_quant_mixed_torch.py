"""quant.mixed_torch: the torch runtime's per-Linear precisions from a sensitivity table: deterministic assignment,
every precision in one model surviving the checkpoint round trip, refusal of assignments that do not fit the model,
and a search whose recipe lists every layer and replays byte-identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import autoslm
from autoslm import checkpoint, sensitivity
from autoslm.errors import UserError
from autoslm.pipeline import Step, apply_planned, plan
from autoslm.technique import ApplyContext

IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])


def _table(kld: dict[str, float]) -> sensitivity.SensitivityTable:
    return sensitivity.SensitivityTable(probe="w4-g32", tokens=1, seconds=0.0, fingerprint="x", kld=kld,
                                        numel=dict.fromkeys(kld, 100))  # fmt: skip


def test_assignment_is_deterministic_and_moves_only_in_the_named_direction() -> None:
    from autoslm_plugins.quant_mixed_torch import MixedTorchConfig, assign

    kld = {f"blk.{b}.{c}": (b + 1) * (10.0 if c == "attn_v" else 1.0) for b in range(4) for c in ("attn_v", "ffn_up")}
    config = MixedTorchConfig(base="int8", raise_fraction=0.25, raise_type="fp32", lower_fraction=0.25)
    out = assign(_table(kld), config)
    assert out == assign(_table(dict(reversed(kld.items()))), config)
    assert {n for n, p in out.items() if p == "fp32"} == {"blk.3.attn_v", "blk.2.attn_v"}  # most sensitive
    assert {n for n, p in out.items() if p == "w4"} == {"blk.0.ffn_up", "blk.1.ffn_up"}  # least sensitive
    assert sum(p == "int8" for p in out.values()) == 4
    # "raising" to a precision further from fp32 than the base, or "lowering" to a closer one, changes nothing
    odd = MixedTorchConfig(base="w4", raise_fraction=0.5, raise_type="w4", lower_fraction=0.5, lower_type="int8")
    assert set(assign(_table(kld), odd).values()) == {"w4"}


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_every_precision_in_one_model_survives_the_checkpoint(family: str, tmp_path: Path) -> None:
    from autoslm_plugins.quant_mixed_torch import block_linears
    from neural_compressor.torch.algorithms.weight_only.modules import INCWeightOnlyLinear
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from autoslm.models import load_model

    fresh = load_model(family)
    model, tok = fresh.model, fresh.tokenizer
    with torch.inference_mode():
        before = model(IDS).logits
    checkpoint.save_dir(model, tok, tmp_path / "fp32")
    linears = block_linears(model)
    cycle = ("fp32", "w8", "int8", "w4")
    layers = {name: cycle[i % 4] for i, name in enumerate(linears)}
    planned = plan([Step(technique="quant.mixed_torch", params={"layers": layers})])
    out = apply_planned(model, planned, ApplyContext(tokenizer=tok, run_dir=tmp_path))
    kinds = {name: type(out.get_submodule(module)) for name, module in linears.items()}
    assert {kinds[n] for n, p in layers.items() if p in ("w4", "w8")} == {INCWeightOnlyLinear}
    assert {kinds[n] for n, p in layers.items() if p == "int8"} == {DynamicLinear}
    assert {kinds[n] for n, p in layers.items() if p == "fp32"} == {torch.nn.Linear}
    checkpoint.save_dir(out, tok, tmp_path / "mixed")
    assert checkpoint.weights_size_mb(tmp_path / "mixed") < checkpoint.weights_size_mb(tmp_path / "fp32")
    with torch.inference_mode():
        after = out(IDS).logits
        assert torch.equal(checkpoint.load_model(tmp_path / "mixed")(IDS).logits, after)
    assert 0 < (after - before).abs().max() < before.abs().max()  # changed, not destroyed


@pytest.mark.parametrize(("family", "count"), [("tiny-llama", 4 * 7), ("tiny-gemma3", 6 * 7)])
def test_resolve_measures_the_table_once_and_names_every_layer(family: str, count: int, tmp_path: Path) -> None:
    from autoslm.models import load_model

    fresh = load_model(family)
    params = {"base": "int8", "raise_fraction": 0.3, "lower_fraction": 0.2, "sensitivity_seq_len": 32}
    planned = plan([Step(technique="quant.mixed_torch", params=params)])
    apply_planned(fresh.model, planned, ApplyContext(tokenizer=fresh.tokenizer, run_dir=tmp_path))
    layers = planned[0].config.layers
    assert len(layers) == count and set(layers.values()) == {"int8", "fp32", "w4"}
    (table,) = (tmp_path / "sensitivity").glob("*.json")
    stored = json.loads(table.read_text())
    assert set(stored["kld"]) == set(layers) and stored["probe"] == "w4-g32" and stored["tokens"] == 64
    assert all(v >= 0 for v in stored["kld"].values()) and max(stored["kld"].values()) > 0


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ({"blk.99.attn_v": "w4"}, r"names 1 layer\(s\) this model does not have \(blk\.99\.attn_v\)"),
        ({"blk.0.attn_v": "w4"}, r"leaves out 27 of this model's layers"),
    ],
)
def test_an_assignment_that_does_not_fit_the_model_is_refused(fresh_tiny, layers, message) -> None:
    planned = plan([Step(technique="quant.mixed_torch", params={"layers": layers})])
    with pytest.raises(UserError, match=message):
        apply_planned(fresh_tiny.model, planned, ApplyContext(tokenizer=fresh_tiny.tokenizer))


def test_a_torch_mixed_search_replays_byte_identically(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = autoslm.search(model="tiny-llama", space="tiny-mixed-torch", budget="size_mb<=0.99x", trials=3, out=out,
                            fidelity="low", sampler="random", seed=3)  # fmt: skip
    assert result.best is not None, [(r.status, r.reason, r.violations) for r in result.trials]
    recipe = (out / "recipe.yaml").read_text()
    assert all(f"blk.{b}.{c}:" in recipe for b in range(4) for c in ("attn_q", "ffn_down"))  # every layer listed
    rebuilt = autoslm.apply_recipe(str(out / "recipe.yaml"), str(tmp_path / "again"))
    name = "model.safetensors"
    assert checkpoint.sha256_file(rebuilt / name) == checkpoint.sha256_file(out / "checkpoint" / name)
