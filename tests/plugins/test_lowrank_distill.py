from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoslm import checkpoint
from autoslm.errors import UserError
from autoslm.models import fingerprint, load_model
from autoslm.plugins import Registry
from autoslm.technique import ApplyContext

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


@pytest.fixture
def lowrank():
    return Registry().load().technique("lowrank.svd").cls


@pytest.fixture
def kd():
    return Registry().load().technique("distill.kd").cls


def test_lowrank_replaces_only_where_it_saves(lowrank, fresh_tiny, tmp_path: Path) -> None:
    from autoslm_plugins.lowrank_layer import LowRankLinear

    model, tok = fresh_tiny.model, fresh_tiny.tokenizer
    before = sum(p.numel() for p in model.parameters())
    out = lowrank().apply(model, lowrank.make_config({"rank_ratio": 0.25}), ApplyContext(tokenizer=tok))
    lr = [m for m in out.modules() if isinstance(m, LowRankLinear)]
    assert len(lr) == 4 * 3  # gate, up, down in 4 blocks
    assert lr[0].rank == 16 and lr[0].down.weight.shape == (16, 64) and lr[0].up.weight.shape == (192, 16)
    assert sum(p.numel() for p in out.parameters()) < before
    checkpoint.save_dir(out, tok, tmp_path / "lr")
    with torch.inference_mode():
        assert torch.equal(checkpoint.load_model(tmp_path / "lr")(IDS).logits, out(IDS).logits)
    # a ratio at which factorising would add parameters leaves the model untouched
    fresh = load_model("tiny-llama")
    same = lowrank().apply(fresh.model, lowrank.make_config({"rank_ratio": 0.9}), ApplyContext(tokenizer=tok))
    assert fingerprint(same) == fresh.fingerprint


def test_full_rank_reconstruction_is_exact(lowrank, fresh_tiny) -> None:
    """At full rank (no saving check), the activation-aware factorisation reproduces W."""
    from autoslm_plugins.lowrank import LowRank

    lin = fresh_tiny.model.model.layers[0].mlp.down_proj
    w = lin.weight.detach().double()
    s = torch.rand(w.shape[1], dtype=torch.float64) + 0.1
    u, e, vt = torch.linalg.svd(w * s, full_matrices=False)
    assert torch.allclose((u * e) @ (vt / s), w, atol=1e-10)
    assert LowRank.space({"num_layers": 4})["rank_ratio"].high < 1


def test_lowrank_deterministic_and_validated(lowrank) -> None:
    prints = []
    for _ in range(2):
        lm = load_model("tiny-llama")
        lowrank().apply(lm.model, lowrank.make_config({"rank_ratio": 0.3}), ApplyContext(tokenizer=lm.tokenizer))
        prints.append(fingerprint(lm.model))
    assert prints[0] == prints[1]
    with pytest.raises(UserError, match="targets"):
        lowrank.make_config({"targets": ["lm_head"]})
    with pytest.raises(UserError, match="rank_ratio"):
        lowrank.make_config({"rank_ratio": 0})


def _kl_to_teacher(student, teacher, windows) -> float:
    import torch.nn.functional as F

    with torch.inference_mode():
        t = F.log_softmax(teacher(input_ids=windows).logits.float(), -1)
        s = F.log_softmax(student(input_ids=windows).logits.float(), -1)
    return float(F.kl_div(s, t, log_target=True, reduction="batchmean"))


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_kd_moves_student_toward_teacher_deterministically(kd, optimizer: str) -> None:
    depth = Registry().load().technique("prune.depth").cls
    teacher = load_model("tiny-llama").model
    results = []
    for _ in range(2):
        lm = load_model("tiny-llama")
        held_out = ApplyContext(tokenizer=lm.tokenizer, calibration_corpus="heldout").calibration(4, 64)
        ctx = ApplyContext(tokenizer=lm.tokenizer, teacher_factory=lambda: teacher, seed=1)
        depth().apply(lm.model, depth.make_config({"blocks": 2}), ctx)
        before = _kl_to_teacher(lm.model, teacher, held_out)
        config = {"steps": 16, "lr": 1e-3, "seq_len": 64, "batch_size": 2, "optimizer": optimizer}
        kd().apply(lm.model, kd.make_config(config), ctx)
        after = _kl_to_teacher(lm.model, teacher, held_out)
        results.append((before, after, fingerprint(lm.model)))
    assert results[0] == results[1]
    before, after, _ = results[0]
    assert after < 0.8 * before  # measured: 0.47 -> 0.32
    assert not any(p.requires_grad for p in lm.model.parameters())


def test_adafactor_keeps_a_sliver_of_adamws_state_and_steps_each_value_by_lr(kd) -> None:
    from autoslm_plugins.distill import make_optimizer

    state, step = {}, {}
    for name in ("adamw", "adafactor"):
        model = load_model("tiny-llama").model
        params = [p for p in model.parameters() if p.dim() == 2]
        for p in params:
            p.requires_grad_(True)
        before = [p.detach().clone() for p in params]
        opt = make_optimizer(params, kd.make_config({"lr": 1e-3, "optimizer": name}))
        model(IDS).logits.float().pow(2).mean().backward()
        opt.step()
        state[name] = sum(t.numel() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
        # the first step's size per value, tensor by tensor (a tensor with no gradient does not move)
        step[name] = [float((p.detach() - b).pow(2).mean().sqrt()) for p, b in zip(params, before, strict=True)]
    trained = sum(p.numel() for p in params)
    assert state["adamw"] >= 2 * trained
    assert state["adafactor"] < 0.05 * trained
    moved = [(a, f) for a, f in zip(step["adamw"], step["adafactor"], strict=True) if a > 0]
    assert moved
    for adamw_step, adafactor_step in moved:  # both first steps are about lr per value (AdamW's eps trims tiny grads)
        assert 0.8e-3 < adamw_step <= 1.001e-3
        assert 0.5e-3 < adafactor_step <= 1.01e-3


def test_kd_zero_steps_is_identity_and_needs_teacher(kd, fresh_tiny) -> None:
    fp = fresh_tiny.fingerprint
    kd().apply(fresh_tiny.model, kd.make_config({"steps": 0}), ApplyContext(tokenizer=fresh_tiny.tokenizer))
    assert fingerprint(fresh_tiny.model) == fp
    with pytest.raises(RuntimeError, match="no teacher"):
        kd().apply(fresh_tiny.model, kd.make_config({"steps": 1}), ApplyContext(tokenizer=fresh_tiny.tokenizer))
    with pytest.raises(UserError, match="lr"):
        kd.make_config({"lr": -1})
    with pytest.raises(UserError, match="optimizer"):
        kd.make_config({"optimizer": "sgd"})
