"""Every built-in technique passes the same conformance kit that third-party plugins use (autoslm.testing)."""

from __future__ import annotations

from autoslm.testing import TechniqueConformance


class TestPruneDepth(TechniqueConformance):
    technique = "prune.depth"
    example_params = [{"blocks": 1}]
    invalid_params = [{"blocks": -1}, {"importance": "random"}]
    fast_params = {"calibration_samples": 2, "calibration_seq_len": 32}


class TestPruneWidth(TechniqueConformance):
    technique = "prune.width"
    example_params = [{"mlp_ratio": 0.25, "heads_per_group": 1}]
    invalid_params = [{"mlp_ratio": 1.0}, {"heads_per_group": -1}]
    fast_params = {"calibration_samples": 2, "calibration_seq_len": 32}


class TestLowRank(TechniqueConformance):
    technique = "lowrank.svd"
    example_params = [{"rank_ratio": 0.25}]
    invalid_params = [{"rank_ratio": 0.0}, {"targets": ["q_proj_typo"]}]
    fast_params = {"calibration_samples": 2, "calibration_seq_len": 32}


class TestDistill(TechniqueConformance):
    technique = "distill.kd"
    example_params = [{"steps": 2}]
    fast_params = {"batch_size": 1, "seq_len": 16}
    invalid_params = [{"lr": 0.0}, {"steps": -3}]


class TestDynamicInt8(TechniqueConformance):
    technique = "quant.dynamic_int8"
    # include_lm_head=True on a tied model stores an int8 lm_head beside the fp32 embedding: the checkpoint grows
    # (+27% on tiny-llama, whose embedding is most of it; documented in docs/techniques.md)
    may_grow_params = True
    example_params = [{"smooth_alpha": 0.5, "keep_fp32": 2}]
    invalid_params = [{"smooth_alpha": 2.0}]
    fast_params = {"calibration_samples": 2, "calibration_seq_len": 32}


class TestWeightOnly(TechniqueConformance):
    technique = "quant.weight_only"
    may_grow_params = True  # as dynamic int8: a quantized copy of the tied lm_head beside the embedding
    example_params = [{"bits": 8, "group_size": 32}]
    invalid_params = [{"bits": 3}, {"algorithm": "magic"}]
    fast_params = {"calibration_samples": 2, "calibration_seq_len": 32}


class TestCast(TechniqueConformance):
    technique = "cast.dtype"
    example_params = [{"dtype": "bfloat16"}]
    invalid_params = [{"dtype": "int3"}]


# --- the same kit on a tiny random Gemma-3 (x*(1+w) norms, q/k norms, sliding-window layers, 1 kv head) ----------


class TestPruneDepthOnGemma3(TestPruneDepth):
    model = "tiny-gemma3"


class TestPruneWidthOnGemma3(TestPruneWidth):
    model = "tiny-gemma3"
    example_params = [{"mlp_ratio": 0.25, "heads_per_group": 2}]  # 4 heads, hidden 64: 3 heads left is refused


class TestLowRankOnGemma3(TestLowRank):
    model = "tiny-gemma3"


class TestDistillOnGemma3(TestDistill):
    model = "tiny-gemma3"


class TestDynamicInt8OnGemma3(TestDynamicInt8):
    model = "tiny-gemma3"


class TestWeightOnlyOnGemma3(TestWeightOnly):
    model = "tiny-gemma3"


class TestCastOnGemma3(TestCast):
    model = "tiny-gemma3"
