"""Distributed search: a real two-node Ray cluster (Ray's own multi-node test utility), and two `autoslm search`
processes sharing one study in a real PostgreSQL server (and in Optuna's journal file)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SEARCH = [sys.executable, "-m", "autoslm.cli", "search", "--model", "tiny-llama", "--space", "tiny",
          "--budget", "memory_mb<=3x", "--fidelity", "low"]  # fmt: skip


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "trials.json").read_text())


def _kill_driver_mid_trial(driver: subprocess.Popen, out: Path, deadline: float, after: int) -> bool:
    """SIGKILL the search's driver once `after` trials have finished and another is running (mid-trial)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    S = optuna.trial.TrialState
    while time.time() < deadline and driver.poll() is None:
        if (out / "study.db").exists():
            try:  # the driver may still be creating the schema or the study
                study = optuna.load_study(study_name="autoslm", storage=f"sqlite:///{out / 'study.db'}")
            except (KeyError, SQLAlchemyError):
                time.sleep(0.5)
                continue
            states = [t.state for t in study.get_trials(deepcopy=False)]
            if S.RUNNING in states and sum(s in (S.COMPLETE, S.PRUNED) for s in states) >= after:
                time.sleep(1)
                driver.kill()
                return True
        time.sleep(0.5)
    return False


def test_ray_two_nodes_a_killed_worker_then_a_killed_driver_and_resume(tmp_path: Path) -> None:
    """A real two-node cluster (Ray's own test utility). SIGKILL a worker mid-trial: Ray runs the trial again
    elsewhere. Then SIGKILL the driver mid-trial: `--resume` fails the orphaned trial (not counted) and finishes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "run"
    cmd = [*SEARCH, "--trials", "5", "--out", str(out), "--backend", "ray", "--ray-address", cluster.address,
           "--max-concurrent", "2", "--cpus-per-trial", "1", "--sampler", "random", "--no-warm-start"]  # fmt: skip
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        search = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=sink)
    killed = None
    try:
        deadline = time.time() + 400
        while time.time() < deadline and search.poll() is None and killed is None:
            pids = sorted((out / "workers").glob("*.pid")) if (out / "workers").is_dir() else []
            if pids:
                time.sleep(2)  # mid-trial: the worker is applying or measuring
                killed = int(pids[0].read_text())
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        driver_killed = _kill_driver_mid_trial(search, out, deadline, after=3)  # a worker has run two
        search.wait(timeout=60)
        assert killed is not None, "no trial started on the cluster"
        assert driver_killed, (
            f"the driver finished or stalled before it could be killed: {search.stderr.read()[-2000:]}"
        )
        resumed = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=900)
    finally:
        if search.poll() is None:
            search.kill()
        cluster.shutdown()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _rows(out)
    finished = [r for r in rows if r["state"] in ("complete", "pruned")]
    assert len(finished) == 5, rows
    nodes = {r["node"]["node_id"] for r in finished if r["node"]}
    assert len(nodes) == 2, f"trials ran on {len(nodes)} node(s): {nodes}"
    assert killed not in {r["node"]["pid"] for r in finished}  # the killed worker's trial was run again elsewhere
    assert any(r["node"]["base_reused"] for r in finished)  # a worker reused its loaded base model
    orphans = [r for r in rows if r["state"] == "fail"]
    assert any(r["status"] == "stale" for r in orphans), rows  # the driver's trial in flight: failed, not counted
    assert (out / "recipe.yaml").is_file() and (out / "checkpoint" / "model.safetensors").is_file()
    assert yaml.safe_load((out / "recipe.yaml").read_text())["search"]["backend"] == "ray"


def test_a_node_that_cannot_run_trials_says_why_and_the_search_exits_1(tmp_path: Path) -> None:
    """An error on the node before the trial's own handling (here: RUN/workers is a file, so the worker cannot note
    its pid) reaches the driver with the node and the exception, instead of Ray's retries and a reasonless failure."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "workers").write_text("not a folder")
    cmd = [*SEARCH, "--trials", "2", "--out", str(out), "--backend", "ray", "--max-concurrent", "1",
           "--cpus-per-trial", "1", "--sampler", "random", "--no-warm-start"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    failed = [r for r in _rows(out) if r["state"] == "fail"]
    assert len(failed) == 2, _rows(out)
    for row in failed:
        assert row["reason"].startswith(f"on {socket.gethostname()} (") and "FileExistsError" in row["reason"]
        assert row["node"]["host"] == socket.gethostname()
    assert "all 2 trials failed" in " ".join(proc.stdout.split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).is_file():
            return str(d / name)
    return None


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on loopback (Debian's postgresql package; .ci/run installs it)."""
    initdb, postgres = _pg_bin("initdb"), _pg_bin("postgres")
    if not (initdb and postgres):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="autoslm-pg-"))  # not under pytest's 0700 folder: postgres must reach it
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(root, 0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "autoslm"], check=True, capture_output=True)
    port = _free_port()
    server = subprocess.Popen(
        [*prefix, postgres, "-D", str(data), "-p", str(port), "-k", str(sock), "-c", "listen_addresses=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import psycopg2

    deadline = time.time() + 60
    while True:
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="autoslm", dbname="postgres")
            break
        except psycopg2.OperationalError:
            if time.time() > deadline:
                server.kill()
                raise
            time.sleep(0.3)
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE autoslm")
    conn.close()
    yield f"postgresql+psycopg2://autoslm@127.0.0.1:{port}/autoslm"
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def _shared_search(tmp_path: Path, storage: str) -> None:
    cmd = [*SEARCH, "--trials", "5", "--storage", storage, "--study", "shared", "--sampler", "random"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "cwd": REPO}
    procs = [
        subprocess.Popen([*cmd, "--out", str(tmp_path / name), "--seed", str(i)], **pipes)
        for i, name in enumerate(("a", "b"))
    ]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name="shared", storage=_storage(storage))
    done = [t for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"]
    assert len(done) >= 5
    workers = {t.user_attrs["node"]["pid"] for t in done}
    assert len(workers) == 2, "both processes should have run trials"
    evaluated = [t.user_attrs["policy_hash"] for t in done if "cached_from" not in t.user_attrs]
    assert len(evaluated) == len(set(evaluated)), "a policy was evaluated twice"
    assert len({t.number for t in done}) == len(done)


def _storage(url: str):
    from autoslm.searching.storage import make_storage

    return make_storage(url)


def test_two_processes_share_one_postgres_study(tmp_path: Path, postgres_url: str) -> None:
    _shared_search(tmp_path, postgres_url)


def test_two_processes_share_one_journal_file(tmp_path: Path) -> None:
    _shared_search(tmp_path, f"journal:{tmp_path / 'study.log'}")
