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
import contextlib
import hmac
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ALLOWED_SUFFIXES = (".safetensors", ".gguf", ".json", ".jinja", ".txt", ".yaml", ".yml")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
MAX_FILES = 64
MAX_NAME = 128  # characters in an uploaded file name


class BadUpload(ValueError):
    """The upload is not an acceptable checkpoint (-> 400)."""


def safe_extract(archive: Path, dest: Path, max_bytes: int | None = None) -> list[str]:
    """Extract a flat tar of regular files with allowed names; refuse everything else (never follows links, never
    expands sparse members); at most `max_bytes` are written in all (default: the archive's own size)."""
    names: list[str] = []
    budget = archive.stat().st_size if max_bytes is None else max_bytes
    try:
        tf = tarfile.open(archive, mode="r:")  # noqa: SIM115 (closed by the `with tf` below)
    except (tarfile.TarError, OSError) as exc:
        raise BadUpload(f"upload is not an uncompressed tar archive: {exc}") from exc
    try:
        with tf:
            _extract_members(tf, dest, budget, names)
    except (tarfile.TarError, EOFError) as exc:
        raise BadUpload(f"upload archive is truncated or corrupt: {exc}") from exc
    if not any(n.endswith((".safetensors", ".gguf")) for n in names):
        raise BadUpload("upload has no weights (.safetensors, or a .gguf for the llama.cpp runtime)")
    if "config.json" not in names:
        raise BadUpload("upload has no config.json")
    return names


def _extract_members(tf: tarfile.TarFile, dest: Path, budget: int, names: list[str]) -> None:
    members = tf.getmembers()
    if not members:
        raise BadUpload("upload is an empty archive")
    if len(members) > MAX_FILES:
        raise BadUpload(f"upload has {len(members)} entries; at most {MAX_FILES} are accepted")
    for m in members:
        name = m.name
        if len(name) > MAX_NAME:
            raise BadUpload(f"a file name of {len(name)} characters: at most {MAX_NAME} are accepted")
        if not m.isfile():
            raise BadUpload(f"'{name}' is not a regular file (links and folders are refused)")
        if m.issparse():
            raise BadUpload(f"'{name}' is a sparse file: send plain files")
        if "/" in name or "\\" in name or name.startswith(".") or not name or not name.isprintable():
            raise BadUpload(f"'{name}': only plain file names at the top of the archive are accepted")
        if name in names:
            raise BadUpload(f"'{name}' appears twice in the archive")
        if m.size > budget:
            raise BadUpload(f"'{name}' would expand to {m.size} bytes, more than the upload itself")
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise BadUpload(f"'{name}': pickle-based files are refused; send safetensors weights")
        if not name.lower().endswith(ALLOWED_SUFFIXES):
            raise BadUpload(f"'{name}': file type not accepted (allowed: {', '.join(ALLOWED_SUFFIXES)})")
        src = tf.extractfile(m)
        assert src is not None
        head = src.read(9)
        if name.lower().endswith(".safetensors"):
            # an 8-byte little-endian header length, then the JSON header: a pickle (or anything else) is refused.
            # (Testing for pickle's 0x80 first byte refused real safetensors whose header length ended in 0x80.)
            length = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
            if not (0 < length <= min(m.size - 8, 100 << 20)) or head[8:9] != b"{":
                raise BadUpload(f"'{name}' is not a safetensors file (no header where one begins); pickles are refused")
        elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise BadUpload(f"'{name}' is a pickle; pickles are never loaded")
        if name.lower().endswith(".gguf") and head[:4] != b"GGUF":
            raise BadUpload(f"'{name}' is not a GGUF file (it does not start with the GGUF magic)")
        written = len(head)
        try:
            with open(dest / name, "wb") as out:
                out.write(head)
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > budget:
                        raise BadUpload(f"'{name}' expands beyond the bytes received; refused")
                    out.write(chunk)
        except OSError as exc:
            raise BadUpload(f"'{name}' cannot be written on the device: {exc.strerror or exc}") from exc
        budget -= written
        names.append(name)


def verify_upload(directory: Path) -> None:
    """Check the manifest's checksums (when there is one), that config.json is JSON, and that the architecture it
    describes is one the uploaded weights can fill (before the measuring process builds it)."""
    from autoslm import checkpoint
    from autoslm.errors import ChecksumError, UserError
    from autoslm.models import oversized_config

    try:
        config = json.loads((directory / "config.json").read_text())
    except ValueError as exc:
        raise BadUpload(f"config.json is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadUpload("config.json nests too deeply to be a model config") from exc
    try:
        checkpoint.verify_dir(directory)
    except (ChecksumError, UserError) as exc:
        raise BadUpload(str(exc)) from exc
    problem = oversized_config(config, directory) if isinstance(config, dict) else "config.json is not a JSON object"
    if problem:
        raise BadUpload(f"config.json: {problem}")


SEND_BUFFER = 64 * 1024  # bytes the kernel buffers per connection towards the client (autotuned up to ~4 MB)
MAX_CONNECTIONS = 1000
GRACE_S = 0.5
HARD_FACTOR = 4
"""Past --max-connections open connections the agent is under pressure: every connection waiting for a request head
(new, or kept alive after a response) gets GRACE_S to send it instead of --header-timeout-s, and those that have
waited longer are closed. Past HARD_FACTOR times the limit, new connections are refused outright. A client holding
~560 idle sockets and re-opening each one as it was closed, with no token, made every /health and every authenticated
request answer 503 (uvicorn's `limit_concurrency` counted its sockets); now the sockets that send nothing give way,
and a client that sends its request within GRACE_S of connecting is served (docs/reliability.md)."""


class Agent:
    """The service's state: token, limits, the measuring lock and the target that measures."""

    def __init__(
        self,
        token: str,
        *,
        max_upload_mb: float = 4096,
        max_queue: int = 4,
        timeout_s: float = 900.0,
        upload_timeout_s: float = 600.0,
        header_timeout_s: float = 10.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        from autoslm.targets.local import LocalTarget

        if not token or len(token.strip()) < 8 or token != token.strip():
            raise ValueError(
                "the agent needs a token of at least 8 characters without surrounding spaces "
                "(--token or AUTOSLM_AGENT_TOKEN)"
            )
        self.token = token.encode()
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.max_queue = max_queue
        self.upload_timeout_s = upload_timeout_s
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.target = LocalTarget(timeout_s=timeout_s)
        self.scratch = scratch_root()
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
            async with asyncio.timeout(self.upload_timeout_s):  # a trickling upload holds a queue place: bounded
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
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(map(str, err["loc"])) or "settings"
            return _error(400, f"bad 'settings' query parameter: {where}: {err['msg']}")
        except ValueError as exc:
            return _error(400, f"bad 'settings' query parameter: {str(exc).splitlines()[0]}")
        from autoslm.plugins import get_registry

        cores = os.cpu_count() or 1
        if settings.threads > cores:
            return _error(400, f"threads={settings.threads}: this device has {cores} CPU threads")
        if settings.runtime not in get_registry().runtimes:
            known = ", ".join(sorted(get_registry().runtimes))
            return _error(400, f"runtime '{settings.runtime}' is not installed on this device (installed: {known})")
        if self.waiting >= self.max_queue:
            return _error(503, f"agent busy: {self.waiting} measurements waiting; retry later")
        self.waiting += 1
        try:
            with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
                archive, directory = Path(tmp) / "upload.tar", Path(tmp) / "checkpoint"
                directory.mkdir()
                try:
                    await self.receive(request, archive)
                except _TooLarge as exc:
                    return _error(413, f"upload of {exc.size} bytes exceeds --max-upload-mb {self.max_upload >> 20}")
                except TimeoutError:
                    return _error(408, f"upload not received within {self.upload_timeout_s:g} s")
                except ClientDisconnect:  # nobody to answer: one line in the log, not a traceback
                    client = request.client.host if request.client else "a client"
                    logging.getLogger("uvicorn.error").warning("%s disconnected mid-upload; upload dropped", client)
                    return _error(400, "client disconnected mid-upload")
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


def scratch_root() -> Path:
    """This agent's scratch folder, `autoslm-agent-<pid>` in the temp dir; folders of agents that are no longer
    running (killed with -9: their uploads were never cleaned) are removed first."""
    base = Path(tempfile.gettempdir())
    for old in base.glob("autoslm-agent-*"):
        pid = old.name.removeprefix("autoslm-agent-")
        if old.is_dir() and (not pid.isdigit() or not _alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    mine = base / f"autoslm-agent-{os.getpid()}"
    mine.mkdir(exist_ok=True)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_app(agent: Agent) -> Starlette:
    return Starlette(
        routes=[
            Route("/health", agent.health, methods=["GET"]),
            Route("/info", agent.info, methods=["GET"]),
            Route("/measure", agent.measure, methods=["POST"]),
        ]
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is printed: a port in use or a bad address is a UserError."""
    from autoslm.errors import UserError

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port: use 1..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host '{host}' is not an address of this machine ({exc.strerror})") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror} (another agent running? use --port)") from exc
    sock.listen(128)
    return sock


def serve(
    agent: Agent, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning", sock: Any = None
) -> None:
    """Run the agent until interrupted (uvicorn, one process: measurements are serialised anyway).

    Connections are cheap and bounded in time: a connection must send its request head within the agent's
    `header_timeout_s` of opening or of its previous response (idle and slow-header sockets are closed), an upload
    must arrive within `upload_timeout_s`, and past `max_connections` open ones, idle ones get GRACE_S (a flood of
    idle sockets gives way to requests); the --max-queue limit (503) applies to measurement work only."""
    import uvicorn

    sock = sock or bind(host, port)
    _enough_descriptors(HARD_FACTOR * agent.max_connections + 256)
    config = uvicorn.Config(
        make_app(agent),
        log_level=log_level,
        timeout_keep_alive=30,
        limit_concurrency=None,  # counted every idle socket (a flood made every request 503): bounded below instead
        http=_header_timeout_protocol(agent.header_timeout_s, agent.max_connections),
        h11_max_incomplete_event_size=16 * 1024,
    )
    server = uvicorn.Server(config)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        shutil.rmtree(agent.scratch, ignore_errors=True)


def _enough_descriptors(wanted: int) -> None:
    """Raise this process's open-file limit towards `wanted` (within the hard limit): each connection is one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


def _header_timeout_protocol(seconds: float, max_connections: int = MAX_CONNECTIONS) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a complete request head within `seconds` of
    opening (or of its previous response): uvicorn itself waits forever for the first request; past `max_connections`
    open, within GRACE_S (above). And a
    connection whose responses the client has not read for `seconds` is closed (200k pipelined requests that were
    never read kept one open indefinitely)."""
    from collections import OrderedDict

    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting: OrderedDict[int, Any] = OrderedDict()  # connections waiting for a request head, longest-waiting first
    open_count = [0]

    class HeaderTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None
        _since = 0.0

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            open_count[0] += 1
            sock = transport.get_extra_info("socket")
            if sock is not None:  # answers are small: a client that stops reading fills this soon (write timeout)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            if open_count[0] > HARD_FACTOR * max_connections:
                self.transport.abort()  # a flood far past the limit: refused until the sweep below catches up
                return
            if open_count[0] > max_connections:
                self._sweep()
            self._arm()

        def _sweep(self) -> None:
            """Under pressure: close every connection that has waited GRACE_S or more for a request head."""
            now = self.loop.time()
            while waiting:
                key, other = next(iter(waiting.items()))
                if now - other._since < GRACE_S:
                    break
                del waiting[key]
                other._disarm()
                other.transport.abort()

        def _arm(self) -> None:
            self._disarm()
            under_pressure = open_count[0] > max_connections
            self._head_timer = self.loop.call_later(GRACE_S if under_pressure else seconds, self._no_head)
            self._since = self.loop.time()
            waiting[id(self)] = self  # at the end: the most recent to start waiting

        def _disarm(self) -> None:
            waiting.pop(id(self), None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(seconds, self._not_reading)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _not_reading(self) -> None:
            self._write_timer = None
            self.transport.abort()  # its unread responses are dropped: the client stopped reading

        def _no_head(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request head arrived: the request's own limits apply from here

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            open_count[0] -= 1
            self._disarm()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
