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
