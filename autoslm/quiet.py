"""Keep third-party progress bars and import-time warnings out of autoslm's output."""

from __future__ import annotations

import logging
import os
import warnings

NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "neural_compressor", "accelerate")


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LOGLEVEL", "ERROR")  # neural-compressor reads it for its own logger
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*TracerWarning.*")
    warnings.filterwarnings("ignore", module="transformers.integrations.sdpa_attention")
    warnings.filterwarnings("ignore", module="transformers.masking_utils")
    warnings.filterwarnings("ignore", module="transformers.cache_utils")
    try:
        import optuna

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    except ImportError:  # pragma: no cover
        pass
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
