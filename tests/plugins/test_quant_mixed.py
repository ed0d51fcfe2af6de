"""quant.mixed and what it stands on: llama.cpp's rounding reproduced in torch, the sensitivity table, the
deterministic per-tensor assignment, refusal of assignments that do not fit the model, and a mixed-precision search
whose recipe lists every tensor and replays byte-identically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import autoslm
from autoslm import checkpoint, sensitivity
from autoslm.errors import UserError
from autoslm.pipeline import Step, apply_planned, plan
from autoslm.runtimes import get_runtime
from autoslm.runtimes.llamacpp import GGUF, fake_quantize, gguf_linear_names
from autoslm.technique import ApplyContext

pytest.importorskip("llama_cpp")


def _mixed():
    from autoslm.plugins import get_registry

    cls = get_registry().technique("quant.mixed").cls
    return cls, cls.Config


def _table(numel: dict[str, int], kld: dict[str, float]) -> sensitivity.SensitivityTable:
    return sensitivity.SensitivityTable(probe="Q4_0", tokens=1, seconds=0.0, fingerprint="x", kld=kld, numel=numel)


def test_fake_quantize_is_llamacpps_own_rounding(fresh_tiny, tmp_path: Path) -> None:
    """The weights llama.cpp writes for Q4_0 / Q8_0, read back, equal fake_quantize of the torch weights exactly."""
    import gguf

    steps = [{"technique": "quant.gguf", "params": {"type": "Q4_0", "overrides": {"attn_v": "Q8_0"}}}]
    planned = plan([Step(**s) for s in steps])
    get_runtime("llama.cpp").save(fresh_tiny.model, fresh_tiny.tokenizer, tmp_path / "c", planned)
    stored = {t.name: t for t in gguf.GGUFReader(tmp_path / "c" / GGUF).tensors}
    for module, kind in (("model.layers.1.mlp.down_proj", "Q4_0"), ("model.layers.1.self_attn.v_proj", "Q8_0")):
        name = gguf_linear_names(fresh_tiny.model)[module] + ".weight"
        t, weight = stored[name], fresh_tiny.model.get_submodule(module).weight
        assert t.tensor_type.name == kind
        theirs = gguf.quants.dequantize(t.data, t.tensor_type).reshape(weight.shape)
        ours = fake_quantize(weight, kind).numpy()
        assert np.array_equal(ours, theirs), name
        assert not np.array_equal(ours, weight.detach().numpy())
    with pytest.raises(ValueError, match="multiple of 256"):
        fake_quantize(torch.zeros(4, 64), "Q4_K")


def test_sensitivity_replays_blocks_exactly_and_ranks_low_bits_worse(tiny) -> None:
    from autoslm import data

    model = tiny.model
    windows = data.token_windows(tiny.tokenizer, "calibration", seq_len=32, count=2, seed=0)
    names = {m: n for m, n in gguf_linear_names(model).items() if n.startswith("blk.")}
    before = [p.clone() for p in model.parameters()]
    q4 = sensitivity.measure(model, windows, names, lambda _n, w: fake_quantize(w, "Q4_0"))
    q8 = sensitivity.measure(model, windows, names, lambda _n, w: fake_quantize(w, "Q8_0"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # weights restored
    assert set(q4) == set(names.values()) and len(q4) == 4 * 7
    assert all(v >= 0 for v in q4.values()) and sum(q4.values()) > 10 * sum(q8.values()) > 0
    with torch.inference_mode():
        reference = torch.log_softmax(model(input_ids=windows, use_cache=False).logits.float(), -1)
    assert sensitivity._BlockReplay.record(model, windows, reference) is not None  # the fast path is the one used
    slow = dict(q4)
    original = sensitivity._BlockReplay.record
    try:
        sensitivity._BlockReplay.record = classmethod(lambda cls, *a: None)  # type: ignore[method-assign]
        slow = sensitivity.measure(model, windows, names, lambda _n, w: fake_quantize(w, "Q4_0"))
    finally:
        sensitivity._BlockReplay.record = original  # type: ignore[method-assign]
    assert slow.keys() == q4.keys()
    assert all(abs(slow[k] - q4[k]) <= 1e-5 + 1e-3 * slow[k] for k in slow)  # from block i on == whole model


def test_the_gradient_estimate_ranks_tensors_like_the_measured_table(tiny) -> None:
    """`sensitivity.estimate` (a few backward passes) against `measure` (a forward pass per tensor): the same
    tensors, KLD of the same size, ranked alike; Q8_0 estimated far below Q4_0; the model left as it was."""
    from autoslm import data
    from autoslm.sensitivity import SensitivityTable, rank_correlation

    model = tiny.model
    windows = data.token_windows(tiny.tokenizer, "calibration", seq_len=32, count=2, seed=0)
    names = {m: n for m, n in gguf_linear_names(model).items() if n.startswith("blk.")}
    numel = {n: int(model.get_submodule(m).weight.numel()) for m, n in names.items()}
    before = [(p.clone(), p.requires_grad) for p in model.parameters()]
    q4 = lambda _n, w: fake_quantize(w, "Q4_0")  # noqa: E731
    measured = sensitivity.measure(model, windows, names, q4)
    guess = sensitivity.estimate(model, windows, names, q4, draws=8)
    q8 = sensitivity.estimate(model, windows, names, lambda _n, w: fake_quantize(w, "Q8_0"), draws=8)
    for (saved, grad_flag), p in zip(before, model.parameters(), strict=True):
        assert torch.equal(saved, p) and grad_flag == p.requires_grad and p.grad is None
    assert guess.keys() == measured.keys() and all(v >= 0 for v in guess.values())
    ratio = sum(guess.values()) / sum(measured.values())
    assert 0.5 < ratio < 2  # second order: the same size as the measured KLD (1.04 here)
    tables = [SensitivityTable(probe="Q4_0", tokens=64, seconds=0, fingerprint="", kld=k, numel=numel)
              for k in (measured, guess)]  # fmt: skip
    assert rank_correlation(*tables) >= 0.9  # 0.975 here; SmolLM2 0.978, Gemma-3 0.960 (sensitivity_cost.py)
    assert rank_correlation(tables[0], tables[0]) == pytest.approx(1.0)
    assert sum(q8.values()) * 10 < sum(guess.values())


def test_assignment_is_a_function_of_the_table_and_the_parameters() -> None:
    from autoslm_plugins.quant_mixed import assign

    _, Config = _mixed()
    numel = {f"blk.{b}.{c}": n for b in range(4) for c, n in (("attn_v", 100), ("ffn_down", 300))}
    kld = {name: (i % 5 + 1) * 0.01 * numel[name] for i, name in enumerate(sorted(numel))}
    rows = dict.fromkeys(numel, 256)
    table = _table(numel, kld)
    config = Config(base="Q4_K", raise_fraction=0.25, raise_type="Q8_0", lower_fraction=0.25, lower_type="Q2_K")
    first = assign(table, config, rows)
    assert first == assign(_table(dict(reversed(numel.items())), dict(reversed(kld.items()))), config, rows)
    assert set(first) == set(numel)
    ranked = table.ranked()
    raised = [n for n in ranked if first[n] == "Q8_0"]
    lowered = [n for n in ranked if first[n] == "Q2_K"]
    assert raised == ranked[: len(raised)] and lowered == ranked[len(ranked) - len(lowered) :]  # by sensitivity
    share = sum(numel[n] for n in raised) / sum(numel.values())
    assert 0.15 <= share <= 0.35  # a quarter of the values, to the nearest tensor
    assert all(v == "Q4_K" for v in assign(table, Config(base="Q4_K"), rows).values())
    narrow = assign(table, config, dict.fromkeys(numel, 576))  # rows llama.cpp cannot pack as k-quants
    assert {narrow[n] for n in raised} == {"Q8_0"} and {narrow[n] for n in lowered} == {"Q4_0"}
    assert {narrow[n] for n in numel if n not in raised + lowered} == {"Q5_0"}  # llama.cpp's fallback for Q4_K
    every = Config(base="Q5_K", raise_fraction=0.3, raise_type="Q6_K", lower_fraction=0.3, lower_type="Q3_K")
    fallbacks = assign(table, every, dict.fromkeys(numel, 576))
    assert set(fallbacks.values()) == {"Q5_1", "Q8_0", "Q4_0"}
    assert Config(tensors=fallbacks).tensors == fallbacks  # every fallback is a type a recipe can hold


def test_an_assignment_that_does_not_fit_the_model_is_refused(fresh_tiny) -> None:
    cls, Config = _mixed()
    ctx = ApplyContext(tokenizer=fresh_tiny.tokenizer)
    with pytest.raises(UserError, match=r"blk\.99\.attn_v.*this model has blocks blk\.0 to blk\.3"):
        cls().resolve(fresh_tiny.model, Config(tensors={"blk.99.attn_v": "Q8_0"}), ctx)
    with pytest.raises(UserError, match=r"blk\.0\.attn_v cannot be Q4_K: its rows hold 64 values"):
        cls().resolve(fresh_tiny.model, Config(tensors={"blk.0.attn_v": "Q4_K"}), ctx)
    with pytest.raises(UserError, match=r"tensor names must look like blk\.N\.attn_v"):
        plan([Step(technique="quant.mixed", params={"tensors": {"../../etc/passwd": "Q8_0"}})])
    with pytest.raises(UserError, match="raise_fraction \\+ lower_fraction must not exceed 1"):
        plan([Step(technique="quant.mixed", params={"raise_fraction": 0.7, "lower_fraction": 0.7})])
    with pytest.raises(UserError, match="cannot be combined"):
        plan([Step(technique="quant.mixed"), Step(technique="quant.gguf")])
    given = Config(tensors={"blk.0.attn_v": "Q8_0"})
    assert cls().resolve(fresh_tiny.model, given, ctx) is given  # explicit: used as recorded, nothing measured


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_the_weight_files_name_the_block_tensors_the_torch_model_does(family: str, tmp_path: Path) -> None:
    """quant.mixed reads tensor names and shapes from the safetensors headers (a search never holds the torch
    model for them): the same table as from the torch model's modules; a table made from the files loads the model
    for itself and ranks like one made from the torch model."""
    from autoslm_plugins.quant_mixed import block_tensors, sensitivity_table

    from autoslm.models import load_files, load_model

    loaded, files = load_model(family), load_files(family)
    assert block_tensors(files) == block_tensors(loaded.model)
    assert len(block_tensors(files)) == 7 * loaded.model.config.num_hidden_layers
    ctx = ApplyContext(tokenizer=files.tokenizer, run_dir=tmp_path)
    from_files = sensitivity_table(files, ctx, 2, 32, draws=2)
    from_torch = sensitivity_table(loaded.model, ApplyContext(tokenizer=loaded.tokenizer), 2, 32, draws=2)
    assert from_files.fingerprint == files.fingerprint and from_files.numel == from_torch.numel
    assert from_files.kld == pytest.approx(from_torch.kld, rel=1e-4)  # the same weights, the same draws


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_resolve_writes_every_tensor_and_the_table_into_the_run_dir(family: str, tmp_path: Path) -> None:
    from autoslm.models import load_model

    fresh_tiny = load_model(family)
    planned = plan([Step(technique="quant.mixed", params={"base": "Q4_0", "raise_fraction": 0.3,
                                                         "raise_type": "Q8_0", "sensitivity_samples": 2,
                                                         "sensitivity_seq_len": 32})])  # fmt: skip
    ctx = ApplyContext(tokenizer=fresh_tiny.tokenizer, run_dir=tmp_path)
    apply_planned(fresh_tiny.model, planned, ctx)
    tensors = planned[0].config.tensors
    assert len(tensors) == 7 * fresh_tiny.model.config.num_hidden_layers and set(tensors.values()) == {"Q4_0", "Q8_0"}
    (table,) = (tmp_path / "sensitivity").glob("*.json")
    stored = json.loads(table.read_text())
    assert set(stored["kld"]) == set(tensors) and stored["probe"] == "Q4_0" and stored["tokens"] == 64
    get_runtime("llama.cpp").save(fresh_tiny.model, fresh_tiny.tokenizer, tmp_path / "c", planned)
    import gguf

    reader = gguf.GGUFReader(tmp_path / "c" / GGUF)
    written = {t.name.removesuffix(".weight"): t.tensor_type.name for t in reader.tensors}
    assert all(written[name] == kind for name, kind in tensors.items())  # llama.cpp wrote exactly the assignment


def test_mixed_search_against_a_named_preset_replays_byte_identically(tmp_path: Path, monkeypatch) -> None:
    """Also: quant.mixed works from the model's files (tensor names and shapes from the safetensors headers); the
    torch model is loaded once, for the sensitivity table alone, and let go: the search never holds it."""
    from autoslm import models
    from autoslm.searching.objective import Objective

    def refuse(*_a, **_k):
        raise AssertionError("the search loaded the torch model to keep it")

    loads = []
    load_model = models.load_model
    monkeypatch.setattr(Objective, "base", refuse)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a) or load_model(*a, **k))
    out = tmp_path / "run"
    result = autoslm.search(model="tiny-llama", runtime="llama.cpp", space="tiny-mixed",
                            budget="size_mb<=Q4_0,decode_ms<=3xQ4_0", trials=3, out=out, fidelity="low",
                            sampler="random", seed=3, busy_retries=0)  # fmt: skip
    ref = result.baseline["references"]["Q4_0"]
    assert ref["steps"][0]["technique"] == "quant.gguf" and ref["steps"][0]["params"]["type"] == "Q4_0"
    assert ref["metrics"]["size_mb"] < result.baseline["metrics"]["size_mb"] and ref["ppl"] > 0
    assert (out / "references" / "Q4_0" / GGUF).is_file()
    for r in result.trials:
        if r.metrics:
            assert (r.violations["size_mb"] <= 0) == (r.metrics["size_mb"] <= ref["metrics"]["size_mb"])
        if r.metrics and "decode_ms" in r.metrics:  # timed: always beside the preset the timing limit names
            assert r.recheck["against"] == "Q4_0" and r.recheck["rounds"] >= 4, r.recheck
            paired = r.recheck["ratios"]["decode_ms"] * r.recheck["baseline"]["decode_ms"]
            assert r.metrics["decode_ms"] == pytest.approx(paired)  # x the preset's reading in the same pair
            assert (r.violations["decode_ms"] <= 0) == (r.recheck["ratios"]["decode_ms"] <= 3)  # the ratio judged
    assert result.best is not None, [r.reason for r in result.trials]
    assert not [r for r in result.trials if r.status == "failed"], [r.reason for r in result.trials]
    ranked = [r for r in result.trials if r.steps and r.steps[0]["params"].get("raise_fraction", 0) > 0]
    assert ranked and len(loads) == 1, loads  # the table, once (then cached), and nothing else
    recipe = (out / "recipe.yaml").read_text()
    assert all(f"blk.{b}.{c}:" in recipe for b in range(4) for c in ("attn_q", "ffn_down"))
    rebuilt = autoslm.apply_recipe(str(out / "recipe.yaml"), str(tmp_path / "again"))
    assert checkpoint.sha256_file(rebuilt / GGUF) == checkpoint.sha256_file(out / "checkpoint" / GGUF)
    page = (out / "report.html").read_text()
    assert "Presets the budget names" in page and "<h2>Sensitivity</h2>" in page
    assert (out / "sensitivity.png").stat().st_size > 1000


def test_a_budget_naming_an_unknown_preset_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"budget names preset 'Q9_9', which no technique of the llama\.cpp runtime"):
        autoslm.search(model="tiny-llama", runtime="llama.cpp", space="tiny-mixed", budget="size_mb<=Q9_9",
                       trials=1, out=tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run" / "baseline.json").exists()


def test_a_share_is_spent_only_where_the_type_changes_the_bits() -> None:
    from autoslm_plugins.quant_mixed import assign

    _, Config = _mixed()
    # SmolLM2's shapes: attn_v rows of 576 values (k-quants fall back), ffn_down rows of 1536; attn_v least sensitive
    numel = {f"blk.{b}.{c}": 100 for b in range(4) for c in ("attn_v", "ffn_down")}
    kld = {name: (0.001 if "attn_v" in name else 1.0) * (1 + int(name.split(".")[1])) for name in numel}
    rows = {name: 576 if "attn_v" in name else 1536 for name in numel}
    config = Config(base="Q4_0", lower_fraction=0.25, lower_type="Q3_K")
    out = assign(_table(numel, kld), config, rows)
    # Q3_K would be Q4_0 on attn_v, no smaller than the Q4_0 base: the quarter goes to the least sensitive ffn_down
    assert {n for n, t in out.items() if t == "Q3_K"} == {"blk.0.ffn_down", "blk.1.ffn_down"}
    assert {out[n] for n in numel if "attn_v" in n} == {"Q4_0"}
    # raising to Q5_K (Q5_1 on 576-value rows) still raises attn_v: 6 bits > 4.5
    up = assign(_table(numel, {n: 1 / v for n, v in kld.items()}), Config(base="Q4_0", raise_fraction=0.25,
                raise_type="Q5_K"), rows)  # fmt: skip
    assert {n for n, t in up.items() if t != "Q4_0"} == {"blk.0.attn_v", "blk.1.attn_v"}
    assert {up["blk.0.attn_v"], up["blk.1.attn_v"]} == {"Q5_1"}


def test_a_k_quant_base_falls_back_to_the_type_named_on_rows_it_cannot_pack(fresh_tiny) -> None:
    from autoslm_plugins.quant_mixed import assign

    cls, Config = _mixed()
    # SmolLM2's shapes again: attn_v rows of 576 values, ffn_down rows of 1536
    numel = {f"blk.{b}.{c}": 100 for b in range(4) for c in ("attn_v", "ffn_down")}
    kld = {name: float(1 + int(name.split(".")[1])) for name in numel}
    rows = {name: 576 if "attn_v" in name else 1536 for name in numel}
    table = _table(numel, kld)
    # llama.cpp's fallback for Q4_K is Q5_0 (a bit more, on slower kernels); named, Q4_0 keeps 4.5 bits there
    assert {assign(table, Config(base="Q4_K"), rows)[f"blk.{b}.attn_v"] for b in range(4)} == {"Q5_0"}
    mix = Config(base="Q4_K", base_fallback="Q4_0", raise_fraction=0.25, raise_type="Q5_0", lower_fraction=0.25,
                 lower_type="Q3_K")  # fmt: skip
    out = assign(table, mix, rows)
    # the two most sensitive tensors (block 3) are raised, both: Q5_0 is more than either base's 4.5 bits now
    assert {n for n, t in out.items() if t == "Q5_0"} == {"blk.3.attn_v", "blk.3.ffn_down"}
    # only ffn_down can be lowered (Q3_K would be Q4_0 on attn_v, no smaller than its base): the least sensitive two
    assert {n for n, t in out.items() if t == "Q3_K"} == {"blk.0.ffn_down", "blk.1.ffn_down"}
    assert out["blk.2.ffn_down"] == "Q4_K" and {out[f"blk.{b}.attn_v"] for b in range(3)} == {"Q4_0"}
    # a base that is not a k-quant never falls back: resolve records base_fallback as None, not a dead setting
    ctx = ApplyContext(tokenizer=fresh_tiny.tokenizer)
    plain = cls().resolve(fresh_tiny.model, Config(base="Q4_0", base_fallback="IQ4_NL"), ctx)
    assert plain.base_fallback is None and set(plain.tensors.values()) == {"Q4_0"}
    kept = cls().resolve(fresh_tiny.model, Config(base="Q4_K", base_fallback="IQ4_NL"), ctx)  # 64-value rows
    assert kept.base_fallback == "IQ4_NL" and set(kept.tensors.values()) == {"IQ4_NL"}
    with pytest.raises(UserError, match="base_fallback"):
        plan([Step(technique="quant.mixed", params={"base": "Q4_K", "base_fallback": "Q4_K"})])  # a k-quant again
