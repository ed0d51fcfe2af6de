"""Is searching combinations worth it? The search over the whole space vs each technique searched alone.

    python benchmarks/search_vs_single.py [--model smollm2-135m] [--budget "decode_ms<=0.6x"] [--trials 6]
                                          [--out runs/bench-search] [--json docs/results/search_vs_single.json]

Every search uses the same engine, trial count, seed, budget and full-fidelity quality. The single-technique spaces
are the default space cut down to one technique, always on, with the same ranges. Each search measures its own
baseline first (budgets are relative to it). distill.kd is not searched alone: it only recovers quality after
another technique and compresses nothing. Runs one search after the other in this process; re-running continues
any search already in --out (--resume).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from autoslm.quiet import quiet_libraries

SINGLES = ["prune.depth", "prune.width", "quant.dynamic_int8", "quant.weight_only", "cast.dtype"]


def single_space(default: dict, technique: str, folder: Path) -> Path:
    doc = {
        "description": f"{technique} alone (the default space's ranges)",
        "techniques": {technique: default["techniques"][technique]},
        "required": [technique],
    }
    path = folder / f"only-{technique}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def summarise(name: str, result, seconds: float) -> dict:
    rows = result.trials
    best = result.best
    base = result.baseline
    return {
        "search": name,
        "trials": len(rows),
        "feasible": sum(1 for r in rows if r.feasible and r.quality),
        "best_ppl": best.ppl if best else None,
        "best_policy": best.steps if best else None,
        "best_decode_ratio": best.metrics["decode_ms"] / base["metrics"]["decode_ms"] if best else None,
        "baseline_ppl": base["ppl"],
        "baseline_decode_ms": base["metrics"]["decode_ms"],
        "minutes": seconds / 60,
    }


def short(steps: list[dict] | None) -> str:
    if not steps:
        return "-"
    return " + ".join(
        s["technique"] + "(" + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in s["params"].items()) + ")"
        for s in steps
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budget", default="decode_ms<=0.6x")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-search"))
    ap.add_argument("--only", nargs="*", help="run only these searches (combined and/or technique names)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    quiet_libraries()
    import autoslm
    from autoslm.searching.space import find_space_file

    args.out.mkdir(parents=True, exist_ok=True)
    default = yaml.safe_load(find_space_file("default").read_text())
    plan = [("combined (default space)", "default")]
    plan += [(t, str(single_space(default, t, args.out))) for t in SINGLES]
    summary = []
    for name, space in plan:
        if args.only and name.split(" ")[0] not in args.only:
            continue
        out = args.out / name.split(" ")[0]
        t0 = time.perf_counter()
        print(f"--- {name}: {args.trials} trials, budget {args.budget}", flush=True)
        result = autoslm.search(
            model=args.model, budget=args.budget, space=space, trials=args.trials, out=out,
            resume=(out / "study.db").exists(), seed=args.seed,
        )  # fmt: skip
        row = summarise(name, result, time.perf_counter() - t0)
        summary.append(row)
        best = f"{row['best_ppl']:.2f}" if row["best_ppl"] else "none feasible"
        print(f"    best ppl {best}  {short(row['best_policy'])}  ({row['minutes']:.1f} min)", flush=True)

    print(f"\nbudget {args.budget}, {args.trials} trials per search, model {args.model}")
    print(f"{'search':<26} {'feasible':>8} {'best ppl':>9} {'decode':>7}  best policy")
    for r in summary:
        ppl = f"{r['best_ppl']:.2f}" if r["best_ppl"] else "-"
        ratio = f"{r['best_decode_ratio']:.2f}x" if r["best_decode_ratio"] else "-"
        print(f"{r['search']:<26} {r['feasible']:>4}/{r['trials']:<3} {ppl:>9} {ratio:>7}  {short(r['best_policy'])}")
    combined = next((r for r in summary if r["search"].startswith("combined")), None)
    singles = [r for r in summary if not r["search"].startswith("combined") and r["best_ppl"]]
    if combined and combined["best_ppl"] and singles:
        top = min(singles, key=lambda r: r["best_ppl"])
        ratio = combined["best_ppl"] / top["best_ppl"]
        verdict = "no worse" if combined["best_ppl"] <= top["best_ppl"] * 1.0001 else "WORSE"
        print(f"\ncombined best ppl / best single-technique ppl ({top['search']}) = {ratio:.4f}  -> {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
