"""The family matrix (autoslm/families.py) through llama.cpp's own converter: for every family, the F32 GGUF gives
torch's logits; every built-in technique either works in llama.cpp on it or is refused up front in one line; a
3-trial llama.cpp search exports a GGUF that `autoslm apply` rebuilds byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import autoslm
from autoslm import checkpoint
from autoslm.errors import UserError
from autoslm.families import FAMILIES
from autoslm.llamacpp import export_gguf, refusal
from autoslm.models import load_model
from autoslm.pipeline import Step, apply_planned, plan
from autoslm.plugins import get_registry
from autoslm.runtimes import check_policy, get_runtime
from autoslm.runtimes.llamacpp import GGUF, open_gguf
from autoslm.technique import ApplyContext

pytest.importorskip("llama_cpp")
IDS = list(range(5, 105))  # 100 tokens: past the sliding window of the Gemma families (32)
# llama.cpp computes in its own order (and fused kernels): F32 logits agree with torch within this fraction of the
# largest logit, and the top-1 token agrees wherever torch's top two differ by more than that
TOLERANCE = 3e-3


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> tuple[str, object]:
    return request.param, load_model(f"tiny-{request.param}")


def _logits(lm, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        theirs = lm.model(input_ids=torch.tensor([IDS])).logits[0].float().numpy()
    with open_gguf(directory / GGUF, n_ctx=128, logits_all=True) as llm:
        llm.eval(IDS)
        ours = np.array(llm.scores[: len(IDS)])
    return ours, theirs


def test_f32_gguf_gives_torch_logits(family, tmp_path: Path) -> None:
    name, lm = family
    directory = get_runtime("llama.cpp").save(lm.model, lm.tokenizer, tmp_path / "f32", [])
    ours, theirs = _logits(lm, directory)
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() < TOLERANCE * scale, name
    top2 = np.sort(theirs, -1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > TOLERANCE * scale
    assert clear.sum() >= len(IDS) // 2
    assert (ours.argmax(-1) == theirs.argmax(-1))[clear].all(), name


CAL = {"calibration_samples": 2, "calibration_seq_len": 32}
POLICIES = {  # every built-in technique llama.cpp can run, at small settings
    "prune.depth": [{"technique": "prune.depth", "params": {"blocks": 1, **CAL}}],
    "prune.width": [{"technique": "prune.width", "params": {"mlp_ratio": 0.25, "round_to": 16, **CAL}}],
    "distill.kd": [
        {"technique": "distill.kd", "params": {"steps": 2, "batch_size": 1, "seq_len": 32}},
        {"technique": "quant.gguf", "params": {"type": "Q4_0"}},
    ],
    "quant.mixed": [{"technique": "quant.mixed", "params": {"base": "Q4_0", "raise_fraction": 0.25}}],
}


def test_every_technique_works_or_is_refused_in_one_line(family, tmp_path: Path) -> None:
    """Each built-in technique is either refused up front in one line, or applied, exported by the converter and
    run by llama.cpp (the technique's own checks are in its tests; here: the family's GGUF loads and scores)."""
    name, lm = family
    rt, registry = get_runtime("llama.cpp"), get_registry()
    registry.load()
    assert rt.refuses_model(lm.model) is None
    for tname, entry in registry.techniques.items():
        reason = rt.refuses(entry.cls) or rt.refuses_on(entry.cls, lm.model) or entry.cls.refuses_model(lm.model)
        if reason:
            assert "\n" not in reason and len(reason) < 300, (name, tname)
            continue
        assert tname in POLICIES or entry.cls.runtime == "llama.cpp", f"{tname}: add it to POLICIES"
        steps = POLICIES.get(tname, [{"technique": tname}])
        planned = plan([Step(**s) for s in steps])
        check_policy("llama.cpp", planned, lm.model)
        fresh = load_model(f"tiny-{name}")
        ctx = ApplyContext(
            tokenizer=fresh.tokenizer, seed=0, teacher_factory=lambda n=name: load_model(f"tiny-{n}").model
        )
        model = apply_planned(fresh.model, planned, ctx)
        directory = rt.save(model, fresh.tokenizer, tmp_path / tname, planned)
        with open_gguf(directory / GGUF, n_ctx=64, logits_all=True) as llm:
            llm.eval(IDS[:16])
            assert np.isfinite(np.array(llm.scores[:16])).all(), (name, tname)


@pytest.mark.matrix
def test_search_exports_a_gguf_apply_rebuilds_byte_identically(family, tmp_path: Path) -> None:
    """Every family, in CI too (about 30 s each here; `pytest -m matrix` runs just these)."""
    name, lm = family
    width = get_registry().technique("prune.width").cls
    space = "tiny-llamacpp-quant" if width.refuses_model(lm.model) else "tiny-llamacpp-matrix"
    out = tmp_path / "run"
    result = autoslm.search(model=f"tiny-{name}", runtime="llama.cpp", space=space, trials=3,
                            out=out, fidelity="low", sampler="random", seed=3, budget="size_mb<=0.9x")  # fmt: skip
    assert all(r.reason is None or "Traceback" not in r.reason for r in result.trials), name
    assert result.best is not None, (name, [r.reason for r in result.trials])
    rebuilt = autoslm.apply_recipe(str(out / "recipe.yaml"), str(tmp_path / "again"))
    assert checkpoint.sha256_file(rebuilt / GGUF) == checkpoint.sha256_file(out / "checkpoint" / GGUF)


def test_unknown_architecture_is_refused_from_config_alone(tmp_path: Path) -> None:
    """Decided from config.json, before any weights are read: an architecture llama.cpp's converter does not know."""
    config = {"architectures": ["NoSuchForCausalLM"], "model_type": "llama"}
    assert "knows no text architecture ['NoSuchForCausalLM']" in refusal(config)
    assert "names none" in refusal({"model_type": "llama"})
    assert "knows no text architecture" in refusal({"architectures": "LlamaForCausalLM"})  # wrong type: refused


def test_olmo2_with_tied_embeddings_is_refused(tmp_path: Path) -> None:
    assert "output matrix of its own" in refusal({"architectures": ["Olmo2ForCausalLM"], "tie_word_embeddings": True})
    assert refusal({"architectures": ["Olmo2ForCausalLM"], "tie_word_embeddings": False}) is None


def test_gemma_layers_after_block_removal_run_as_torch_runs_them(tmp_path: Path) -> None:
    """Removing a block moves Gemma-3's global layer; the per-layer pattern written from layer_types makes llama.cpp
    run each block with its own attention (it would otherwise place a global layer at every 6th block)."""
    lm = load_model("tiny-gemma3")
    lm.model.config.layer_types = ["full_attention"] + ["sliding_attention"] * 5
    source = checkpoint.save_dir(lm.model, lm.tokenizer, tmp_path / "moved")
    moved = load_model(str(source))
    assert moved.model.config.layer_types[0] == "full_attention"
    directory = tmp_path / "gguf"
    directory.mkdir()
    export_gguf(source, directory / GGUF)
    ours, theirs = _logits(moved, directory)
    assert np.abs(ours - theirs).max() < TOLERANCE * np.abs(theirs).max()


def test_unrecognised_tokenizer_stops_the_export_in_one_line(tmp_path: Path) -> None:
    """A BPE tokenizer whose pre-tokenizer llama.cpp's converter does not recognise (by the hash of its behaviour)
    is never written by guess: the export stops, naming it, and leaves no file."""
    lm = load_model("tiny-llama")
    source = checkpoint.save_dir(lm.model, lm.tokenizer, tmp_path / "c")
    spec = json.loads((source / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}  # a pre-tokenizer no model the converter knows uses
    (source / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match=r"llama\.cpp's converter refused it: BPE pre-tokenizer was not recognized"):
        export_gguf(source, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_export_is_byte_identical_whatever_the_folder_is_called(tmp_path: Path) -> None:
    """The converter guesses general.* metadata from the folder's name (a temporary folder's random suffix became
    `general.finetune`): export reads a folder of a fixed name instead, so a recipe's replay gives the same bytes."""
    lm = load_model("tiny-qwen3")
    a = checkpoint.save_dir(lm.model, lm.tokenizer, tmp_path / "autoslm-f32-newfeqhm")
    b = checkpoint.save_dir(lm.model, lm.tokenizer, tmp_path / "Other-Model-7B-chat-v2")
    export_gguf(a, tmp_path / "a.gguf")
    export_gguf(b, tmp_path / "b.gguf")
    assert checkpoint.sha256_file(tmp_path / "a.gguf") == checkpoint.sha256_file(tmp_path / "b.gguf")


def test_sharded_bf16_directory_is_an_input(tmp_path: Path) -> None:
    """What people download: bf16 weights in shards with an index. It loads, exports and runs."""
    lm = load_model("tiny-qwen3")
    sharded = tmp_path / "sharded"
    lm.model.to(torch.bfloat16).save_pretrained(sharded, max_shard_size="1MB")
    lm.tokenizer.save_pretrained(sharded)
    assert len(list(sharded.glob("model-0000*-of-0000*.safetensors"))) > 1
    assert (sharded / "model.safetensors.index.json").is_file()
    directory = get_runtime("llama.cpp").prepare(str(sharded))
    with open_gguf(directory / GGUF, n_ctx=64) as llm:
        llm.eval(IDS[:8])
        assert np.isfinite(np.array(llm.scores[:8])).all()
