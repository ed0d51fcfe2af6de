"""`python -m autoslm.targets.worker DIR SETTINGS_JSON`: measure one checkpoint in a fresh process, print JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from autoslm._quiet import quiet_libraries
    from autoslm.targets import MeasureSettings
    from autoslm.targets.measure import measure_checkpoint

    quiet_libraries()
    directory, settings = Path(argv[0]), MeasureSettings.model_validate_json(argv[1])
    result = measure_checkpoint(directory, settings)
    sys.stdout.write("AUTOSLM-RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
