"""Budgeted search of compression policies. This package's face; each concept lives in the module named for it:

  settings.py     SearchSettings: every option, validated before anything is written; resume rules
  runner.py       run_search: settings -> study -> baseline -> warm start -> backend -> SearchResult
  objective.py    one trial: apply -> save -> measure on the target/runtime -> budget -> quality
  policy.py       the sampler's flat policy <-> ordered steps; the policy cache's hash
  trials.py       TrialRecord: what every backend writes and the report, Pareto set and live view read
  budget.py       `decode_ms<=0.7x,memory_mb<=500` -> limits and violations
  space.py        search-space files merged with each technique's own space
  warm_start.py   each technique alone at its defaults, tried first
  samplers.py     tpe, nsga2, random (a table: plugins add more)
  storage.py      SQLite / RDB / journal storages with heartbeats
  backends/       optuna (this process), ray (Ray Tune): a table, plugins add more
  pareto.py       the Pareto set
  export.py       the winner's recipe.yaml + checkpoint/

`autoslm.search(...)` (autoslm/__init__.py) is the public function: `run_search` plus the report.
"""

from __future__ import annotations

from autoslm.searching.runner import SearchResult, run_search
from autoslm.searching.settings import SearchSettings
from autoslm.searching.trials import TrialRecord

__all__ = ["SearchResult", "SearchSettings", "TrialRecord", "run_search"]
