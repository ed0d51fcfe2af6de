"""Where a study lives: SQLite in the run directory by default, any Optuna storage URL with --storage, or
`journal:PATH` for Optuna's journal file.

Completed trials are committed as they finish, so Ctrl-C or kill -9 loses none. Trials a dead process left RUNNING
stop sending heartbeats; when the search resumes Optuna marks them failed and `RetryHeartbeatStaleTrialCallback`
re-queues their parameters, and they are not counted as finished.
"""

from __future__ import annotations

import time
from typing import Any

HEARTBEAT_S = 5
GRACE_S = 15


def make_storage(url: str) -> Any:
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(5):  # processes joining a fresh database race to create Optuna's schema: retry
        try:
            return RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            )
        except SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")
