"""`autoslm agent` on loopback: authentication, upload limits, refusal of pickles and malformed payloads, a search
measured through the agent, and an agent restarted in the middle of that search."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import REPO, tar_of

TOKEN = "test-token-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "autoslm.cli", "agent", "--port", str(port), "--max-upload-mb", "40", *extra]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "AUTOSLM_AGENT_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return proc
        except requests.RequestException:  # refused, or bound but not serving yet
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"agent did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def agent():
    port = _free_port()
    proc = _start(port)
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autoslm import checkpoint
    from autoslm.models import load_model

    lm = load_model("tiny-llama")
    return checkpoint.save_dir(lm.model, lm.tokenizer, tmp_path_factory.mktemp("ck") / "tiny")


def _post(url: str, body: bytes, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{url}/measure", data=body, headers=headers, timeout=120)


def test_token_is_required(agent: str) -> None:
    assert requests.get(f"{agent}/health", timeout=5).json()["status"] == "ok"
    assert requests.get(f"{agent}/info", timeout=5).status_code == 401
    wrong = requests.get(f"{agent}/info", headers={"Authorization": "Bearer nope-nope-nope"}, timeout=5)
    assert wrong.status_code == 401 and "token" in wrong.json()["error"]
    assert _post(agent, b"x", token=None).status_code == 401
    assert _post(agent, b"x", token="wrong-token-123").status_code == 401
    ok = requests.get(f"{agent}/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["device"]["id"]


def test_oversized_upload_is_413(agent: str) -> None:
    r = _post(agent, b"\0" * (41 * 1024 * 1024))
    assert r.status_code == 413 and "max-upload-mb" in r.json()["error"]


# a real safetensors file whose 8-byte header length is 896 = 0x380: its first byte, 0x80, is pickle's first byte too
SAFETENSORS_896 = (896).to_bytes(8, "little") + b'{"__metadata__":{}}'.ljust(896)


def test_safetensors_whose_header_length_looks_like_a_pickle_are_accepted(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from autoslm.targets.agent import safe_extract

    assert SAFETENSORS_896[:2] == b"\x80\x03"  # what the pickle test used to refuse
    archive = tmp_path / "up.tar"
    archive.write_bytes(tar_of({"config.json": b"{}", "model.safetensors": SAFETENSORS_896}))
    (tmp_path / "out").mkdir()
    safe_extract(archive, tmp_path / "out")
    assert load_file(tmp_path / "out" / "model.safetensors") == {}


@pytest.mark.parametrize(
    ("files", "kinds", "message"),
    [
        ({}, None, "not an uncompressed tar"),
        ({"config.json": b"{}", "pytorch_model.bin": b"weights"}, None, "pickle-based files are refused"),
        ({"config.json": b"{}", "model.safetensors.json": pickle.dumps({"a": 1})}, None, "is a pickle"),
        ({"../config.json": b"{}"}, None, "only plain file names"),
        ({"config.json": b"{}"}, {"model.safetensors": tarfile.SYMTYPE}, "not a regular file"),
        ({"config.json": b"{}", "run.sh": b"echo"}, None, "file type not accepted"),
        ({"config.json": b"{}"}, None, "upload has no weights"),
        ({"config.json": b"{not json", "model.safetensors": SAFETENSORS_896}, None, "config.json is not valid JSON"),
        ({"config.json": b"{}", "model.safetensors": pickle.dumps({"a": 1})}, None, "not a safetensors file"),
        ({"config.json": b"{}", "model.safetensors": b"x"}, None, "not a safetensors file"),
        ({"config.json": b"{}", "model.gguf": b"\x80\x04pickled"}, None, "is a pickle"),
        ({"config.json": b"{}", "model.gguf": b"GGML" + b"\0" * 64}, None, "is not a GGUF file"),
        ({"config.json": b"{}", "model.gguf": b""}, None, "is not a GGUF file"),
    ],
)
def test_bad_payloads_are_400(agent: str, files: dict, kinds: dict | None, message: str) -> None:
    body = b"this is not a tar archive at all" * 40 if not files else tar_of(files, kinds)
    r = _post(agent, body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_tampered_checkpoint_is_400(agent: str, tiny_ckpt: Path) -> None:
    files = {p.name: p.read_bytes() for p in tiny_ckpt.iterdir()}
    files["config.json"] = files["config.json"].replace(b'"hidden_act"', b'"hidden_act" ')
    r = _post(agent, tar_of(files))
    assert r.status_code == 400 and "sha256" in r.json()["error"]


def test_runtime_the_device_lacks_is_400(agent: str, tiny_ckpt: Path) -> None:
    files = {p.name: p.read_bytes() for p in tiny_ckpt.iterdir()}
    r = requests.post(
        f"{agent}/measure",
        params={"settings": json.dumps({"runtime": "tensorrt"})},
        data=tar_of(files),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 400 and "runtime 'tensorrt' is not installed on this device" in r.json()["error"]


def test_oversized_runtime_name_is_400(agent: str) -> None:
    r = requests.post(
        f"{agent}/measure",
        params={"settings": json.dumps({"runtime": "x" * 10_000})},
        data=b"x",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 400 and "settings" in r.json()["error"] and len(r.text) < 2_000


@pytest.mark.parametrize(
    "bad",
    [
        {"threads": 0},
        {"quiet_wait_s": 1e9},
        {"quiet_wait_s": -1},
        {"quiet_wait_s": "forever"},
        {"context": 10**9},  # a KV cache of a billion tokens: refused before any memory is taken
        {"context": 0},
    ],
)
def test_bad_settings_are_400(agent: str, tiny_ckpt: Path, bad: dict) -> None:
    r = requests.post(
        f"{agent}/measure",
        params={"settings": json.dumps(bad)},
        data=b"x",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 400 and "settings" in r.json()["error"]  # a device never waits longer than 300 s


def test_remote_measurement_matches_local_schema(agent: str, tiny_ckpt: Path) -> None:
    from autoslm.targets import MeasureSettings, get_target

    settings = MeasureSettings(decode_tokens=8, repeats=1, prompt_tokens=16)
    remote = get_target(agent, token=TOKEN)
    m = remote.measure(tiny_ckpt, settings.model_copy(update={"quiet_wait_s": 60.0}))
    local = get_target("local").measure(tiny_ckpt, settings)
    assert m.decode_ms > 0 and m.memory_mb > 0
    assert m.size_mb == pytest.approx(local.size_mb)  # the same files arrived
    assert m.target["id"] == local.target["id"]  # same machine here: same device fingerprint
    assert remote.fingerprint()["agent"] == agent
    # the device reports what else it did while timing, as a local measurement does
    assert set(m.interference) >= {"other_cores", "steal", "load1", "spread", "disturbed"}
    assert isinstance(m.interference["quiet"], bool) and 0 < m.interference["waited_s"] <= 61  # it waited there
    assert "quiet" not in local.interference  # asked not to wait (quiet_wait_s 0)
    assert m.bpw == pytest.approx(local.bpw)


def test_unreachable_agent_fails_fast_and_clearly(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoslm.targets import remote
    from autoslm.targets.local import MeasurementError
    from autoslm.targets.remote import RemoteTarget

    waits: list[float] = []
    monkeypatch.setattr(remote.time, "sleep", waits.append)  # the retries' waits, recorded instead of slept
    target = RemoteTarget(f"http://127.0.0.1:{_free_port()}", token=TOKEN, retries=2, backoff_s=0.1)
    with pytest.raises(MeasurementError, match=r"unreachable.*after 2 retries"):
        target.measure(tiny_ckpt)
    assert waits == pytest.approx([0.1, 0.2])  # two retries with doubling backoff, then it gives up


def test_search_through_agent_survives_a_restart(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(port)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "autoslm.cli", "search", "--model", "tiny-llama", "--space", "tiny",
           "--budget", "memory_mb<=3x", "--trials", "3", "--fidelity", "low", "--out", str(out),
           "--target", url, "--target-token", TOKEN]  # fmt: skip
    search = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        measurements = 0  # wait until the agent is busy with the second measurement (the first trial), then kill it
        deadline = time.time() + 300
        was_busy = False
        while time.time() < deadline and search.poll() is None:
            busy = requests.get(f"{url}/health", timeout=5).json()["busy"]
            if busy and not was_busy:
                measurements += 1
                if measurements == 2:
                    break
            was_busy = busy
            time.sleep(0.05)
        assert measurements == 2, "the search never reached its first trial's measurement"
        _stop(proc)
        time.sleep(1)
        proc = _start(port)
        _, stderr = search.communicate(timeout=600)
    finally:
        if search.poll() is None:
            search.kill()
        _stop(proc)
    assert search.returncode == 0, stderr[-3000:]
    rows = json.loads((out / "trials.json").read_text())
    assert len(rows) == 3 and all(r["state"] in ("complete", "pruned") for r in rows), rows
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["target"]["kind"] == "remote" and recipe["target"]["fingerprint"]["agent"] == url
    assert "retry" in stderr  # the client said it was retrying
