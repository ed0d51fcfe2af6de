"""The objective's quality rules: nothing is pruned for quality before the study holds a candidate within budget."""

from __future__ import annotations

from pathlib import Path

from autoslm.evaluate import Fidelity
from autoslm.searching.budget import Budget
from autoslm.searching.objective import Objective

POLICY = [{"technique": "prune.depth", "params": {"blocks": 1}}]
# a baseline so good that every candidate is "more than 3x worse" at low fidelity
BASELINE = {"metrics": {"decode_ms": 1e6, "memory_mb": 1e6, "size_mb": 1e6}, "low_ppl": 1e-9}


def _objective(tmp_path: Path) -> Objective:
    return Objective(model="tiny-llama", space=None, budget=Budget.parse("size_mb<=1000"), run_dir=str(tmp_path),
                     fidelity_full=Fidelity.preset("low"), recheck_rounds=0)  # type: ignore[arg-type]  # fmt: skip


def test_first_feasible_candidate_is_scored_in_full_however_poor(tmp_path: Path) -> None:
    out = _objective(tmp_path).evaluate_policy(POLICY, BASELINE, trial_number=1, incumbent=None)
    assert out.status == "complete" and out.feasible, out.reason
    assert out.low_ppl is not None and out.low_ppl > 3 * BASELINE["low_ppl"]  # the hard rule would have pruned it
    assert 1 < out.ppl < 1e6 and out.quality["ppl"] == out.ppl


def test_with_an_incumbent_the_hard_rule_prunes_what_cannot_beat_it(tmp_path: Path) -> None:
    better = _objective(tmp_path).evaluate_policy(POLICY, BASELINE, trial_number=1, incumbent=1e12)
    assert better.status == "complete", better.reason  # worse than 3x the baseline, better than the incumbent
    out = _objective(tmp_path).evaluate_policy(POLICY, BASELINE, trial_number=2, incumbent=1.0)
    assert out.status == "pruned" and "3x the baseline" in (out.reason or "")
    assert out.quality == {}  # full quality never computed


def test_only_a_policy_that_changes_the_torch_model_gets_its_own_copy(tmp_path: Path) -> None:
    """llama.cpp's quantization steps (and the baseline) need no torch model: they get the model's files; the torch
    runtime's baseline reads the base model itself; a step that changes the torch model gets a copy."""
    from autoslm.models import ModelFiles

    objective = Objective(model="tiny-llama", space=None, budget=None, run_dir=str(tmp_path), runtime="llama.cpp")  # type: ignore[arg-type]
    for steps in ([], [{"technique": "quant.gguf", "params": {"type": "Q4_0"}}]):
        model, lm = objective.apply_policy(steps)
        assert isinstance(model, ModelFiles) and model is lm is objective.files(), steps
    torch_objective = Objective(model="tiny-llama", space=None, budget=None, run_dir=str(tmp_path))  # type: ignore[arg-type]
    base = torch_objective.base()
    model, lm = torch_objective.apply_policy([])
    assert model is base.model and lm is base
    before = base.model.model.layers[0].mlp.gate_proj.weight.clone()
    model, _ = objective.apply_policy([{"technique": "prune.width", "params": {"mlp_ratio": 0.5, "round_to": 16,
                                       "calibration_samples": 2, "calibration_seq_len": 32}}])  # fmt: skip
    assert model is not base.model and model.model.layers[0].mlp.gate_proj.weight.shape[0] < before.shape[0]
    assert base.model.model.layers[0].mlp.gate_proj.weight.equal(before)  # the base untouched
