"""Property-based: every malformed suite gets a one-line CmbenchError naming the file (and a
field), never another exception."""

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmbench import CmbenchError
from cmbench.suite import load_suite

from .conftest import NANO

BASE = yaml.safe_load(NANO.read_text())
PATHS = [
    ("name",),
    ("setting",),
    ("seeds",),
    ("data_seed",),
    ("backbone", "embed_dim"),
    ("backbone", "kind"),
    ("pretrain", "epochs"),
    ("pretrain", "recipe"),
    ("tasks",),
    ("tasks", 0, "dataset"),
    ("tasks", 0, "name"),
    ("tasks", 1, "params"),
    ("heads", "kind"),
    ("heads", "shots"),
    ("experts", "finetune", "lr"),
    ("experts", "finetune", "batch_size"),
    ("orders", "explicit"),
    ("orders", "random"),
    ("methods",),
    ("methods", 0, "name"),
    ("methods", 1, "hparams", "lam"),
    ("methods", 2, "hparams", "k"),
    ("evaluation", "batch_size"),
]
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), -1),
    st.floats(allow_nan=True),
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


mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), junk),
    st.tuples(
        st.just("del"),
        st.sampled_from([p for p in PATHS if p[-1] not in (0, 1, 2)] + [("tasks",), ("methods",)]),
        st.none(),
    ),
    st.tuples(
        st.just("unknown_key"),
        st.sampled_from([(), ("backbone",), ("heads",), ("methods", 0)]),
        st.text(min_size=1, max_size=8),
    ),
    st.tuples(
        st.just("order"), st.lists(st.sampled_from(["bars", "quadrant", "dots", "cars", ""]), max_size=5), st.none()
    ),
)
raw_text = st.one_of(
    st.binary(max_size=200).map(lambda b: b"\xff\xfe" + b),
    st.text(max_size=200),
    st.just("x" * 2_000_000),
    st.just("a: [1, 2\n"),
    st.just("- just\n- a list\n"),
)


def _mutated(m) -> str | None:
    d = copy.deepcopy(BASE)
    kind, path, value = m
    if kind == "set":
        _set(d, path, value)
    elif kind == "del":
        _del(d, path)
    elif kind == "unknown_key":
        target = d
        for p in path:
            target = target[p]
        if value in target:
            return None
        target[value] = 1
    else:
        d["orders"]["explicit"] = [path]
        if sorted(path) == sorted(["bars", "quadrant", "dots"]):
            return None
    return yaml.safe_dump(d)


TRIED = {"n": 0}


@settings(max_examples=520, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutation)
def test_mutated_suites_fail_cleanly(tmp_path_factory, m):
    text = _mutated(m)
    if text is None:
        return
    path = tmp_path_factory.mktemp("s") / "suite.yaml"
    path.write_text(text)
    try:
        load_suite(path)
    except CmbenchError as e:
        msg = str(e)
        assert msg.startswith(f"{path}: ") and "\n" not in msg and len(msg.split(": ")) >= 3
        TRIED["n"] += 1
        return
    # a mutation that happens to be valid (e.g. a junk value that is allowed) must load fully
    # and still be a proper suite
    s = load_suite(path)
    assert s.tasks and s.methods


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(raw_text)
def test_raw_garbage_fails_cleanly(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("s") / "suite.yaml"
    path.write_bytes(blob if isinstance(blob, bytes) else blob.encode())
    try:
        load_suite(path)
    except CmbenchError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
        TRIED["n"] += 1


def test_count_tried():
    # runs after the two property tests in file order: report how many malformed suites failed cleanly
    print(f"\nmalformed suites rejected cleanly: {TRIED['n']}")
    assert TRIED["n"] >= 500


HOSTILE = {
    # a label that is a path would write outside --out
    "label": "name: x\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties, label: ../../x/ESCAPED}]\n",
    "task name": "name: x\ntasks: [{name: ../bars, dataset: bars}]\nmethods: [{name: ties}]\n",
    "duplicate key": (
        "name: x\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\nmethods: [{name: sequential}]\n"
    ),
    "bool seed": "name: x\nseeds: [true]\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n",
    "huge seed": "name: x\nseeds: [1000000000000]\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n",
    "deep": "name: x\nz: " + "[" * 5000 + "]" * 5000 + "\n",
    # sizes, rates and model dimensions: type, range and finiteness
    "n_test 0": "name: x\ntasks: [{name: bars, dataset: bars, params: {n_test: 0}}]\nmethods: [{name: ties}]\n",
    "noise nan": "name: x\ntasks: [{name: bars, dataset: bars, params: {noise: .nan}}]\nmethods: [{name: ties}]\n",
    "n_train float": "name: x\ntasks: [{name: bars, dataset: bars, params: {n_train: 1.5}}]\nmethods: [{name: ties}]\n",
    "mlp_ratio inf": (
        "name: x\nbackbone: {mlp_ratio: .inf}\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n"
    ),
    "embed_dim 2^40": (
        "name: x\nbackbone: {embed_dim: 1099511627776}\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n"
    ),
    "heads scale inf": "name: x\nheads: {scale: .inf}\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties}]\n",
    # method hyperparameters: the ranges the method declares, finiteness, no boolean for a number
    "ties k nan": "name: x\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties, hparams: {k: .nan}}]\n",
    "ties k negative": "name: x\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties, hparams: {k: -0.5}}]\n",
    "ties k 1e300": "name: x\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties, hparams: {k: 1.0e300}}]\n",
    "lam inf": "name: x\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: magmax, hparams: {lam: .inf}}]\n",
    "lam bool": "name: x\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: magmax, hparams: {lam: true}}]\n",
    "dop steps -1": "name: x\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: dop, hparams: {num_steps: -1}}]\n",
    "search nan": (
        "name: x\ntasks: [{name: bars, dataset: bars}]\nmethods: [{name: ties, search: {k: [0.1, .nan]}}]\n"
    ),
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
        assert time.time() - t0 < 5, what


def test_more_random_orders_than_exist_does_not_hang(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "name: x\ntasks: [{name: bars, dataset: bars}, {name: dots, dataset: dots}]\n"
        "orders: {explicit: [[bars, dots]], random: 5}\nmethods: [{name: ties}]\n"
    )
    assert len(load_suite(f).orders_for(0)) == 2  # T! = 2, however many were asked for


def test_unknown_task_param_is_named(tmp_path):
    import pytest

    f = tmp_path / "s.yaml"
    f.write_text("name: x\ntasks: [{name: bars, dataset: bars, params: {n_trian: 10}}]\nmethods: [{name: ties}]\n")
    with pytest.raises(
        CmbenchError,
        match=r"tasks\.0: params: unknown parameter 'n_trian' of dataset bars; "
        r"allowed: n_train, n_val, n_test, noise",
    ):
        load_suite(f)
