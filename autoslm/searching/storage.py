"""Where a study lives: SQLite in the run directory by default, any Optuna storage URL with --storage, or
`journal:PATH` for Optuna's journal file.

Completed trials are committed as they finish, so Ctrl-C or kill -9 loses none. Trials a dead process left RUNNING
stop sending heartbeats; when the search resumes Optuna marks them failed and `RetryHeartbeatStaleTrialCallback`
re-queues their parameters, and they are not counted as finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from autoslm.errors import UserError

HEARTBEAT_S = 5
GRACE_S = 15


SQLITE_MAGIC = b"SQLite format 3\x00"


def make_storage(url: str) -> Any:
    """An Optuna storage for `url`, checked readable: a file that is not a study database, a corrupt one, or a
    database URL whose driver is missing is a UserError naming it (never a SQLAlchemy traceback)."""
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        try:
            storage = JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
            storage.get_all_studies()
        except Exception as exc:
            raise UserError(f"cannot read the study journal '{url}': {_reason(exc)}; move it away or fix it") from exc
        return storage
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    _check_sqlite_file(url)
    for attempt in range(5):  # processes joining a fresh database race to create Optuna's schema: retry
        try:
            storage = RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            )
            storage.get_all_studies()
            return storage
        except (ImportError, ArgumentError) as exc:  # a missing driver, an unknown dialect, a malformed URL
            raise UserError(f"--storage '{url}': {_reason(exc)} (is its database driver installed?)") from exc
        except SQLAlchemyError as exc:
            # processes joining a fresh database race to create Optuna's schema (duplicate table, lock): retry;
            # a file that is not a database, or a corrupt one, does not get better
            hopeless = any(s in str(exc) for s in ("malformed", "not a database", "no such table", "disk I/O"))
            if attempt == 4 or hopeless:
                raise UserError(
                    f"cannot read the study storage '{url}': {_reason(exc)}; it is not a readable autoslm/Optuna "
                    "study (move the file away or choose another --out)"
                ) from exc
            time.sleep(1.0 + attempt)
        except Exception as exc:  # optuna's own checks of the schema version, and the like
            raise UserError(f"cannot read the study storage '{url}': {_reason(exc)}") from exc
    raise AssertionError("unreachable")


def _check_sqlite_file(url: str) -> None:
    """A SQLite file that exists must be empty or start with SQLite's magic (a garbage file fails fast)."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    if path.is_dir():
        raise UserError(f"study database '{path}' is a folder: remove it or choose another --out")
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
        if head != SQLITE_MAGIC:
            raise UserError(
                f"study database '{path}' is not a SQLite database (corrupt, or another file): move it away or "
                "choose another --out"
            )


def _reason(exc: BaseException) -> str:
    return (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[0][:300]
