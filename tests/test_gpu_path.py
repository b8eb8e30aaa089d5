"""The GPU path's logic, checked on the CPU: evaluation precision (validation, keys, the
bf16 arithmetic), OPCM's batched projection, what a job hands its methods, and GPU
placement with simulated GPUs (Ray's own GPU accounting, fake free-memory readings).
tests/test_cuda.py runs the same paths on a real GPU where one is visible."""

import time

import pytest
import torch
import yaml

from cmbench import CmbenchError
from cmbench.suite import expand, load_suite

from .conftest import NANO


def _variant(tmp_path, **updates):
    """The nano suite with some sections replaced, written to a file and loaded."""
    data = yaml.safe_load(NANO.read_text())
    for path, value in updates.items():
        node = data
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    f = tmp_path / "suite.yaml"
    f.write_text(yaml.safe_dump(data))
    return load_suite(f)


def test_precision_validated_and_keyed(tmp_path):
    from cmbench.keys import job_inputs

    base = load_suite(NANO)
    fp32 = _variant(tmp_path, **{"evaluation.precision": "fp32"})
    bf16 = _variant(tmp_path, **{"evaluation.precision": "bf16"})
    # fp32 is the default: writing it out changes no hash, no key (committed results stay valid)
    assert fp32.hash() == base.hash() and bf16.hash() != base.hash()
    j_base, j_bf16 = expand(base)[0], expand(bf16)[0]
    assert job_inputs(base, j_base)["precision"] == "fp32"
    assert job_inputs(bf16, j_bf16)["precision"] == "bf16"
    with pytest.raises(CmbenchError, match=r"evaluation\.precision.*tf32.*CPU"):
        _variant(tmp_path, **{"evaluation.precision": "tf32"})
    with pytest.raises(CmbenchError, match=r"evaluation\.precision"):
        _variant(tmp_path, **{"evaluation.precision": "fp16"})


def test_gpu_memory_field_is_placement_only(tmp_path):
    gpu = _variant(tmp_path, **{"resources": {"gpus_per_job": 0.5}})
    sized = _variant(tmp_path, **{"resources": {"gpus_per_job": 0.5, "gpu_memory_gb": 20}})
    assert sized.hash() == gpu.hash()  # no number depends on where a job is placed
    with pytest.raises(CmbenchError, match=r"resources\.gpu_memory_gb.*GPU jobs only"):
        _variant(tmp_path, **{"resources": {"gpu_memory_gb": 20}})


def test_bf16_evaluation_on_the_cpu_is_close_to_fp32():
    from cmbench.models import create_backbone, features

    suite = load_suite(NANO)
    torch.manual_seed(0)
    model = create_backbone(suite.backbone)
    x = torch.randint(0, 255, (64, 1, 16, 16), dtype=torch.uint8)
    f32, bf16 = features(model, x, 32, "fp32"), features(model, x, 32, "bf16")
    assert f32.dtype == bf16.dtype == torch.float32
    assert not torch.equal(f32, bf16)  # the precision is really applied ...
    assert torch.nn.functional.cosine_similarity(f32, bf16, dim=-1).min() > 0.99  # ... and close
    assert torch.equal(features(model, x, 32), f32)  # fp32 is the default


def test_opcm_batched_projection_equals_matrix_by_matrix():
    """The GPU's batched path (grouped by shape, wide matrices transposed, fused q/k/v split)
    gives the CPU's per-matrix projection."""
    from cmbench.layout import describe
    from cmbench.registry import discover

    discover()
    from cmbench_baselines.opcm import project_all

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(12, 2)  # fused in_proj: three 12×12 matrices
            self.up, self.down = torch.nn.Linear(12, 30), torch.nn.Linear(30, 12)  # tall and wide
            self.up2 = torch.nn.Linear(12, 30)  # same shape as up: one batch

    net = Net()
    layout = describe(net)
    g = torch.Generator().manual_seed(0)
    S = {k: torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}
    tau = {k: torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}
    keys = [k for k in S if layout[k].kind == "linear"]
    assert "attn.in_proj_weight" in keys
    ref = project_all(layout, S, tau, keys, 0.5)
    for chunk in (1, 2, 32):
        out = project_all(layout, S, tau, keys, 0.5, chunk=chunk, batched=True)
        for k in keys:
            torch.testing.assert_close(out[k], ref[k], rtol=1e-6, atol=1e-6)


def test_on_device_view_and_cpu_data_access():
    from cmbench.data import Split
    from cmbench.protocol import DataAccess, OnDevice

    x = torch.arange(40, dtype=torch.uint8).reshape(10, 1, 2, 2)
    view = OnDevice(x, torch.device("cpu"))
    assert len(view) == 10 and view.shape == x.shape and view.dtype == torch.uint8
    assert torch.equal(view[torch.tensor([3, 1])], x[[3, 1]]) and torch.equal(view[2:4], x[2:4])

    class Task:
        def split(self, name):
            return split

    split = Split(x=x, y=torch.arange(10))
    access = DataAccess("m", "current_task", {"a": Task()}, seed=0)
    access.ctx = type("Ctx", (), {"task": "a", "seen_tasks": ["a"]})()
    assert access.current() is split  # on the CPU the split itself, as before the GPU path


def test_gpu_share_and_memory_wait():
    from cmbench.executors import check_gpu_share, wait_for_gpu_memory

    check_gpu_share(0.5, 30, [80.0, 80.0])  # 40 GB each: fits
    check_gpu_share(0.5, None, [80.0])  # no peak given: Ray's fraction alone
    with pytest.raises(CmbenchError, match=r"gpus_per_job 0.25 of a 80 GB GPU is 20.0 GB; set gpus_per_job to 0.5"):
        check_gpu_share(0.25, 30, [80.0, 80.0])
    with pytest.raises(CmbenchError, match="the smallest|of a 40 GB GPU"):
        check_gpu_share(1, 60, [80.0, 40.0])  # the smallest GPU decides

    readings = iter([(5 << 30, 0), (12 << 30, 0), (40 << 30, 0)])
    slept = []
    waited = wait_for_gpu_memory(30, poll_s=2, mem_get_info=lambda: next(readings), sleep=slept.append)
    assert waited == 4 and slept == [2, 2]
    with pytest.raises(CmbenchError, match=r"resources\.gpu_memory_gb: 30 GB never came free.*5.0 GB free"):
        wait_for_gpu_memory(30, timeout_s=6, poll_s=2, mem_get_info=lambda: (5 << 30, 0), sleep=lambda s: None)


def _gpu_job(tag):
    import os

    import ray

    start = time.time()
    time.sleep(1.5)
    return {
        "tag": tag,
        "gpus": [str(g) for g in ray.get_gpu_ids()],
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "start": start,
        "end": time.time(),
    }


# about 1 min (a Ray cluster with simulated GPUs): run by `make test-slow` / .ci/run
@pytest.mark.slow
def test_ray_packs_fractional_gpu_jobs_on_simulated_gpus():
    """Two simulated GPUs, jobs asking for half of one each: Ray gives every job one GPU
    (made visible to it alone) and never runs more than two at once on one GPU."""
    pytest.importorskip("ray")
    from cmbench.executors import RayExecutor

    ex = RayExecutor(workers=4, threads=1, gpus=0.5, address=None, num_gpus=2)
    try:
        out = [r for _, r, err in ex.map(_gpu_job, [(i,) for i in range(6)]) if err is None]
    finally:
        ex.close()
    assert len(out) == 6
    assert all(len(r["gpus"]) == 1 and r["visible"] == r["gpus"][0] for r in out)
    assert {r["gpus"][0] for r in out} == {"0", "1"}
    for gpu in ("0", "1"):
        mine = [r for r in out if r["gpus"][0] == gpu]
        peak = max(sum(1 for o in mine if o["start"] <= r["start"] < o["end"]) for r in mine)
        assert peak <= 2


def test_ray_refuses_gpu_jobs_without_gpus():
    pytest.importorskip("ray")
    from cmbench.executors import RayExecutor

    t0 = time.time()
    with pytest.raises(CmbenchError, match=r"resources\.gpus_per_job is 1 but the Ray cluster has 0 GPUs"):
        RayExecutor(workers=1, threads=1, gpus=1, address=None, num_gpus=0)
    assert time.time() - t0 < 60  # refused, not waited for


def test_other_precision_reuses_the_experts_and_measures_its_own_E(nano_copy, monkeypatch):
    """Experts (and θ0, heads) are trained in fp32 whatever the evaluation precision: a bf16
    run reuses them and measures E itself, in bf16."""
    import json

    from cmbench import artefacts
    from cmbench.runner import run_suite

    def never(*a, **k):
        raise AssertionError("an artefact was rebuilt")

    monkeypatch.setattr(artefacts, "make_expert", never)
    monkeypatch.setattr(artefacts, "make_theta0", never)
    data = yaml.safe_load(NANO.read_text())
    data["evaluation"]["precision"] = "bf16"
    data["name"] = "nano-bf16"  # another suite in the same output directory: its own name
    f = nano_copy / "nano-bf16.yaml"
    f.write_text(yaml.safe_dump(data))
    path = nano_copy / "results" / "nano-merge" / "weight_average" / "seed0-order0.json"
    before = json.loads(path.read_text())
    summary = run_suite(
        f, out=nano_copy, executor="local", methods=["weight_average"], seeds=1, orders=1, log=lambda s: None
    )
    assert summary["failed"] == 0
    after = json.loads((nano_copy / "results" / "nano-bf16" / "weight_average" / "seed0-order0.json").read_text())
    assert before["inputs"]["precision"] == "fp32" and after["inputs"]["precision"] == "bf16"
    assert after["key"] != before["key"]
    assert all(abs(a - b) <= 0.03 for a, b in zip(after["E"], before["E"]))
    assert "cpu fp32" not in json.dumps(after["device"]) and after["device"]["type"] == "cpu"
