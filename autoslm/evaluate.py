"""Quality of a (compressed) model on real held-out text: perplexity and two zero-shot tasks.

Deterministic: fixed windows and items, no sampling. A `Fidelity` says how much text and how many items to use;
the low-fidelity preset evaluates a prefix of what the full one evaluates, so it is a cheap, correlated estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from autoslm import data

if TYPE_CHECKING:
    import torch

HYPERBATON_PREFIX = "Here is the"


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
    """Quality figures of one model at one fidelity."""

    ppl: float
    hyperbaton_acc: float | None
    cloze_acc: float | None
    ppl_tokens: int
    hyperbaton_items: int
    cloze_items: int
    seconds: float


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


def perplexity(model: Any, tokenizer: Any, fidelity: Fidelity | None = None, *, batch_size: int = 2) -> float:
    """exp(mean next-token NLL) over `ppl_tokens` of held-out text in independent windows of `seq_len`."""
    import torch

    fid = fidelity or Fidelity()
    count = max(1, fid.ppl_tokens // fid.seq_len)
    windows = data.token_windows(tokenizer, fid.corpus, seq_len=fid.seq_len, count=count, seed=fid.seed)
    total_nll, total = 0.0, 0
    with torch.inference_mode():
        for batch in windows.split(batch_size):
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += float(nll)
            total += batch[:, 1:].numel()
    return math.exp(total_nll / total)


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
    for i in range(len(pairs)):
        yield results[i]


def hyperbaton_accuracy(model: Any, tokenizer: Any, items: int = 150, *, batch_size: int = 64) -> float:
    """Share of adjective-order pairs where the correct phrase has the higher likelihood after a fixed prefix."""
    examples = data.load_task("hyperbaton")[:items]
    prefix = tokenizer(HYPERBATON_PREFIX, add_special_tokens=False)["input_ids"]
    pairs = []
    for ex in examples:
        for key in ("a", "b"):
            pairs.append((prefix, tokenizer(" " + ex[key], add_special_tokens=False)["input_ids"]))
    scores = [float(lp.sum()) for lp, _ in _continuation_logprobs(model, tokenizer, pairs, batch_size)]
    correct = sum((scores[2 * i] > scores[2 * i + 1]) == (ex["correct"] == "a") for i, ex in enumerate(examples))
    return correct / max(1, len(examples))


def cloze_accuracy(
    model: Any, tokenizer: Any, items: int = 80, *, context_tokens: int = 48, batch_size: int = 16
) -> float:
    """Share of held-out paragraphs whose last word greedy decoding reproduces exactly (LAMBADA-style).

    The paragraph before the word is cut to its last `context_tokens` tokens to bound the cost.
    """
    examples = data.load_task("cloze")[:items]
    pairs = [
        (
            tokenizer(ex["context"], add_special_tokens=False)["input_ids"][-context_tokens:],
            tokenizer(" " + ex["target"], add_special_tokens=False)["input_ids"],
        )
        for ex in examples
    ]
    hits = [bool(hit.all()) for _, hit in _continuation_logprobs(model, tokenizer, pairs, batch_size)]
    return sum(hits) / max(1, len(hits))


def evaluate(model: Any, tokenizer: Any, fidelity: Fidelity | str = "full") -> Quality:
    """Perplexity plus both task accuracies at the given fidelity (a preset name or a Fidelity)."""
    fid = Fidelity.preset(fidelity) if isinstance(fidelity, str) else fidelity
    start = time.perf_counter()
    ppl = perplexity(model, tokenizer, fid)
    hyper = hyperbaton_accuracy(model, tokenizer, fid.hyperbaton_items) if fid.hyperbaton_items else None
    cloze = (
        cloze_accuracy(model, tokenizer, fid.cloze_items, context_tokens=fid.cloze_context) if fid.cloze_items else None
    )
    n_windows = max(1, fid.ppl_tokens // fid.seq_len)
    return Quality(
        ppl=ppl,
        hyperbaton_acc=hyper,
        cloze_acc=cloze,
        ppl_tokens=n_windows * fid.seq_len,
        hyperbaton_items=min(fid.hyperbaton_items, len(data.load_task("hyperbaton"))),
        cloze_items=min(fid.cloze_items, len(data.load_task("cloze"))),
        seconds=time.perf_counter() - start,
    )
