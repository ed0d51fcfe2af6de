"""What starting a torch measurement costs: a new `python -m autoslm.targets.worker` process against a child of the
fork server that imported torch and transformers once (`autoslm/targets/forkserver.py`), interleaved, same checkpoint.

    python benchmarks/measure_start.py [--models tiny-llama,smollm2-135m] [--rounds 5]

Prints, per model, the median wall time of one whole measurement (start, load, warm-up, 3 timed decode runs,
prefill) each way, their ratio, and the memory_mb each way reports (it must not change: the fork server's libraries
are resident before the model is loaded, and memory_mb is what loading and running the model adds). The first
forked measurement starts the server and is reported apart. Nothing else should run meanwhile; the output says what
did (load average).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from autoslm.models import resolve
from autoslm.runtimes import get_runtime
from autoslm.targets import MeasureSettings, forkserver
from autoslm.targets.local import _subprocess


def _once(how: str, args: list[str], preload: list[str], settings: MeasureSettings) -> tuple[float, float]:
    t0 = time.perf_counter()
    if how == "forked":
        code, output = forkserver.run(args, preload, 600)
    else:
        code, output = _subprocess(args, settings, 600)
    seconds = time.perf_counter() - t0
    line = next((one for one in output.splitlines() if one.startswith("AUTOSLM-RESULT ")), None)
    if code != 0 or line is None:
        raise SystemExit(f"{how} measurement failed (exit {code}): {output[-500:]}")
    return seconds, json.loads(line.split(" ", 1)[1])["memory_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny-llama,smollm2-135m")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    settings = MeasureSettings()
    print(f"load average before: {os.getloadavg()[0]:.2f}; threads {settings.threads}; {options.rounds} rounds")
    for name in options.models.split(","):
        directory = resolve(name)
        args = [str(directory), settings.model_dump_json()]
        preload = get_runtime("torch").preload(directory)
        first, _ = _once("forked", args, preload, settings) if forkserver._CONTEXT is None else (0.0, 0.0)
        runs: dict[str, list[tuple[float, float]]] = {"new process": [], "forked": []}
        for _ in range(options.rounds):
            for how in ("new process", "forked"):  # interleaved: both see the same drift of the machine
                runs[how].append(_once("forked" if how == "forked" else "new", args, preload, settings))
        med = {how: statistics.median(s for s, _ in rows) for how, rows in runs.items()}
        mem = {how: statistics.median(m for _, m in rows) for how, rows in runs.items()}
        started = f"; the server's start with the first: {first:.2f} s" if first else ""
        print(f"{name}: new process {med['new process']:.2f} s, forked {med['forked']:.2f} s "
              f"(ratio {med['forked'] / med['new process']:.2f}x); memory_mb {mem['new process']:.1f} vs "
              f"{mem['forked']:.1f}{started}")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
