"""The torch runtime's measurements run in children of a fork server that imported torch and transformers once."""

from __future__ import annotations

import json
import multiprocessing.forkserver
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from autoslm.models import resolve
from autoslm.targets import MeasureSettings, forkserver, get_target
from autoslm.targets.local import MeasurementError, _subprocess

FAST = MeasureSettings(prompt_tokens=32, decode_tokens=8, repeats=2)


def _result(output: str) -> dict:
    (line,) = [one for one in output.splitlines() if one.startswith("AUTOSLM-RESULT ")]
    return json.loads(line.split(" ", 1)[1])


def test_a_forked_measurement_gives_the_figures_a_new_process_gives() -> None:
    directory = resolve("tiny-llama")
    args = [str(directory), FAST.model_dump_json()]
    m = get_target("local").measure(directory, FAST)  # the local target goes through the fork server for torch
    assert forkserver._CONTEXT is not None and "torch" in forkserver._PRELOADED
    code, output = forkserver.run(args, ["torch"], 600)
    new_code, new_output = _subprocess(args, FAST, 600)
    assert code == new_code == 0
    forked, new = _result(output), _result(new_output)
    # the same model's resident memory in use: the weights (12.8 MB) and activations, not the preloaded libraries
    assert abs(forked["memory_mb"] - new["memory_mb"]) < 15 and abs(m.memory_mb - new["memory_mb"]) < 15
    assert forked["size_mb"] == new["size_mb"] and forked["decode_ms"] > 0


def test_a_script_without_a_main_guard_measures_and_the_libraries_print_nothing(tmp_path: Path) -> None:
    """multiprocessing would re-run an unguarded script in each child; the fork server's imports would print
    torchao's and transformers' noise into the user's terminal. Neither happens."""
    script = tmp_path / "measure_it.py"
    script.write_text(
        "from autoslm.models import resolve\n"
        "from autoslm.targets import MeasureSettings, get_target\n"
        "settings = MeasureSettings(prompt_tokens=32, decode_tokens=8, repeats=2)\n"
        "print('MEASURED', get_target('local').measure(resolve('tiny-llama'), settings).memory_mb)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("MEASURED") == 1, proc.stdout
    for noise in ("Loading weights", "torchao", "Warning", "deprecated"):
        assert noise not in proc.stderr + proc.stdout


def test_a_measurement_past_its_limit_is_killed_and_leaves_no_process() -> None:
    directory = resolve("tiny-llama")
    get_target("local").measure(directory, FAST)  # the server is up
    with pytest.raises(MeasurementError, match=r"timed out after 0.5s \(its limit\)"):
        get_target("local").measure(
            directory, FAST.model_copy(update={"timeout_s": 0.5, "repeats": 100, "decode_tokens": 512})
        )
    server = psutil.Process(multiprocessing.forkserver._forkserver._forkserver_pid)
    deadline = time.monotonic() + 10
    while server.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.children() == []


def test_a_relative_path_is_read_from_the_caller_s_folder_of_the_moment(tmp_path: Path, monkeypatch) -> None:
    """The server started long ago, elsewhere; a measurement still runs in the folder (and environment) of the
    moment it is asked for, as a new process would."""
    get_target("local").measure(resolve("tiny-llama"), FAST)  # the server is up, in the old folder
    (tmp_path / "ckpt").symlink_to(resolve("tiny-llama"), target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    code, output = forkserver.run(["ckpt", FAST.model_dump_json()], ["torch"], 300)
    assert code == 0, output[-2000:]
    assert _result(output)["size_mb"] > 10
