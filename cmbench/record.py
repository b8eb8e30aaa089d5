"""The result record: one typed model of a result file, the only way one is read, and how one is written.

Result files travel: contributed results, a colleague's ``--results DIR``, a site people
open. Every file is read as untrusted input: only regular files under ``MAX_BYTES`` (never a
FIFO, a device or a symbolic link), JSON without non-finite numbers, and fields checked for
type, range and shape (an accuracy is a number in [0, 1], R has T + 1 rows of T cells, names
obey the suite files' name rule, ...). A file that fails is one line naming the file, the
field and what is allowed (:class:`BadResult`).

The checksum (``checksum``: SHA-256 over every other field but the stored metrics, which are
derived from R when read) catches accidents: a hand edit,
a merge conflict resolved wrongly, a truncated copy. It is not a signature: anyone can
recompute it. What protects against a forged number is recomputing it: ``cmbench verify``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from . import CmbenchError
from .store import atomic_write_bytes
from .suite import NAME, LoRA

RECORD_VERSION = 1
MAX_BYTES = 4 * 2**20  # the largest committed result is ~60 KB; a long ODE-M log stays far below
_HEX = r"^[0-9a-f]{1,64}$"
HPARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"
_STAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.+\-Z]{1,40}$"

Name = Annotated[str, Field(pattern=NAME)]
Hex = Annotated[str, Field(pattern=_HEX)]
Text = Annotated[str, Field(max_length=20_000)]  # free text: escaped wherever it is printed
Frac = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, strict=True)]
# a cell of R or E: an accuracy in [0, 1], or a rank correlation in [-1, 1] for a task the
# record's ``evaluation.metric`` says is scored by Spearman's ρ (checked in ``_shapes``)
Score = Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False, strict=True)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
Finite = Annotated[float, Field(allow_inf_nan=False, strict=True)]
Count = Annotated[StrictInt, Field(ge=0)]


class _Open(BaseModel):
    """Fields the report reads are checked; others are kept as they are (newer writers)."""

    model_config = ConfigDict(extra="allow")


class Timings(_Open):
    merge_steps_s: list[Seconds] = Field(default_factory=list)
    merge_total_s: Seconds
    job_s: Seconds = 0.0
    eval_s: Optional[Seconds] = None
    train_total_s: Optional[Seconds] = None
    train_steps_s: Optional[list[Seconds]] = None


class Storage(_Open):
    peak: Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
    peak_by_kind: dict[Name, Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]] = Field(
        default_factory=dict
    )
    per_step: list[Any] = Field(default_factory=list)


class PublishedValue(_Open):
    acc: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False, strict=True)]
    std: Optional[Annotated[float, Field(ge=0, le=100, allow_inf_nan=False, strict=True)]] = None
    source: Text = ""


class SetupCheck(_Open):
    what: Literal["theta0", "expert"]
    task: Name
    ours: Finite
    published: Finite
    tolerance: Finite
    ok: StrictBool


class HparamSource(_Open):
    kind: Literal["suite", "tuned"] = "suite"
    oracle: Optional[StrictBool] = None


class Evaluation(_Open):
    seen_only: StrictBool = False
    max_test_per_task: Optional[Annotated[StrictInt, Field(ge=1)]] = None
    test_samples: dict[Name, Annotated[StrictInt, Field(ge=1)]] = Field(default_factory=dict)
    test_population: dict[Name, Annotated[StrictInt, Field(ge=1)]] = Field(default_factory=dict)
    # tasks not scored by accuracy (text tasks): exact match, or Spearman's ρ (STS-B)
    metric: dict[Name, Literal["exact_match", "spearman"]] = Field(default_factory=dict)


class ResultRecord(BaseModel):
    """A result file (``write_result`` writes it; see the module doc for how it is read)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "failed"]
    suite: Name
    suite_hash: Hex
    setting: Literal["merge_stream", "train_then_merge"] = "merge_stream"
    method: Name
    label: Name
    seed: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
    order_index: Annotated[StrictInt, Field(ge=0, le=10**6)]
    data_seed: Optional[Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]] = None
    tasks: list[Name] = Field(min_length=1, max_length=10_000)
    hparams: dict[Annotated[str, Field(pattern=HPARAM_NAME)], Any] = Field(default_factory=dict)
    key: Optional[Hex] = None
    inputs: Optional[dict[str, Any]] = None
    lora: Optional[LoRA] = None
    training: Optional[dict[Annotated[str, Field(pattern=HPARAM_NAME)], Any]] = None
    # merge stream: the experts merged (absent: independent, each fine-tuned from θ0)
    experts: Literal["independent", "sequential"] = "independent"
    hparam_source: HparamSource = Field(default_factory=HparamSource)
    data_access: Name = "none"
    reconstruction: StrictBool = False
    paper: Text = ""
    heads: Optional[Name] = None
    git_commit: Optional[Hex] = None
    finished_at: Optional[Annotated[str, Field(pattern=_STAMP)]] = None
    error: Optional[Text] = None
    rehearsal: Optional[dict[str, Any]] = None
    published: Optional[dict[Literal["ACC", "theta0", "experts"], PublishedValue]] = None
    published_unmatched: Optional[Text] = None  # why a covered benchmark's published numbers do not apply
    setup_check: Optional[list[SetupCheck]] = None
    # the science: R (T + 1 rows, row 0 = θ0), E (each expert on its task), per-step extras
    R: Optional[list[list[Optional[Score]]]] = None
    E: Optional[list[Score]] = None
    R_within: Optional[list[list[Optional[Frac]]]] = None
    R_final_before_finish: Optional[list[Optional[Frac]]] = None
    ACC_all_steps: Optional[list[Optional[Frac]]] = None
    trained_own_task_acc: Optional[list[Frac]] = None
    start_grad_norm: Optional[list[Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]]] = None
    timings: Optional[Timings] = None
    storage_bytes: Optional[Storage] = None
    data_samples_handed: Optional[Count] = None
    evaluation: Optional[Evaluation] = None
    device: Optional[dict[str, Any]] = None
    versions: Optional[dict[str, Any]] = None
    # what the method recorded per step for the reader (cmbench.methods.Context.record)
    diagnostics: Optional[
        dict[
            Annotated[str, Field(pattern=r"^([0-9]{1,6}|finish)$")],
            dict[
                Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")],
                Union[Optional[Finite], Annotated[list[Optional[Finite]], Field(max_length=64)]],
            ],
        ]
    ] = None
    checksum: Optional[Hex] = None
    R_checksum: Optional[Hex] = None

    @model_validator(mode="after")
    def _shapes(self):
        T = len(self.tasks)
        if len(set(self.tasks)) != T:
            raise ValueError("tasks: task names must be unique")
        ev = self.evaluation
        if ev is not None and ev.test_samples and set(ev.test_samples) != set(self.tasks):
            raise ValueError(
                f"evaluation.test_samples: names {sorted(ev.test_samples)}, not the result's tasks {sorted(self.tasks)}"
            )
        if ev is not None and not set(ev.metric) <= set(self.tasks):
            raise ValueError(
                f"evaluation.metric: names {sorted(set(ev.metric) - set(self.tasks))}, not tasks of the result"
            )
        if ev is not None and not set(ev.test_population) <= set(self.tasks):  # finite datasets only
            raise ValueError(
                f"evaluation.test_population: names {sorted(set(ev.test_population) - set(self.tasks))}, "
                "not tasks of the result"
            )
        if self.status == "failed":
            if self.error is None:
                raise ValueError("error: a failed job records why it failed")
            return self
        for field in ("R", "timings", "storage_bytes"):
            if getattr(self, field) is None:
                raise ValueError(f"{field}: required in a finished job's result")
        _matrix("R", self.R, T)
        signed = {t for t, m in (ev.metric if ev is not None else {}).items() if m == "spearman"}
        for field, rows in (("R", self.R), ("E", [self.E or []])):
            for i, row in enumerate(rows):
                for j, v in enumerate(row):
                    if v is not None and v < 0 and self.tasks[j] not in signed:
                        raise ValueError(
                            f"{field}: {v} for task {self.tasks[j]}: an accuracy is in [0, 1] (only a task whose "
                            "evaluation.metric is spearman may be negative)"
                        )
        if self.R_within is not None:
            _matrix("R_within", self.R_within, T)
        if self.setting == "merge_stream":
            if self.E is None or len(self.E) != T:
                raise ValueError(f"E: one accuracy per task is required in the merge stream ({T} tasks)")
        elif self.E is not None and len(self.E) != T:
            raise ValueError(f"E: {len(self.E)} values for {T} tasks")
        for field, n in (
            ("R_final_before_finish", T),
            ("ACC_all_steps", T + 1),
            ("trained_own_task_acc", T),
            ("start_grad_norm", T),
        ):
            v = getattr(self, field)
            if v is not None and len(v) != n:
                raise ValueError(f"{field}: {len(v)} values, expected {n} ({T} tasks)")
        if self.setting == "train_then_merge":
            if self.start_grad_norm is None or self.timings.train_total_s is None:  # type: ignore[union-attr]
                raise ValueError("start_grad_norm, timings.train_total_s: required in a train-then-merge result")
        return self


def _matrix(field: str, R: list, T: int) -> None:
    if len(R) != T + 1:
        raise ValueError(f"{field}: {len(R)} rows, expected {T + 1} (θ0's row and one per task; {T} tasks)")
    for i, row in enumerate(R):
        if len(row) != T:
            raise ValueError(f"{field}: row {i} has {len(row)} cells, expected {T} (one per task)")


class BadResult(Exception):
    """A result file that cannot be read as a result (the message is one line)."""


def printable(text: str, limit: int = 200) -> str:
    """``text`` for a terminal: control and other non-printing characters escaped, bounded."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
    return out if len(out) <= limit else out[: limit - 1] + "…"


def checksum(rec: dict) -> str:
    """SHA-256 over every field of a record (JSON, sorted keys) but the checksums themselves and
    the stored metrics, which are never read (they are derived from R when a file is read)."""
    body = {k: v for k, v in rec.items() if k not in ("checksum", "R_checksum", "metrics", "_path", "integrity")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()[:32]


def r_checksum(R: list) -> str:
    """The older checksum of R alone (files written before ``checksum`` carry only this)."""
    cells = [[None if v is None or v != v else v for v in row] for row in R]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16]


def integrity(rec: dict) -> str:
    """``"ok"``, ``"edited"`` (a checksum does not match) or ``"unchecked"`` (no checksum)."""
    if "checksum" in rec:
        return "ok" if checksum(rec) == rec["checksum"] else "edited"
    if "R_checksum" in rec and rec.get("status") == "ok":
        return "ok" if r_checksum(rec.get("R") or []) == rec["R_checksum"] else "edited"
    return "unchecked"


def read_bounded(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """A regular file's bytes, at most ``max_bytes``; anything else is refused in one line
    without blocking (a FIFO would wait for a writer, ``/dev/zero`` never ends)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise BadResult(f"cannot read: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise BadResult("a symbolic link; results are read from regular files only")
    if not stat.S_ISREG(st.st_mode):
        raise BadResult("not a regular file (a FIFO, socket or device); results are regular files")
    if st.st_size > max_bytes:
        raise BadResult(f"{st.st_size} bytes, more than a result file holds ({max_bytes}); not read")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise BadResult(f"cannot read: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the lstat
            raise BadResult("not a regular file; results are regular files")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise BadResult(f"more than {max_bytes} bytes; not a result file")
    return b"".join(chunks)


def _nonfinite(obj: Any, where: tuple = ()) -> tuple | None:
    """The path of the first non-finite number in parsed JSON, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        found = _nonfinite(v, (*where, k))
        if found is not None:
            return found
    return None


def _loc(loc: tuple) -> str:
    return ".".join(printable(str(x), 60) for x in loc) or "(top level)"


def parse(data: bytes) -> dict:
    """A result record from a file's bytes, validated; :class:`BadResult` otherwise."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadResult(f"not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise BadResult("JSON nested too deeply") from None
    except ValueError as e:
        raise BadResult(f"not valid JSON ({printable(str(e), 80)})") from None
    if not isinstance(raw, dict):
        raise BadResult("(top level): a result is a JSON object")
    bad = _nonfinite(raw)
    if bad is not None:
        raise BadResult(f"{_loc(bad)}: a non-finite number (NaN or Infinity); results hold finite numbers or null")
    try:
        ResultRecord.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {printable(repr(got), 60)})"
        where = _loc(err["loc"])
        raise BadResult(f"{where}: {msg}{shown}" if err["type"] != "value_error" else msg) from None
    except RecursionError:
        raise BadResult("nested too deeply") from None
    return raw


def read_record(path: Path) -> dict:
    """One result file, read and validated (:func:`read_bounded`, :func:`parse`)."""
    return parse(read_bounded(path))


def result_files(root: Path) -> list[Path]:
    """Every ``*.json`` under ``root``, sorted, not following symbolic links, never inside a
    hidden folder (``.cmbench/``: the cache, MLflow's copies of the results)."""
    out = []
    for here, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(here) / f for f in files if f.endswith(".json") and not f.startswith(".")]
    return sorted(out)


SCHEMA_PATH = "docs/result-schema.json"  # relative to the repository root (tools/result_schema.py writes it)


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a result file, generated from :class:`ResultRecord`
    (published as ``docs/result-schema.json``). It holds each field's type, range and name
    rule; the rules between fields (R's shape, what a failed or a train-then-merge result
    records) and the checksum are checked by :func:`parse` alone."""
    schema = ResultRecord.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"cmbench result file, format version {RECORD_VERSION}"
    schema["description"] = (
        f"One job's result as cmbench writes it: results/SUITE/LABEL/seedS-orderO.json (format version "
        f"{RECORD_VERSION}; generated from cmbench.record.ResultRecord). The schema checks each field's type, "
        "range and name rule; cmbench also checks, when it reads a file: at most 4 MiB of UTF-8 JSON without "
        "NaN or Infinity; unique task names; in a finished job (status ok) R, timings and storage_bytes, R with "
        "one row for theta0 and one per task, each of one cell per task, and E with one accuracy per task in "
        "the merge stream; in a failed job an error; the checksum over the other fields. Fields not listed "
        "here are kept as they are (metrics are never read: they are derived from R)."
    )
    return schema


def schema_text() -> str:
    """:func:`json_schema` as the published file holds it: sorted keys, indent 2, a final newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_place(rec: dict) -> tuple[str, str, str]:
    """The last three parts of the path a result is written to (``Job.relpath``)."""
    return rec["suite"], rec["label"], f"seed{rec['seed']}-order{rec['order_index']}.json"


__all__ = [
    "ResultRecord",
    "BadResult",
    "read_record",
    "parse",
    "checksum",
    "integrity",
    "printable",
    "json_schema",
    "schema_text",
    "nan_to_none",
    "error_line",
    "write_result",
    "keep_previous_result",
]


# -- writing -----------------------------------------------------------------------------------


def nan_to_none(x):
    """JSON has no NaN: undefined cells/metrics are written as null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    return x


def error_line(e: BaseException) -> str:
    """The one line a failed job's record (and the run's log) gives for ``e``."""
    if isinstance(e, CmbenchError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def write_result(path: Path, record: dict) -> None:
    # through JSON once, so the checksum is of what a reader parses (tuples as lists, ...)
    record = json.loads(json.dumps(nan_to_none(record)))
    record.pop("R_checksum", None)
    record["checksum"] = checksum(record)
    payload = json.dumps(record, indent=1, sort_keys=True).encode() + b"\n"
    try:
        atomic_write_bytes(path, payload)
    except OSError as e:
        raise CmbenchError(f"{path}: cannot write result: {e.strerror}") from None


def keep_previous_result(path: Path) -> Path | None:
    """Before a failed job's record replaces a result that was computed (for other inputs: a
    changed suite or code), move that result aside as ``NAME.json.previous``: a failure never
    loses a computed result, and the report, which reads ``*.json``, does not show it as current."""
    try:
        ok = json.loads(path.read_text()).get("status") == "ok"
    except (OSError, ValueError, AttributeError):
        return None
    if not ok:
        return None
    kept = path.with_name(path.name + ".previous")
    os.replace(path, kept)
    return kept
