from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoslm import checkpoint
from autoslm.errors import UserError
from autoslm.models import load_model
from autoslm.pipeline import Step, apply_steps, plan
from autoslm.technique import ApplyContext


def _ctx(lm, teacher=None) -> ApplyContext:
    return ApplyContext(tokenizer=lm.tokenizer, teacher_factory=(lambda: teacher) if teacher else None)


@pytest.mark.parametrize(
    ("steps", "fragment"),
    [
        ([Step(technique="quant.dynamic_int8"), Step(technique="cast.dtype")], "cannot be combined"),
        ([Step(technique="quant.dynamic_int8"), Step(technique="prune.depth")], "order the steps as prune.depth"),
        ([Step(technique="prune.depth"), Step(technique="prune.depth")], "appears 2 times"),
        ([Step(technique="quant.magic")], "unknown technique 'quant.magic'"),
        ([Step(technique="prune.width", params={"mlp_ratio": 2})], "invalid parameters for technique 'prune.width'"),
    ],
)
def test_bad_chains_are_rejected_before_any_work(steps: list[Step], fragment: str, fresh_tiny) -> None:
    before = fresh_tiny.fingerprint
    with pytest.raises(UserError, match=fragment):
        apply_steps(fresh_tiny.model, steps, _ctx(fresh_tiny))
    from autoslm.models import fingerprint

    assert fingerprint(fresh_tiny.model) == before


@pytest.mark.parametrize("quant", ["quant.dynamic_int8", "quant.weight_only"])
def test_chain_of_all_compatible_techniques(quant: str, tmp_path: Path) -> None:
    lm = load_model("tiny-llama")
    teacher = load_model("tiny-llama").model
    params_before = sum(p.numel() for p in lm.model.parameters())
    steps = [
        Step(technique="prune.depth", params={"blocks": 1}),
        Step(technique="prune.width", params={"mlp_ratio": 0.25, "heads_per_group": 1}),
        Step(technique="lowrank.svd", params={"rank_ratio": 0.25, "targets": ["gate_proj", "up_proj"]}),
        Step(technique="distill.kd", params={"steps": 2, "seq_len": 32, "batch_size": 1}),
        Step(technique=quant, params={}),
    ]
    assert [p.name for p in plan(steps)][-1] == quant
    out = apply_steps(lm.model, steps, _ctx(lm, teacher))
    assert out.config.num_hidden_layers == 3 and out.config.num_attention_heads == 2
    assert out.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False).shape == (1, 6)
    checkpoint.save_dir(out, lm.tokenizer, tmp_path / "chain")
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.inference_mode():
        assert torch.equal(checkpoint.load_model(tmp_path / "chain")(ids).logits, out(ids).logits)
    assert checkpoint.weights_size_mb(tmp_path / "chain") < params_before * 4 / 2**20
