"""cmbench: a benchmark suite and leaderboard harness for continual model merging.

Data flows one way: suite -> jobs -> protocol (method steps + evaluation) -> result
files -> report. Methods live in ``baselines/`` and depend on cmbench, never the reverse.
"""

__version__ = "0.1.0"


class CmbenchError(Exception):
    """An error caused by the user's input; the CLI prints it as one line, no traceback."""
