"""Property-based: every malformed suite gets a one-line CmbenchError naming the file (and a
field), never another exception, never a hang, and nothing written outside --out.

Mutations of every shipped suite (types, ranges, non-finite values, names with path
separators and control characters, duplicate keys, aliases, impossible orders), each checked
in-process through the CLI's entry point (``cmbench run FILE --dry-run``); the hostile cases
below also as real ``cmbench`` subprocesses."""

import contextlib
import copy
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmbench import CmbenchError
from cmbench.cli import main
from cmbench.registry import discover
from cmbench.suite import load_suite

from .conftest import REPO

TINY = "name: x\nbackbone: {kind: tiny_vit}\n"  # a suite names its backbone (required)

BASES = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((REPO / "suites").glob("*.yaml"))}
# the method registry (torch and every baseline) is imported once, here: the per-suite bound
# below is for the checks; the cold cost is what the subprocess test measures
discover()


def _leaf_paths(node, prefix=()):
    """Every path into a suite (dict keys and list indices), containers included."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _leaf_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):  # the first few entries of long lists
            out += _leaf_paths(v, prefix + (i,))
    return out


PATHS = {name: _leaf_paths(d) for name, d in BASES.items()}
NAME_FIELDS = {name: [p for p in PATHS[name] if p[-1] in ("name", "label")] for name in BASES}
BAD_NAMES = ["../x", "a/b", "..", "x\x00y", "tab\there", "\x1b[31mred", "line\nbreak", "a" * 300, " ", ".hidden", ""]
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), -1),
    st.integers(2**31, 2**70),
    st.floats(allow_nan=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, 0, 0.0, -0.0]),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _set(d, path, value):
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


def _del(d, path):
    for p in path[:-1]:
        d = d[p]
    del d[path[-1]]


base = st.sampled_from(sorted(BASES))
mutation = st.one_of(
    base.flatmap(lambda b: st.tuples(st.just("set"), st.just(b), st.sampled_from(PATHS[b]), junk)),
    base.flatmap(lambda b: st.tuples(st.just("del"), st.just(b), st.sampled_from(PATHS[b]), st.none())),
    base.flatmap(
        lambda b: st.tuples(
            st.just("name"), st.just(b), st.sampled_from(NAME_FIELDS[b] or [("name",)]), st.sampled_from(BAD_NAMES)
        )
    ),
    base.flatmap(
        lambda b: st.tuples(
            st.just("unknown_key"),
            st.just(b),
            st.sampled_from([(), ("backbone",), ("methods", 0), ("tasks", 0)]),
            st.text(min_size=1, max_size=8),
        )
    ),
    st.tuples(st.just("duplicate_key"), base, st.sampled_from(["name", "tasks", "methods", "seeds"]), st.none()),
    st.tuples(st.just("alias"), base, st.integers(6, 12), st.none()),
    st.tuples(
        st.just("order"),
        base,
        st.one_of(
            st.lists(st.sampled_from(["bars", "nope", "", "g0", "sun397"]), max_size=5),
            st.integers(10**5, 10**9),
        ),
        st.none(),
    ),
)


def _mutated(m) -> str | None:
    kind, name, path, value = m
    d = copy.deepcopy(BASES[name])
    if kind in ("set", "name"):
        _set(d, path, value)
    elif kind == "del":
        _del(d, path)
    elif kind == "unknown_key":
        target = d
        try:
            for p in path:
                target = target[p]
        except (KeyError, IndexError, TypeError):
            return None
        if not isinstance(target, dict) or value in target:
            return None
        target[value] = 1
    elif kind == "duplicate_key":
        return yaml.safe_dump(d) + yaml.safe_dump({path: d.get(path, [1])})
    elif kind == "alias":  # a billion-laughs bomb inside the first task's params
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, path)]
        d["tasks"][0]["params"] = "@BOMB@"
        return "\n".join(lines) + "\n" + yaml.safe_dump(d).replace("'@BOMB@'", f"*a{path - 1}")
    else:  # impossible orders: unknown or repeated names, or more random orders than exist
        d["orders"] = {"explicit": [path]} if isinstance(path, list) else {"random": path, "explicit": []}
    return yaml.safe_dump(d)


TRIED = {"n": 0, "slowest": 0.0}


def _cli_refuses(path: Path, out: Path) -> str:
    """``cmbench run PATH --dry-run --out OUT`` in-process: its exit status and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["run", str(path), "--dry-run", "--out", str(out)])
    return rc, err.getvalue()


@pytest.mark.slow  # 560 mutations, about 20 s: make test-slow (the one-line refusals themselves are tested above)
@settings(max_examples=560, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutation)
def test_mutated_suites_fail_cleanly(tmp_path_factory, m):
    text = _mutated(m)
    if text is None:
        return
    where = tmp_path_factory.mktemp("s")
    path = where / "suite.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    try:
        load_suite(path)
    except CmbenchError as e:
        msg = str(e)
        assert msg.startswith(f"{path}: ") and "\n" not in msg and len(msg.split(": ")) >= 3, msg
        took = time.perf_counter() - t0
        TRIED["slowest"] = max(TRIED["slowest"], took)
        # a guard against hangs (alias bombs, orders that never end), not a speed test: the
        # slowest refusal is printed below; one slow import on a loaded machine must not fail it
        assert took < 30, (m, msg)
        # the same refusal through the CLI: exit 2, that one line, nothing written
        cwd = os.getcwd()
        os.chdir(where)
        try:
            rc, err = _cli_refuses(path, where / "out")
        finally:
            os.chdir(cwd)
        assert rc == 2 and err == f"cmbench: error: {msg}\n", (rc, err)
        assert sorted(p.name for p in where.iterdir()) == ["suite.yaml"]
        TRIED["n"] += 1
        return
    # a mutation that happens to be valid (e.g. a junk value that is allowed) must load fully
    # and still be a proper suite
    s = load_suite(path)
    assert s.tasks and s.methods


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    st.one_of(
        st.binary(max_size=200).map(lambda b: b"\xff\xfe" + b),
        st.text(max_size=200),
        st.just("x" * 2_000_000),
        st.just("a: [1, 2\n"),
        st.just("- just\n- a list\n"),
    )
)
def test_raw_garbage_fails_cleanly(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("s") / "suite.yaml"
    path.write_bytes(blob if isinstance(blob, bytes) else blob.encode())
    try:
        load_suite(path)
    except CmbenchError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
        TRIED["n"] += 1


@pytest.mark.slow  # reports on the mutated-suites property test, itself slow
def test_count_tried():
    # runs after the two property tests in file order: report how many malformed suites failed cleanly
    print(f"\nmalformed suites rejected cleanly: {TRIED['n']}; slowest in-process refusal {TRIED['slowest']:.2f} s")
    assert TRIED["n"] >= 500


HOSTILE = {
    # a label that is a path would write outside --out
    "label": TINY + "tasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties, label: ../../x/ESCAPED}]\n",
    "task name": TINY + "tasks: [{name: ../bars, dataset: bars}]\nmethods: [{name: ties}]\n",
    "duplicate key": (
        TINY + "tasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\nmethods: [{name: sequential}]\n"
    ),
    "bool seed": TINY + "seeds: [true]\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n",
    "huge seed": TINY + "seeds: [1000000000000]\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n",
    "deep": TINY + "z: " + "[" * 5000 + "]" * 5000 + "\n",
    # sizes, rates and model dimensions: type, range and finiteness
    "n_test 0": TINY + "tasks: [{name: bars, dataset: bars, params: {n_test: 0}}]\nmethods: [{name: ties}]\n",
    "noise nan": TINY + "tasks: [{name: bars, dataset: bars, params: {noise: .nan}}]\nmethods: [{name: ties}]\n",
    "n_train float": TINY + "tasks: [{name: bars, dataset: bars, params: {n_train: 1.5}}]\nmethods: [{name: ties}]\n",
    "mlp_ratio inf": (
        "name: x\nbackbone: {mlp_ratio: .inf}\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n"
    ),
    "embed_dim 2^40": (
        "name: x\nbackbone: {embed_dim: 1099511627776}\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n"
    ),
    "heads scale inf": TINY + "heads: {scale: .inf}\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n",
    # method hyperparameters: the ranges the method declares, finiteness, no boolean for a number
    "ties k nan": TINY + "tasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties, hparams: {k: .nan}}]\n",
    "ties k negative": TINY + "tasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties, hparams: {k: -0.5}}]\n",
    "ties k 1e300": TINY + "tasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties, hparams: {k: 1.0e300}}]\n",
    "lam inf": TINY + "tasks: [{name: bars, dataset: bars}]\nmethods: [{name: magmax, hparams: {lam: .inf}}]\n",
    "lam bool": TINY + "tasks: [{name: bars, dataset: bars}]\nmethods: [{name: magmax, hparams: {lam: true}}]\n",
    "dop steps -1": TINY + "tasks: [{name: bars, dataset: bars}]\nmethods: [{name: dop, hparams: {num_steps: -1}}]\n",
    "search nan": (TINY + "tasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties, search: {k: [0.1, .nan]}}]\n"),
    "alias bomb": "\n".join(
        ["a: &a [x,x,x,x,x,x,x,x,x]"]
        + [f"l{i}: &l{i} [" + ",".join(["*" + ("a" if i == 1 else f"l{i - 1}")] * 9) + "]" for i in range(1, 9)]
    )
    + "\nname: x\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n",
}


def test_hostile_suites_fail_with_one_line_and_fast(tmp_path):
    import time

    for what, text in HOSTILE.items():
        f = tmp_path / "s.yaml"
        f.write_text(text)
        t0 = time.time()
        try:
            load_suite(f)
        except CmbenchError as e:
            assert str(e).startswith(str(f)) and "\n" not in str(e), what
        else:
            raise AssertionError(f"{what}: accepted")
        assert time.time() - t0 < 30, what  # a hang guard (alias bomb, deep nesting), not a speed test


def test_more_random_orders_than_exist_does_not_hang(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        TINY + "tasks: [{name: bars, dataset: bars}, {name: dots, dataset: dots}]\n"
        "orders: {explicit: [[bars, dots]], random: 5}\nmethods: [{name: ties}]\n"
    )
    assert len(load_suite(f).orders_for(0)) == 2  # T! = 2, however many were asked for


def test_unknown_task_param_is_named(tmp_path):
    import pytest

    f = tmp_path / "s.yaml"
    f.write_text(TINY + "tasks: [{name: bars, dataset: bars, params: {n_trian: 10}}]\nmethods: [{name: ties}]\n")
    with pytest.raises(
        CmbenchError,
        match=r"tasks\.0: params: unknown parameter 'n_trian' of dataset bars; "
        r"allowed: n_train, n_val, n_test, noise",
    ):
        load_suite(f)


@pytest.mark.slow  # 20 cold interpreters, ~26 s: the in-process checks above are the fast part
def test_hostile_suites_as_real_cmbench_subprocesses(tmp_path):
    """Each hostile suite through the installed `cmbench` command, from an empty directory:
    exit 2, one line naming the file, no traceback, within a few seconds, nothing written."""
    exe = Path(sys.executable).with_name("cmbench")
    slowest = 0.0
    for i, (what, text) in enumerate(HOSTILE.items()):
        where = tmp_path / f"case{i}"
        where.mkdir()
        (where / "s.yaml").write_text(text)
        t0 = time.perf_counter()
        p = subprocess.run(
            [str(exe), "run", "s.yaml", "--dry-run", "--out", "out"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=60,
        )
        slowest = max(slowest, time.perf_counter() - t0)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("cmbench: error: s.yaml: "), (
            what,
            p.stderr,
        )
        assert "Traceback" not in p.stderr + p.stdout, what
        assert sorted(x.name for x in where.iterdir()) == ["s.yaml"], what
        assert time.perf_counter() - t0 < 30, what  # a hang guard; the slowest is printed
    print(f"\n{len(HOSTILE)} hostile suites refused by the cmbench command; slowest {slowest:.1f} s")
