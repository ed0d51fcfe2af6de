"""Measure in a fresh process, print JSON after `AUTOSLM-RESULT `.

python -m autoslm.targets.worker DIR SETTINGS_JSON                 one checkpoint (measure_checkpoint)
python -m autoslm.targets.worker --pair CAND BASE ROUNDS SETTINGS_JSON   a candidate beside the baseline
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from autoslm._quiet import quiet_libraries
    from autoslm.targets import MeasureSettings
    from autoslm.targets.measure import measure_checkpoint, measure_pair

    quiet_libraries()
    if argv[0] == "--pair":
        candidate, baseline, rounds = Path(argv[1]), Path(argv[2]), int(argv[3])
        result = measure_pair(candidate, baseline, MeasureSettings.model_validate_json(argv[4]), rounds)
    else:
        result = measure_checkpoint(Path(argv[0]), MeasureSettings.model_validate_json(argv[1]))
    sys.stdout.write("AUTOSLM-RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
