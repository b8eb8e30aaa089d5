"""A job interrupted after a step resumes from its saved state (cmbench.jobstate) and gives
the numbers of an uninterrupted run, bitwise, for methods with state (OPCM's running sum,
ODE-M's calibration subsets and step log) and without."""

import json

import pytest
import torch
import yaml

from cmbench import CmbenchError, protocol
from cmbench.protocol import stream, ttm
from cmbench.store import Store
from cmbench.jobstate import KIND, pack, unpack
from cmbench.suite import Suite, expand

from .conftest import NANO

METHODS = [
    {"name": "opcm"},
    {"name": "ties", "hparams": {"k": 0.2}},
    {"name": "ode_m", "hparams": {"num_samples": 48, "post_refine_steps": 2, "step_size": 0.25}},
]


@pytest.mark.parametrize("spec", METHODS, ids=[m["name"] for m in METHODS])
def test_interrupted_job_resumes_with_identical_results(spec, nano_run, tmp_path, monkeypatch):
    data = yaml.safe_load(NANO.read_text())
    data.update(methods=[spec], seeds=[0])
    suite = Suite.model_validate(data)
    job = expand(suite)[0]
    store = Store(nano_run / ".cmbench" / "cache")  # the nano run's θ0, heads and experts
    whole = protocol.run(suite, job, store, threads=1)

    check = stream.check_finite

    def interrupt(state, job_, step, what="merged"):
        if step == 3:
            raise CmbenchError("preempted")  # after step 2's state was saved
        return check(state, job_, step, what)

    monkeypatch.setattr(stream, "check_finite", interrupt)
    with pytest.raises(CmbenchError, match="preempted"):
        protocol.run(suite, job, store, threads=1)
    assert list((store.root / KIND).glob("*.json"))
    monkeypatch.setattr(stream, "check_finite", check)
    resumed = protocol.run(suite, job, store, threads=1)
    assert resumed["timings"]["resumed_after_step"] == 2 and whole["timings"]["resumed_after_step"] is None
    for field in ("R", "E", "metrics", "key", "storage_bytes", "data_samples_handed", "R_final_before_finish"):
        assert resumed[field] == whole[field], field
    assert not list((store.root / KIND).glob("*.json"))  # cleared once the job is done


def test_pack_round_trip_and_refusal():
    from cmbench.data import Split

    state = {
        "a": [1, 2.5, None, "x"],
        "t": (torch.arange(3), {"w": torch.ones(2, 2)}),
        "s": Split(x=torch.zeros(2, 1, 4, 4, dtype=torch.uint8), y=torch.tensor([0, 1])),
    }
    tensors: dict = {}
    out = unpack(pack(state, tensors), tensors)
    assert out["a"] == state["a"] and isinstance(out["t"], tuple) and torch.equal(out["t"][1]["w"], torch.ones(2, 2))
    assert torch.equal(out["s"].y, state["s"].y)
    with pytest.raises(TypeError):
        pack({"f": object()}, {})


def test_time_limit_stops_a_job_and_a_rerun_resumes(nano_copy):
    """A job over --job-time-limit fails with one line; the rerun resumes it."""
    import json
    import time

    from cmbench.runner import run_suite
    from cmbench.work import time_limit

    with pytest.raises(CmbenchError, match=r"job_time_limit_s \(0.2 s\)"):
        with time_limit(0.2):
            time.sleep(2)
    data = yaml.safe_load(NANO.read_text())
    # another suite (one seed): its own name, or the output directory would refuse it
    data.update(
        name="nano-odem",
        methods=[{"name": "ode_m", "hparams": {"num_samples": 48, "post_refine_steps": 200}}],
        seeds=[0],
    )
    f = nano_copy / "nano-odem.yaml"
    f.write_text(yaml.safe_dump(data))
    first = run_suite(f, out=nano_copy, executor="local", orders=1, job_time_limit=1.5, log=lambda s: None)
    assert first["failed"] == 1
    rec = json.loads(next((nano_copy / "results" / "nano-odem" / "ode_m").glob("*.json")).read_text())
    assert rec["status"] == "failed" and "job_time_limit_s" in rec["error"]
    second = run_suite(f, out=nano_copy, executor="local", orders=1, log=lambda s: None)
    assert second["failed"] == 0
    rec = json.loads(next((nano_copy / "results" / "nano-odem" / "ode_m").glob("*.json")).read_text())
    assert rec["status"] == "ok" and rec["timings"]["resumed_after_step"] >= 1


def test_time_limit_is_not_lost_in_a_finaliser_or_a_broad_except():
    """The alarm raises wherever the job is. Raised inside a finaliser (garbage collection in
    a library: Python drops it, "Exception ignored in ...") or inside a library's ``except
    Exception``, it still stops the job (CI once saw a 0.001 s limit dropped in SQLAlchemy's
    weakref callback and the job finish)."""
    import time

    from cmbench.work import time_limit

    class SlowFinaliser:
        def __del__(self):
            time.sleep(0.3)  # the alarm (0.1 s) fires in here

    with pytest.raises(CmbenchError, match="job_time_limit_s"):
        with time_limit(0.1):
            SlowFinaliser()  # collected at once: the alarm fires inside __del__
            time.sleep(2)  # the job would run on here if the expiry were dropped
    with pytest.raises(CmbenchError, match="job_time_limit_s"):
        with time_limit(0.1):
            try:
                time.sleep(2)
            except Exception:  # noqa: BLE001 - a library's broad except must not end the limit
                pass
            time.sleep(2)


def test_pack_copies_tensors_that_share_memory():
    """A fused q/k/v weight's chunks (views of one storage) and a tensor kept twice are stored
    as separate tensors, as safetensors requires."""
    from cmbench.store import Store

    w = torch.arange(12.0).reshape(6, 2)
    state = {"q": w[:2], "k": w[2:4], "same": [w, w]}
    tensors: dict = {}
    skeleton = pack(state, tensors)
    store = Store(__import__("tempfile").mkdtemp())
    store.put(KIND, "k", tensors, {"state": skeleton})
    got = store.get(KIND, "k")
    out = unpack(got[1]["state"], got[0])
    assert torch.equal(out["k"], w[2:4]) and torch.equal(out["same"][1], w)


def test_a_column_with_a_stride_other_than_one_is_stored_and_hashed():
    """A one-column slice of a transposed factor (TSV-M's kept singular vectors of a 16 × 4
    relative position bias at t ≥ 3) is contiguous to torch with a last stride of 16; the job
    checkpoint stores it and hashes it as its contiguous copy (this raised before)."""
    from cmbench.store import Store
    from cmbench.tensors import content_hash

    col = torch.arange(64.0, dtype=torch.float64).reshape(4, 16).T[:, :1]
    assert col.is_contiguous() and col.stride() == (1, 16)
    assert content_hash({"u": col}) == content_hash({"u": col.clone().reshape(16).reshape(16, 1)})
    tensors: dict = {}
    skeleton = pack({"u": col}, tensors)
    store = Store(__import__("tempfile").mkdtemp())
    store.put(KIND, "k", tensors, {"state": skeleton})
    got = store.get(KIND, "k")
    assert torch.equal(unpack(got[1]["state"], got[0])["u"], col)


TTM_METHODS = [
    {"name": "sequential", "lora": {"rank": 4, "targets": ["k", "v"]}},
    {"name": "pm", "lora": {"rank": 4, "targets": ["k", "v"]}},
    {"name": "trm", "hparams": {"checkpoints": 2, "steps": 5}},
    {"name": "multitask"},
]


@pytest.mark.parametrize("spec", TTM_METHODS, ids=[m["name"] for m in TTM_METHODS])
def test_train_then_merge_job_resumes_after_its_last_step(spec, tmp_path, monkeypatch):
    """Train then merge saves after every task too; a rerun resumes after the last completed
    task (training is seeded per task) and gives the uninterrupted run's numbers bitwise."""
    from .test_protocol_ttm import NANO_SPLIT

    suite = Suite.model_validate({**NANO_SPLIT, "methods": [spec]})
    job = expand(suite)[0]
    store = Store(tmp_path / "cache")
    whole = protocol.run(suite, job, store, threads=1)

    check = ttm.check_finite

    def interrupt(state, job_, step, what="merged"):
        if step == 3 and what == "trained":
            raise CmbenchError("preempted")  # while training task 3, after step 2's state was saved
        return check(state, job_, step, what)

    monkeypatch.setattr(ttm, "check_finite", interrupt)
    with pytest.raises(CmbenchError, match="preempted"):
        protocol.run(suite, job, store, threads=1)
    monkeypatch.setattr(ttm, "check_finite", check)
    resumed = protocol.run(suite, job, store, threads=1)
    assert resumed["timings"]["resumed_after_step"] == 2 and whole["timings"]["resumed_after_step"] is None
    assert resumed["key"] == whole["key"] and resumed["storage_bytes"] == whole["storage_bytes"]
    assert resumed["hparams"] == whole["hparams"] and resumed["data_samples_handed"] == whole["data_samples_handed"]
    fields = ("R", "ACC_all_steps", "metrics", "trained_own_task_acc", "start_grad_norm", "R_final_before_finish")
    if spec["name"] != "trm":
        for field in fields:
            assert json.dumps(resumed[field]) == json.dumps(whole[field]), field  # NaN cells compare equal
    else:
        # TRM's coefficient optimisation is bitwise reproducible from a fresh process (what a
        # rerun is) but not between two runs in one process (its gradient differs in the last
        # bits, e.g. c = 0.024995988 vs 0.024996009 after task 1): compare to rounding
        for field in ("R", "ACC_all_steps", "start_grad_norm"):
            a, b = (torch.tensor(r[field], dtype=torch.float64) for r in (resumed, whole))
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True), field
    assert resumed["timings"]["train_optimizer_steps"] == whole["timings"]["train_optimizer_steps"]
    assert not list((store.root / KIND).glob("*.json"))
