"""Sensitivity: how much the model's next-token distribution moves when one weight tensor alone is perturbed (for
example quantized to a low-bit type), for every tensor -- the structure a per-tensor precision search works from.

`measure` computes, for each tensor, the mean KL divergence (nats per token) between the unchanged model's and the
perturbed model's next-token distributions on calibration windows. The input of every decoder block is recorded
once, so a tensor of block i costs a forward pass through blocks i..N only (about half a model on average); a model
whose blocks cannot be replayed that way is run whole. `SensitivityTable` holds the figures with what they cost, is
stored as JSON in the run directory and drawn as a heat map (blocks x tensor classes) in the report.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoslm import progress
from autoslm.run_dir import RunDir

_BLOCK = re.compile(r"^blk\.(?P<block>\d+)\.(?P<cls>.+)$")
_BLOCK_NAME = re.compile(r"^blk\.\d{1,4}\.[a-z_]{1,32}$")


def block_key(name: str) -> tuple[int, str]:
    """Sort key of a block tensor name (blk.N.CLASS): by block number, then class; other names first."""
    parts = name.split(".")
    return (int(parts[1]), parts[2]) if len(parts) == 3 and parts[1].isdigit() else (-1, name)


def block_assignment(value: dict[str, Any], what: str) -> dict[str, Any]:
    """A per-tensor assignment (blk.N.CLASS -> value) in block order; ValueError naming `what` for other names."""
    bad = [name for name in value if not _BLOCK_NAME.match(name)]
    if bad:
        raise ValueError(f"{what} names must look like blk.N.attn_v, not {bad[:3]}")
    return dict(sorted(value.items(), key=lambda kv: block_key(kv[0])))


def check_shares(raise_fraction: float, lower_fraction: float) -> None:
    if raise_fraction + lower_fraction > 1.0 + 1e-9:
        raise ValueError("raise_fraction + lower_fraction must not exceed 1")


def describe_blocks(names: Any) -> str:
    """'blocks blk.0 to blk.N with attn_k, attn_q, ...': what a model has, for an assignment that does not fit."""
    last = max((block_key(n)[0] for n in names), default=-1)
    return f"blocks blk.0 to blk.{last} with {', '.join(sorted({n.split('.')[2] for n in names}))}"


@dataclass
class SensitivityTable:
    """Per tensor: KL divergence when only it is perturbed (`probe` says how), and its number of values."""

    probe: str
    tokens: int
    seconds: float
    fingerprint: str
    kld: dict[str, float] = field(default_factory=dict)
    numel: dict[str, int] = field(default_factory=dict)
    method: str = "measured"  # or "estimated, N draws" (`estimate`)

    def density(self, name: str) -> float:
        """KL divergence per million values: what raising (or lowering) this tensor buys (costs) per bit spent."""
        return self.kld[name] / max(self.numel[name], 1) * 1e6

    def ranked(self) -> list[str]:
        """Tensor names, most sensitive per value first (ties by name: the order is deterministic)."""
        return sorted(self.kld, key=lambda n: (-self.density(n), n))

    def grid(self) -> tuple[list[int], list[str], list[list[float | None]]]:
        """(blocks, tensor classes, kld[block][class]) for the tensors named blk.N.CLASS."""
        cells: dict[tuple[int, str], float] = {}
        for name, value in self.kld.items():
            m = _BLOCK.match(name)
            if m:
                cells[(int(m["block"]), m["cls"])] = value
        blocks = sorted({b for b, _ in cells})
        classes = sorted({c for _, c in cells}, key=_class_order)
        return blocks, classes, [[cells.get((b, c)) for c in classes] for b in blocks]

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # workers of one search may write the same table at once
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> SensitivityTable:
        raw = json.loads(Path(path).read_text())
        table = cls(**{k: raw[k] for k in ("probe", "tokens", "seconds", "fingerprint", "kld", "numel")})
        table.method = str(raw.get("method", "measured"))  # tables written before estimates existed: measured
        return table


def rank_correlation(a: SensitivityTable, b: SensitivityTable) -> float:
    """Spearman's rank correlation of two tables' per-value densities over the tensors both name (the ranking
    `split` works from): 1 when they rank the tensors alike."""
    names = sorted(set(a.kld) & set(b.kld))
    ra, rb = _ranks([a.density(n) for n in names]), _ranks([b.density(n) for n in names])
    mean = (len(names) + 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb, strict=True))
    spread = (sum((x - mean) ** 2 for x in ra) * sum((y - mean) ** 2 for y in rb)) ** 0.5
    return cov / spread if spread else 0.0


def _ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def split(
    table: SensitivityTable,
    raise_fraction: float,
    lower_fraction: float,
    can_raise: Callable[[str], bool] = lambda _n: True,
    can_lower: Callable[[str], bool] = lambda _n: True,
) -> tuple[set[str], set[str]]:
    """(raised, lowered): the most sensitive tensors (per value) holding `raise_fraction` of all the table's values,
    among those `can_raise` accepts, and the least sensitive holding `lower_fraction`, among those `can_lower`
    accepts and not raised. A tensor is taken while at least half of it fits in the share. Deterministic: a function
    of the table and the arguments."""
    ranked = table.ranked()
    total = sum(table.numel[n] for n in ranked)
    raised = _prefix([n for n in ranked if can_raise(n)], table.numel, raise_fraction * total)
    down = [n for n in reversed(ranked) if n not in raised and can_lower(n)]
    return raised, _prefix(down, table.numel, lower_fraction * total)


def _prefix(names: list[str], numel: dict[str, int], target: float) -> set[str]:
    chosen: set[str] = set()
    used = 0
    for name in names:
        if used + numel[name] / 2 > target:
            break
        chosen.add(name)
        used += numel[name]
    return chosen


_CLASS_ORDER = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _class_order(name: str) -> tuple[int, str]:
    return (_CLASS_ORDER.index(name) if name in _CLASS_ORDER else len(_CLASS_ORDER), name)


def measure(
    model: Any,
    windows: Any,
    tensors: dict[str, str],
    perturb: Callable[[str, Any], Any],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """KL divergence per tensor. `tensors`: module name -> the name to report it under; `perturb(name, weight)`
    returns the weight to try in its place (the original is restored afterwards, also on error)."""
    import torch

    with torch.inference_mode():
        reference = torch.log_softmax(model(input_ids=windows, use_cache=False).logits.float(), -1)
        probs = reference.exp()
        replay = _BlockReplay.record(model, windows, reference)
        out: dict[str, float] = {}
        for i, (module_name, key) in enumerate(tensors.items()):
            module = model.get_submodule(module_name)
            original = module.weight.data
            module.weight.data = perturb(key, original)
            try:
                logits = replay.logits_from(module_name) if replay else model(input_ids=windows, use_cache=False).logits
            finally:
                module.weight.data = original
            log_q = torch.log_softmax(logits.float(), -1)
            # >= 0 in exact arithmetic; float32 rounding leaves about -1e-8 where nothing changed
            out[key] = max(0.0, float((probs * (reference - log_q)).sum(-1).mean()))
            if progress is not None:
                progress(i + 1, len(tensors))
        return out


def estimate(
    model: Any,
    windows: Any,
    tensors: dict[str, str],
    perturb: Callable[[str, Any], Any],
    draws: int = 4,
    seed: int = 0,
    diagonal: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """`measure`'s figures estimated to second order from gradients, every tensor from the same `draws` backward
    passes instead of one forward pass each. For a small change d of the weights, the mean KL divergence per token
    is about d'Fd / 2T, F the Fisher information of the model's own next-token distribution summed over the T
    positions. Each draw samples a next token per position from the unchanged model and takes the gradient g of
    their summed log-probabilities: E[g g'] = F. `diagonal` sums (g * d)^2 over the tensor's values (F's diagonal;
    what quantization noise, independent per value, sees on average); otherwise (g . d)^2, the whole quadratic form
    from one number per draw (unbiased, noisier). A tensor's gradient is used as soon as it is complete and dropped:
    memory holds one tensor's gradient and change at a time, not a copy of the model."""
    import torch

    weights = {key: model.get_submodule(name).weight for name, key in tensors.items()}
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    sums = dict.fromkeys(weights, 0.0)

    def hook(key: str) -> Callable[[Any], None]:
        def use(weight: Any) -> None:
            w = weight.detach()
            delta = (perturb(key, w) - w).float()
            g = weight.grad.float()
            sums[key] += float(((g * delta) ** 2).sum()) if diagonal else float((g * delta).sum()) ** 2
            weight.grad = None

        return use

    handles = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for key, w in weights.items():
            w.requires_grad_(True)
            handles.append(w.register_post_accumulate_grad_hook(hook(key)))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            logits = model(input_ids=windows, use_cache=False).logits.float()
            probs = torch.softmax(logits.reshape(-1, logits.shape[-1]), -1)
            labels = torch.multinomial(probs, draws, replacement=True, generator=generator)  # (positions, draws)
        for d in range(draws):
            logp = torch.log_softmax(model(input_ids=windows, use_cache=False).logits.float(), -1)
            logp.reshape(-1, logp.shape[-1]).gather(1, labels[:, d : d + 1]).sum().backward()
            if progress is not None:
                progress(d + 1, draws)
    finally:
        for h in handles:
            h.remove()
        for name, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(trainable[name])
    return {key: total / (2 * draws * int(windows.numel())) for key, total in sums.items()}


class _BlockReplay:
    """The input of every decoder block, recorded on one forward pass, so that the model's output after a change in
    block i is computed from block i onwards. Used only when replaying from block 0 reproduces the model's logits."""

    def __init__(self, model: Any, blocks: Any, prefix: str, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]):
        self.model, self.blocks, self.prefix, self.calls = model, blocks, prefix, calls

    @classmethod
    def record(cls, model: Any, windows: Any, reference: Any) -> _BlockReplay | None:
        import torch

        inner = getattr(model, "model", None)
        blocks = getattr(inner, "layers", None)
        if not isinstance(blocks, torch.nn.ModuleList) or not hasattr(inner, "norm") or not hasattr(model, "lm_head"):
            return None
        if getattr(model.config, "final_logit_softcapping", None):
            return None
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        handles = [
            b.register_forward_pre_hook(lambda _m, a, k: calls.append((a, dict(k))), with_kwargs=True) for b in blocks
        ]
        try:
            model(input_ids=windows, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        prefix = next(n for n, m in model.named_modules() if m is blocks)
        replay = cls(model, blocks, prefix, calls)
        if len(calls) != len(blocks):
            return None
        same = torch.allclose(torch.log_softmax(replay.run(0).float(), -1), reference, atol=1e-4, rtol=1e-4)
        return replay if same else None

    def logits_from(self, module_name: str) -> Any:
        rest = module_name.removeprefix(self.prefix + ".")
        first = int(rest.split(".")[0]) if rest != module_name and rest.split(".")[0].isdigit() else 0
        return self.run(first)

    def run(self, first: int) -> Any:
        args, kwargs = self.calls[first]
        hidden = args[0] if args else kwargs["hidden_states"]
        for block, (a, k) in zip(self.blocks[first:], self.calls[first:], strict=True):
            out = block(hidden, *a[1:], **k) if a else block(**{**k, "hidden_states": hidden})
            hidden = out[0] if isinstance(out, tuple) else out
        return self.model.lm_head(self.model.model.norm(hidden))


def tensor_table(
    model: Any,
    windows: Any,
    tensors: dict[str, str],
    perturb: Callable[[str, Any], Any],
    probe: str,
    progress: Callable[[int, int], None] | None = None,
    draws: int = 0,
    fingerprint_: str | None = None,
) -> SensitivityTable:
    """`measure` (`draws` 0) or `estimate` with `draws` backward passes, timed and packed with each tensor's size
    and the model's fingerprint (`fingerprint_`, or the torch model's own)."""
    from autoslm.models import fingerprint

    t0 = time.perf_counter()
    if draws:
        kld = estimate(model, windows, tensors, perturb, draws=draws, progress=progress)
    else:
        kld = measure(model, windows, tensors, perturb, progress)
    numel = {key: int(model.get_submodule(name).weight.numel()) for name, key in tensors.items()}
    return SensitivityTable(
        probe=probe,
        tokens=int(windows.numel()),
        seconds=round(time.perf_counter() - t0, 2),
        fingerprint=fingerprint_ or fingerprint(model),
        kld=kld,
        numel=numel,
        method=f"estimated, {draws} draws" if draws else "measured",
    )


TABLES: dict[str, SensitivityTable] = {}  # fingerprint:probe:samples:seq_len -> table, this process


def _load_for_table(files: Any, tensors: dict[str, str]) -> Any:
    """The torch model of `files`, for a table; its modules must be the weight files' names."""
    from autoslm.models import load_model

    with progress.phase("loading the model into torch for the table"):
        model = load_model(files.spec).model
    missing = [m for m in tensors if not hasattr(_submodule(model, m), "weight")]
    if missing:
        raise RuntimeError(f"the torch model has no module {missing[0]} that its weight files name")
    return model


def _submodule(model: Any, name: str) -> Any:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def cached_table(
    model: Any,
    ctx: Any,
    tensors: dict[str, str],
    probe: str,
    perturb: Callable[[str, Any], Any],
    samples: int,
    seq_len: int,
    draws: int = 0,
) -> SensitivityTable:
    """The model's table at `probe` over `samples` calibration windows (`ctx`: the technique's ApplyContext): from
    this process's cache, from the run directory (`RUN/sensitivity/<fingerprint>-<probe>-SxL[-eN].json`), or
    measured (`draws` 0) or estimated from `draws` backward passes, and stored there (the report draws it). A
    damaged or foreign file is measured again. `model`: a torch model, or `ModelFiles` (loaded into torch only to
    make the table, and let go)."""
    from autoslm.models import ModelFiles, fingerprint

    files = model if isinstance(model, ModelFiles) else None
    fp = files.fingerprint if files is not None else fingerprint(model)
    key = f"{fp}:{probe}:{samples}:{seq_len}:{draws}"
    name = f"{fp[:16]}-{samples}x{seq_len}" if probe == "Q4_0" else f"{fp[:16]}-{probe}-{samples}x{seq_len}"
    name += f"-e{draws}.json" if draws else ".json"
    path = RunDir(ctx.run_dir).sensitivity / name if ctx.run_dir else None
    if key in TABLES:
        if path is not None and not path.is_file():
            TABLES[key].save(path)  # measured for another run in this process: this run's report shows it too
        return TABLES[key]
    table = None
    if path is not None and path.is_file():
        try:
            table = SensitivityTable.load(path)
        except (ValueError, KeyError, TypeError):
            table = None  # damaged (a crash while writing): measure again
        if table is not None and (table.fingerprint != fp or table.probe != probe):
            table = None
    if table is None:
        windows = ctx.calibration(samples=samples, seq_len=seq_len)
        how = f"estimating ({draws} backward passes)" if draws else "measuring"
        ctx.logger.info("%s the sensitivity of %d tensors at %s", how, len(tensors), probe)
        torch_model = _load_for_table(files, tensors) if files is not None else model
        with progress.phase(f"sensitivity of {len(tensors)} tensors at {probe}", total=draws or len(tensors)):
            table = tensor_table(
                torch_model, windows, tensors, perturb, probe, progress=progress.step, draws=draws, fingerprint_=fp
            )
        del torch_model  # a model loaded for the table alone is let go here
        if path is not None:
            table.save(path)
    if len(TABLES) >= 4:
        TABLES.pop(next(iter(TABLES)))
    TABLES[key] = table
    return table


def heatmap(
    table: SensitivityTable, path: Path, chosen: dict[str, str] | None = None, order: Callable[[str], Any] = str
) -> Path:
    """The table as a picture: blocks down, tensor classes across, colour = log10 KL divergence; with `chosen`
    (tensor -> type) a second panel shows the assignment a search picked, its legend sorted by `order`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    blocks, classes, grid = table.grid()
    values = np.array([[np.nan if v is None else np.log10(max(v, 1e-9)) for v in row] for row in grid])
    panels = 2 if chosen else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 1.2, 0.22 * len(blocks) + 1.8), dpi=110)
    axes = np.atleast_1d(axes)
    im = axes[0].imshow(values, aspect="auto", cmap="magma")
    axes[0].set_title(f"sensitivity: log10 KLD with one tensor at {table.probe}", fontsize=9)
    fig.colorbar(im, ax=axes[0], fraction=0.05)
    if chosen:
        types = sorted({chosen.get(f"blk.{b}.{c}", "-") for b in blocks for c in classes}, key=order)
        codes = np.array([[types.index(chosen.get(f"blk.{b}.{c}", "-")) for c in classes] for b in blocks])
        cmap = plt.get_cmap("viridis", len(types))
        im2 = axes[1].imshow(codes, aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(types) - 0.5)
        bar = fig.colorbar(im2, ax=axes[1], fraction=0.05, ticks=range(len(types)))
        bar.ax.set_yticklabels(types, fontsize=8)
        axes[1].set_title("chosen type per tensor", fontsize=9)
    for ax in axes:
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
        ax.set_ylabel("block")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = [
    "SensitivityTable",
    "block_assignment",
    "block_key",
    "cached_table",
    "check_shares",
    "describe_blocks",
    "estimate",
    "heatmap",
    "measure",
    "rank_correlation",
    "split",
    "tensor_table",
]  # fmt: skip
