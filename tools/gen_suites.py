"""Write the real-scale suites (``suites/clip-*.yaml``, ``suites/split-vit-*.yaml``) from one
table, so the 16 files cannot drift apart. Run after editing this file:

    python tools/gen_suites.py
"""

import json
from pathlib import Path

import yaml

from cmbench.catalog import ode_m_reference_order

ROOT = Path(__file__).resolve().parents[1]
TASKS = json.loads((ROOT / "cmbench" / "data" / "clip_tasks.json").read_text())["tasks"]
# TA8 ⊂ TALL14 ⊂ TALL20 in FusionBench's order (Wang et al. 2024, "Localizing Task Information")
ORDER = list(TASKS)
STREAMS = {"ta8": ORDER[:8], "tall14": ORDER[:14], "tall20": ORDER[:20]}
BACKBONES = {  # cmbench suffix -> (open_clip model, hub prefix of FusionBench's experts)
    "vit-b32": ("ViT-B-32", "clip-vit-base-patch32"),
    "vit-b16": ("ViT-B-16", "clip-vit-base-patch16"),
    "vit-l14": ("ViT-L-14", "clip-vit-large-patch14"),
}

CLIP_METHODS = [
    "# data-free continual merging (published defaults)",
    {"name": "weight_average"},
    {"name": "task_arithmetic", "hparams": {"lam": 0.3}},
    {"name": "ties", "hparams": {"k": 0.2, "lam": 0.5, "merge_func": "sum"}},
    {"name": "magmax", "hparams": {"lam": 0.5}},
    {"name": "opcm", "hparams": {"alpha": 0.5}},
    {"name": "dop"},
    {"name": "consensus_ta", "hparams": {"lam": 0.3, "k": 2, "tall_lambda": 0.6}},
    {"name": "iso_c", "hparams": {"alpha": 1.0}},
    {"name": "iso_cts", "hparams": {"alpha": 1.0, "common_space_fraction": 0.8}},
    {"name": "wudi"},
    {"name": "tsv_m", "hparams": {"alpha": 1.0}},
    "# the current task's training data",
    {"name": "fisher_average"},
    {"name": "regmean"},
    {"name": "regmean_plusplus"},
    "# ODE-M (public config): 2048 nested calibration samples; refinement at the end (‡), per step, none",
    {"name": "ode_m"},
    {"name": "ode_m", "label": "ode_m-per-step", "hparams": {"refine": "per_step"}},
    {"name": "ode_m", "label": "ode_m-no-refine", "hparams": {"refine": "none"}},
    "# lower bound: keep the newest expert",
    {"name": "sequential"},
    "# sequential experts (experts.finetune, OPCM's continual fine-tuning recipe, in each job's order):",
    "# continual fine-tuning (OPCM's and MINGLE's row) and MagMax on them (its paper's sequential protocol)",
    {"name": "sequential", "label": "continual-ft", "experts": "sequential"},
    {"name": "magmax", "label": "magmax-seq", "hparams": {"lam": 0.5}, "experts": "sequential"},
    "# test-time adaptation on 5 unlabeled test images a class (MINGLE's protocol; the suite opts in",
    "# with test_time_adaptation): ranked among test-time rows only. C-AdaMerging as its public code",
    "# runs (each step merges into θ0) and with the merged model carried",
    {"name": "c_adamerging"},
    {"name": "c_adamerging", "label": "c_adamerging-carry", "hparams": {"carry": "merged"}},
]


def dump(path: Path, header: str, doc: dict, methods: list) -> None:
    body = yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)
    lines = ["methods:"]
    for m in methods:
        lines.append(f"  {m}" if isinstance(m, str) else "  - " + json.dumps(m).replace('"', ""))
    path.write_text(header + body + "\n".join(lines) + "\n")


def clip_suites() -> None:
    for bb, (model, hub) in BACKBONES.items():
        for stream, tasks in STREAMS.items():
            name = f"clip-{bb}-{stream}"
            header = (
                f"# {name}: continual merging of {len(tasks)} CLIP {model} experts (FusionBench's hub\n"
                "# checkpoints, fine-tuned on each task's full train split, so they have seen the val split),\n"
                "# zero-shot heads from FusionBench's class names and templates, 1 seed x 10 orders.\n"
                "# Needs: `cmbench run " + name + " --dry-run` lists downloads (weights, experts, datasets).\n"
                "# Pin each expert after the first download: add `sha256:` (the result files record it).\n"
                "# As published (OPCM's table, cmbench/data/published.json): one set of hub experts, 10 task\n"
                "# orders. A seed does not change downloaded experts or θ0: it draws the task orders and any\n"
                "# sampling a method does (ODE-M's calibration subsets), so one seed with 10 orders is the\n"
                "# published protocol. The published orders were drawn unseeded (FusionBench's\n"
                "# `method.seed=null`) and not released, so they cannot be reproduced one to one: ours are\n"
                "# seeded and recorded in every result file. The first order is ODE-M's reference order (its\n"
                "# public code: FusionBench's task names sorted, random.seed(42), random.shuffle), the other 9\n"
                "# are drawn. Rows with `experts: sequential` merge experts the harness fine-tunes one after\n"
                "# another in each job's order with experts.finetune (OPCM's continual fine-tuning recipe), on\n"
                "# each train split less FusionBench's 10 % validation hold-out (OPCM trains on all of it).\n"
            )
            doc = {
                "name": name,
                "description": f"{len(tasks)} CLIP {model} experts merged one at a time (TA8 ⊂ TALL14 ⊂ TALL20)",
                "setting": "merge_stream",
                "seeds": [0],
                "backbone": {"kind": "open_clip", "model": model, "pretrained": "openai"},
                "tasks": [{"name": t, "dataset": t} for t in tasks],
                "heads": {"kind": "zero_shot"},
                "experts": {
                    "source": "checkpoints",
                    "checkpoints": {
                        t: {"format": "hf_clip_vision", "path": f"hf://tanganke/{hub}_{TASKS[t]['fusionbench']}"}
                        for t in tasks
                    },
                    # the sequential experts' recipe (and `cmbench finetune`'s if the source is switched):
                    # OPCM's continual fine-tuning (tanganke/opcm config/method/classification/
                    # clip_continual_finetune.yaml, continual_clip_finetune.py): Adam, lr 1e-5, no weight
                    # decay, 4000 steps of batch 128 per task, cosine annealing restarted per task, frozen
                    # zero-shot heads
                    "finetune": {
                        "optimizer": "adam",
                        "lr": 1.0e-5,
                        "weight_decay": 0.0,
                        "batch_size": 128,
                        "steps": 4000,
                        "warmup_frac": 0.0,
                    },
                },
                # ODE-M's reference order first (cmbench.catalog.ode_m_reference_order), then 9 drawn
                "orders": {"explicit": [ode_m_reference_order(tasks)], "random": 9},
                "evaluation": {"batch_size": 512},
                "resources": {"cpus_per_job": 4, "gpus_per_job": 1},
                "test_time_adaptation": True,
            }
            dump(ROOT / "suites" / f"{name}.yaml", header, doc, CLIP_METHODS)


# name -> (source, tasks, epochs, RandomResizedCrop scale, test crop_pct, test interpolation): the
# InfLoRA / P&M class-incremental benchmarks with InfLoRA's transforms (utils/data.py of
# liangyanshuo/InfLoRA at e08b00e): train RandomResizedCrop(224, scale) + RandomHorizontalFlip;
# test Resize(256) + CenterCrop(224) (crop_pct 0.875), CIFAR-100 Resize(224) only; torchvision's
# Resize is bilinear unless told (iIMAGENET_R, iDomainNet, iCIFAR100), iIMAGENET_A and iCUB pass
# interpolation=3 (bicubic)
SPLITS = {
    "split-vit-b16-cifar100-10": ("cifar100", 10, 10, [0.08, 1.0], 1.0, "bilinear"),
    "split-vit-b16-imagenet-r-5": ("imagenet_r", 5, 10, [0.08, 1.0], 0.875, "bilinear"),
    "split-vit-b16-imagenet-r-10": ("imagenet_r", 10, 10, [0.08, 1.0], 0.875, "bilinear"),
    "split-vit-b16-imagenet-r-20": ("imagenet_r", 20, 10, [0.08, 1.0], 0.875, "bilinear"),
    "split-vit-b16-imagenet-a-10": ("imagenet_a", 10, 10, [0.05, 1.0], 0.875, "bicubic"),
    "split-vit-b16-domainnet-5": ("domainnet", 5, 5, [0.08, 1.0], 0.875, "bilinear"),
    "split-vit-b16-cub200-10": ("cub200", 10, 10, [0.05, 1.0], 0.875, "bicubic"),
}
# what the rest of the data protocol is, per source (InfLoRA's code): classes in index order
# (every shipped config has shuffle: false), pixels in [0, 1] (ToTensor, Normalize(0, 1) or
# none), the whole train split trained on; ImageNet-R from the fixed split file InfLoRA's
# repository carries (utils/splits/imagenet-r_*.yaml), the others from the folders its loaders read
WHERE = {
    "imagenet_r": "ImageNet-R's class folders as distributed ($CMBENCH_DATA_ROOT/imagenet_r/<wnid>/<image>),\n"
    "# split by the file list cmbench ships (cmbench/data/splits/imagenet_r.json.gz: 24,000 train / 6,000\n"
    "# test: the fixed split InfLoRA's repository carries, utils/splits/imagenet-r_{train,test}.yaml, with\n"
    "# their sha256). InfLoRA's loader itself draws random_split 80/20 once under the first run's seed and\n"
    "# moves the files (utils/data.py:195), a split no one can reproduce: the shipped file is the fixed one",
    "imagenet_a": "$CMBENCH_DATA_ROOT/imagenet_a/{train,test}/<class>/<image>, the train/test folders\n"
    "# InfLoRA's loader reads (data/imagenet-a/{train,test}; no file list is public in its code, so the\n"
    "# split is the user's copy of it: a remaining difference we cannot check)",
    "domainnet": "$CMBENCH_DATA_ROOT/domainnet/{train,test}/<class>/<image> laid out by InfLoRA's\n"
    "# dataloaders/splits/domainnet_{train,test}.yaml (too large to ship here: the user lays them out)",
}
LORA = {"rank": 10, "targets": ["k", "v"]}
# full-parameter rows: MagMax's fine-tuning (danielm1405/magmax finetune_splitted.py, src/args.py):
# AdamW lr 1e-5, weight decay 0.1, batch 128, 10 epochs, 500 warm-up steps then cosine, gradient
# norm clipped at 1, open_clip's train transform (RandomResizedCrop scale 0.9-1, no flip); the
# class-incremental head keeps the suite's head lr (MagMax's head is CLIP's frozen zero-shot head)
FULL = {
    "lr": 1.0e-5,
    "weight_decay": 0.1,
    "batch_size": 128,
    "epochs": 10,
    "warmup_steps": 500,
    "grad_clip": 1.0,
    "augment": {"scale": [0.9, 1.0], "hflip": False},
}
SPLIT_METHODS = [
    "# lower bounds: sequential fine-tuning, full (MagMax's recipe) and LoRA (the suite's)",
    {"name": "sequential", "training": FULL},
    {"name": "sequential", "label": "sequential-lora", "lora": LORA},
    "# merging baselines",
    {"name": "weight_average", "label": "weight_average-lora", "lora": LORA},
    {"name": "magmax", "hparams": {"lam": 0.5}, "training": FULL},
    "# P&M (Qiu et al. 2025): LoRA rank 10 on k, v (the paper), full-parameter, ablations",
    {"name": "pm", "label": "pm-lora", "lora": LORA},
    {"name": "pm", "label": "pm-full", "training": FULL},
    {"name": "pm", "label": "pm-lora-merge-only", "hparams": {"perturbation": "none"}, "lora": LORA},
    {"name": "pm", "label": "pm-lora-gaussian", "hparams": {"perturbation": "gaussian"}, "lora": LORA},
    {"name": "pm", "label": "pm-lora-per-module-alpha", "hparams": {"alpha": "per_module"}, "lora": LORA},
    "# TRM (reconstruction from the abstract, †) and its ablations: full-parameter, MagMax's recipe",
    {"name": "trm", "training": FULL},
    {"name": "trm", "label": "trm-no-align", "hparams": {"w_align": 0.0}, "training": FULL},
    {"name": "trm", "label": "trm-no-consistency", "hparams": {"w_cons": 0.0}, "training": FULL},
    {"name": "trm", "label": "trm-no-responsiveness", "hparams": {"w_resp": 0.0}, "training": FULL},
    "# upper reference: joint training on every seen task (full-parameter, MagMax's recipe)",
    {"name": "multitask", "training": FULL},
]


def split_suites() -> None:
    for name, (source, n, epochs, scale, crop_pct, interp) in SPLITS.items():
        test = "Resize(224)" if crop_pct == 1.0 else "Resize(256) + CenterCrop(224)"
        where = WHERE.get(source, f"$CMBENCH_DATA_ROOT/{source}/{{train,test}}/<class>/<image>")
        header = (
            f"# {name}: class-incremental {source} in {n} tasks, ViT-B/16 AugReg ImageNet-21k (timm's\n"
            "# vit_base_patch16_224.augreg_in21k: the checkpoint InfLoRA's code loads, models/sinet_inflora.py:68,\n"
            "# and P&M's table names). LoRA rows: P&M's recipe, AdamW, lr 1e-3, head lr 1e-2, batch 256,\n"
            f"# {epochs} epochs; InfLoRA's data protocol (utils/data.py, configs/*.json at e08b00e): classes\n"
            "# in index order (shuffle: false), pixels in [0, 1] (mean 0, std 1), the whole train split,\n"
            f"# train RandomResizedCrop(224, scale {scale[0]}-1) + flip, test {test} ({interp}).\n"
            "# Full-parameter rows: MagMax's fine-tuning recipe (methods' `training`; see tools/gen_suites.py).\n"
            "# Remaining differences (docs/fidelity.md): P&M's own code could not be read, so its protocol is\n"
            "# taken to be InfLoRA's, on which it builds; random resized crops are drawn from the whole image\n"
            "# decoded once at 256 px (bicubic), not from the file; `cmbench tune` needs a validation split:\n"
            "# tune on a copy with `holdout: 0.1` in each task's params, report this suite's rows.\n"
            f"# Data: {where}.\n"
        )
        doc = {
            "name": name,
            "description": f"class-incremental {source}, {n} tasks, ViT-B/16 (P&M / InfLoRA protocol)",
            "setting": "train_then_merge",
            "seeds": [0, 1, 2],
            "backbone": {
                "kind": "timm",
                "model": "vit_base_patch16_224.augreg_in21k",
                "pretrained": True,
                "input_mean": [0.0, 0.0, 0.0],
                "input_std": [1.0, 1.0, 1.0],
            },
            "tasks": [
                {
                    "name": f"task{i}",
                    "dataset": "class_split",
                    "params": {
                        "source": source,
                        "n_tasks": n,
                        "index": i,
                        **({"crop_pct": crop_pct} if crop_pct != 1.0 else {}),
                        "class_order": "index",
                        "holdout": 0.0,
                        "interpolation": interp,
                        **({"split": "shipped"} if source == "imagenet_r" else {}),
                    },
                }
                for i in range(n)
            ],
            "heads": {"kind": "class_incremental"},
            "training": {
                "epochs": epochs,
                "lr": 1.0e-3,
                "head_lr": 1.0e-2,
                "weight_decay": 0.0,
                "batch_size": 256,
                "warmup_frac": 0.0,
                "augment": {"scale": scale, "hflip": True},
            },
            "evaluation": {"batch_size": 512},
            "resources": {"cpus_per_job": 4, "gpus_per_job": 1},
        }
        dump(ROOT / "suites" / f"{name}.yaml", header, doc, SPLIT_METHODS)


if __name__ == "__main__":
    clip_suites()
    split_suites()
    print("wrote", len(BACKBONES) * len(STREAMS) + len(SPLITS), "suites")
