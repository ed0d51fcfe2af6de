"""Warm start: single-technique policies at plugin defaults, later stages first, recovery steps skipped."""

from __future__ import annotations

from autoslm.models import model_info
from autoslm.searching.policy import steps as policy_steps
from autoslm.searching.space import load_space
from autoslm.searching.warm_start import warm_start_policies


def test_default_space_starts_with_each_technique_alone(tiny) -> None:
    space = load_space("default", model_info(tiny.model))
    policies = warm_start_policies(space, trials=30)
    chains = [[s["technique"] for s in policy_steps(space, p)] for p in policies]
    assert chains[0] == ["cast.dtype"]  # numeric format first
    assert all(len(c) == 1 for c in chains)  # each technique alone
    assert ["distill.kd"] not in chains  # recovery alone compresses nothing
    assert {c[0] for c in chains} == {t.name for t in space.techniques} - {"distill.kd"}
    depth = next(p for p in policies if p.get("use:prune.depth") == "prune.depth")
    assert depth["prune.depth.blocks"] == 1  # the plugin's default, inside the space's range [0, 8]
    assert len(warm_start_policies(space, trials=8)) == 2  # at most a third of the trials


def test_required_techniques_start_alone_then_with_each_optional_one(tiny) -> None:
    space = load_space("tiny", model_info(tiny.model)).model_copy(update={"required": ("prune.depth",)})
    chains = [[s["technique"] for s in policy_steps(space, p)] for p in warm_start_policies(space, trials=9)]
    assert chains == [["prune.depth"], ["prune.depth", "quant.dynamic_int8"]]


def test_llamacpp_space_tries_the_presets_after_the_defaults(tiny) -> None:
    space = load_space("llamacpp", model_info(tiny.model))
    policies = warm_start_policies(space, trials=30)
    quant = [p for p in policies if p.get("use:quant.gguf") == "quant.gguf"]
    types = [(p["quant.gguf.type"], p["quant.gguf.imatrix"]) for p in quant]
    assert types[:3] == [("Q8_0", False), ("Q4_K_M", True), ("Q4_0", True)]  # default first, then the presets
    assert len(types) == len(set(types)) == 7
    assert all(len(policy_steps(space, p)) == 1 for p in quant)  # each alone
    assert len(warm_start_policies(space, trials=6)) == 2  # still at most a third of the trials


def test_a_preset_the_space_cannot_express_is_skipped(tiny, tmp_path) -> None:
    (tmp_path / "s.yaml").write_text(
        "techniques:\n  quant.gguf:\n    type: {choices: [Q8_0, Q4_0, Q6_K]}\n    imatrix: false\n"
    )
    space = load_space(str(tmp_path / "s.yaml"), model_info(tiny.model))
    policies = warm_start_policies(space, trials=30)
    # Q4_K_M is not a choice; Q4_0+imatrix needs imatrix, fixed off here; Q6_K is expressible
    assert [p["quant.gguf.type"] for p in policies] == ["Q8_0", "Q6_K"]


def test_invalid_preset_fails_registration() -> None:
    import pytest

    import autoslm
    from autoslm.technique import check_technique_class

    class Bad(autoslm.Technique):
        name = "test.bad_preset"
        stage = autoslm.Stage.QUANTIZE

        class Config(autoslm.TechniqueConfig):
            bits: int = 8

        presets = {"huge": {"bits": "many"}}

    with pytest.raises(ValueError, match="preset 'huge' is not a valid Config"):
        check_technique_class(Bad)
