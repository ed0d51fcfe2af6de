"""Where a search's trial time goes: applying, measuring, evaluating, and everything else (the engine's overhead).

    python benchmarks/engine_overhead.py runs/NAME [runs/OTHER ...]

Reads the run's Optuna study: each trial's wall time (Optuna's start/complete timestamps) and the seconds the
objective recorded for apply, measure (save + fresh-process measurement), low- and full-fidelity quality. The
remainder is the engine: sampling, hashing, the cache lookup, storage writes, checkpoint clean-up.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parts = {"apply": 0.0, "measure": 0.0, "quality_low": 0.0, "quality": 0.0}
    wall = 0.0
    n = 0
    for run in args.runs:
        study = optuna.load_study(study_name="autoslm", storage=f"sqlite:///{(run / 'study.db').resolve()}")
        for t in study.get_trials(deepcopy=False):
            if not (t.datetime_start and t.datetime_complete) or t.user_attrs.get("cached_from") is not None:
                continue
            seconds = t.user_attrs.get("seconds") or {}
            wall += (t.datetime_complete - t.datetime_start).total_seconds()
            for k in parts:
                parts[k] += float(seconds.get(k, 0.0))
            n += 1
    other = wall - sum(parts.values())
    print(f"{n} evaluated trials from {len(args.runs)} run(s), {wall / 60:.1f} min of trial wall time")
    for k, v in [*parts.items(), ("engine (everything else)", other)]:
        print(f"  {k:<26} {v:8.1f} s  {100 * v / wall:5.1f}%")


if __name__ == "__main__":
    main()
