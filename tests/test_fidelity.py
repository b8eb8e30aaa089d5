"""The protocol details of published numbers that the suites follow (docs/fidelity.md)."""

from pathlib import Path

import pytest
import yaml

from cmbench.catalog import ode_m_reference_order

ROOT = Path(__file__).resolve().parents[1]


def test_ode_m_reference_order_of_ta8_from_the_task_names_alone():
    # yohbii/ODE-M: the pool's FusionBench names sorted, random.seed(42), random.shuffle
    ta8 = ["sun397", "stanford_cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]
    assert ode_m_reference_order(ta8) == [
        "mnist",
        "resisc45",
        "sun397",
        "svhn",
        "gtsrb",
        "stanford_cars",
        "dtd",
        "eurosat",
    ]
    # the order depends on the set of tasks, not on how the suite lists them
    assert ode_m_reference_order(sorted(ta8)) == ode_m_reference_order(ta8)


@pytest.mark.parametrize("path", sorted((ROOT / "suites").glob("clip-*.yaml")), ids=lambda p: p.stem)
def test_every_clip_suite_runs_ode_m_reference_order_first(path):
    doc = yaml.safe_load(path.read_text())
    tasks = [t["name"] for t in doc["tasks"]]
    assert doc["orders"]["explicit"][0] == ode_m_reference_order(tasks)
    assert len(doc["orders"]["explicit"]) + doc["orders"]["random"] == 10  # the published 10 orders
