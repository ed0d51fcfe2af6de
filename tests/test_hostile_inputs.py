"""Hostile and careless input, one test per item of the hardening issue (#18): every one ends in a clear one-line
error or is survived, and nothing a previous run wrote is lost. No network: the agent listens on loopback."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests
from conftest import REPO, run_cli, tar_of

from autoslm.errors import ChecksumError, UserError

TOKEN = "hostile-token-0123456789"


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The CLI failed with one `error:` line (no traceback) that contains every needle."""
    err = proc.stderr.strip()
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- 1. the agent: idle connections --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_agent(*extra: str):
    port = _free_port()
    cmd = [sys.executable, "-m", "autoslm.cli", "agent", "--port", str(port), "--max-upload-mb", "8",
           "--header-timeout-s", "2", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "AUTOSLM_AGENT_TOKEN": TOKEN},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                break
        except requests.RequestException:  # refused, or bound but not serving yet
            time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the agent did not start: {proc.stderr.read().decode()[-1000:] if proc.stderr else ''}")
    return url, proc


@pytest.fixture(scope="module")
def agent():
    url, proc = _start_agent()
    yield url, proc
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_idle_connections_do_not_deny_service(agent) -> None:
    url, _ = agent
    port = int(url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]  # never send a request
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # a request head that never ends (slowloris)
    try:
        for _ in range(5):
            r = requests.get(f"{url}/health", timeout=5)
            assert r.status_code == 200 and r.json()["status"] == "ok"
        info = requests.get(f"{url}/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert info.status_code == 200
        # the server closes sockets that send no complete request head within --header-timeout-s (2 s here)
        for s in (idle[0], slow):
            s.settimeout(30)
            assert s.recv(1024) == b""  # closed by the agent, no response
    finally:
        for s in [*idle, slow]:
            s.close()


# --- 2. sparse tar and extraction bounds ---------------------------------------------------------------------------


def test_sparse_member_is_refused(tmp_path: Path) -> None:
    from autoslm.targets.agent import BadUpload, safe_extract

    if shutil.which("tar") is None:
        pytest.skip("GNU tar is needed to write a sparse archive")
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    with open(src / "model.safetensors", "wb") as f:
        f.truncate(64 << 20)  # 64 MiB of holes: a few KB in a sparse tar
    archive = tmp_path / "up.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(archive), "-C", str(src), "config.json", "model.safetensors"],
                   check=True)  # fmt: skip
    assert archive.stat().st_size < 1 << 20
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BadUpload, match="sparse"):
        safe_extract(archive, dest)
    assert not (dest / "model.safetensors").exists()


def test_extraction_never_writes_more_than_received(tmp_path: Path) -> None:
    from autoslm.targets.agent import BadUpload, safe_extract

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in {"config.json": b"{}", "model.safetensors": b"x" * 4096}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    archive = tmp_path / "up.tar"
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BadUpload, match="expand"):
        safe_extract(archive, dest, max_bytes=1000)  # the members claim more than the budget
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(buf.getvalue()[:3500])  # inside the weights
    with pytest.raises(BadUpload, match=r"truncated or corrupt|not an uncompressed tar"):
        safe_extract(truncated, dest)


# --- 3. the manifest cannot probe the device's files ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "/nonexistent/x", "../config.json", "././model.safetensors", ""])
def test_manifest_names_outside_the_checkpoint_are_refused_alike(tmp_path: Path, name: str) -> None:
    from autoslm.checkpoint import MANIFEST, verify_dir

    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / MANIFEST).write_text(json.dumps({"files": {name: "0" * 64}}))
    with pytest.raises(ChecksumError, match="not a plain file name of the checkpoint"):
        verify_dir(tmp_path)


def test_manifest_with_too_many_entries_is_refused_before_hashing(tmp_path: Path) -> None:
    from autoslm.checkpoint import MANIFEST, verify_dir

    (tmp_path / MANIFEST).write_text(json.dumps({"files": {f"f{i}.json": "0" * 64 for i in range(400)}}))
    with pytest.raises(ChecksumError, match="at most 256"):
        verify_dir(tmp_path)


# --- 4. measurement settings and names are bounded -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"prompt_tokens": 100_000_000}, "prompt_tokens"),
        ({"threads": 100_000}, "threads"),
        ({"repeats": 10**9}, "repeats"),
        ({"decode_tokens": -1}, "decode_tokens"),
    ],
)
def test_unbounded_settings_are_400(agent, settings: dict, needle: str) -> None:
    url, _ = agent
    r = requests.post(f"{url}/measure", params={"settings": json.dumps(settings)}, data=b"x",
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)  # fmt: skip
    assert r.status_code == 400 and needle in r.json()["error"], r.text


def test_more_threads_than_the_device_has_is_400(agent) -> None:
    url, _ = agent
    settings = json.dumps({"threads": (os.cpu_count() or 1) + 1})
    r = requests.post(f"{url}/measure", params={"settings": settings}, data=b"x",
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)  # fmt: skip
    assert r.status_code == 400 and "CPU threads" in r.json()["error"]


def test_long_file_name_is_400_not_500(agent) -> None:
    url, _ = agent
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("a" * 300 + ".json")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"{}"))
    r = requests.post(f"{url}/measure", data=buf.getvalue(), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 400 and "characters" in r.json()["error"]


# --- 5. leftovers and start-up mistakes ----------------------------------------------------------------------------


def test_measuring_process_dies_with_its_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = (
        "import subprocess, sys\n"
        "from autoslm.targets.local import die_with_parent\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], preexec_fn=die_with_parent)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "p.wait()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO)
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    proc.kill()  # kill -9 of the search (or of the agent)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the measuring process outlived its parent")


def test_agent_removes_scratch_of_dead_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from autoslm.targets.agent import scratch_root

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "autoslm-agent-999999999"  # no such process
    (dead / "upload").mkdir(parents=True)
    (dead / "upload" / "model.safetensors").write_bytes(b"x" * 1000)
    alive = tmp_path / f"autoslm-agent-{os.getppid()}"  # a running process: another agent's, kept
    alive.mkdir()
    mine = scratch_root()
    assert not dead.exists() and alive.is_dir() and mine.name == f"autoslm-agent-{os.getpid()}"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--port", "99999"], {"AUTOSLM_AGENT_TOKEN": TOKEN}, "not a TCP port"),
        ([], {"AUTOSLM_AGENT_TOKEN": "          "}, "at least 8 characters"),
        (["--max-upload-mb", "1e300"], {"AUTOSLM_AGENT_TOKEN": TOKEN}, "must be positive"),
    ],
)
def test_agent_start_mistakes_are_one_line(args: list[str], env: dict, needle: str) -> None:
    _one_line_error(run_cli("agent", *args, env=env, timeout=120), needle)


def test_port_in_use_is_reported_before_the_banner() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_cli("agent", "--port", str(port), env={"AUTOSLM_AGENT_TOKEN": TOKEN}, timeout=120)
    assert "autoslm agent on" not in proc.stdout
    _one_line_error(proc, f"cannot listen on 127.0.0.1:{port}")


# --- 6. runs and studies: nothing lost -----------------------------------------------------------------------------


def _search_args(out: Path) -> list[str]:
    return ["search", "--model", "tiny-llama", "--space", "tiny", "--budget", "memory_mb<=3x", "--trials", "1",
            "--fidelity", "low", "--out", str(out)]  # fmt: skip


def _search(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(*_search_args(out), *extra)


def test_empty_study_with_resume_is_refused_and_outputs_kept(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "study.db").write_bytes(b"")
    (out / "recipe.yaml").write_text("previous: run\n")
    _one_line_error(_search(out, "--resume"), "holds no stored autoslm search")
    assert (out / "recipe.yaml").read_text() == "previous: run\n"


def test_garbage_study_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "study.db").write_bytes(os.urandom(4096))
    _one_line_error(_search(out, "--resume"), "is not a SQLite database")
    _one_line_error(run_cli("report", str(out)), "is not a SQLite database")


def test_previous_outputs_without_their_study_are_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "trials.json").write_text("[]")
    _one_line_error(_search(out), "no study.db")
    assert (out / "trials.json").read_text() == "[]"


def test_truncated_sqlite_study_is_one_line(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "study.db"
    with sqlite3.connect(db) as con:
        con.execute("create table t (x text)")
        con.executemany("insert into t values (?)", [("x" * 1000,)] * 200)
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    from autoslm.searching.storage import make_storage

    with pytest.raises(UserError, match="study"):
        make_storage(f"sqlite:///{db}")


# --- 8. spaces clamp to the model -----------------------------------------------------------------------------------


def test_space_ranges_are_clamped_to_the_model(tiny, tmp_path: Path) -> None:
    from autoslm.models import model_info
    from autoslm.searching.space import load_space

    space = load_space("default", model_info(tiny.model))  # blocks: [0, 8] on a 4-block model
    depth = next(t for t in space.techniques if t.name == "prune.depth")
    assert depth.dims["blocks"].high == 3
    (tmp_path / "s.yaml").write_text("techniques:\n  prune.depth:\n    blocks: 8\n")
    with pytest.raises(UserError, match=r"blocks: 8 is outside what this model allows \(0..3\)"):
        load_space(str(tmp_path / "s.yaml"), model_info(tiny.model))


# --- 9. models, checkpoints, options: one line each ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autoslm import checkpoint
    from autoslm.models import load_model

    lm = load_model("tiny-llama")
    return checkpoint.save_dir(lm.model, lm.tokenizer, tmp_path_factory.mktemp("m") / "tiny")


def _broken_copy(src: Path, dst: Path, **files: bytes | None) -> Path:
    from autoslm.checkpoint import MANIFEST

    shutil.copytree(src, dst)
    (dst / MANIFEST).unlink()  # a plain Hugging Face folder: no manifest, no autoslm marker
    config = json.loads((dst / "config.json").read_text())
    config.pop("autoslm_checkpoint")
    (dst / "config.json").write_text(json.dumps(config))
    for name, data in files.items():
        name = name.replace("__", ".")
        if data is None:
            (dst / name).unlink()
        else:
            (dst / name).write_bytes(data)
    return dst


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"config__json": b""}, "not valid JSON"),
        ({"config__json": b"\xff\xfe\x00garbage"}, "not UTF-8"),
        ({"config__json": b'{"hidden_size": 4}'}, "no model_type"),
        ({"model__safetensors": b""}, "does not match the weights (a wrong config, or truncated weight files)"),
        ({"model__safetensors": b"\x02\x00\x00\x00\x00\x00\x00\x00{}"}, "does not match the weights"),
    ],
)
def test_broken_model_folder_is_one_line(tiny_dir: Path, tmp_path: Path, files: dict, needle: str) -> None:
    broken = _broken_copy(tiny_dir, tmp_path / "broken", **files)
    _one_line_error(run_cli("eval", "--model", str(broken), "--fidelity", "low"), needle)


def test_wrong_shape_weights_are_one_line(tiny_dir: Path, tmp_path: Path) -> None:
    broken = _broken_copy(tiny_dir, tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    config["hidden_size"] = 96  # the weights are 64 wide
    (broken / "config.json").write_text(json.dumps(config))
    from autoslm.models import load_model

    with pytest.raises(UserError, match="cannot be loaded"):
        load_model(str(broken))


def test_manifest_with_wrong_codec_metadata_is_one_line(tmp_path: Path) -> None:
    from autoslm import checkpoint
    from autoslm.models import load_model
    from autoslm.pipeline import Step, apply_planned, plan
    from autoslm.technique import ApplyContext

    lm = load_model("tiny-llama")
    ctx = ApplyContext(tokenizer=lm.tokenizer, seed=0)
    model = apply_planned(lm.model, plan([Step(technique="quant.dynamic_int8", params={})]), ctx)
    ck = checkpoint.save_dir(model, lm.tokenizer, tmp_path / "ck")
    manifest = json.loads((ck / checkpoint.MANIFEST).read_text())
    first = next(iter(manifest["modules"]["coded"].values()))
    first["tensors"] = ["no_such_tensor"]
    manifest["modules"]["aliases"] = {"lm_head.weight": "no.such.alias"}
    (ck / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="coded modules do not match"):
        checkpoint.load_model(ck)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seed", "-1"], "--seed"),
        (["--storage", "mysql://u:p@127.0.0.1:1/x"], "mysql"),
        (["--budget", ",,,"], "empty term"),
        (["--budget", "decode_ms<=1e999"], "finite"),
        (["--out", "/proc/autoslm-run"], "not a writable directory"),
    ],
)
def test_search_option_mistakes_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    base = ["search", "--model", "tiny-llama", "--space", "tiny", "--trials", "1", "--fidelity", "low"]
    if "--out" not in args:
        base += ["--out", str(tmp_path / "run")]
    if "--budget" not in args:
        base += ["--budget", "memory_mb<=3x"]
    _one_line_error(run_cli(*base, *args), needle)


def test_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    _one_line_error(_search(tmp_path / "f"), "is a file")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("techniques:\n  prune.depth: {}\nrequired: 5\n", "'required' must be a list"),
        (b"techniques:\n  prune.depth: {}\n# \xff\xfe\n", "not UTF-8"),
        ("a: &x [1, 2]\nb: *x\ntechniques:\n  prune.depth: {}\n", "aliases"),
        ("techniques:\n  quant.gguf:\n    imatrix_samples: {choices: [16, 600]}\n", "value 600"),
        ("techniques:\n  quant.gguf:\n    imatrix_seq_len: {int: [64, 9000]}\n", "value 9000"),
    ],
)
def test_bad_space_files_are_one_line(tiny, tmp_path: Path, text: str | bytes, needle: str) -> None:
    from autoslm.models import model_info
    from autoslm.searching.space import load_space

    path = tmp_path / "s.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=needle):
        load_space(str(path), model_info(tiny.model))


def test_yaml_bomb_and_huge_files_are_refused_fast(tmp_path: Path) -> None:
    from autoslm.yamlfile import read_yaml

    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    bomb = "\n".join(lines) + "\n"
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(UserError, match="aliases"):  # refused while composing: nothing is expanded (9**9 items)
        read_yaml(tmp_path / "bomb.yaml", "search space")
    (tmp_path / "huge.yaml").write_text("x: " + "y" * (30 << 20))
    with pytest.raises(UserError, match="at most"):
        read_yaml(tmp_path / "huge.yaml", "search space")


# --- 10. the model cache is verified ----------------------------------------------------------------------------------


def test_damaged_cache_entries_are_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoslm import models
    from autoslm.checkpoint import write_manifest

    tokenizer_source = models.resolve("smollm2-135m")  # tiny-llama borrows its tokenizer: copied, not rebuilt
    monkeypatch.setenv("AUTOSLM_CACHE", str(tmp_path))
    copy = shutil.copytree(tokenizer_source, tmp_path / "models" / tokenizer_source.name)
    write_manifest(copy, [f.name for f in copy.iterdir() if f.is_file() and f.name != "autoslm-manifest.json"])
    monkeypatch.setattr(models, "VERIFIED", set())
    expected = models.load_model("tiny-llama").fingerprint  # now: the weights are memory-mapped from the file
    entry = models.resolve("tiny-llama")
    assert entry.parent == tmp_path / "models"
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # a flipped byte
    weights.write_bytes(bytes(data))
    models.VERIFIED.clear()
    again = models.load_model("tiny-llama")
    assert again.fingerprint == expected  # rebuilt, not loaded damaged
    (entry / "config.json").unlink()
    models.VERIFIED.clear()
    assert models.load_model("tiny-llama").fingerprint == expected


# --- 11. an autoslm checkpoint without its manifest -----------------------------------------------------------------


def test_checkpoint_whose_manifest_was_deleted_is_refused_unless_allowed(tiny_dir: Path, tmp_path: Path) -> None:
    from autoslm.checkpoint import MANIFEST, load_model

    tampered = shutil.copytree(tiny_dir, tmp_path / "tampered")
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-64] ^= 0x01
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    (tampered / MANIFEST).unlink()  # ... and the evidence removed
    with pytest.raises(ChecksumError, match=r"written by autoslm but its autoslm-manifest\.json is missing"):
        load_model(tampered)
    _one_line_error(run_cli("eval", "--model", str(tampered), "--fidelity", "low"), "--allow-unverified")
    allowed = run_cli("eval", "--model", str(tampered), "--fidelity", "low", "--allow-unverified", "--json")
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["ppl"] > 0, allowed.stderr


# --- 12. recipes ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autoslm.models import load_model
    from autoslm.recipe import Recipe, build_steps

    lm = load_model("tiny-llama")
    r = Recipe(base_model={"name": "tiny-llama", "fingerprint": lm.fingerprint}, calibration={},
               steps=build_steps([{"technique": "prune.depth", "params": {"blocks": 1}}]), seed=0)  # fmt: skip
    return r.write(tmp_path_factory.mktemp("r") / "recipe.yaml")


def _edit(recipe: Path, tmp_path: Path, change) -> Path:
    import yaml

    doc = yaml.safe_load(recipe.read_text())
    change(doc)
    out = tmp_path / "edited.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["steps"][0]["params"].update(blocks=99), "blocks=99 is outside"),
        (lambda d: d["base_model"].pop("fingerprint"), "lacks fingerprint"),
        (lambda d: d.update(seed=-5), "seed"),
        (lambda d: d["steps"][0].update(plugin="x; rm -rf ~"), "plugin"),
        (lambda d: d.update(checkpoint_sha256="0" * 64), "not the searched checkpoint"),
    ],
)
def test_bad_recipes_are_one_line(recipe: Path, tmp_path: Path, change, needle: str) -> None:
    from autoslm.recipe import apply_recipe

    with pytest.raises(UserError, match=needle):
        apply_recipe(_edit(recipe, tmp_path, change), tmp_path / "out")


def test_recipe_paths_that_are_not_recipes_are_one_line(recipe: Path, tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"steps: \xff\xfe\n")
    _one_line_error(run_cli("apply", str(tmp_path / "bin.yaml"), "--out", str(tmp_path / "o")), "not UTF-8")
    _one_line_error(run_cli("apply", str(tmp_path), "--out", str(tmp_path / "o")), "is a folder")
    (tmp_path / "file").write_text("x")
    _one_line_error(run_cli("apply", str(recipe), "--out", str(tmp_path / "file")), "is a file")


# --- hardening round two (#35) ----------------------------------------------------------------------------------------
# --- 9. files that never end ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "not-gguf"])
def test_model_files_that_never_end_are_refused_before_hashing(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m.gguf"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.write_bytes(b"\x00" * 64)
    needle = "does not start with 'GGUF'" if kind == "not-gguf" else "not a regular file"
    _one_line_error(run_cli("eval", "--model", str(path), "--fidelity", "low", timeout=120), needle)


def test_a_space_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    from autoslm.yamlfile import read_yaml

    os.mkfifo(tmp_path / "s.yaml")
    with pytest.raises(UserError, match="not a regular file"):
        read_yaml(tmp_path / "s.yaml", "search space")


# --- 10. tracebacks that should be one line ---------------------------------------------------------------------------


def test_profile_settings_out_of_bounds_are_one_line() -> None:
    _one_line_error(run_cli("profile", "--model", "tiny-llama", "--prompt-tokens", "1000000000"),
                    "--prompt-tokens must be at most 8192")  # fmt: skip


@pytest.mark.parametrize("where", ["a-file", "/proc/autoslm"])
def test_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path: Path, where: str) -> None:
    if where == "a-file":
        where = str(tmp_path / "f")
        Path(where).write_text("x")
    proc = run_cli("eval", "--model", "tiny-llama", "--fidelity", "low", env={"AUTOSLM_CACHE": where})
    _one_line_error(proc, f"AUTOSLM_CACHE='{where}' cannot hold autoslm's cache")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("techniques: " + "[" * 50_000 + "]" * 50_000 + "\n", "nesting deeper than 64"),
        ("techniques: " + "{a: " * 30_000 + "1" + "}" * 30_000 + "\n", "nesting deeper than 64"),
        ("techniques:\n  prune.depth: {}\n  prune.depth: {blocks: 2}\n", "given twice"),
        ("techniques:\n  quant.dynamic_int8: {}\n  cast.dtype: {}\nrequired: [quant.dynamic_int8, cast.dtype]\n",
         "cannot be in one policy"),
    ],
)  # fmt: skip
def test_deep_duplicate_and_contradictory_space_files_are_refused(tiny, tmp_path: Path, text: str, needle: str):
    from autoslm.models import model_info
    from autoslm.searching.space import load_space

    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=needle):
        load_space(str(path), model_info(tiny.model))


def test_report_into_a_folder_it_cannot_write_is_one_line_and_offers_out(tmp_path: Path) -> None:
    import autoslm

    out = tmp_path / "run"
    autoslm.search(model="tiny-llama", space="tiny", budget="memory_mb<=3x", trials=1, fidelity="low", out=out)
    (out / "pareto.png").unlink()
    (out / "pareto.png").mkdir()  # the picture's path cannot be written (root ignores a read-only folder)
    _one_line_error(run_cli("report", str(out)), "cannot write the report", "pareto.png", "--out")
    proc = run_cli("report", str(out), "--out", str(tmp_path / "elsewhere"))
    assert proc.returncode == 0 and (tmp_path / "elsewhere" / "report.html").is_file(), proc.stderr


# --- 11. silently accepted --------------------------------------------------------------------------------------------


def test_an_empty_budget_means_no_limits_and_says_so(tmp_path: Path) -> None:
    from rich.console import Console

    from autoslm.search_view import SearchView
    from autoslm.searching.budget import Budget
    from autoslm.searching.settings import SearchSettings

    assert Budget.parse("").limits == () and Budget.parse(" none ").limits == ()
    assert SearchSettings.create(budget="").limits == Budget()  # accepted by the command line's settings
    with pytest.raises(UserError, match="empty term"):
        Budget.parse(",,,")
    console = Console(record=True, width=200)
    baseline = {"ppl": 10.0, "metrics": {"decode_ms": 1.0, "memory_mb": 1.0, "size_mb": 1.0}}
    with SearchView(console, trials=1) as view:
        view.event("baseline", {"baseline": baseline, "budget": Budget.parse("")})
    assert "budget none (no limits: the most accurate wins)" in console.export_text()


def test_a_plugin_allowlist_that_matches_nothing_warns() -> None:
    proc = run_cli("plugins", env={"AUTOSLM_PLUGINS": "nonexistent"})
    assert proc.returncode == 0
    assert "warning: AUTOSLM_PLUGINS names 'nonexistent', which matched no installed plugin" in proc.stderr
    strict = run_cli("plugins", env={"AUTOSLM_PLUGINS": "nonexistent", "AUTOSLM_PLUGINS_STRICT": "1"})
    _one_line_error(strict, "matched no installed plugin", "AUTOSLM_PLUGINS_STRICT")


# --- 5. an IPv6 banner ------------------------------------------------------------------------------------------------


def test_the_agent_banner_writes_an_ipv6_address_as_a_usable_url() -> None:
    from autoslm.cli import agent_url

    assert agent_url("127.0.0.1", 8765) == "http://127.0.0.1:8765"
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    proc = subprocess.Popen([sys.executable, "-m", "autoslm.cli", "agent", "--host", "::1", "--port", str(port)],
                            cwd=REPO, env={**os.environ, "AUTOSLM_AGENT_TOKEN": TOKEN}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)  # fmt: skip
    try:
        banner = proc.stdout.readline()
        assert f"autoslm agent on http://[::1]:{port} " in banner, banner
        assert requests.get(f"http://[::1]:{port}/health", timeout=5).ok  # the URL as printed works
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# --- 3 and 4. configs that eat memory, JSON that nests forever -----------------------------------------------------


def _upload(**files: bytes) -> bytes:
    """A small upload (the agent here takes 8 MB): a real safetensors file of one tensor, a config, and `files`."""
    import numpy as np
    from safetensors.numpy import save

    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16,
              "num_hidden_layers": 1, "intermediate_size": 32, "vocab_size": 64}  # fmt: skip
    weights = save({"model.embed_tokens.weight": np.zeros((64, 16), np.float32)})
    return tar_of({"config.json": json.dumps(config).encode(), "model.safetensors": weights, **files})


def _measure(url: str, body: bytes) -> requests.Response:
    return requests.post(f"{url}/measure", data=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)


def test_a_config_that_implies_a_billion_layers_is_400_before_anything_is_built(agent) -> None:
    url, _ = agent
    config = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1_000_000_000, "vocab_size": 64}
    t0 = time.monotonic()
    r = _measure(url, _upload(**{"config.json": json.dumps(config).encode()}))
    assert r.status_code == 400 and "1,000,000,000 layers" in r.json()["error"], r.text
    assert time.monotonic() - t0 < 30  # refused, not built until --timeout-s


def test_the_same_config_is_refused_locally_in_one_line(tiny_dir: Path, tmp_path: Path) -> None:
    bomb = _broken_copy(tiny_dir, tmp_path / "bomb")
    config = json.loads((bomb / "config.json").read_text())
    config["num_hidden_layers"] = 1_000_000_000
    (bomb / "config.json").write_text(json.dumps(config))
    _one_line_error(run_cli("eval", "--model", str(bomb), "--fidelity", "low", timeout=120),
                    "implies at least", "restore the model's files")  # fmt: skip


@pytest.mark.parametrize("name", ["config.json", "autoslm-manifest.json"])
def test_json_nested_100k_deep_is_400(agent, name: str) -> None:
    url, _ = agent
    r = _measure(url, _upload(**{name: b"[" * 100_000 + b"]" * 100_000}))
    assert r.status_code == 400 and "nests too deeply" in r.json()["error"], r.text


def test_a_client_that_disconnects_mid_upload_leaves_one_log_line(agent) -> None:
    url, proc = agent
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"POST /measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  "Content-Length: 100000\r\n\r\n".encode() + b"x" * 1000)  # fmt: skip
    time.sleep(2)
    r = requests.get(f"{url}/health", timeout=5)
    assert r.ok
    os.set_blocking(proc.stderr.fileno(), False)
    log = (proc.stderr.read() or b"").decode()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-2000:]
    assert "disconnected mid-upload" in log, log[-2000:]


# --- 1 and 2. a connection flood, a client that never reads ---------------------------------------------------------


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint small enough for the agent's 8 MB uploads: one block, hidden size 16 (about 3 MB)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from autoslm import checkpoint
    from autoslm.models import load_model

    tiny = load_model("tiny-llama")
    config = LlamaConfig(**{**tiny.model.config.to_dict(), "hidden_size": 16, "intermediate_size": 32,
                            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1})  # fmt: skip
    torch.manual_seed(0)
    return checkpoint.save_dir(LlamaForCausalLM(config).eval(), tiny.tokenizer, tmp_path_factory.mktemp("m") / "micro")


@pytest.fixture
def small_agent():
    url, proc = _start_agent("--max-connections", "256")  # the flood below is more than twice the limit
    yield url, proc
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_flood_of_idle_connections_does_not_starve_health_or_measurement(small_agent, micro_dir: Path) -> None:
    """~560 sockets that never send a request, each re-opened as soon as the agent closes it, for 25 s (no token
    needed), against an agent taking 256 connections: /health answers within 1 s throughout, and an authenticated
    measurement completes."""
    import selectors
    import threading

    from autoslm.targets import MeasureSettings, get_target

    url, _ = small_agent
    port = int(url.rsplit(":", 1)[1])
    stop = threading.Event()
    reopened = [0]

    def flood() -> None:
        sel = selectors.DefaultSelector()
        for _ in range(560):
            sel.register(socket.create_connection(("127.0.0.1", port)), selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.2):
                sel.unregister(key.fileobj)
                key.fileobj.close()  # closed by the agent: open another at once
                try:
                    sel.register(socket.create_connection(("127.0.0.1", port), timeout=5), selectors.EVENT_READ)
                    reopened[0] += 1
                except OSError:
                    pass
        for key in list(sel.get_map().values()):
            key.fileobj.close()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        time.sleep(3)  # the flood is in place
        measured: list[object] = []
        worker = threading.Thread(target=lambda: measured.append(get_target(url, token=TOKEN).measure(
            micro_dir, MeasureSettings(prompt_tokens=16, decode_tokens=4, repeats=1))), daemon=True)  # fmt: skip
        worker.start()
        slowest = 0.0
        deadline = time.monotonic() + 22
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            r = requests.get(f"{url}/health", timeout=5)
            slowest = max(slowest, time.monotonic() - t0)
            assert r.status_code == 200, r.text
            time.sleep(0.5)
        worker.join(timeout=30)
    finally:
        stop.set()
        flooder.join(timeout=30)
    assert reopened[0] > 100  # the agent kept closing idle sockets, and the flood kept re-opening them
    assert slowest < 1.0, slowest
    assert measured and measured[0].decode_ms > 0


def test_a_client_that_pipelines_requests_and_never_reads_is_closed(agent) -> None:
    url, _ = agent
    port = int(url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    sent, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < 20:  # keep sending, never read; the agent closes it (--header-timeout-s 2)
            try:
                sent += s.send(request * 64)
            except BlockingIOError:
                time.sleep(0.05)
            except OSError:  # reset by the agent
                break
        else:
            pytest.fail(f"still open after 20 s ({sent} bytes of requests sent, none of the answers read)")
    finally:
        s.close()
    assert requests.get(f"{url}/health", timeout=5).ok


# --- 6. Ctrl-C -------------------------------------------------------------------------------------------------------


def _as_from_a_terminal() -> None:
    """Ctrl-C as a shell delivers it: a process started from a terminal has SIGINT at its default and unblocked. In the
    whole suite this test's process had it otherwise (a child exited 0, never interrupted; alone it passes): a
    disposition left by a library earlier tests ran in-process is inherited across exec, and Python installs its
    KeyboardInterrupt handler only where SIGINT is not ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("when", ["baseline", "trial"])
def test_ctrl_c_says_what_was_kept_exits_130_and_resume_reruns_the_interrupted_trial(tmp_path: Path, when: str):
    import shlex

    out = tmp_path / "run"
    args = ["search", "--model", "tiny-llama", "--space", "tiny", "--budget", "memory_mb<=3x", "--trials", "2",
            "--fidelity", "low", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "autoslm.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_terminal)  # fmt: skip
    marker = "baseline:" if when == "trial" else "search space"
    for line in proc.stdout:  # the live view's lines, as they come
        if marker in line:
            break
    time.sleep(1.0 if when == "trial" else 0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    here = f"this process: SIGINT {signal.getsignal(signal.SIGINT)}, blocked {blocked}"
    assert proc.returncode == 130, f"{here}\n{err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    line = next(x for x in err.splitlines() if x.startswith("interrupted:"))
    assert "0 of 2 trials finished" in line and "Continue with: autoslm search" in line, line
    if when == "baseline":
        return
    again = shlex.split(line.split("Continue with: ", 1)[1])
    assert again[-1] == "--resume"
    done = run_cli(*again[1:])
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "trials.json").read_text())
    interrupted = [r for r in rows if r["status"] == "interrupted"]
    finished = [r for r in rows if r["status"] in ("complete", "infeasible", "pruned", "failed")]
    assert len(interrupted) == 1 and len(finished) == 2, [(r["number"], r["status"]) for r in rows]
    assert finished[0]["steps"] == interrupted[0]["steps"] or not interrupted[0]["steps"]  # re-run first


# --- 7. kill -9 during export ----------------------------------------------------------------------------------------


def _pair_matches(out: Path) -> bool:
    """recipe.yaml names the checkpoint beside it (its weights' sha256), and the checkpoint carries that recipe."""
    import yaml

    from autoslm import checkpoint

    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    weights = checkpoint.weights_file(out / "checkpoint")
    inner = (out / "checkpoint" / "recipe.yaml").read_text()
    return recipe["checkpoint_sha256"] == checkpoint.sha256_file(weights) and inner == (out / "recipe.yaml").read_text()


class _Killed(BaseException):
    """Stands for kill -9 in-process: nothing after the step runs (export has no cleanup handlers)."""


def test_a_crash_at_every_step_of_export_leaves_a_run_dir_that_resume_completes(tmp_path: Path, monkeypatch) -> None:
    import autoslm
    from autoslm.searching import export

    out = tmp_path / "run"
    options = {"model": "tiny-llama", "space": "tiny", "budget": "memory_mb<=3x", "trials": 1, "fidelity": "low",
               "out": out}  # fmt: skip
    autoslm.search(**options)
    assert _pair_matches(out)
    for step in ("staged", "old-moved", "new-in-place", "recipe-written"):

        def crash(at: str, step: str = step) -> None:
            if at == step:
                raise _Killed(at)

        monkeypatch.setattr(export, "_fault", crash)
        with pytest.raises(_Killed):
            autoslm.search(resume=True, **options)
        if step in ("staged", "recipe-written"):  # between whole states: the pair matches as it is
            assert _pair_matches(out), step
        monkeypatch.undo()
        autoslm.search(resume=True, **options)
        assert _pair_matches(out), step
        assert not [p.name for p in out.iterdir() if p.name.startswith((".checkpoint", ".recipe"))], step


def test_kill_9_between_moving_the_old_checkpoint_and_placing_the_new_one(tmp_path: Path) -> None:
    """A real kill -9 (AUTOSLM_FAULT) where checkpoint/ is briefly absent: the next run puts the old pair back."""
    out = tmp_path / "run"
    assert _search(out).returncode == 0
    killed = run_cli(*_search_args(out), "--resume", env={"AUTOSLM_FAULT": "export:old-moved"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-1500:]
    assert not (out / "checkpoint").exists() and (out / ".checkpoint.old").is_dir()
    again = run_cli(*_search_args(out), "--resume")
    assert again.returncode == 0, again.stderr[-1500:]
    assert _pair_matches(out)


# --- 8. two processes resuming one run dir -------------------------------------------------------------------------


def test_a_second_process_resuming_a_run_dir_in_use_is_refused_naming_the_first(tmp_path: Path) -> None:
    from autoslm.searching.runner import run_dir_lock

    out = tmp_path / "run"
    out.mkdir()
    with run_dir_lock(out):  # this process holds it, as a running search does
        second = run_cli(*_search_args(out), "--resume")
        _one_line_error(second, "is in use by another autoslm search", f"pid {os.getpid()}", "--storage")
    assert sorted(p.name for p in out.iterdir()) == [".autoslm.lock"]  # the refused process wrote nothing
    with run_dir_lock(out, shared=True), run_dir_lock(out, shared=True):  # a shared --storage: several at once
        pass
    with run_dir_lock(out):  # released: taken again
        pass


# --- 14. a plugin upgraded between a search and its resume -----------------------------------------------------------


def test_the_recipe_names_the_plugin_version_that_made_the_exported_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import yaml

    import autoslm
    from autoslm.plugins import get_registry

    out = tmp_path / "run"
    options = {"model": "tiny-llama", "space": "tiny", "budget": "memory_mb<=3x", "trials": 1, "fidelity": "low",
               "out": out}  # fmt: skip
    first = autoslm.search(**options)
    technique = first.best.steps[0]["technique"]
    entry = get_registry().technique(technique)
    made_by = entry.version
    monkeypatch.setattr(entry, "version", made_by + ".post1")  # upgraded, then --resume: no new trial, export again
    autoslm.search(resume=True, **options)
    step = next(s for s in yaml.safe_load((out / "recipe.yaml").read_text())["steps"] if s["technique"] == technique)
    assert step["version"] == made_by, step
