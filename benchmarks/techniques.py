"""Each built-in technique at two or three settings against the uncompressed baseline, in one run.

    python benchmarks/techniques.py [--model smollm2-135m] [--only NAME ...] [--json out.json]

For every setting: apply to a fresh copy of the base model, save the checkpoint, measure it on this CPU in a fresh
process (decode ms/token, memory MB, size MB), and evaluate quality at full fidelity (held-out perplexity, two
task accuracies). The baseline is measured first and last; speedups are against the mean of the two, so a drift
of the machine during the run shows up as a difference between them (printed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from autoslm.quiet import quiet_libraries

SETTINGS: list[tuple[str, list[dict]]] = [
    ("prune.depth 3 blocks", [{"technique": "prune.depth", "params": {"blocks": 3}}]),
    ("prune.depth 6 blocks", [{"technique": "prune.depth", "params": {"blocks": 6}}]),
    ("prune.width MLP -20%", [{"technique": "prune.width", "params": {"mlp_ratio": 0.2}}]),
    ("prune.width 1 head/group", [{"technique": "prune.width", "params": {"heads_per_group": 1}}]),
    ("lowrank.svd MLP rank 0.65", [{"technique": "lowrank.svd", "params": {"rank_ratio": 0.65}}]),
    (
        "depth 6 + distill.kd 30 steps",
        [
            {"technique": "prune.depth", "params": {"blocks": 6}},
            {"technique": "distill.kd", "params": {"steps": 30}},
        ],
    ),
    ("weight_only RTN int8 g32", [{"technique": "quant.weight_only", "params": {"bits": 8}}]),
    ("weight_only RTN int4 g32", [{"technique": "quant.weight_only", "params": {"bits": 4}}]),
    ("weight_only AWQ int4 g32", [{"technique": "quant.weight_only", "params": {"bits": 4, "algorithm": "awq"}}]),
    (
        "dynamic_int8 plain (per-tensor)",
        [{"technique": "quant.dynamic_int8", "params": {"smooth_alpha": 0.0, "weight_scheme": "per_tensor"}}],
    ),
    ("dynamic_int8 per-channel + smooth 0.5", [{"technique": "quant.dynamic_int8", "params": {"smooth_alpha": 0.5}}]),
    (
        "dynamic_int8 smooth 0.5 + 20 fp32 layers",
        [{"technique": "quant.dynamic_int8", "params": {"smooth_alpha": 0.5, "keep_fp32": 20}}],
    ),
    (
        "dynamic_int8 smooth 0.5 + int8 lm_head",
        [{"technique": "quant.dynamic_int8", "params": {"smooth_alpha": 0.5, "include_lm_head": True}}],
    ),
    ("cast.dtype bf16", [{"technique": "cast.dtype", "params": {"dtype": "bfloat16"}}]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--only", nargs="*", help="substrings of setting names to run")
    ap.add_argument("--json", type=Path, help="also write all rows as JSON")
    args = ap.parse_args()
    quiet_libraries()

    from autoslm import checkpoint
    from autoslm.errors import UserError
    from autoslm.evaluate import evaluate
    from autoslm.models import count_parameters, load_model, resolve
    from autoslm.pipeline import Step, apply_steps
    from autoslm.targets import get_target
    from autoslm.technique import ApplyContext

    target = get_target("local")
    base_dir = resolve(args.model)
    settings = [s for s in SETTINGS if not args.only or any(o in s[0] for o in args.only)]

    def row(label: str, directory: Path, model, tokenizer, apply_s: float) -> dict:
        m = target.measure(directory)
        q = evaluate(model, tokenizer, "full")
        params = count_parameters(model)
        return {
            "setting": label,
            "params_m": params / 1e6,
            "size_mb": m.size_mb,
            "decode_ms": m.decode_ms,
            "memory_mb": m.memory_mb,
            "ppl": q.ppl,
            "hyperbaton": q.hyperbaton_acc,
            "cloze": q.cloze_acc,
            "apply_s": apply_s,
        }

    base = load_model(args.model)
    rows = [row("fp32 baseline", base_dir, base.model, base.tokenizer, 0.0)]
    print(f"fingerprint {target.fingerprint()}", flush=True)
    print(_fmt(rows[-1]), flush=True)
    refused: list[dict] = []
    for label, steps in settings:
        lm = load_model(args.model)
        ctx = ApplyContext(tokenizer=lm.tokenizer, teacher_factory=lambda: base.model)
        t0 = time.perf_counter()
        try:
            model = apply_steps(lm.model, [Step(**s) for s in steps], ctx)
        except UserError as exc:  # a setting this model's architecture does not take (e.g. 3 heads on Gemma-3)
            refused.append({"setting": label, "refused": str(exc)})
            print(f"{label}: refused: {exc}", flush=True)
            continue
        apply_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.save_dir(model, lm.tokenizer, Path(tmp))
            rows.append(row(label, Path(tmp), model, lm.tokenizer, apply_s))
        print(_fmt(rows[-1]), flush=True)
    end = target.measure(base_dir)
    base_decode = (rows[0]["decode_ms"] + end.decode_ms) / 2
    print(f"\nbaseline decode ms/token: {rows[0]['decode_ms']:.1f} first, {end.decode_ms:.1f} last\n")
    print(_table(rows, base_decode, rows[0]["ppl"]))
    for r in refused:
        print(f"refused: {r['setting']}: {r['refused']}")
    if args.json:
        args.json.write_text(json.dumps({"target": target.fingerprint(), "rows": rows, "refused": refused}, indent=2))


def _fmt(r: dict) -> str:
    return f"{r['setting']}: " + ", ".join(f"{k}={v:.3f}" for k, v in r.items() if isinstance(v, float))


def _table(rows: list[dict], base_decode: float, base_ppl: float) -> str:
    head = (
        "| setting | params M | size MB | decode ms/tok | decode speedup | memory MB | ppl | ppl vs fp32 "
        "| hyperbaton | cloze | apply s |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['params_m']:.1f} | {r['size_mb']:.0f} | {r['decode_ms']:.1f} "
            f"| {base_decode / r['decode_ms']:.2f}x | {r['memory_mb']:.0f} | {r['ppl']:.2f} "
            f"| {100 * (r['ppl'] / base_ppl - 1):+.1f}% | {100 * r['hyperbaton']:.1f}% | {100 * r['cloze']:.1f}% "
            f"| {r['apply_s']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
