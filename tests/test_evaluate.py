from __future__ import annotations

import pytest

from autoslm import evaluate
from autoslm.evaluate import Fidelity

SMALL = Fidelity(ppl_tokens=1024, seq_len=256, hyperbaton_items=40, cloze_items=20)


def test_tiny_evaluation_is_deterministic(tiny) -> None:
    a = evaluate.evaluate(tiny.model, tiny.tokenizer, SMALL)
    b = evaluate.evaluate(tiny.model, tiny.tokenizer, SMALL)
    assert (a.ppl, a.hyperbaton_acc, a.cloze_acc) == (b.ppl, b.hyperbaton_acc, b.cloze_acc)
    assert a.ppl_tokens == 1024 and a.hyperbaton_items == 40 and a.cloze_items == 20
    # a random model is close to uniform over the 49,152-token vocabulary
    assert a.ppl > 5_000


def test_continuation_scoring_matches_unpadded_forward(tiny) -> None:
    """Batched, left-padded scoring must equal scoring each sequence alone."""
    import torch

    tok = tiny.tokenizer
    pairs = [(tok("The quick brown")["input_ids"], tok(" fox")["input_ids"]), ([5, 6], [7, 8, 9])]
    batched = list(evaluate._continuation_logprobs(tiny.model, tok, pairs, batch_size=2))
    for (ctx, cont), (lp, _) in zip(pairs, batched, strict=True):
        with torch.inference_mode():
            logits = tiny.model(input_ids=torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
        expected = torch.stack([logits[len(ctx) - 1 + j, t] for j, t in enumerate(cont)])
        assert torch.allclose(lp, expected, atol=1e-4)


def test_fidelity_presets_and_validation() -> None:
    low, full = Fidelity.preset("low"), Fidelity.preset("full")
    assert low.ppl_tokens < full.ppl_tokens and low.cloze_items < full.cloze_items
    with pytest.raises(Exception, match="unknown fidelity"):
        Fidelity.preset("medium")
    with pytest.raises(ValueError):
        Fidelity(ppl_tokens=0)


@pytest.mark.real
def test_real_model_quality_is_sane_and_repeatable(smollm, tiny) -> None:
    fid = Fidelity(ppl_tokens=2048, hyperbaton_items=100, cloze_items=40)
    q = evaluate.evaluate(smollm.model, smollm.tokenizer, fid)
    again = evaluate.evaluate(smollm.model, smollm.tokenizer, fid)
    assert q.model_dump(exclude={"seconds"}) == again.model_dump(exclude={"seconds"})
    assert 10 < q.ppl < 80  # measured 41 on 4k tokens of Austen
    random_ppl = evaluate.perplexity(tiny.model, tiny.tokenizer, fid)
    assert q.ppl * 100 < random_ppl
    assert q.hyperbaton_acc is not None and q.hyperbaton_acc > 0.65  # chance is 0.5
    assert q.cloze_acc is not None and q.cloze_acc > 0.05


def test_kld_to_a_reference_is_zero_for_the_same_model_and_grows_with_damage(fresh_tiny, tmp_path) -> None:
    import torch

    from autoslm.evaluate import Fidelity, Reference, evaluate

    fid = Fidelity(ppl_tokens=256, seq_len=64, hyperbaton_items=0, cloze_items=0)
    base = evaluate(fresh_tiny.model, fresh_tiny.tokenizer, fid, keep_topk=16)
    assert base.kld_mean is None and base.reference is not None and base.reference.indices.shape == (4 * 63, 16)
    ref = Reference.load(base.reference.save(tmp_path / "ref.safetensors"))  # round trip through safetensors
    same = evaluate(fresh_tiny.model, fresh_tiny.tokenizer, fid, reference=ref)
    assert same.kld_mean == pytest.approx(0.0, abs=1e-5) and same.ppl == base.ppl
    with torch.no_grad():  # the random model is nearly uniform: sharpen its output distribution
        fresh_tiny.model.model.norm.weight.mul_(30.0)
    damaged = evaluate(fresh_tiny.model, fresh_tiny.tokenizer, fid, reference=ref)
    assert damaged.kld_mean > 1e-4 and damaged.kld_p99 >= damaged.kld_mean


def test_a_full_evaluation_built_on_the_low_one_gives_the_same_figures(fresh_tiny, tmp_path) -> None:
    from autoslm.evaluate import Reference

    low = Fidelity(ppl_tokens=512, seq_len=128, hyperbaton_items=10, cloze_items=6)
    full = Fidelity(ppl_tokens=1024, seq_len=128, hyperbaton_items=24, cloze_items=14)
    model, tok = fresh_tiny.model, fresh_tiny.tokenizer
    ref = evaluate.evaluate(model, tok, full, keep_topk=8).reference
    first = evaluate.evaluate(model, tok, low, reference=ref)
    calls = []
    counting = lambda **kw: calls.append(kw["input_ids"].shape) or model(**kw)  # noqa: E731
    built = evaluate.evaluate(counting, tok, full, reference=ref, prior=first)
    scratch = evaluate.evaluate(model, tok, full, reference=ref)
    assert built.model_dump(exclude={"seconds"}) == pytest.approx(scratch.model_dump(exclude={"seconds"}), rel=1e-6)
    assert built.kld_mean is not None and built.ppl_tokens == 1024 and built.cloze_items == 14
    windows = [shape for shape in calls if shape[1] == 128]
    assert sum(s[0] for s in windows) == 4  # the 4 windows the low evaluation did not see, not all 8
    # a prior from another frame (another seed), or against another reference, is not built on
    other = evaluate.evaluate(model, tok, low.model_copy(update={"seed": 1}), reference=ref)
    assert evaluate.evaluate(model, tok, full, reference=ref, prior=other).ppl == pytest.approx(scratch.ppl, rel=1e-6)
    stranger = Reference(indices=ref.indices.clone(), logprobs=ref.logprobs.clone())
    again = evaluate.evaluate(model, tok, full, reference=stranger, prior=first)
    assert again.kld_mean == pytest.approx(scratch.kld_mean, rel=1e-5)


def test_the_in_place_log_softmax_is_log_softmax_without_a_second_copy() -> None:
    import torch

    logits = torch.randn(150, 1000) * 8
    expected = logits.log_softmax(-1)
    got = evaluate._log_softmax_(logits, rows=64)  # 150 rows: three parts, the last one short
    assert got.data_ptr() == logits.data_ptr()  # the same storage: the window's logits, normalised where they lie
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.exp().sum(-1), torch.ones(150), atol=1e-4)
