"""Re-key committed results whose only stale input is ``method_code``, after a change to code
every method imports (``cmbench/methods.py``, ``cmbench/tensors.py``) that provably changes
none of their numbers.

A method's key hashes its file and every cmbench module it imports, so adding a field to the
method context re-keys every job of every suite, including hours of ODE-M jobs whose code did
not change. This tool writes the current key into such a result and records what it did
(``rekeyed``: the previous key and method code, the commit, the evidence), nothing else: R,
E and every other field stay as computed. It refuses a result with any other differing input.

A hyperparameter the method gained since (absent from the recorded inputs) is accepted at its
default value only: the evidence must show that the default leaves the numbers unchanged.

Use it only with evidence that the labels' numbers are unchanged: the same jobs recomputed at
the previous commit and at this one, on one machine, bitwise equal (``cmbench verify``
then recomputes a sample from scratch, within its tolerance when the results were made on
another machine). Usage:

    python tools/rekey_method_code.py SUITE.yaml RESULTS_DIR LABEL[,LABEL...] "EVIDENCE"
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from cmbench.fingerprint import git_commit
from cmbench.keys import current_inputs, differing_inputs, key_of
from cmbench.record import write_result
from cmbench.store import open_store
from cmbench.suite import expand, load_suite
from cmbench.tuned import tuned_specs


def main(suite_file: str, results_dir: str, labels: str, evidence: str) -> int:
    suite = load_suite(suite_file)
    # an empty store: artefact content hashes come from the results, as on a fresh clone
    store = open_store(tempfile.mkdtemp(prefix="cmbench-rekey-"))
    # the jobs of the suite as it is now (with the `<label>-tuned` rows `cmbench tune` chose,
    # under tuned/ beside the results, as `run --use-tuned` adds them), by the result file
    # each writes: a result is re-keyed to one of them or refused
    tuned = tuned_specs(suite, Path(results_dir).resolve().parent)
    suite = suite.model_copy(update={"methods": [*suite.methods, *(s for s, _ in tuned)]})
    jobs = {j.relpath: j for j in expand(suite)}
    done = refused = 0
    for label in labels.split(","):
        for path in sorted((Path(results_dir) / suite.name / label).glob("*.json")):
            rec = json.loads(path.read_text())
            job = jobs.get(path.relative_to(results_dir).as_posix())
            if job is None:
                print(f"{path}: not a job of {suite.name} as it is now; refused")
                refused += 1
                continue
            now = current_inputs(suite, job, store, rec)
            if now is None:
                print(f"{path}: an artefact's content hash is unknown; refused")
                refused += 1
                continue
            diff = differing_inputs(now, rec.get("inputs") or {})
            if not diff:
                continue
            if sorted(set(diff) - new_defaults(job, rec)) != ["method_code"]:
                print(f"{path}: inputs other than method_code differ ({', '.join(diff[:4])}); refused")
                refused += 1
                continue
            rec["rekeyed"] = {
                "from_key": rec["key"],
                "from_method_code": rec["inputs"]["method_code"],
                "commit": git_commit(),
                "evidence": evidence,
            }
            rec["inputs"], rec["key"], rec["method_source_hash"] = now, key_of(now), now["method_code"]
            rec["hparams"] = dict(job.hparams)  # with the new hyperparameters' defaults, as a rerun records
            write_result(path, rec)
            done += 1
    print(f"re-keyed {done} result(s), refused {refused}")
    return 1 if refused else 0


def new_defaults(job, rec: dict) -> set[str]:
    """``hparams.NAME`` of the hyperparameters the job has and the recorded inputs lack, where
    the job's value is the method's default."""
    from cmbench import registry

    recorded = (rec.get("inputs") or {}).get("hparams") or {}
    defaults = registry.get(job.method).defaults()
    return {f"hparams.{k}" for k, v in job.hparams if k not in recorded and k in defaults and defaults[k] == v}


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
