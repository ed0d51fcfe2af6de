"""Measure in a fresh process with the runtime the settings name; print JSON after `AUTOSLM-RESULT `.

python -m autoslm.targets.worker DIR SETTINGS_JSON                       one checkpoint
python -m autoslm.targets.worker --pair CAND BASE ROUNDS SETTINGS_JSON   a candidate beside the baseline
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from autoslm.quiet import quiet_libraries
    from autoslm.runtimes import get_runtime
    from autoslm.targets import MeasureSettings

    quiet_libraries(import_transformers=False)  # the torch runtime imports it (its logs go to stderr, captured)
    settings = MeasureSettings.model_validate_json(argv[-1])
    runtime = get_runtime(settings.runtime)
    if argv[0] == "--pair":
        result = runtime.measure_pair(Path(argv[1]), Path(argv[2]), settings, int(argv[3]))
    else:
        result = runtime.measure(Path(argv[0]), settings)
    sys.stdout.write("AUTOSLM-RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
