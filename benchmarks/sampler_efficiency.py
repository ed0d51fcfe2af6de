"""Search efficiency: TPE vs random sampling, best feasible perplexity after each trial, over several seeds.

    python benchmarks/sampler_efficiency.py [--model smollm2-135m] [--budget "decode_ms<=0.7x"] [--trials 8]
                                            [--seeds 0 1 2] [--without distill.kd cast.dtype] [--out runs/bench-sampler]
                                            [--json FILE]

Every search runs the default space less the techniques in --without (by default distill.kd: its 20 steps take
~2 min per trial on this 2-core CPU, more than the rest of a trial; and cast.dtype: bf16 alone is a near-free
0.5x at this budget, found by the warm start in trial 0, so it leaves the samplers nothing to find, and on a CPU
without bf16 instructions its perplexity evaluation takes ~7x longer) with the same budget, trial count and
full-fidelity quality, without the warm start (so the samplers alone choose every trial). TPE's first 5 trials
are random (n_startup_trials=5) and drawn from the same seeded generator as the random sampler's, so with equal
seeds the two searches start with the same policies (the script prints how many leading trials are shared): the
curves differ only where TPE's model takes over.
All searches share one measured baseline (the first search measures it, the others reuse it), so the budget is
the same number of ms for all of them. Searches are interleaved (tpe seed 0, random seed 0, tpe seed 1, ...) so a
drift of the machine touches both samplers alike. One SQLite file holds every study; re-running continues.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _candidates import share_baseline  # benchmarks/ is on sys.path when a script in it runs

from autoslm.quiet import quiet_libraries
from autoslm.searching import TrialRecord

SAMPLERS = ("tpe", "random")


def best_so_far(rows: list[TrialRecord], trials: int) -> list[float | None]:
    """Best feasible perplexity after trial 1, 2, ..., `trials` (None until one is feasible)."""
    ordered = sorted(rows, key=lambda r: r.number)[:trials]
    curve: list[float | None] = []
    best: float | None = None
    for r in ordered:
        if r.feasible and r.quality and r.ppl is not None and (best is None or r.ppl < best):
            best = r.ppl
        curve.append(best)
    return curve + [best] * (trials - len(curve))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budget", default="decode_ms<=0.7x")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--without", nargs="*", default=["distill.kd", "cast.dtype"], help="techniques left out of the default space"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench-sampler"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    quiet_libraries()
    import yaml

    import autoslm
    from autoslm.searching.space import find_space_file

    args.out.mkdir(parents=True, exist_ok=True)
    space = yaml.safe_load(find_space_file("default").read_text())
    space["techniques"] = {k: v for k, v in space["techniques"].items() if k not in args.without}
    space["description"] = f"the default space without {', '.join(args.without) or 'nothing'}"
    space_file = args.out / "space.yaml"
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    storage = f"sqlite:///{(args.out / 'studies.db').resolve()}"
    baseline = None
    curves: dict[str, dict[int, list[float | None]]] = {s: {} for s in SAMPLERS}
    feasible: dict[str, dict[int, int]] = {s: {} for s in SAMPLERS}
    hashes: dict[str, dict[int, list[str]]] = {s: {} for s in SAMPLERS}
    minutes: dict[str, float] = {s: 0.0 for s in SAMPLERS}
    for seed in args.seeds:
        for sampler in SAMPLERS:
            name = f"{sampler}-seed{seed}"
            share_baseline(storage, name, baseline)  # the first search's: same budget in ms for every search
            print(f"--- {name}: {args.trials} trials, budget {args.budget}", flush=True)
            t0 = time.perf_counter()
            result = autoslm.search(
                model=args.model, budget=args.budget, space=str(space_file), trials=args.trials, out=args.out / name,
                resume=True, storage=storage, study=name, sampler=sampler, seed=seed, warm_start=False,
            )  # fmt: skip
            minutes[sampler] += (time.perf_counter() - t0) / 60
            baseline = baseline or result.baseline
            curve = best_so_far(result.trials, args.trials)
            curves[sampler][seed] = curve
            hashes[sampler][seed] = [r.policy_hash for r in sorted(result.trials, key=lambda r: r.number)]
            feasible[sampler][seed] = sum(1 for r in result.trials if r.feasible and r.quality)
            print("    best feasible ppl after each trial: " + " ".join(_f(v) for v in curve), flush=True)

    base = baseline["metrics"]["decode_ms"] if baseline else float("nan")
    print(
        f"\n{args.model}, budget {args.budget} (baseline decode {base:.1f} ms/token, ppl {baseline['ppl']:.2f}), "
        f"{args.trials} trials per search, {space['description']}, no warm start, seeds {args.seeds}"
    )
    print("best feasible perplexity after n trials (per seed; '-' = nothing feasible yet), and the median over seeds")
    head = f"{'sampler':<8} {'seed':>4} " + " ".join(f"{n:>7}" for n in range(1, args.trials + 1)) + "  feasible"
    print(head)
    for sampler in SAMPLERS:
        for seed in args.seeds:
            print(
                f"{sampler:<8} {seed:>4} " + " ".join(f"{_f(v):>7}" for v in curves[sampler][seed])
                + f"  {feasible[sampler][seed]:>4}/{args.trials}"
            )  # fmt: skip
        med = [_median([curves[sampler][s][i] for s in args.seeds]) for i in range(args.trials)]
        print(f"{sampler:<8} {'med':>4} " + " ".join(f"{_f(v):>7}" for v in med) + f"  ({minutes[sampler]:.0f} min)")
    for seed in args.seeds:
        pairs = list(zip(hashes["tpe"][seed], hashes["random"][seed], strict=False))
        shared = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
        print(f"seed {seed}: the first {shared} trials of tpe and random sampled the same policies")
    last = {s: _median([curves[s][seed][-1] for seed in args.seeds]) for s in SAMPLERS}
    if last["tpe"] and last["random"]:
        print(f"\nmedian best after {args.trials} trials: tpe / random = {last['tpe'] / last['random']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"baseline": baseline, "curves": curves, "feasible": feasible}, indent=2))


def _median(values: list[float | None]) -> float | None:
    """Median where 'nothing feasible yet' counts as worse than any perplexity."""
    ranked = sorted(values, key=lambda v: float("inf") if v is None else v)
    mid = ranked[(len(ranked) - 1) // 2] if len(ranked) % 2 else None
    if len(ranked) % 2 == 0:
        a, b = ranked[len(ranked) // 2 - 1], ranked[len(ranked) // 2]
        mid = None if a is None or b is None else (a + b) / 2
    return mid


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    main()
