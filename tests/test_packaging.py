"""The wheel holds everything a non-editable install needs: every subpackage, the search spaces, the data, the
built-in plugins and their entry points."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("autoslm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "autoslm").rglob("*.py") if ".venv" not in p.parts}
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    spaces = {f"autoslm/search_spaces/{p.name}" for p in (ROOT / "search_spaces").glob("*.yaml")}
    assert "autoslm/search_spaces/default.yaml" in spaces and spaces <= names
    assert any(n.startswith("autoslm/data/files/") and n.endswith(".jsonl.gz") for n in names)
    assert {"autoslm_plugins/prune_depth.py", "autoslm_plugins/quant_weight_only.py"} <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[autoslm]" in text and "[console_scripts]" in text
