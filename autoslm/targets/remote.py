"""A remote device as a target: upload the checkpoint to an `autoslm agent`, get its measurement back.

Transient failures (agent unreachable, restarting, busy: connection errors, 502/503/504) are retried a bounded
number of times with growing waits, then reported as a failed measurement, so a search never hangs on a dead
device. A wrong token or a refused upload is not retried.
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from autoslm import model_card
from autoslm.errors import UserError
from autoslm.llamacpp import stock
from autoslm.targets import Measurement, MeasureSettings, Target, checkpoint_dir
from autoslm.targets.local import MeasurementError

log = logging.getLogger("autoslm.target")
RETRYABLE = {502, 503, 504}


NOT_THE_MODEL = (*model_card.DOCS, *stock.FILES)  # documentation, and what stock llama.cpp rebuilds the GGUF with


def pack(directory: Path, archive: Path) -> Path:
    """An uncompressed tar of the checkpoint directory's files (flat; weights are incompressible anyway), without
    its documentation (a model card, a Modelfile, a model folder's README) or the files for stock llama.cpp
    (`stock.FILES`): the agent measures the model only."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(Path(directory).iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix != ".md" and p.name not in NOT_THE_MODEL:
                tf.add(p, arcname=p.name, recursive=False)
    return archive


class RemoteTarget(Target):
    schemes = ("http", "https")
    kind = "remote"
    help = "http://HOST:PORT of a running `autoslm agent`"

    @classmethod
    def from_spec(cls, spec: str, token: str | None = None) -> RemoteTarget:
        return cls(spec, token=token)

    def __init__(
        self,
        url: str,
        token: str | None = None,
        retries: int = 4,
        backoff_s: float = 1.0,
        timeout_s: float = 1800.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token or os.environ.get("AUTOSLM_TARGET_TOKEN") or ""
        if not self.token:
            raise UserError(f"target {self.url} needs a token: pass --target-token or set AUTOSLM_TARGET_TOKEN")
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._fingerprint: dict[str, str | int] | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One HTTP call with bounded retries on transient failures; raises MeasurementError at the end."""
        import requests

        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                wait = self.backoff_s * 2 ** (attempt - 1)
                log.warning("agent %s: %s; retry %d/%d in %.0fs", self.url, last, attempt, self.retries, wait)
                time.sleep(wait)
                if "rewind" in kwargs:
                    kwargs["rewind"]()
            send = {k: v for k, v in kwargs.items() if k not in ("rewind", "headers")}
            headers = {**self._headers(), **(kwargs.get("headers") or {})}
            try:
                r = requests.request(method, self.url + path, headers=headers, **send)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"unreachable ({type(exc).__name__})"
                continue
            if r.status_code in RETRYABLE and not (r.status_code == 504 and path == "/measure"):
                last = f"HTTP {r.status_code} {_message(r)}"
                continue
            if r.status_code == 401:
                raise UserError(f"agent {self.url} refused the token (401): check --target-token")
            if r.status_code >= 400:
                raise MeasurementError(f"agent {self.url}: HTTP {r.status_code} {_message(r)}")
            return r.json()
        raise MeasurementError(f"agent {self.url}: {last} after {self.retries} retries")

    def fingerprint(self) -> dict[str, str | int]:
        if self._fingerprint is None:
            info = self._request("GET", "/info", timeout=30)
            self._fingerprint = {**info["device"], "agent": self.url}
        return self._fingerprint

    def measure(self, checkpoint: Path, settings: MeasureSettings | None = None) -> Measurement:
        settings = settings or MeasureSettings()
        checkpoint = checkpoint_dir(checkpoint)
        with tempfile.TemporaryDirectory(prefix="autoslm-upload-") as tmp:
            archive = pack(checkpoint, Path(tmp) / "checkpoint.tar")
            with open(archive, "rb") as body:
                data = self._request(
                    "POST",
                    "/measure",
                    # only what differs from the defaults: an agent of an older version, which knows fewer
                    # settings (`--context`), still serves a client that does not use the new ones
                    params={"settings": settings.model_dump_json(exclude_defaults=True)},
                    data=body,
                    headers={"Content-Type": "application/x-tar"},
                    timeout=(10, self.timeout_s),
                    rewind=lambda: body.seek(0),
                )
        return Measurement.model_validate(data)


def _message(r: Any) -> str:
    try:
        return str(r.json().get("error", ""))[:300]
    except ValueError:
        return r.text[:300]
