import subprocess
import sys

import pytest
import yaml

from cmbench import CmbenchError
from cmbench.suite import expand, load_suite

from .conftest import NANO


def nano_dict():
    return yaml.safe_load(NANO.read_text())


def write(tmp_path, data, name="s.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def error_of(path):
    with pytest.raises(CmbenchError) as e:
        load_suite(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_nano_loads_and_expands():
    s = load_suite(NANO)
    jobs = expand(s)
    assert len(jobs) == 3 * 2 * 2  # methods × seeds × orders
    assert len({j.relpath for j in jobs}) == len(jobs)
    # orders nested within seeds: the explicit order first, then a seeded permutation
    assert jobs[0].order == ("bars", "quadrant", "dots")
    assert expand(s, ["ties"], 1, 1)[0].method == "ties"


@pytest.mark.parametrize(
    "mutate, field, text",
    [
        (lambda d: d["methods"].append({"name": "magic"}), "methods.3.name", "unknown method 'magic'"),
        (lambda d: d["methods"][1]["hparams"].update(lam="big"), "methods.1.hparams.lam", "valid number"),
        (lambda d: d["methods"][1]["hparams"].update(lamda=0.3), "methods.1.hparams.lamda", "unknown hyperparameter"),
        (lambda d: d.pop("tasks"), "tasks", "required field is missing"),
        (lambda d: d["tasks"][0].update(dataset="imagenet-9k"), "tasks.0.dataset", "unknown dataset"),
        (lambda d: d.update(colour="blue"), "colour", "unknown key"),
        (lambda d: d["orders"]["explicit"].append(["bars", "bars", "dots"]), "orders.explicit.1", "repeated"),
        (
            lambda d: d["orders"]["explicit"].append(["bars", "quadrant", "cars"]),
            "orders.explicit.1",
            "unknown: ['cars']",
        ),
        (lambda d: d["experts"]["finetune"].update(epochs=-1), "experts.finetune.epochs", "greater than or equal"),
        (lambda d: d["backbone"].update(embed_dim=33), "backbone", "multiple of num_heads"),
        (lambda d: d.update(seeds="zero"), "seeds", "valid list"),
    ],
)
def test_malformed_suite_names_file_and_field(tmp_path, mutate, field, text):
    d = nano_dict()
    mutate(d)
    msg = error_of(write(tmp_path, d))
    assert f": {field}: " in msg and text in msg, msg


def test_bad_yaml_and_non_mapping(tmp_path):
    assert "invalid YAML at line 2" in error_of(write(tmp_path, "name: x\n  tasks: [\n"))
    assert "mapping" in error_of(write(tmp_path, "- a\n- b\n"))
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"name: \xff\xfe\n")
    assert "UTF-8" in error_of(p)


def test_yaml_object_tags_are_rejected(tmp_path):
    marker = tmp_path / "pwned"
    text = NANO.read_text() + f"\nx: !!python/object/apply:os.system ['touch {marker}']\n"
    error_of(write(tmp_path, text))
    assert not marker.exists()


def test_cli_error_is_one_line_without_traceback(tmp_path):
    d = nano_dict()
    d["methods"][0]["name"] = "magic"
    p = write(tmp_path, d)
    r = subprocess.run(
        [sys.executable, "-m", "cmbench.cli", "run", str(p), "--dry-run"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "methods.0.name" in lines[0] and str(p) in lines[0]


def test_tiny_vit_activation_is_an_option_keyed_only_when_set():
    from torch import nn

    from cmbench.models import create_backbone
    from cmbench.suite import TinyViT, keyed_backbone

    relu, gelu = TinyViT(act="relu"), TinyViT()
    assert any(isinstance(m, nn.ReLU) for m in create_backbone(relu).modules())
    assert not any(isinstance(m, nn.ReLU) for m in create_backbone(gelu).modules())
    assert "act" not in keyed_backbone(gelu) and keyed_backbone(relu)["act"] == "relu"
