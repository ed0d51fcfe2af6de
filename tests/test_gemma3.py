"""The second real architecture: Gemma-3-270M from its packages (`--model gemma3-270m`). Marked `real`: it loads a
268M-parameter model (a 262k-token vocabulary), about a minute on this machine."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_tokens

from autoslm import data
from autoslm.evaluate import Fidelity, perplexity
from autoslm.technique import ApplyContext

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def gemma():
    from autoslm.models import load_model

    return load_model("gemma3-270m")


def test_loads_as_gemma3_and_scores_text_after_its_bos(gemma) -> None:
    model, tok = gemma.model, gemma.tokenizer
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.num_hidden_layers == 18
    assert data.text_prefix(tok) == [tok.bos_token_id]  # Gemma's tokenizer adds <bos>; SmolLM2's adds nothing
    fid = Fidelity(ppl_tokens=512, seq_len=256)
    with_bos = perplexity(model, tok, fid)
    windows = data.token_windows(tok, fid.corpus, seq_len=fid.seq_len, count=2, seed=fid.seed)
    with torch.inference_mode():  # the same text without <bos>: what autoslm scored before (3x worse on Gemma)
        out = model(input_ids=windows[:, 1:], labels=windows[:, 1:])
    without = float(torch.exp(out.loss))
    assert with_bos < 100 < without


def test_smoothquant_is_exact_on_gemma3(gemma) -> None:
    from autoslm_plugins.quant_dynamic import smooth

    from autoslm.models import load_model

    lm = load_model("gemma3-270m")  # a private copy: smoothing changes the weights
    ids = data.token_windows(lm.tokenizer, "heldout", seq_len=32, count=1)
    with torch.inference_mode():
        before = lm.model(ids).logits
    smooth(lm.model, ApplyContext(tokenizer=lm.tokenizer).calibration(2, 64), alpha=0.5)
    with torch.inference_mode():
        after = lm.model(ids).logits
    # before the fix, smoothing alone took this model's perplexity from 367 to 80,517
    assert float((after - before).abs().max()) < 1e-3 * float(before.abs().max())
    assert after.argmax(-1).equal(before.argmax(-1))


def test_gemma3_in_llamacpp_scores_like_torch_and_keeps_its_tokenizer(gemma, tmp_path) -> None:
    """The F32 GGUF export of Gemma-3-270M (llama.cpp's converter): perplexity in llama.cpp equals torch's; the
    special tokens are the published GGUF's and llama.cpp tokenizes held-out text exactly as transformers does;
    Q8_0 keeps perplexity within 1%."""
    import gguf

    from autoslm.models import BUILTIN_GGUF, _builtin_gguf
    from autoslm.pipeline import Step, plan
    from autoslm.runtimes import get_runtime
    from autoslm.runtimes.llamacpp import GGUF

    rt, fid = get_runtime("llama.cpp"), Fidelity(ppl_tokens=1024, seq_len=256, hyperbaton_items=8, cloze_items=8)
    f32 = rt.save(gemma.model, gemma.tokenizer, tmp_path / "f32", [])
    ours = rt.evaluate(None, gemma.tokenizer, f32, fid)
    theirs = get_runtime("torch").evaluate(gemma.model, gemma.tokenizer, f32, fid)
    assert ours.ppl == pytest.approx(theirs.ppl, rel=2e-3)

    written, published = gguf.GGUFReader(f32 / GGUF), gguf.GGUFReader(_builtin_gguf("gemma3-270m"))
    assert BUILTIN_GGUF["gemma3-270m"][1].endswith(".gguf")
    for key in ("bos_token_id", "eos_token_id", "add_bos_token"):
        key = f"tokenizer.ggml.{key}"
        assert written.fields[key].contents() == published.fields[key].contents(), key
    assert_same_tokens(f32 / GGUF, gemma.tokenizer)

    q8 = rt.save(gemma.model, gemma.tokenizer, tmp_path / "q8", plan([Step(technique="quant.gguf")]))
    assert (q8 / GGUF).stat().st_size < 0.3 * (f32 / GGUF).stat().st_size
    assert rt.evaluate(None, gemma.tokenizer, q8, fid).ppl < 1.01 * ours.ppl
