"""Where a run reads its data and method files from, and whether it may download: one
object, passed from where a command starts (the command line, or a library call's
argument) down to every job, on this machine or a cluster's.

The environment variables ``CMBENCH_DATA_ROOT``, ``CMBENCH_ALLOW_DOWNLOAD`` and
``CMBENCH_BASELINES`` are only the user's defaults: they are read once, by
``Config.from_env``, where a command starts; nothing below reads them. A job holds its
configuration for its duration (``applied``), so a loader deep in the data layer asks
``current()`` rather than taking the object through every call of the numerical code.
None of it changes a number a job computes: it is never part of a key.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Mapping

DEFAULT_DATA_ROOT = "~/.cache/cmbench/data"


@dataclass(frozen=True)
class Config:
    data_root: Path = field(default_factory=lambda: Path(DEFAULT_DATA_ROOT).expanduser())
    allow_download: bool = False
    baselines: tuple[Path, ...] = ()  # method folders searched before ./baselines and the repo's own

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        return cls(
            data_root=Path(env.get("CMBENCH_DATA_ROOT") or DEFAULT_DATA_ROOT).expanduser(),
            allow_download=env.get("CMBENCH_ALLOW_DOWNLOAD", "") not in ("", "0", "false"),
            baselines=tuple(Path(p) for p in env.get("CMBENCH_BASELINES", "").split(os.pathsep) if p),
        )

    def with_(self, **changes) -> Config:
        return replace(self, **changes)


_CURRENT: contextvars.ContextVar[Config | None] = contextvars.ContextVar("cmbench_config", default=None)


def current() -> Config:
    """The configuration of the command or job running now; outside one (a library call that
    passed none), the environment's defaults."""
    return _CURRENT.get() or Config.from_env()


@contextlib.contextmanager
def applied(config: Config) -> Iterator[Config]:
    """Hold ``config`` as the current one for the duration of a command or a job."""
    token = _CURRENT.set(config)
    try:
        yield config
    finally:
        _CURRENT.reset(token)
