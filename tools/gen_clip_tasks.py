"""Regenerate ``cmbench/data/clip_tasks.json``: the 20 CLIP tasks' class names, prompt
templates and hub dataset coordinates, taken verbatim from the FusionBench release so
zero-shot heads (and so every number) are comparable with published tables.

    pip download fusion-bench==0.2.33 --no-deps -d /tmp/fb && cd /tmp/fb && unzip -o *.whl
    python tools/gen_clip_tasks.py /tmp/fb

Each task module is a plain file of lists and lambdas; it is executed here, once, by the
maintainer (never at run time); templates are stored as format strings with ``{c}``.
"""

import json
import sys
from pathlib import Path

import yaml

# cmbench name -> (FusionBench task module, FusionBench dataset config, class-name variable)
TASKS = {
    "sun397": ("sun397", "sun397", "classnames"),
    "stanford_cars": ("stanford_cars", "stanford-cars", "classnames"),
    "resisc45": ("resisc45", "resisc45", "classnames"),
    "eurosat": ("eurosat", "eurosat", "classnames"),
    "svhn": ("svhn", "svhn", "classnames"),
    "gtsrb": ("gtsrb", "gtsrb", "classnames"),
    "mnist": ("mnist", "mnist", "classnames"),
    "dtd": ("dtd", "dtd", "classnames"),
    "flowers102": ("flower102", "oxford_flowers102", "classnames"),
    "pcam": ("pcam", "pcam", "classnames"),
    "fer2013": ("fer2013", "fer2013", "classnames"),
    "oxford_pet": ("oxford_iiit_pet", "oxford-iiit-pet", "classnames"),
    "stl10": ("stl10", "stl10", "classnames"),
    "cifar100": ("cifar100", "cifar100", "fine_label"),
    "cifar10": ("cifar10", "cifar10", "classnames"),
    "food101": ("food101", "food101", "classnames"),
    "fashion_mnist": ("fashion_mnist", "fashion_mnist", "classnames"),
    "emnist_letters": ("emnist_letters", "emnist_letters", "classnames"),
    "kmnist": ("kmnist", "kmnist", "classnames"),
    "rendered_sst2": ("rendered_sst2", "rendered-sst2", "classnames"),
}
SENTINEL = "\x00CLASS\x00"


def hub(cfg_dir: Path, split_dir: str, name: str) -> dict:
    node = yaml.safe_load((cfg_dir / split_dir / f"{name}.yaml").read_text())
    node = next(iter(node.values()))
    if node.get("_target_", "").endswith("train_validation_split"):
        inner = node["dataset"]
        return {**hub_node(inner), "val_fraction": node["validation_fraction"], "val_seed": node["random_seed"]}
    return hub_node(node)


def hub_node(node: dict) -> dict:
    if node["_target_"].endswith("load_fer2013"):
        return {
            "path": "clip-benchmark/wds_fer2013",
            "split": node["split"],
            "columns": {"image": "jpg", "label": "cls"},
        }
    args = node.get("_args_") or [node["path"]]
    out = {"path": args[0], "split": node["split"]}
    if len(args) > 1:
        out["config"] = args[1]
    return out


def main(root: str) -> None:
    root = Path(root)
    mod_dir = root / "fusion_bench" / "tasks" / "clip_classification"
    cfg_dir = root / "fusion_bench_config" / "dataset" / "image_classification"
    out = {}
    for name, (module, cfg, var) in TASKS.items():
        ns: dict = {}
        exec(compile((mod_dir / f"{module}.py").read_text(), module, "exec"), ns)  # noqa: S102 - maintainer-run
        templates = [
            t(SENTINEL).replace("{", "{{").replace("}", "}}").replace(SENTINEL, "{c}") for t in ns["templates"]
        ]
        train = hub(cfg_dir, "train", cfg)
        test = hub(cfg_dir, "test", cfg)
        val = hub(cfg_dir, "val", cfg) if (cfg_dir / "val" / f"{cfg}.yaml").exists() else None
        out[name] = {
            "fusionbench": cfg,
            "hub": {
                "train": train,
                "test": test,
                "val": {
                    "from": "train",
                    "fraction": (val or {}).get("val_fraction", 0.1),
                    "seed": (val or {}).get("val_seed", 0),
                },
            },
            "classnames": list(ns[var]),
            "templates": templates,
        }
    dst = Path(__file__).resolve().parents[1] / "cmbench" / "data" / "clip_tasks.json"
    dst.write_text(
        json.dumps(
            {"source": "fusion-bench 0.2.33 (tanganke/fusion_bench)", "tasks": out}, indent=1, ensure_ascii=False
        )
        + "\n"
    )
    print(f"wrote {dst}: {len(out)} tasks, {sum(len(t['classnames']) for t in out.values())} classes")


if __name__ == "__main__":
    main(sys.argv[1])
