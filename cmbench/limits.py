"""Time limits on work that may run away: a job, building an artefact, importing a method file.

A limit is a SIGALRM in the process's main thread (where Ray runs a task and ``--no-ray``
runs jobs; elsewhere no limit is enforced). Limits nest: importing a method file inside a
job keeps the job's own deadline.

The alarm raises a private ``BaseException`` wherever the code is, so no ``except
Exception`` of the code or its libraries swallows it. Python drops an exception raised
while it runs a finaliser or a weakref callback (garbage collection inside a library:
"Exception ignored in ..."), and the work would run on without a limit; such a dropped
expiry re-arms the alarm, so the next bytecode outside the finaliser stops the work.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time

from . import CmbenchError


class _Expired(BaseException):
    def __init__(self, token: object):
        super().__init__()
        self.token = token


_active: list[tuple[float, object]] = []  # (deadline, token), outermost first
_saved: tuple = ()  # the SIGALRM handler and unraisable hook before the outermost limit


def _arm() -> None:
    left = min(d for d, _ in _active) - time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


def _expired(signum, frame) -> None:
    now = time.monotonic()
    due = [token for deadline, token in _active if deadline <= now + 1e-3]
    if not due:  # woke early
        _arm()
        return
    raise _Expired(due[0])  # the outermost limit that ran out: everything inside it ends


def _dropped(unraisable) -> None:
    if isinstance(unraisable.exc_value, _Expired):
        signal.setitimer(signal.ITIMER_REAL, 0.01)
    else:
        _saved[1](unraisable)


@contextlib.contextmanager
def time_limit(seconds: float | None, message: str):
    """Stop the work inside after ``seconds`` with ``CmbenchError(message)``."""
    global _saved
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    entry = (time.monotonic() + seconds, object())
    if not _active:
        _saved = (signal.signal(signal.SIGALRM, _expired), sys.unraisablehook)
        sys.unraisablehook = _dropped
    _active.append(entry)
    _arm()
    passing = False  # another (outer) limit's expiry on its way out
    try:
        yield
    except _Expired as e:
        if e.token is entry[1]:
            raise CmbenchError(message) from None
        passing = True
        raise
    finally:
        _active.remove(entry)
        if not _active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, _saved[0])
            sys.unraisablehook = _saved[1]
        elif not passing:
            _arm()
