"""examples/plugin-template, installed with pip as a user would: its tests pass (conformance kit), its technique is
listed, searched, and named with its distribution and version in the exported recipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "examples" / "plugin-template"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pip-install the template into a private target folder; return an environment that sees it."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(TEMPLATE)],
        check=True,
        cwd=build,
        timeout=300,
    )  # fmt: skip
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def _run(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_template_tests_pass_with_the_conformance_kit(installed: dict[str, str]) -> None:
    done = _run(installed, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEMPLATE / "tests"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and "TestConformance" not in done.stdout.split("passed")[-1]


def test_template_technique_is_listed_searched_and_recorded(installed: dict[str, str], tmp_path: Path) -> None:
    listed = _run(installed, "-m", "autoslm.cli", "plugins")
    assert listed.returncode == 0, listed.stderr
    assert "sparse.magnitude" in listed.stdout and "autoslm-magnitude-sparsity" in listed.stdout

    out = tmp_path / "run"
    args = ["--model", "tiny-llama", "--space", str(TEMPLATE / "space.yaml"), "--budget", "size_mb<=100"]
    args += ["--trials", "2", "--fidelity", "low", "--out", str(out)]
    found = _run(installed, "-m", "autoslm.cli", "search", *args)
    assert found.returncode == 0, found.stdout[-2000:] + found.stderr[-2000:]
    assert "sparse.magnitude" in found.stdout  # the printed space
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    step = next(s for s in recipe["steps"] if s["technique"] == "sparse.magnitude")
    assert step["plugin"] == "autoslm-magnitude-sparsity" and step["version"] == "0.1.0"
    assert 0.1 <= step["params"]["sparsity"] <= 0.6 and step["params"]["score"] in ("magnitude", "wanda")

    rebuilt = _run(installed, "-m", "autoslm.cli", "apply", str(out / "recipe.yaml"), "--out", str(tmp_path / "again"))
    assert rebuilt.returncode == 0, rebuilt.stderr
    without = {**installed, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    refused = _run(without, "-m", "autoslm.cli", "apply", str(out / "recipe.yaml"), "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "autoslm-magnitude-sparsity" in refused.stderr
