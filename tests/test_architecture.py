"""The architecture's import rules (pyproject.toml, [tool.importlinter]) hold: every import counts, lazy ones too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_techniques_know_no_search_backend_and_the_engine_knows_no_technique() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for contract in ("techniques know no search backend, sampler or storage", "the engine knows no specific technique"):
        assert f"{contract} KEPT" in proc.stdout
    assert "0 broken" in proc.stdout
