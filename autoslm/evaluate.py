"""Quality of a (compressed) model on real held-out text: perplexity and two zero-shot tasks.

Deterministic: fixed windows and items, no sampling. A `Fidelity` says how much text and how many items to use;
the low-fidelity preset evaluates a prefix of what the full one evaluates, so it is a cheap, correlated estimate,
and a full evaluation handed the low one (`evaluate(..., prior=low)`) evaluates only the rest: the same figures as
from scratch (the same windows in the same batches; task items are batched again, which can move a score by the
last float bit), a quarter less time at the presets' sizes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from autoslm import data

if TYPE_CHECKING:
    import torch

HYPERBATON_PREFIX = "Here is the"
PPL_BATCH = 2  # perplexity windows per forward pass; a reused prefix must end on a batch boundary


class Fidelity(BaseModel):
    """How much evaluation to spend. `ppl_tokens` is rounded down to whole windows of `seq_len`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ppl_tokens: int = Field(4096, ge=2)
    seq_len: int = Field(512, ge=2)
    hyperbaton_items: int = Field(150, ge=0)
    cloze_items: int = Field(80, ge=0)
    cloze_context: int = Field(48, ge=1, description="cloze context is cut to its last N tokens")
    corpus: str = "heldout"
    seed: int = 0

    @classmethod
    def preset(cls, name: str) -> Fidelity:
        if name == "full":
            return cls()
        if name == "low":
            return cls(ppl_tokens=1024, hyperbaton_items=50, cloze_items=25)
        from autoslm.errors import UserError

        raise UserError(f"unknown fidelity '{name}': use full or low")


class Quality(BaseModel):
    """Quality figures of one model at one fidelity. `kld_*`: KL divergence of the model's next-token distribution
    from the base model's, per position of the perplexity windows (None without a reference)."""

    ppl: float
    hyperbaton_acc: float | None
    cloze_acc: float | None
    ppl_tokens: int
    hyperbaton_items: int
    cloze_items: int
    seconds: float
    kld_mean: float | None = None
    kld_p99: float | None = None

    _reference: Reference | None = PrivateAttr(None)
    _tally: Tally | None = PrivateAttr(None)

    @property
    def reference(self) -> Reference | None:
        """The top-k distribution this evaluation kept (`evaluate(..., keep_topk=K)`), a reference for KLD."""
        return self._reference


class Tally(BaseModel):
    """The sums behind a Quality, so that a larger fidelity can add to them: what was evaluated (windows, items),
    the total NLL and token count, the per-position KLD, the task hits; `frame` and `reference` say what it is
    comparable with (the corpus, window length, seed, cloze context; the KLD reference's identity)."""

    model_config = ConfigDict(frozen=True)

    frame: tuple[str, int, int, int]
    reference: int | None
    windows: int
    nll: float
    tokens: int
    kld: tuple[float, ...]
    hyperbaton: tuple[bool, ...]
    cloze: tuple[bool, ...]

    def extends_to(self, fid: Fidelity, reference: Reference | None) -> bool:
        """This tally is a prefix of what `fid` evaluates (against the same reference)."""
        return (
            self.frame == _frame(fid)
            and self.reference == (id(reference) if reference is not None else None)
            and self.windows <= max(1, fid.ppl_tokens // fid.seq_len)
            and len(self.hyperbaton) <= fid.hyperbaton_items
            and len(self.cloze) <= fid.cloze_items
        )


def _frame(fid: Fidelity) -> tuple[str, int, int, int]:
    return (fid.corpus, fid.seq_len, fid.seed, fid.cloze_context)


class Reference(BaseModel):
    """The base model's next-token distribution on the perplexity windows, kept as its top-k tokens per position
    (log-probabilities), in window order. KLD against it coarse-grains the tail into one bucket: a lower bound of the
    full KL divergence, tight when the top k hold most of the mass (k=64 here). Stored as safetensors."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    indices: Any  # torch.Tensor (positions, k) int64
    logprobs: Any  # torch.Tensor (positions, k) float32

    def save(self, path: Path) -> Path:
        from safetensors.torch import save_file

        save_file({"indices": self.indices.contiguous(), "logprobs": self.logprobs.contiguous()}, str(path))
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return cls(indices=tensors["indices"], logprobs=tensors["logprobs"])


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (ids, attention_mask, position_ids): every sequence ends at the last column."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def perplexity(model: Any, tokenizer: Any, fidelity: Fidelity | None = None, *, batch_size: int = PPL_BATCH) -> float:
    """exp(mean next-token NLL) over `ppl_tokens` of held-out text in independent windows of `seq_len`."""
    nll, tokens, _, _ = _perplexity_kld(model, tokenizer, fidelity or Fidelity(), batch_size=batch_size)
    return math.exp(nll / tokens)


def _perplexity_kld(
    model: Any, tokenizer: Any, fid: Fidelity, *, batch_size: int = PPL_BATCH, reference: Reference | None = None,
    keep_topk: int = 0, skip: int = 0,
) -> tuple[float, int, list[float], Reference | None]:  # fmt: skip
    """Total NLL and token count; per-position KLD from `reference` (when given); this model's top-`keep_topk`
    (when > 0). `skip`: leave out the first windows (evaluated before; `skip` must be a multiple of `batch_size`
    for the batches, and so the figures, to be those of an evaluation from the first window)."""
    import torch

    count = max(1, fid.ppl_tokens // fid.seq_len)
    windows = data.token_windows(tokenizer, fid.corpus, seq_len=fid.seq_len, count=count, seed=fid.seed)[skip:]
    total_nll, total, kld, kept, position = 0.0, 0, [], [], skip * (fid.seq_len - 1)
    # a model whose figures do not depend on how windows are batched (llama.cpp decodes each window in its own
    # calls) takes fewer per call: each window's logits are seq_len x vocabulary floats (537 MB for Gemma-3's 262k)
    per_call = min(batch_size, int(getattr(model, "windows_per_call", batch_size)))
    with torch.inference_mode():
        for batch in windows.split(per_call) if len(windows) else ():  # all evaluated before: none
            logits = model(input_ids=batch, use_cache=False).logits
            for row, ids in zip(logits, batch, strict=True):
                logp = _log_softmax_(row[:-1].float())  # in place: no second copy of the window's logits
                total_nll -= float(logp.gather(1, ids[1:, None]).sum())
                total += len(ids) - 1
                if keep_topk:
                    top = logp.topk(keep_topk, dim=-1)
                    kept.append((top.indices, top.values))
                if reference is not None and position + len(logp) <= len(reference.indices):
                    idx = reference.indices[position : position + len(logp)].long()
                    kld += _kld(reference.logprobs[position : position + len(logp)], logp.gather(1, idx)).tolist()
                position += len(logp)
                del logp, row  # `row` is a view: it would keep the batch's logits alive through the next call
            del logits
    ref = None
    if kept:
        ref = Reference(indices=torch.cat([i for i, _ in kept]), logprobs=torch.cat([v for _, v in kept]))
    return total_nll, total, kld, ref


def _log_softmax_(logits: Any, rows: int = 64) -> Any:
    """`logits.log_softmax(-1)` computed in place, `rows` positions at a time: the temporary is rows x vocabulary
    floats, not another copy of the whole window."""
    import torch

    for start in range(0, len(logits), rows):
        part = logits[start : start + rows]
        part -= torch.logsumexp(part, -1, keepdim=True)
    return logits


def _kld(base: Any, cand: Any) -> Any:
    """KL(base || candidate) per position over the base's top-k tokens plus one bucket for the rest."""
    p = base.exp()
    p_rest = (1 - p.sum(-1)).clamp(min=0)
    q_rest = (1 - cand.exp().sum(-1)).clamp(min=1e-10)
    head = (p * (base - cand)).sum(-1)
    return (head + p_rest * (p_rest.clamp(min=1e-10).log() - q_rest.log())).clamp(min=0)


def _continuation_logprobs(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each (context, continuation) yield the continuation's token log-probs and greedy-argmax hits.

    Sequences are batched by length and left-padded so that only the last positions need logits
    (`logits_to_keep`): the vocabulary projection is skipped for context tokens. Results come in input order.
    """
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    # rows x kept positions x vocabulary floats per call: a model that decodes each row alone takes fewer rows
    batch_size = min(batch_size, int(getattr(model, "rows_per_call", batch_size)))
    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.inference_mode():
        for idx in _batches(order, batch_size):
            batch = [pairs[i] for i in idx]
            ids, mask, positions = _left_pad([c + t for c, t in batch], pad)
            keep = max(len(t) for _, t in batch) + 1
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=False,
                logits_to_keep=keep,
            ).logits
            for row_i, (i, (_, cont)) in enumerate(zip(idx, batch, strict=True)):
                # logits[:, j] predicts token at column (width - keep + j + 1); the continuation ends the row
                row = logits[row_i, keep - 1 - len(cont) : keep - 1].float().log_softmax(-1)
                target = torch.tensor(cont)
                results[i] = (row.gather(1, target[:, None]).squeeze(1), row.argmax(-1) == target)
            del logits  # before the next call: two batches' logits are never held at once
    for i in range(len(pairs)):
        yield results[i]


def hyperbaton_accuracy(model: Any, tokenizer: Any, items: int = 150, *, batch_size: int = 64) -> float:
    """Share of adjective-order pairs where the correct phrase has the higher likelihood after a fixed prefix."""
    hits = _hyperbaton_hits(model, tokenizer, 0, items, batch_size)
    return sum(hits) / max(1, len(hits))


def _hyperbaton_hits(model: Any, tokenizer: Any, start: int, stop: int, batch_size: int = 64) -> list[bool]:
    examples = data.load_task("hyperbaton")[start:stop]
    prefix = data.text_prefix(tokenizer) + tokenizer(HYPERBATON_PREFIX, add_special_tokens=False)["input_ids"]
    pairs = []
    for ex in examples:
        for key in ("a", "b"):
            pairs.append((prefix, tokenizer(" " + ex[key], add_special_tokens=False)["input_ids"]))
    scores = [float(lp.sum()) for lp, _ in _continuation_logprobs(model, tokenizer, pairs, batch_size)]
    return [(scores[2 * i] > scores[2 * i + 1]) == (ex["correct"] == "a") for i, ex in enumerate(examples)]


def cloze_accuracy(
    model: Any, tokenizer: Any, items: int = 80, *, context_tokens: int = 48, batch_size: int = 16
) -> float:
    """Share of held-out paragraphs whose last word greedy decoding reproduces exactly (LAMBADA-style).

    The paragraph before the word is cut to its last `context_tokens` tokens to bound the cost.
    """
    hits = _cloze_hits(model, tokenizer, 0, items, context_tokens, batch_size)
    return sum(hits) / max(1, len(hits))


def _cloze_hits(
    model: Any, tokenizer: Any, start: int, stop: int, context_tokens: int, batch_size: int = 16
) -> list[bool]:
    examples = data.load_task("cloze")[start:stop]
    bos = data.text_prefix(tokenizer)
    pairs = [
        (
            bos + tokenizer(ex["context"], add_special_tokens=False)["input_ids"][-context_tokens:],
            tokenizer(" " + ex["target"], add_special_tokens=False)["input_ids"],
        )
        for ex in examples
    ]
    return [bool(hit.all()) for _, hit in _continuation_logprobs(model, tokenizer, pairs, batch_size)]


def evaluate(
    model: Any,
    tokenizer: Any,
    fidelity: Fidelity | str = "full",
    *,
    reference: Reference | None = None,
    keep_topk: int = 0,
    prior: Quality | None = None,
) -> Quality:
    """Perplexity plus both task accuracies at the given fidelity (a preset name or a Fidelity). With `reference`
    (the base model's top-k, from an evaluation with `keep_topk`), also the KL divergence from the base model.
    `prior`: an evaluation of the same model at a smaller fidelity of the same frame (the low preset before the
    full one): its windows and items are not evaluated again (ignored when it does not fit, or with `keep_topk`)."""
    fid = Fidelity.preset(fidelity) if isinstance(fidelity, str) else fidelity
    start = time.perf_counter()
    n_windows = max(1, fid.ppl_tokens // fid.seq_len)
    before = prior._tally if prior is not None and not keep_topk else None
    if before is None or not before.extends_to(fid, reference) or before.windows % PPL_BATCH:
        before = Tally(frame=_frame(fid), reference=id(reference) if reference is not None else None, windows=0,
                       nll=0.0, tokens=0, kld=(), hyperbaton=(), cloze=())  # fmt: skip
    nll, tokens, kld, kept = _perplexity_kld(
        model, tokenizer, fid, reference=reference, keep_topk=keep_topk, skip=before.windows
    )
    hyper_items = min(fid.hyperbaton_items, len(data.load_task("hyperbaton")))
    cloze_items = min(fid.cloze_items, len(data.load_task("cloze")))
    tally = Tally(
        frame=before.frame,
        reference=before.reference,
        windows=n_windows,
        nll=before.nll + nll,
        tokens=before.tokens + tokens,
        kld=(*before.kld, *kld),
        hyperbaton=(*before.hyperbaton, *_hyperbaton_hits(model, tokenizer, len(before.hyperbaton), hyper_items)),
        cloze=(
            *before.cloze,
            *_cloze_hits(model, tokenizer, len(before.cloze), cloze_items, fid.cloze_context),
        ),
    )
    klds = sorted(tally.kld)
    quality = Quality(
        ppl=math.exp(tally.nll / tally.tokens),
        hyperbaton_acc=sum(tally.hyperbaton) / hyper_items if hyper_items else None,
        cloze_acc=sum(tally.cloze) / cloze_items if cloze_items else None,
        ppl_tokens=n_windows * fid.seq_len,
        hyperbaton_items=hyper_items,
        cloze_items=cloze_items,
        seconds=time.perf_counter() - start,
        kld_mean=sum(tally.kld) / len(tally.kld) if tally.kld else None,
        kld_p99=klds[min(len(klds) - 1, int(0.99 * len(klds)))] if klds else None,
    )
    quality._reference = kept
    quality._tally = tally
    return quality
