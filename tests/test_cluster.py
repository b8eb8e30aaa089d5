"""A real two-node Ray cluster on this machine: a head and a second node, each its own
`ray start` process tree (with their own --temp-dir, so teardown stops only them). A suite
run with --ray-address, as a user types it, must place jobs on both nodes, import a method
that exists only in the driver's folder from Ray's runtime resources (runtime_env), and
give the result files of a local run of the same jobs; a node killed mid-suite loses
nothing. Slow (about a minute); `make test-slow` runs it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import NANO, REPO

pytestmark = pytest.mark.slow
pytest.importorskip("ray")

BIN = Path(sys.executable).parent

PROBE_METHOD = """
from cmbench.methods import merge_function


@merge_function("probe_average", paper="test: a running average that says where it was imported from")
def probe_average(ctx, merged, incoming):
    with open({probe!r}, "a") as f:
        f.write(__file__ + "\\n")
    return {{k: (m * (ctx.step - 1) + incoming[k]) / ctx.step if m.is_floating_point() else m
            for k, m in merged.items()}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Head + one more node, started by `ray start`; ``stop`` kills only their processes."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # short: Ray's unix sockets live under the temp dir (paths of at most 107 bytes)
        short = Path(tempfile.mkdtemp(prefix="cmb-ray-", dir="/tmp"))
        self.dirs = {"head": short / "head", "node2": short / "node2"}

    def start(self):
        ray = str(BIN / "ray")
        common = ["--disable-usage-stats", "--include-dashboard=false"]
        subprocess.run(
            [
                ray,
                "start",
                "--head",
                f"--port={self.port}",
                "--num-cpus=1",
                "--node-ip-address=127.0.0.1",
                "--resources",
                json.dumps({"head": 1}),
                f"--temp-dir={self.dirs['head']}",
                *common,
            ],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                ray,
                "start",
                f"--address={self.address}",
                "--num-cpus=1",
                "--node-ip-address=127.0.0.1",
                "--resources",
                json.dumps({"node2": 1}),
                f"--temp-dir={self.dirs['node2']}",
            ],
            # a joining node, like a driver, must be told the head uses token authentication
            env={**self.env, "RAY_AUTH_MODE": "token"},
            check=True,
            capture_output=True,
            timeout=120,
        )

    def pids(self, node: str, name: str = "") -> list[int]:
        """Processes whose command line names the node's temp dir (and ``name``)."""
        out = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.dirs[node]) in cmd and name in cmd:
                out.append(int(proc.name))
        return out

    def stop(self):
        for node in self.dirs:
            for pid in self.pids(node):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.dirs["head"].parent, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path):
    # as a user's: `ray start` and the driver share ~/.ray/auth_token (created if missing)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    c = Cluster(tmp_path, env)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _results(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.glob("results/**/*.json"))}


def test_suite_on_a_two_node_cluster(cluster, tmp_path):
    t0 = time.time()
    methods_dir = tmp_path / "my_methods"  # only in the driver's folder: must travel with the jobs
    methods_dir.mkdir()
    probe = tmp_path / "imported_from.txt"
    (methods_dir / "probe_average.py").write_text(PROBE_METHOD.format(probe=str(probe)))
    suite = tmp_path / "nano.yaml"
    suite.write_text(NANO.read_text().replace("methods:\n", "methods:\n  - {name: probe_average}\n", 1))
    env = {**cluster.env, "CMBENCH_BASELINES": str(methods_dir), "PYTHONUNBUFFERED": "1"}

    out = tmp_path / "cluster-out"
    run = subprocess.Popen(
        [str(BIN / "cmbench"), "run", str(suite), "--ray-address", cluster.address, "--out", str(out)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # kill the second node's raylet (and its workers) once a few jobs are done: Ray retries the
    # jobs it held on the head, and nothing computed is lost
    killed = False
    while run.poll() is None:
        if not killed and len(list(out.glob("results/nano-merge/*/*.json"))) >= 4:
            for pid in cluster.pids("node2"):
                os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.2)
    log = run.stdout.read()
    assert run.returncode == 0, log
    assert killed, "the suite finished before the node could be killed"
    imported = set(probe.read_text().split())  # before the local run imports it from the folder
    assert imported and all("runtime_resources" in f and "working_dir_files" in f for f in imported), imported

    local = tmp_path / "local-out"
    subprocess.run(
        [str(BIN / "cmbench"), "run", str(suite), "--no-ray", "--out", str(local)],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    on_cluster, here = _results(out), _results(local)
    assert sorted(on_cluster) == sorted(here) and len(here) == 16  # 4 methods × 2 seeds × 2 orders
    for name, rec in on_cluster.items():
        for field in ("R", "E", "metrics", "key"):
            assert rec[field] == here[name][field], (name, field)
    nodes = {rec["ran_on"]["ray_node"] for rec in on_cluster.values()}
    assert len(nodes) == 2, nodes  # jobs ran on both nodes
    print(f"cluster test: {time.time() - t0:.0f} s")


def test_wrong_address_fails_fast_with_one_line(tmp_path):
    t0 = time.time()
    r = subprocess.run(
        [str(BIN / "cmbench"), "run", str(NANO), "--ray-address", f"127.0.0.1:{_free_port()}", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    # a hang guard: the address probe gives up after 3 s, cold imports take ~6 s
    assert r.returncode != 0 and time.time() - t0 < 30
    assert "nothing answers there" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert len([line for line in r.stderr.splitlines() if line.startswith("cmbench: error")]) == 1


def test_a_directory_store_the_nodes_do_not_see_is_refused(cluster, tmp_path, monkeypatch):
    """The local test nodes share this file system; a node that cannot see the store (here:
    the check's marker removed before the node looks) is refused with one line."""
    from cmbench import CmbenchError
    from cmbench.executors import RayExecutor

    ex = RayExecutor(workers=1, threads=1, gpus=0, address=cluster.address)
    try:
        ex.check_store(str(tmp_path / "store"))  # both nodes see it: accepted
        real_write = Path.write_text

        def vanish(self, *a, **k):  # the marker never reaches the nodes
            return None if self.name.startswith(".node-check-") else real_write(self, *a, **k)

        monkeypatch.setattr(Path, "write_text", vanish)
        with pytest.raises(CmbenchError, match=r"artefact store .* do not see; pass --store"):
            ex.check_store(str(tmp_path / "store2"))
    finally:
        ex.close()
    shutil.rmtree(tmp_path / "store", ignore_errors=True)


def test_tune_places_trials_on_both_nodes(cluster, tmp_path):
    """`cmbench tune --ray-address` runs its trials on the cluster, on every node."""
    suite = tmp_path / "nano.yaml"
    suite.write_text(
        NANO.read_text().replace(
            "{name: task_arithmetic, hparams: {lam: 0.3}}",
            "{name: task_arithmetic, search: {lam: [0.1, 0.2, 0.3, 0.4]}}",
        )
    )
    env = {**cluster.env, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(
        [
            str(BIN / "cmbench"),
            "tune",
            str(suite),
            "--method",
            "task_arithmetic",
            "--ray-address",
            cluster.address,
            "--out",
            str(tmp_path / "out"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    tuned = json.loads(next((tmp_path / "out").glob("tuned/**/*.json")).read_text())
    assert len(tuned["trials"]) == 4
    assert len({t["ran_on"]["ray_node"] for t in tuned["trials"]}) == 2, tuned["trials"]
