from __future__ import annotations

from pathlib import Path

import pytest

from autoslm import checkpoint
from autoslm.errors import UserError
from autoslm.models import resolve
from autoslm.targets import MeasureSettings, get_target
from autoslm.targets.local import MeasurementError

FAST = MeasureSettings(prompt_tokens=32, decode_tokens=8, repeats=2)


def test_local_measurement_of_tiny_llama() -> None:
    directory = resolve("tiny-llama")
    m = get_target("local").measure(directory, FAST)
    assert m.decode_ms > 0 and m.decode_p90_ms >= m.decode_ms
    assert m.prefill_ms > 0 and m.prompt_tokens == 32
    assert m.size_mb == pytest.approx(checkpoint.weights_size_mb(directory))
    # weights are ~12.8 MB; in use it holds more (activations, logits) but not the runtime's hundreds of MB
    assert m.size_mb * 0.8 < m.memory_mb < 200
    fp = m.target
    assert fp["threads"] == 2 and fp["cores"] >= 1 and fp["torch"] and fp["id"]


def test_memory_grows_with_model(tiny, tmp_path: Path) -> None:
    """More layers must show up in size_mb, and in memory_mb by at least most of the added weights."""
    import torch
    from transformers import LlamaForCausalLM

    cfg = tiny.model.config.to_dict()
    cfg.update(num_hidden_layers=16, intermediate_size=2048)
    torch.manual_seed(0)
    from transformers import LlamaConfig

    big = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    checkpoint.save_dir(big, tiny.tokenizer, tmp_path / "big")
    target = get_target("local")
    small_m = target.measure(resolve("tiny-llama"), FAST)
    big_m = target.measure(tmp_path / "big", FAST)
    added = big_m.size_mb - small_m.size_mb
    assert added > 20
    assert big_m.memory_mb > small_m.memory_mb + 0.5 * added


def test_broken_checkpoint_fails_with_reason(tiny, tmp_path: Path) -> None:
    checkpoint.save_dir(tiny.model, tiny.tokenizer, tmp_path / "c")
    weights = next((tmp_path / "c").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(MeasurementError, match="does not match its sha256"):
        get_target("local").measure(tmp_path / "c", FAST)


def test_unknown_target_and_missing_dir() -> None:
    with pytest.raises(UserError, match=r"--target 'ftp://x' is not understood: use one of http .*local"):
        get_target("ftp://x")
    with pytest.raises(UserError, match="not a directory"):
        get_target("local").measure(Path("/no/such/ckpt"), FAST)


def test_fingerprint_tells_cpus_with_one_model_name_apart(monkeypatch) -> None:
    """Two virtual CPUs both called "AMD EPYC" differ in family/model/stepping or instruction sets: other ids."""
    from autoslm.targets import measure

    real = measure.machine_fingerprint(2)
    assert real["cpu_id"] and "isa" in real
    if real["system"].startswith("Linux x86_64"):
        assert "avx2" in str(real["isa"]) or "avx" not in str(real["isa"])
    other = {**measure.cpu_description(), "isa": "avx2 fma"}
    monkeypatch.setattr(measure, "cpu_description", lambda: other)
    assert measure.machine_fingerprint(2)["id"] != real["id"]


def test_the_time_limit_scales_with_the_weights_and_the_rounds_and_can_be_set() -> None:
    """A fixed 600 s killed the paired timing of a 0.5B bf16 model on a busy machine: the limit grows with the
    weights' size and the runs made (a pair's rounds), never below 600 s, and a given limit wins."""
    from autoslm.targets.local import FLOOR_S, LocalTarget, timeout_for

    default = MeasureSettings()
    assert timeout_for(default, [14.0]) == FLOOR_S  # a tiny model: today's limit
    single_3b = timeout_for(default, [12_300.0])  # Llama-3.2-3B in F32
    paired_3b = timeout_for(default, [12_300.0, 12_300.0], rounds=4)
    assert FLOOR_S < single_3b < paired_3b
    assert timeout_for(default, [1000.0, 1000.0], rounds=8) > timeout_for(default, [1000.0, 1000.0], rounds=4)
    assert timeout_for(default.model_copy(update={"timeout_s": 42.0}), [12_300.0]) == 42.0
    capped = LocalTarget(timeout_s=900.0)  # the agent's --timeout-s: a cap, and the limit when none is asked
    assert capped.limit_s(default, [Path("/nonexistent")]) == 900.0
    assert capped.limit_s(default.model_copy(update={"timeout_s": 1e6}), []) == 900.0
    assert capped.limit_s(default.model_copy(update={"timeout_s": 30.0}), []) == 30.0


def test_a_new_process_measurement_past_its_limit_is_killed() -> None:
    """The path of runtimes that preload nothing (llama.cpp): `python -m autoslm.targets.worker`, killed at its
    limit (the fork server's path has its own test, tests/targets/test_forkserver.py)."""
    from autoslm.targets.local import _subprocess

    args = [str(resolve("tiny-llama")), FAST.model_dump_json()]
    assert _subprocess(args, FAST, 0.2) == (None, "")
