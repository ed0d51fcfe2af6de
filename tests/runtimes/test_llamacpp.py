"""The llama.cpp runtime: GGUF export checked against torch's logits, llama.cpp quantization, measurement, quality,
byte-identical replay from a recipe, and a search on tiny-llama measured in llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import autoslm
from autoslm import checkpoint
from autoslm.errors import UserError
from autoslm.evaluate import Fidelity
from autoslm.pipeline import Step, apply_steps, plan
from autoslm.recipe import Recipe
from autoslm.runtimes import check_policy, get_runtime
from autoslm.runtimes.llamacpp import GGUF, open_gguf
from autoslm.targets import MeasureSettings, get_target
from autoslm.targets.local import MeasurementError
from autoslm.technique import ApplyContext

pytest.importorskip("llama_cpp")
IDS = [1, 504, 3458, 282, 260, 1345, 2565, 30, 378, 314, 253, 1767, 4183, 28, 1000, 19, 7, 42]


def _llama_logits(directory: Path, ids: list[int]) -> np.ndarray:
    with open_gguf(directory / GGUF, n_ctx=max(64, len(ids)), logits_all=True) as llm:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])


def _torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def _save(lm, steps: list[dict], directory: Path) -> tuple[object, Path]:
    planned = plan([Step(**s) for s in steps])
    check_policy("llama.cpp", planned)
    ctx = ApplyContext(tokenizer=lm.tokenizer, seed=0, teacher_factory=lambda: lm.model)
    model = apply_steps(lm.model, [Step(**s) for s in steps], ctx)
    get_runtime("llama.cpp").save(model, lm.tokenizer, directory, planned)
    return model, directory


def test_f32_export_matches_torch_logits(fresh_tiny, tmp_path: Path) -> None:
    model, directory = _save(fresh_tiny, [], tmp_path / "c")
    ours, theirs = _llama_logits(directory, IDS), _torch_logits(model, IDS)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-3 * max(1.0, np.abs(theirs).max())
    manifest = json.loads((directory / checkpoint.MANIFEST).read_text())
    assert manifest["runtime"] == "llama.cpp" and GGUF in manifest["files"]
    assert not list(directory.glob("*.safetensors"))  # what llama.cpp loads, nothing else


def test_tokenizer_in_the_gguf_tokenizes_like_the_model(fresh_tiny, tmp_path: Path) -> None:
    _, directory = _save(fresh_tiny, [], tmp_path / "c")
    text = "It is a truth universally acknowledged, that 1234 single men in possession of a good fortune..."
    with open_gguf(directory / GGUF, n_ctx=64) as llm:
        assert (
            llm.tokenize(text.encode(), add_bos=False)
            == fresh_tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
        )


def test_pruned_model_exports_and_runs(fresh_tiny, tmp_path: Path) -> None:
    steps = [
        {"technique": "prune.depth", "params": {"blocks": 1}},
        {"technique": "prune.width", "params": {"mlp_ratio": 0.25}},
    ]
    blocks, width = fresh_tiny.model.config.num_hidden_layers, fresh_tiny.model.config.intermediate_size
    model, directory = _save(fresh_tiny, steps, tmp_path / "c")
    config = json.loads((directory / "config.json").read_text())
    assert config["num_hidden_layers"] == blocks - 1 and config["intermediate_size"] < width
    ours, theirs = _llama_logits(directory, IDS), _torch_logits(model, IDS)
    assert np.abs(ours - theirs).max() < 1e-3 * max(1.0, np.abs(theirs).max())


def test_llamacpp_quantization_shrinks_the_file_and_keeps_the_model(fresh_tiny, tmp_path: Path) -> None:
    _, f32 = _save(fresh_tiny, [], tmp_path / "f32")
    model, q8 = _save(fresh_tiny, [{"technique": "quant.gguf", "params": {"type": "Q8_0"}}], tmp_path / "q8")
    assert (q8 / GGUF).stat().st_size < 0.5 * (f32 / GGUF).stat().st_size
    ours, theirs = _llama_logits(q8, IDS), _torch_logits(model, IDS)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99  # 8-bit: close to fp32, not equal
    _, mixed = _save(
        fresh_tiny,
        [
            {
                "technique": "quant.gguf",
                "params": {"type": "Q4_0", "overrides": {"attn_v": "Q8_0"}, "token_embd_type": "Q8_0"},
            }
        ],
        tmp_path / "mixed",
    )
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(mixed / GGUF).tensors}
    assert 8.5 <= checkpoint.weights_bpw(q8) < 9  # Q8_0 blocks: 34 bytes per 32 weights; norms in F32
    assert types["blk.0.attn_v.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q4_0"
    assert types["token_embd.weight"] == "Q8_0"


def test_torch_only_techniques_are_refused_with_the_reason() -> None:
    with pytest.raises(UserError, match=r"'quant\.dynamic_int8' cannot run in the llama\.cpp runtime: it makes layers"):
        check_policy("llama.cpp", plan([Step(technique="quant.dynamic_int8")]))
    with pytest.raises(UserError, match=r"'quant\.gguf' cannot run in the torch runtime: it belongs to the llama\.cpp"):
        check_policy("torch", plan([Step(technique="quant.gguf")]))
    with pytest.raises(UserError, match=r"technique 'quant\.dynamic_int8' cannot run in the llama\.cpp runtime"):
        autoslm.search(model="tiny-llama", runtime="llama.cpp", space="tiny", out="/nonexistent/never-made")
    with pytest.raises(UserError, match=r"invalid parameters for technique 'quant\.gguf'.*unknown tensor class"):
        plan([Step(technique="quant.gguf", params={"overrides": {"attn_x": "Q8_0"}})])


def test_measure_and_evaluate_in_llamacpp(fresh_tiny, tmp_path: Path) -> None:
    _, directory = _save(fresh_tiny, [], tmp_path / "c")
    settings = MeasureSettings(runtime="llama.cpp", prompt_tokens=32, decode_tokens=8, repeats=1)
    m = get_target("local").measure(directory, settings)
    assert m.decode_ms > 0 and m.prefill_ms > 0 and m.memory_mb > 0
    assert m.size_mb == pytest.approx((directory / GGUF).stat().st_size / 2**20)
    assert m.bpw == pytest.approx(32.0, rel=1e-3)  # an F32 export: every tensor at 32 bits per weight
    assert m.target["runtime"] == "llama.cpp"
    pair = get_target("local").measure_pair(directory, directory, 2, settings)
    assert pair.how == "one process" and 0.5 < pair.ratios["decode_ms"] < 2.0
    fid = Fidelity(ppl_tokens=512, hyperbaton_items=8, cloze_items=8)
    ours = get_runtime("llama.cpp").evaluate(None, fresh_tiny.tokenizer, directory, fid)
    theirs = get_runtime("torch").evaluate(fresh_tiny.model, fresh_tiny.tokenizer, directory, fid)
    assert ours.ppl == pytest.approx(theirs.ppl, rel=1e-3)  # the same windows, the same model, another runtime
    assert ours.hyperbaton_acc == theirs.hyperbaton_acc and ours.cloze_acc == theirs.cloze_acc


def test_decode_at_depth_fills_the_cache_reads_slower_and_holds_more(fresh_tiny, tmp_path: Path) -> None:
    """--context N: decode is timed with N tokens in the KV cache, and memory_mb holds that cache. The tiny model's
    weights are ~13 MB, so attention over 2,000 cached tokens is most of a decoded token's work."""
    _, directory = _save(fresh_tiny, [], tmp_path / "c")
    target = get_target("local")
    at = {
        n: target.measure(directory, MeasureSettings(runtime="llama.cpp", prompt_tokens=32, decode_tokens=8, context=n))
        for n in (16, 2000)
    }
    assert at[16].context == 16 and at[2000].context == 2000
    assert at[2000].decode_ms > at[16].decode_ms  # an order, not a time
    # the deeper cache (4 layers x 2 x 32 F16 values: 512 bytes a token) and the compute buffers of a 512-token
    # batch: 15 -> 33 MB here
    assert at[2000].memory_mb > at[16].memory_mb + 3
    with pytest.raises(MeasurementError, match=r"--context 2045: the model holds 2048 tokens.*give --context 2032"):
        target.measure(directory, MeasureSettings(runtime="llama.cpp", decode_tokens=8, context=2045))


def test_evaluation_decodes_a_few_tokens_per_call_and_gets_each_row_s_own_logits(fresh_tiny, tmp_path: Path) -> None:
    """`LlamaCppLM` sends `batch` tokens per `llama_decode` (llama.cpp's output buffer and graph result are that
    many x vocabulary floats), a sequence continuing in the next call: each row's logits are still those of the row
    decoded alone, whatever its length, padding, or the logits kept."""
    from autoslm.runtimes.llamacpp import LlamaCppLM

    _, directory = _save(fresh_tiny, [], tmp_path / "c")
    rows = [IDS, IDS[:5], IDS[3:17], IDS[:1]]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    alone = [_llama_logits(directory, r) for r in rows]
    with open_gguf(directory / GGUF, n_ctx=32) as llm:
        for batch, keep in ((7, 0), (7, 3), (1, 2), (256, 0)):
            lm = LlamaCppLM(llm, n_ctx=64, batch=batch)
            try:
                got = lm(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.numpy()
            finally:
                lm.close()
            assert got.shape == (len(rows), keep or width, len(alone[0][0]))
            for row, expected in zip(got, alone, strict=True):
                n = min(len(expected), len(row))
                assert np.abs(row[len(row) - n :] - expected[len(expected) - n :]).max() < 1e-3, (batch, keep)
                assert not row[: len(row) - n].any()  # left padding gets no logits


def test_perplexity_windows_decoded_one_per_call_give_the_figures_of_two_per_call(fresh_tiny, tmp_path: Path) -> None:
    """The llama.cpp evaluation holds one perplexity window's logits at a time (`windows_per_call`): each window is
    decoded in calls of its own either way, so its figures are those of two windows per call, to the bit."""
    from autoslm import evaluate
    from autoslm.runtimes.llamacpp import LlamaCppLM

    _, directory = _save(fresh_tiny, [], tmp_path / "c")
    fid = Fidelity(ppl_tokens=4 * 64, seq_len=64)
    figures = {}
    with open_gguf(directory / GGUF, n_ctx=32) as llm:
        for per_call in (1, 2):
            lm = LlamaCppLM(llm, n_ctx=128, batch=64)
            lm.windows_per_call = per_call
            try:
                nll, tokens, _, kept = evaluate._perplexity_kld(lm, fresh_tiny.tokenizer, fid, keep_topk=4)
            finally:
                lm.close()
            figures[per_call] = (nll, tokens, kept.logprobs)
    assert LlamaCppLM.windows_per_call == 1
    # tokens per call: 512, halved for vocabularies whose logits would pass 256 MB per buffer (Gemma-3, Qwen2.5)
    assert [LlamaCppLM.tokens_per_call(v) for v in (49152, 128256, 151936, 262144)] == [512, 512, 256, 256]
    assert figures[1][:2] == figures[2][:2] and figures[1][1] == 4 * 63
    assert torch.equal(figures[1][2], figures[2][2])


def test_a_llamacpp_measuring_process_never_loads_torch_or_transformers(fresh_tiny, tmp_path: Path) -> None:
    """The measuring process (local target, agent) needs llama.cpp and the prompt's ids only: no torch, no
    transformers (about 2 s and 300 MB each time), and its prompts are the ids transformers' tokenizer gives."""
    import subprocess
    import sys

    from autoslm.targets.measure import TokenizerJson, prompt_ids

    _, directory = _save(fresh_tiny, [], tmp_path / "c")
    settings = MeasureSettings(runtime="llama.cpp", prompt_tokens=32, decode_tokens=4, repeats=1)
    code = (
        "import sys; from autoslm.targets import worker; worker.main(sys.argv[1:]); "
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(directory), settings.model_dump_json()],
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    assert "AUTOSLM-RESULT" in out and "HEAVY []" in out, out[-500:]
    light = TokenizerJson(directory / "tokenizer.json")
    assert prompt_ids(light, 128, 1) == prompt_ids(fresh_tiny.tokenizer, 128, 1)


def test_search_in_llamacpp_exports_a_gguf_that_apply_rebuilds_byte_identically(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = autoslm.search(model="tiny-llama", runtime="llama.cpp", space="tiny-llamacpp", budget="size_mb<=0.6x",
                            trials=3, out=out, fidelity="low", sampler="random", seed=1)  # fmt: skip
    assert result.baseline["metrics"]["size_mb"] > 0
    assert result.best is not None, [r.reason for r in result.trials]
    assert any(s["technique"] == "quant.gguf" for s in result.best.steps)  # only llama.cpp quantization shrinks it
    recipe = (out / "recipe.yaml").read_text()
    assert "runtime: llama.cpp" in recipe and "llama-cpp-python:" in recipe
    assert (out / "checkpoint" / GGUF).is_file() and not list((out / "checkpoint").glob("*.safetensors"))
    rebuilt = autoslm.apply_recipe(str(out / "recipe.yaml"), str(tmp_path / "again"), f32=True)
    assert checkpoint.sha256_file(rebuilt / GGUF) == checkpoint.sha256_file(out / "checkpoint" / GGUF)
    # the stock llama-quantize command that makes it, and the F32 export it reads (outside the manifest)
    command = Recipe.read(out / "recipe.yaml").stock["llama_quantize"]
    assert command.startswith("llama-quantize ") and command.endswith(" model-f32.gguf model.gguf " + _type(out))
    assert f"cd rebuilt && {command}" in (out / "checkpoint" / "README.md").read_text()
    listed = json.loads((rebuilt / checkpoint.MANIFEST).read_text())["files"]
    assert (rebuilt / "model-f32.gguf").is_file() and "model-f32.gguf" not in listed
    assert checkpoint.weights_size_mb(rebuilt) == (rebuilt / GGUF).stat().st_size / 2**20  # the F32 is not counted


def _type(out: Path) -> str:
    return next(s["params"]["type"] for s in Recipe.read(out / "recipe.yaml").model_dump()["steps"]
                if s["technique"] == "quant.gguf")  # fmt: skip


def test_cli_eval_and_profile_in_llamacpp(fresh_tiny, tmp_path: Path) -> None:
    from conftest import run_cli

    _, directory = _save(fresh_tiny, [{"technique": "quant.gguf", "params": {"type": "Q8_0"}}], tmp_path / "c")
    ev = run_cli("eval", "--model", str(directory), "--runtime", "llama.cpp", "--fidelity", "low", "--json")
    assert ev.returncode == 0, ev.stderr[-2000:]
    figures = json.loads(ev.stdout)
    assert figures["runtime"] == "llama.cpp" and figures["ppl"] > 1
    assert figures["fingerprint"] == checkpoint.sha256_file(directory / GGUF)
    prof = run_cli("profile", "--model", str(directory), "--runtime", "llama.cpp", "--repeats", "1", "--json")
    assert prof.returncode == 0, prof.stderr[-2000:]
    assert json.loads(prof.stdout)["size_mb"] == pytest.approx((directory / GGUF).stat().st_size / 2**20)
    bad = run_cli("profile", "--model", "tiny-llama", "--runtime", "onnx")
    assert bad.returncode == 2 and "--runtime 'onnx' is not known" in bad.stderr


def test_importance_matrix_changes_low_bit_rounding_deterministically(fresh_tiny, tmp_path: Path) -> None:
    from autoslm.runtimes.llamacpp import f32_export, importance_matrix

    f32 = f32_export(fresh_tiny.model, fresh_tiny.tokenizer) / "f32.gguf"
    imatrix = importance_matrix(f32, fresh_tiny.tokenizer, samples=4, seq_len=64)
    assert imatrix["blk.0.attn_q.weight"].shape == (fresh_tiny.model.config.hidden_size,)
    assert imatrix["blk.0.ffn_down.weight"].shape == (fresh_tiny.model.config.intermediate_size,)
    assert all(v.min() >= 0 for v in imatrix.values())
    q4 = {"technique": "quant.gguf", "params": {"type": "Q4_0"}}
    with_im = {"technique": "quant.gguf", "params": {"type": "Q4_0", "imatrix": True, "imatrix_samples": 4}}
    _, plain = _save(fresh_tiny, [q4], tmp_path / "plain")
    _, a = _save(fresh_tiny, [with_im], tmp_path / "a")
    _, b = _save(fresh_tiny, [with_im], tmp_path / "b")
    assert checkpoint.sha256_file(a / GGUF) == checkpoint.sha256_file(b / GGUF)  # replayable
    assert checkpoint.sha256_file(a / GGUF) != checkpoint.sha256_file(plain / GGUF)  # the weights steer rounding
    assert _llama_logits(a, IDS).shape == (len(IDS), fresh_tiny.model.config.vocab_size)


@pytest.mark.real
def test_real_model_f32_gguf_scores_like_torch_and_q8_is_smaller(smollm, tmp_path: Path) -> None:
    """SmolLM2-135M exported to GGUF: perplexity in llama.cpp equals torch's to 0.1%; Q8_0 is ~4x smaller."""
    rt = get_runtime("llama.cpp")
    fid = Fidelity.preset("low")
    f32 = rt.save(smollm.model, smollm.tokenizer, tmp_path / "f32", [])
    ours = rt.evaluate(None, smollm.tokenizer, f32, fid)
    theirs = get_runtime("torch").evaluate(smollm.model, smollm.tokenizer, f32, fid)
    assert ours.ppl == pytest.approx(theirs.ppl, rel=1e-3)
    q8 = rt.save(smollm.model, smollm.tokenizer, tmp_path / "q8", plan([Step(technique="quant.gguf")]))
    assert (q8 / GGUF).stat().st_size < 0.3 * (f32 / GGUF).stat().st_size
    assert rt.evaluate(None, smollm.tokenizer, q8, fid).ppl < 1.01 * ours.ppl


@pytest.mark.parametrize(("ftype", "k_type"), [("Q2_K", "Q2_K"), ("Q3_K_M", "Q3_K"), ("Q4_K_S", "Q4_K"),
                                               ("Q5_K_S", "Q5_K"), ("Q6_K", "Q6_K")])  # fmt: skip
def test_k_fallback_is_what_llamacpp_itself_writes(fresh_tiny, tmp_path: Path, ftype: str, k_type: str) -> None:
    """quant.mixed writes llama.cpp's fallbacks into its assignments: they must be the ones llama.cpp picks for a
    k-quant on rows that are not a multiple of 256 (the tiny model's attn_q reads rows of 64 values)."""
    from gguf import GGUFReader

    from autoslm.runtimes.llamacpp import K_FALLBACK, f32_export, quantize

    (src,) = f32_export(fresh_tiny.model, fresh_tiny.tokenizer).glob("*.gguf")
    out = quantize(src, tmp_path / "q.gguf", {"type": ftype})
    types = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert types["blk.1.attn_q.weight"] == K_FALLBACK[k_type]


# --- Gemma-3 (tiny random here; the real one in tests/test_gemma3.py) -------------------------------------------


@pytest.fixture
def tiny_gemma():
    from autoslm.models import load_model

    return load_model("tiny-gemma3")


def test_gemma3_export_matches_torch_beyond_the_sliding_window(tiny_gemma, tmp_path: Path) -> None:
    """Gemma-3's conventions in GGUF: norms stored as 1+w, no q/k permutation, the sliding window and the global
    layers' rotary base; 100 tokens cross the tiny model's 32-token window."""
    from gguf import GGUFReader

    model, directory = _save(tiny_gemma, [], tmp_path / "c")
    ids = list(range(5, 105))
    ours, theirs = _llama_logits(directory, ids), _torch_logits(model, ids)
    assert ours.shape == theirs.shape == (100, model.config.vocab_size)
    assert np.abs(ours - theirs).max() < 3e-3 * np.abs(theirs).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    reader = GGUFReader(directory / GGUF)
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert reader.fields["gemma3.attention.sliding_window"].contents() == model.config.sliding_window == 32
    norm = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    expected = model.model.layers[0].input_layernorm.weight.detach().numpy() + 1.0
    assert np.allclose(np.asarray(norm.data), expected)


def test_depth_pruning_on_gemma3_is_allowed_and_smollm3_refused_before_any_work(tiny, tiny_gemma, tmp_path) -> None:
    """Gemma-3's layers are written layer by layer (llama.cpp then runs a pruned one as torch does:
    tests/llamacpp/test_families.py); SmolLM3's layers without rotary are placed by llama.cpp itself, so block
    removal is refused there, in one line, before any work."""
    from autoslm.models import load_model
    from autoslm.plugins import get_registry

    depth = get_registry().technique("prune.depth").cls
    rt = get_runtime("llama.cpp")
    assert rt.refuses_on(depth, tiny_gemma.model) is None
    assert rt.refuses_on(depth, tiny.model) is None
    smollm3 = load_model("tiny-smollm3").model
    assert "every 4th layer" in rt.refuses_on(depth, smollm3)
    assert get_runtime("torch").refuses_on(depth, smollm3) is None  # torch runs any layer kinds
    with pytest.raises(UserError, match=r"'prune\.depth' cannot run in the llama\.cpp runtime: llama\.cpp runs SmolL"):
        check_policy("llama.cpp", plan([Step(technique="prune.depth")]), smollm3)
    out = tmp_path / "named"  # a space the user named that holds it: refused in one line, no study left behind
    with pytest.raises(UserError, match=r"search space tiny-llamacpp: prune\.depth: llama\.cpp runs SmolLM3"):
        autoslm.search(model="tiny-smollm3", runtime="llama.cpp", space="tiny-llamacpp", trials=1, out=out)
    assert not (out / "study.db").exists()


def test_search_on_smollm3_in_llamacpp_leaves_depth_out_and_apply_rebuilds_byte_identically(tmp_path: Path) -> None:
    """The default llama.cpp space on SmolLM3: depth pruning left out with a warning, the rest searched; the best
    candidate's GGUF rebuilt byte for byte from its recipe."""
    out, events = tmp_path / "run", []
    result = autoslm.search(model="tiny-smollm3", runtime="llama.cpp", budget="size_mb<=0.5x", trials=2, out=out,
                            fidelity="low", sampler="random", seed=1,
                            progress=lambda kind, payload: events.append((kind, payload)))  # fmt: skip
    warnings = [p for k, p in events if k == "warning"]
    assert any("left out of the search on this model in llama.cpp: prune.depth" in w for w in warnings), warnings
    space = next(p for k, p in events if k == "space")
    names = {t.name for t in space.techniques}
    assert "prune.depth" not in names and "quant.gguf" in names
    assert result.best is not None, [r.reason for r in result.trials]
    assert all(r.reason is None or "Traceback" not in r.reason for r in result.trials)
    rebuilt = autoslm.apply_recipe(str(out / "recipe.yaml"), str(tmp_path / "again"))
    assert checkpoint.sha256_file(rebuilt / GGUF) == checkpoint.sha256_file(out / "checkpoint" / GGUF)


def test_an_unchanged_model_saved_from_its_files_shares_the_f32_gguf_the_trials_quantize(tmp_path: Path) -> None:
    """The baseline saved from the model's files is a hard link to the F32 export the trials quantize: one file and
    one set of cached pages (12.8 GB each for a 3B model), not two."""
    import os

    from autoslm.models import load_files
    from autoslm.runtimes.llamacpp import f32_export

    files = load_files("tiny-llama")
    saved = get_runtime("llama.cpp").save(files, files.tokenizer, tmp_path / "baseline", [])
    assert os.path.samefile(saved / GGUF, f32_export(files, files.tokenizer) / "f32.gguf")
    assert (saved / "tokenizer.json").is_file() and (saved / "config.json").is_file()
    checkpoint.verify_dir(saved)
    assert _llama_logits(saved, IDS).shape[0] == len(IDS)
