"""Quality at budget: autoslm's best policy vs the best of each single technique, at several decode-time budgets.

    python benchmarks/quality_at_budget.py [--model smollm2-135m] [--budgets 0.8 0.6 0.4] [--trials 8]
                                           [--out runs/bench-budget] [--json FILE]

Single techniques are not searched but swept over a grid that covers their space (what one would try by hand):
neural-compressor weight-only RTN int8 and int4 (group 128), torch dynamic int8 (SmoothQuant 0.5, 0 or 20 most
sensitive layers kept fp32), depth pruning (2, 4, 6, 8 blocks), and the bf16 cast. Every grid point is
applied, saved, measured in a fresh process and evaluated at full fidelity once; a technique's best at a budget is
its lowest perplexity among the grid points within that budget. autoslm runs one search per budget over the
default space (warm start on, as shipped) with `--trials` trials. All budgets are relative to one baseline
measurement (the first search's; the others reuse it); the baseline is measured again at the end to show drift.
Re-running continues: grid points are kept in --out and the searches resume.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _candidates import build, share_baseline, slug  # benchmarks/ is on sys.path when a script in it runs

from autoslm.quiet import quiet_libraries

GRID: list[tuple[str, str, list[dict]]] = [
    (technique, label, [{"technique": name, "params": params}])
    for technique, label, name, params in [
        ("weight-only int8 RTN", "g128", "quant.weight_only", {"bits": 8, "group_size": 128}),
        ("weight-only int4 RTN", "g128", "quant.weight_only", {"bits": 4, "group_size": 128}),
        ("dynamic int8", "fp32 layers 0", "quant.dynamic_int8", {"smooth_alpha": 0.5, "keep_fp32": 0}),
        ("dynamic int8", "fp32 layers 20", "quant.dynamic_int8", {"smooth_alpha": 0.5, "keep_fp32": 20}),
        ("depth pruning", "2 blocks", "prune.depth", {"blocks": 2}),
        ("depth pruning", "4 blocks", "prune.depth", {"blocks": 4}),
        ("depth pruning", "6 blocks", "prune.depth", {"blocks": 6}),
        ("depth pruning", "8 blocks", "prune.depth", {"blocks": 8}),
        ("bf16 cast", "bf16", "cast.dtype", {"dtype": "bfloat16"}),
    ]
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.8, 0.6, 0.4])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-budget"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    quiet_libraries()
    import autoslm
    from autoslm import checkpoint
    from autoslm.evaluate import evaluate
    from autoslm.models import resolve
    from autoslm.search_view import policy_text
    from autoslm.targets import get_target

    args.out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(args.out / 'studies.db').resolve()}"
    target = get_target("local")
    cache = args.out / "grid.json"
    grid_rows: dict[str, dict] = json.loads(cache.read_text()) if cache.exists() else {}
    searches: dict[float, dict] = {}
    baseline = None

    def run_search(fraction: float) -> None:
        nonlocal baseline
        name = f"budget-{fraction:g}x"
        share_baseline(storage, name, baseline)  # one baseline for all: the same ms figure behind every budget
        print(f"--- autoslm search, budget decode_ms<={fraction:g}x, {args.trials} trials", flush=True)
        t0 = time.perf_counter()
        result = autoslm.search(
            model=args.model, budget=f"decode_ms<={fraction:g}x", trials=args.trials, out=args.out / name,
            resume=True, storage=storage, study=name, seed=args.seed,
        )  # fmt: skip
        baseline = baseline or result.baseline
        best = result.best
        searches[fraction] = {
            "best_ppl": best.ppl if best else None,
            "best_policy": best.steps if best else None,
            "best_decode_ratio": best.metrics["decode_ms"] / baseline["metrics"]["decode_ms"] if best else None,
            "feasible": sum(1 for r in result.trials if r.feasible and r.quality),
            "minutes": (time.perf_counter() - t0) / 60,
        }
        s = searches[fraction]
        text = f"{s['best_ppl']:.2f} at {s['best_decode_ratio']:.2f}x" if best else "nothing feasible"
        print(f"    best {text}: {policy_text(best.steps) if best else '-'} ({s['minutes']:.1f} min)", flush=True)

    run_search(args.budgets[0])
    assert baseline is not None
    base_ms = baseline["metrics"]["decode_ms"]
    for technique, label, steps in GRID:
        key = f"{technique} {label}"
        if key not in grid_rows:
            try:
                directory, apply_s = build(args.model, steps, args.out / "grid" / slug(args.model, key))
            except Exception as exc:  # e.g. a model too shallow for depth pruning: leave that grid point out
                print(f"grid {key:<36} skipped: {exc}", flush=True)
                continue
            m = target.measure(directory)
            model, tokenizer = checkpoint.load_dir(directory)
            q = evaluate(model, tokenizer, "full")
            del model
            grid_rows[key] = {
                "technique": technique, "label": label, "steps": steps, "decode_ms": m.decode_ms,
                "memory_mb": m.memory_mb, "size_mb": m.size_mb, "ppl": q.ppl, "apply_s": apply_s,
            }  # fmt: skip
            cache.write_text(json.dumps(grid_rows, indent=2))
        g = grid_rows[key]
        print(f"grid {key:<36} decode {g['decode_ms']:7.2f} ms ({g['decode_ms'] / base_ms:.2f}x)  "
              f"ppl {g['ppl']:8.2f}", flush=True)  # fmt: skip
    for fraction in args.budgets[1:]:
        run_search(fraction)
    end = target.measure(resolve(args.model))

    print(
        f"\n{args.model}; baseline decode {base_ms:.1f} ms/token (measured again at the end: {end.decode_ms:.1f}), "
        f"ppl {baseline['ppl']:.2f}; autoslm: {args.trials} trials per budget, default space, seed {args.seed}"
    )
    techniques = list(dict.fromkeys(t for t, _, _ in GRID))
    head = f"{'best perplexity within budget':<32}" + "".join(f"{f'<= {f:g}x':>24}" for f in args.budgets)
    print(head)
    table: dict[str, dict[float, dict | None]] = {}
    for technique in techniques:
        cells = []
        table[technique] = {}
        for fraction in args.budgets:
            ok = [g for g in grid_rows.values() if g["technique"] == technique and g["decode_ms"] <= fraction * base_ms]
            best = min(ok, key=lambda g: g["ppl"]) if ok else None
            table[technique][fraction] = best
            cells.append(f"{best['ppl']:.2f} ({best['label']})" if best else "- (none within)")
        print(f"{technique:<32}" + "".join(f"{c:>24}" for c in cells))
    cells = []
    for fraction in args.budgets:
        s = searches[fraction]
        cells.append(f"{s['best_ppl']:.2f} ({s['best_decode_ratio']:.2f}x)" if s["best_ppl"] else "- (none found)")
    print(f"{'autoslm search':<32}" + "".join(f"{c:>24}" for c in cells))
    print("\nautoslm's best policy per budget:")
    for fraction in args.budgets:
        s = searches[fraction]
        singles = [table[t][fraction]["ppl"] for t in techniques if table[t][fraction]]
        vs = f"; best single {min(singles):.2f}" if singles else "; no single technique within budget"
        pol = policy_text(s["best_policy"]) if s["best_policy"] else "-"
        print(f"  <= {fraction:g}x: {pol} ({s['feasible']}/{args.trials} trials feasible, {s['minutes']:.0f} min{vs})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"baseline": baseline, "baseline_end_decode_ms": end.decode_ms,
                                         "grid": grid_rows, "searches": searches}, indent=2, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
