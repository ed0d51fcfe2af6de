"""Search from Python: a few trials on the tiny random Llama (about two minutes here), then read the result.

python examples/search_api.py [--model smollm2-135m --trials 12]
"""

from __future__ import annotations

import argparse

import autoslm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--out", default="runs/example-api")
    args = ap.parse_args()

    result = autoslm.search(
        model=args.model,
        budget="memory_mb<=1.5x",
        space="tiny" if args.model == "tiny-llama" else "default",
        trials=args.trials,
        out=args.out,
        fidelity="low",
        resume=True,  # re-running continues the same study instead of failing
    )
    print(f"baseline: ppl {result.baseline['ppl']:.1f}, decode {result.baseline['metrics']['decode_ms']:.1f} ms")
    for row in result.trials:
        print(f"trial {row.number}: {row.status:<10} {row.steps}")
    if result.best:
        print(f"best: trial {result.best.number}, ppl {result.best.ppl:.1f} -> {result.recipe_path}")
    print(f"Pareto set: {[r.number for r in result.pareto]}")


if __name__ == "__main__":
    main()
