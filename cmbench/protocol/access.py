"""What data a method is handed: exactly what it declared, never a test split."""

from __future__ import annotations

from typing import Any, cast

import torch

from .. import CmbenchError
from .. import methods as methods_mod
from ..data import Split


class OnDevice:
    """A CPU tensor whose slices and index selections arrive on ``device``: how a job on a
    GPU hands a method a whole train split (a real dataset's would not fit beside the model;
    methods compute on batches of it)."""

    def __init__(self, t: torch.Tensor, device: torch.device):
        self.t, self.device = t, device

    def __getitem__(self, i):
        return self.t[i.cpu() if torch.is_tensor(i) else i].to(self.device, non_blocking=True)

    def __len__(self) -> int:
        return len(self.t)

    @property
    def shape(self):
        return self.t.shape

    @property
    def dtype(self):
        return self.t.dtype

    def float(self) -> torch.Tensor:
        return self.t.to(self.device).float()


class DataAccess:
    """Hands a method exactly the data it declared, never a test split, and counts it.

    * ``none``: nothing;
    * ``current_task``: the current task's train/val splits;
    * ``calibration``: nested subsets of seen tasks' train splits (``calibration(task, n)``
      returns the first n samples of a fixed permutation, so smaller budgets are prefixes);
    * ``all_seen``: every seen task's train/val splits (reference rows only);
    * ``test_inputs``: unlabeled inputs of the current task's test split (test-time
      adaptation; a suite must opt in): the images only, never their labels.
    """

    def __init__(
        self, method_name: str, declared: str, tasks: dict, seed: int, device: torch.device = torch.device("cpu")
    ):
        self.method, self.declared, self.tasks, self.seed = method_name, declared, tasks, seed
        self.device = device  # splits are handed on the job's device (OnDevice: batch by batch)
        self.ctx: methods_mod.Context | None = None
        self.samples_handed = 0
        self._on_device: dict[tuple[str, str], Any] = {}

    def _deny(self, what: str):
        raise CmbenchError(
            f"method {self.method} declared data_access={self.declared!r} but asked for "
            f"{what}; declare the access it needs in its class"
        )

    def _split(self, task: str, split: str):
        if split == "test":
            raise CmbenchError(f"method {self.method} asked for the test split of {task}: methods never see test data")
        if split not in ("train", "val"):
            raise CmbenchError(f"method {self.method}: unknown split {split!r} (train or val)")
        s = self.tasks[task].split(split)
        if self.device.type == "cpu":
            return s
        if (task, split) not in self._on_device:
            # OnDevice stands in for the tensor: methods slice and index it, read shape and dtype
            self._on_device[task, split] = Split(
                x=cast(torch.Tensor, OnDevice(s.x, self.device)), y=s.y.to(self.device)
            )
        return self._on_device[task, split]

    def current(self, split: str = "train"):
        if self.declared not in ("current_task", "calibration", "all_seen"):
            self._deny(f"the current task's {split} data")
        assert self.ctx is not None  # set by the loop before a method runs
        s = self._split(self.ctx.task, split)
        self.samples_handed += len(s)
        return s

    def seen(self, task: str, split: str = "train"):
        if self.declared != "all_seen":
            self._deny(f"all data of seen task {task}")
        assert self.ctx is not None  # set by the loop before a method runs
        if task not in self.ctx.seen_tasks:
            raise CmbenchError(f"method {self.method} asked for {task}, which has not arrived yet")
        s = self._split(task, split)
        self.samples_handed += len(s)
        return s

    def calibration(self, task: str, n: int):
        if self.declared != "calibration":
            self._deny(f"calibration samples of {task}")
        assert self.ctx is not None  # set by the loop before a method runs
        if task not in self.ctx.seen_tasks:
            raise CmbenchError(f"method {self.method} asked for calibration data of {task}, which has not arrived yet")
        s = self.tasks[task].split("train")
        perm = torch.randperm(len(s), generator=torch.Generator().manual_seed(self.seed))[: min(n, len(s))]
        self.samples_handed += len(perm)
        return Split(x=s.x[perm].to(self.device), y=s.y[perm].to(self.device))

    def test_inputs(self, per_class: int) -> torch.Tensor:
        """``per_class`` test inputs of each of the current task's classes (all of a class
        that has fewer), without labels: the "seed samples" of test-time adaptation. The
        harness reads the labels to balance the classes, as the reference selects them
        (MINGLE, ``select_seed_subset``); the method gets the images, in a fixed seeded order."""
        if self.declared != "test_inputs":
            self._deny(f"test inputs of {self.ctx.task if self.ctx else 'a task'}")
        assert self.ctx is not None  # set by the loop before a method runs
        s = self.tasks[self.ctx.task].test
        g = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(len(s.y), generator=g)
        y = s.y[perm]
        picked = torch.cat([perm[y == c][:per_class] for c in torch.unique(s.y)])
        picked = picked[torch.randperm(len(picked), generator=g)]  # classes interleaved, not in blocks
        self.samples_handed += len(picked)
        return s.x[picked].to(self.device)
