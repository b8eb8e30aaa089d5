"""The continual loop, owned once by the harness (``loop.run_job``), in two settings:

* merge stream (``stream``): θ0 and T experts arrive one at a time; after every step the
  merged model is evaluated on all T tasks (R, T + 1 rows) and each expert on its own (E);
* train then merge (``ttm``): the harness trains each task from what the method chooses,
  with its hooks, and the method merges the trained model into the deployed one.

Methods never see the loop or any test split; what data they see is what they declared
(``access.DataAccess``). The record's shared fields are in ``recording``.
"""

from __future__ import annotations

from typing import Any

from ..store import Store
from ..suite import Job, Suite
from .access import DataAccess, OnDevice
from .evaluation import Evaluator
from .loop import run_job
from .recording import failure_record, measure_storage
from .stream import MergeStream
from .ttm import TrainThenMerge

__all__ = ["DataAccess", "Evaluator", "OnDevice", "failure_record", "measure_storage", "run"]


def run(suite: Suite, job: Job, store: Store, threads: int, scored_on: str = "test") -> dict[str, Any]:
    """Run one (method, seed, order) job in the suite's setting; return its result record
    (R measured on the test splits, or on the validation splits: ``scored_on="val"``)."""
    setting = TrainThenMerge if suite.setting == "train_then_merge" else MergeStream
    return run_job(suite, job, store, threads, setting, scored_on)
