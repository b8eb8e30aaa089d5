#!/usr/bin/env bash
# The GPU figures of the GPU-path issue (#22), in one run on any machine with a CUDA GPU,
# from a checkout of the repository:  bash tools/gpu_check.sh  (it cds to the repository
# root itself). It runs cmbench from the checkout with python3 (torch with CUDA; Ray is not
# needed: everything runs in-process) and takes under 10 minutes: the steps' own time limits
# sum to 560 s.
# A machine without network whose Python lacks pydantic or open_clip: on a machine with
# network, first fetch their wheels into .whl/ (for CPython 3.12 on x86-64 Linux: change
# --python-version below for another Python; .whl/ goes into .git/info/exclude):
#     bash tools/gpu_check.sh --wheels
# then copy the checkout, .whl/ included, to the GPU machine and run the script there; it
# installs the wheels into /tmp/site for this run only and puts them on PYTHONPATH.
# It writes 8 files under $OUT (default /tmp/gpu-check): pytest.log, bench.log,
# bench-cuda.json, bench-cpu-{opcm,dop,ode_m}.json, suite.log, suite-jobs.json; scratch
# files go to /tmp/micro-digits-merge.yaml and /tmp/gpu-run. The steps:
#   1. tests/test_cuda.py: every method of baselines/ on the GPU vs the CPU, each precision
#   2. OPCM, DOP and ODE-M merge-step times on a ViT-B/32-size model (random weights), GPU
#      vs CPU, and ViT-B/32 evaluation img/s in the harness path vs the bare forward, per precision
#   3. the micro merge suite cold on the GPU: 1 seed × 3 orders, every method but the ODE-M
#      ablation labels, in one command (its result files: where the time went), then the
#      largest |ΔR| against the committed CPU results of the same jobs
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--wheels" ]; then  # cp312 wheels for what a bare CUDA image may lack
    echo /.whl/ >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        pydantic pydantic-core annotated-types typing-inspection open-clip-torch ftfy wcwidth
    exit
fi
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/pytest.log" 2>&1
t0=$SECONDS
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -30 >> "$OUT/pytest.log"
echo "pytest: $((SECONDS - t0)) s" >> "$OUT/pytest.log"
# the same reduced work on both devices (DOP: 20 of its 200 Adam steps; ODE-M: 64 samples,
# Euler steps of 0.2: two at step t = 3), so the CPU's figure fits in a minute
HP="--hparam ode_m.num_samples=64 --hparam ode_m.bench_samples=64 --hparam ode_m.step_size=0.2 --hparam dop.num_steps=20"
timeout 70 python3 -m cmbench.cli bench --device cuda --methods opcm,dop,ode_m --repeats 2 --stream-memory none $HP \
    --json "$OUT/bench-cuda.json" > "$OUT/bench.log" 2>&1
for m in opcm:30 dop:60 ode_m:40; do  # one process each: a slow CPU method does not cost the others' figures
    timeout ${m#*:} python3 -m cmbench.cli bench --device cpu --threads 16 --methods ${m%:*} --repeats 1 --stream-memory none --no-eval \
        $HP --json "$OUT/bench-cpu-${m%:*}.json" >> "$OUT/bench.log" 2>&1
done
sed 's/^resources: {cpus_per_job: 1}$/resources: {cpus_per_job: 2, gpus_per_job: 1}/' suites/micro-digits-merge.yaml \
    > /tmp/micro-digits-merge.yaml
t0=$SECONDS
timeout 260 python3 -m cmbench.cli run /tmp/micro-digits-merge.yaml --no-ray --seeds 1 --out /tmp/gpu-run \
    --skip ode_m-per-step,ode_m-no-refine,ode_m-budget-64,ode_m-budget-512 > "$OUT/suite.log" 2>&1
echo "micro-digits-merge cold on the GPU, one command: $((SECONDS - t0)) s (rc $?)" >> "$OUT/suite.log"
python3 - "$OUT" <<'EOF' >> "$OUT/suite.log" 2>&1
import json, pathlib, sys
rows = []
for f in sorted(pathlib.Path("/tmp/gpu-run/results").glob("*/*/*.json")):
    g = json.loads(f.read_text()); t = g.get("timings", {})
    c = pathlib.Path("results") / f.relative_to("/tmp/gpu-run/results")
    dR = None
    if c.exists():
        r = json.loads(c.read_text())["R"]
        dR = max(abs(a - b) for ra, rb in zip(r, g["R"]) for a, b in zip(ra, rb) if a is not None and b is not None)
    rows.append({"job": str(f.relative_to("/tmp/gpu-run/results")), "job_s": t.get("job_s"),
                 "merge_s": t.get("merge_total_s"), "eval_s": t.get("eval_s"), "ACC": g["metrics"]["ACC"],
                 "max_abs_dR_vs_committed_cpu": dR})
pathlib.Path(sys.argv[1], "suite-jobs.json").write_text(json.dumps(rows, indent=1))
print(f"{len(rows)} jobs; sum of job_s {sum(r['job_s'] or 0 for r in rows):.0f} s")
EOF
