"""Trial throughput of the Ray backend with 1 vs 2 concurrent workers, in one run, on tiny-llama.

    python benchmarks/ray_throughput.py [--trials 6] [--model tiny-llama]

Both searches run the same trials (random sampler, same seed, no warm start, low fidelity) on one local Ray
instance started by this process. The clock covers the trial phase only (from the baseline's end to the last
trial), so the baseline measurement, identical in both, does not dilute the ratio. On one 2-core machine the
concurrent trials share the cores (apply, measure and evaluate all use them), so the ratio shows how much of a
trial is not CPU-bound here; across nodes each worker has its own cores.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from autoslm.quiet import quiet_libraries


def one(model: str, trials: int, concurrent: int, root: Path) -> tuple[float, int]:
    import autoslm

    marks: dict[str, float] = {}

    def progress(event: str, payload: object) -> None:
        if event == "baseline":
            marks["start"] = time.perf_counter()

    result = autoslm.search(
        model=model, budget="memory_mb<=3x", space="tiny", trials=trials, out=root / f"c{concurrent}",
        backend="ray", max_concurrent=concurrent, cpus_per_trial=1, sampler="random", warm_start=False,
        fidelity="low", progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - marks["start"]
    return seconds, len(result.trials)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    quiet_libraries()
    import os

    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for concurrent in (1, 2):
            seconds, n = one(args.model, args.trials, concurrent, Path(tmp))
            rows.append((concurrent, n, seconds))
            rate = 60 * n / seconds
            print(f"{concurrent} concurrent: {n} trials in {seconds:.1f} s = {rate:.2f} trials/min", flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; model {args.model}")
    (_, n1, s1), (_, n2, s2) = rows
    print(f"throughput 2 workers / 1 worker = {(n2 / s2) / (n1 / s1):.2f}x")


if __name__ == "__main__":
    main()
