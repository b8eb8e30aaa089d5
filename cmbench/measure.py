"""Wall time, peak host memory and peak GPU memory of a stretch of work.

Host memory is the process's resident set sampled every 20 ms by a thread (the process's
lifetime peak, ``ru_maxrss``, would carry over from earlier jobs in a reused Ray worker);
GPU memory is PyTorch's allocator peak since the stretch began.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager


def memory() -> tuple[int, int]:
    """(resident bytes, of which private): file-backed pages such as memory-mapped decoded
    datasets count in the first only (they are the page cache, shared by a node's jobs)."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Rss"))
        anon = int(fields["RssAnon"].split()[0]) * 1024
        return anon + int(fields["RssFile"].split()[0]) * 1024 + int(fields["RssShmem"].split()[0]) * 1024, anon
    except (OSError, KeyError, ValueError):  # not Linux: the lifetime peak is the best there is
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak, peak


@contextmanager
def measured(into: dict, name: str):
    """``into[name] = {"s", "peak_rss_bytes", "peak_private_bytes", "peak_gpu_bytes"?}`` for
    the ``with`` body."""
    peak = list(memory())
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            now = memory()
            peak[0], peak[1] = max(peak[0], now[0]), max(peak[1], now[1])

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    gpu = _gpu_reset()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        s = time.perf_counter() - t0
        stop.set()
        th.join()
        rec = {"s": s, "peak_rss_bytes": peak[0], "peak_private_bytes": peak[1]}
        if gpu:
            import torch

            rec["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
        into[name] = rec


def _gpu_reset() -> bool:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            return True
    except Exception:  # noqa: BLE001 - measuring never stops the work
        pass
    return False


def disk_bytes(path) -> int:
    """Bytes under ``path`` (files only; links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total
