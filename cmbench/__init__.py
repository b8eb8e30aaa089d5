"""cmbench: a benchmark suite and leaderboard harness for continual model merging.

Data flows one way: suite -> jobs -> protocol (method steps + evaluation) -> result
files -> report. Methods live in ``baselines/`` and depend on cmbench, never the reverse.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # read from the installed metadata: bumping the release never re-keys a result
    __version__ = version("cmbench")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"


class CmbenchError(Exception):
    """An error caused by the user's input; the CLI prints it as one line, no traceback."""
