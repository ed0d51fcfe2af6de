from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoslm import checkpoint
from autoslm.errors import UserError
from autoslm.models import fingerprint
from autoslm.plugins import Registry
from autoslm.technique import ApplyContext

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


@pytest.fixture
def wo():
    return Registry().load().technique("quant.weight_only").cls


def _sizes(model) -> tuple[float, float]:
    emb = model.get_input_embeddings().weight.numel() * 4 / 2**20
    linears = sum(p.numel() for p in model.model.layers.parameters() if p.dim() == 2) * 4 / 2**20
    return emb, linears


@pytest.mark.parametrize(("bits", "ratio"), [(8, 1 / 4), (4, 1 / 8)])
def test_packed_checkpoint_shrinks_and_round_trips(wo, fresh_tiny, tmp_path: Path, bits: int, ratio: float) -> None:
    from neural_compressor.torch.algorithms.weight_only.modules import INCWeightOnlyLinear

    model, tok = fresh_tiny.model, fresh_tiny.tokenizer
    emb_mb, lin_mb = _sizes(model)
    out = wo().apply(model, wo.make_config({"bits": bits, "group_size": 32}), ApplyContext(tokenizer=tok))
    assert sum(isinstance(m, INCWeightOnlyLinear) for m in out.modules()) == 4 * 7
    checkpoint.save_dir(out, tok, tmp_path / "q")
    size = checkpoint.weights_size_mb(tmp_path / "q")
    # fp32 embedding stays; linears shrink to bits/32 plus fp16 scales (and zero points) per group of 32
    assert emb_mb + lin_mb * ratio < size < emb_mb + lin_mb * ratio * 1.6
    with torch.inference_mode():
        again = checkpoint.load_model(tmp_path / "q")
        assert torch.equal(again(IDS).logits, out(IDS).logits)
    assert out.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False).shape == (1, 6)


def test_awq_wrapper_round_trips_and_is_deterministic(wo, tmp_path: Path) -> None:
    from autoslm.models import load_model

    prints = []
    for i in range(2):
        lm = load_model("tiny-llama")
        cfg = wo.make_config({"algorithm": "awq", "calibration_samples": 2, "calibration_seq_len": 64})
        out = wo().apply(lm.model, cfg, ApplyContext(tokenizer=lm.tokenizer))
        checkpoint.save_dir(out, lm.tokenizer, tmp_path / f"awq{i}")
        with torch.inference_mode():
            assert torch.equal(checkpoint.load_model(tmp_path / f"awq{i}")(IDS).logits, out(IDS).logits)
        prints.append(fingerprint(out))
    assert prints[0] == prints[1]


def test_no_workspace_left_in_cwd(wo, fresh_tiny, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    wo().apply(fresh_tiny.model, wo.make_config({}), ApplyContext(tokenizer=fresh_tiny.tokenizer))
    assert not (tmp_path / "nc_workspace").exists()


def test_invalid_configs(wo) -> None:
    with pytest.raises(UserError, match="bits"):
        wo.make_config({"bits": 3})
    with pytest.raises(UserError, match="algorithm"):
        wo.make_config({"algorithm": "hqq"})
