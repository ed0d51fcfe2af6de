"""`autoslm agent`: measure candidates on the device where the model will run, for a search running elsewhere.

An HTTP service (Starlette on uvicorn). The searching machine uploads a candidate checkpoint as an uncompressed tar
of its directory; the agent checks it, measures it with the same code as the local target (a fresh process per
candidate: decode ms/token median and p90, prefill ms, peak memory, size) and answers JSON with its device
fingerprint.

Security model:
  - every request but GET /health needs `Authorization: Bearer <token>` (constant-time comparison) -> else 401
  - binds to 127.0.0.1 unless --host says otherwise; put it behind TLS (ssh -L, a reverse proxy) off a trusted LAN
  - uploads are bounded (--max-upload-mb -> 413), must be a flat tar of regular files with known extensions
    (safetensors, json, jinja, txt, yaml); pickle-based files (.bin, .pt, .pkl, ...) and anything that starts
    like a pickle are refused (400); the checkpoint manifest's sha256 sums are verified before loading
  - weights load with safetensors only, in a separate process with a time limit (--timeout-s -> 504)
  - one measurement at a time (a lock; waiting requests queue so timings are not disturbed); when more than
    --max-queue wait, new ones get 503 and the client retries later
"""

from __future__ import annotations

import asyncio
import hmac
import json
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ALLOWED_SUFFIXES = (".safetensors", ".gguf", ".json", ".jinja", ".txt", ".yaml", ".yml")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
MAX_FILES = 64


class BadUpload(ValueError):
    """The upload is not an acceptable checkpoint (-> 400)."""


def safe_extract(archive: Path, dest: Path) -> list[str]:
    """Extract a flat tar of regular files with allowed names; refuse everything else (never follows links)."""
    names: list[str] = []
    try:
        tf = tarfile.open(archive, mode="r:")  # noqa: SIM115 (closed by the `with tf` below)
    except (tarfile.TarError, OSError) as exc:
        raise BadUpload(f"upload is not an uncompressed tar archive: {exc}") from exc
    with tf:
        members = tf.getmembers()
        if not members:
            raise BadUpload("upload is an empty archive")
        if len(members) > MAX_FILES:
            raise BadUpload(f"upload has {len(members)} entries; at most {MAX_FILES} are accepted")
        for m in members:
            name = m.name
            if not m.isfile():
                raise BadUpload(f"'{name}' is not a regular file (links and folders are refused)")
            if "/" in name or "\\" in name or name.startswith(".") or not name:
                raise BadUpload(f"'{name}': only plain file names at the top of the archive are accepted")
            if name.lower().endswith(PICKLE_SUFFIXES):
                raise BadUpload(f"'{name}': pickle-based files are refused; send safetensors weights")
            if not name.lower().endswith(ALLOWED_SUFFIXES):
                raise BadUpload(f"'{name}': file type not accepted (allowed: {', '.join(ALLOWED_SUFFIXES)})")
            src = tf.extractfile(m)
            assert src is not None
            head = src.read(4)
            if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
                raise BadUpload(f"'{name}' is a pickle; pickles are never loaded")
            if name.lower().endswith(".gguf") and head != b"GGUF":
                raise BadUpload(f"'{name}' is not a GGUF file (it does not start with the GGUF magic)")
            with open(dest / name, "wb") as out:
                out.write(head)
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            names.append(name)
    if not any(n.endswith((".safetensors", ".gguf")) for n in names):
        raise BadUpload("upload has no weights (.safetensors, or a .gguf for the llama.cpp runtime)")
    if "config.json" not in names:
        raise BadUpload("upload has no config.json")
    return names


def verify_upload(directory: Path) -> None:
    """Check the manifest's checksums (when there is one) and that config.json is JSON."""
    from autoslm import checkpoint
    from autoslm.errors import ChecksumError, UserError

    try:
        json.loads((directory / "config.json").read_text())
    except ValueError as exc:
        raise BadUpload(f"config.json is not valid JSON: {exc}") from exc
    try:
        checkpoint.verify_dir(directory)
    except (ChecksumError, UserError) as exc:
        raise BadUpload(str(exc)) from exc


class Agent:
    """The service's state: token, limits, the measuring lock and the target that measures."""

    def __init__(
        self, token: str, *, max_upload_mb: float = 4096, max_queue: int = 4, timeout_s: float = 900.0
    ) -> None:
        from autoslm.targets.local import LocalTarget

        if not token or len(token) < 8:
            raise ValueError("the agent needs a token of at least 8 characters (--token or AUTOSLM_AGENT_TOKEN)")
        self.token = token.encode()
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.max_queue = max_queue
        self.target = LocalTarget(timeout_s=timeout_s)
        self.lock = threading.Lock()
        self.waiting = 0
        self.busy = False
        self.measured = 0
        self.started = time.time()

    # --- helpers ------------------------------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").encode() if header.startswith("Bearer ") else b""
        return hmac.compare_digest(given, self.token)

    async def receive(self, request: Request, path: Path) -> None:
        """Stream the body to `path`, refusing it as soon as it exceeds the limit."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_upload:
            raise _TooLarge(int(declared))
        size = 0
        with open(path, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_upload:
                    raise _TooLarge(size)
                f.write(chunk)

    def measure_locked(self, directory: Path, settings: Any) -> Any:
        with self.lock:
            self.busy = True
            try:
                return self.target.measure(directory, settings)
            finally:
                self.busy = False
                self.measured += 1

    # --- endpoints ----------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "busy": self.busy, "waiting": self.waiting})

    async def info(self, request: Request) -> JSONResponse:
        if not self.authorized(request):
            return _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'")
        import autoslm

        return JSONResponse(
            {
                "device": self.target.fingerprint(),
                "autoslm": autoslm.__version__,
                "max_upload_mb": self.max_upload / 1024 / 1024,
                "measured": self.measured,
                "uptime_s": round(time.time() - self.started, 1),
            }
        )

    async def measure(self, request: Request) -> JSONResponse:
        from autoslm.targets import MeasureSettings
        from autoslm.targets.local import MeasurementError

        if not self.authorized(request):
            return _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'")
        try:
            settings = MeasureSettings.model_validate_json(request.query_params.get("settings") or "{}")
        except ValueError as exc:
            return _error(400, f"bad 'settings' query parameter: {str(exc).splitlines()[0]}")
        from autoslm.plugins import get_registry

        if settings.runtime not in get_registry().runtimes:
            known = ", ".join(sorted(get_registry().runtimes))
            return _error(400, f"runtime '{settings.runtime}' is not installed on this device (installed: {known})")
        if self.waiting >= self.max_queue:
            return _error(503, f"agent busy: {self.waiting} measurements waiting; retry later")
        self.waiting += 1
        try:
            with tempfile.TemporaryDirectory(prefix="autoslm-agent-") as tmp:
                archive, directory = Path(tmp) / "upload.tar", Path(tmp) / "checkpoint"
                directory.mkdir()
                try:
                    await self.receive(request, archive)
                except _TooLarge as exc:
                    return _error(413, f"upload of {exc.size} bytes exceeds --max-upload-mb {self.max_upload >> 20}")
                try:
                    await run_in_threadpool(safe_extract, archive, directory)
                    archive.unlink()
                    await run_in_threadpool(verify_upload, directory)
                except BadUpload as exc:
                    return _error(400, str(exc))
                try:
                    m = await run_in_threadpool(self.measure_locked, directory, settings)
                except MeasurementError as exc:
                    code = 504 if "timed out" in str(exc) else 422
                    return _error(code, f"measurement failed: {exc}")
                return JSONResponse(m.model_dump())
        finally:
            self.waiting -= 1


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def make_app(agent: Agent) -> Starlette:
    return Starlette(
        routes=[
            Route("/health", agent.health, methods=["GET"]),
            Route("/info", agent.info, methods=["GET"]),
            Route("/measure", agent.measure, methods=["POST"]),
        ]
    )


def serve(agent: Agent, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning") -> None:
    """Run the agent until interrupted (uvicorn, one process: measurements are serialised anyway)."""
    import uvicorn

    config = uvicorn.Config(
        make_app(agent),
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=30,
        limit_concurrency=agent.max_queue + 8,
    )
    server = uvicorn.Server(config)
    asyncio.run(server.serve())
