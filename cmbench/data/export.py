"""``cmbench data``: see where each dataset stands, and export hub copies to image folders.

``cmbench data list`` prints, per dataset, whether its image folder is under the data
root. ``cmbench data export TASK…`` writes the hub copy FusionBench uses (read with the
``datasets`` library from its cache, downloading only with ``--allow-download``) as
``ROOT/<task>/<split>/<class index>/<i>.png`` — the layout every loader reads first, so a
cluster can share one folder and no job needs the hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import CmbenchError
from ..models.clip import allow_download
from .vision import CIL_SOURCES, clip_tasks, data_root


def status() -> list[str]:
    root = data_root()
    lines = [f"data root: {root}"]
    for name in [*clip_tasks(), *CIL_SOURCES]:
        have = [s for s in ("train", "test") if (root / name / s).is_dir()]
        where = "image folder" if len(have) == 2 else ("hub copy " + clip_tasks()[name]["hub"]["test"]["path"]
                                                       if name in clip_tasks() else "missing")
        lines.append(f"  {name}: {where}")
    return lines


def export(task: str, splits=("train", "test"), log=print) -> Path:
    if task not in clip_tasks():
        raise CmbenchError(f"data export: {task!r} has no hub copy; known: {', '.join(clip_tasks())}")
    try:
        import datasets
    except ImportError:
        raise CmbenchError("data export needs the `datasets` library: pip install datasets") from None
    if not allow_download():
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = data_root() / task
    for split in splits:
        spec = clip_tasks()[task]["hub"][split]
        try:
            ds = datasets.load_dataset(spec["path"], spec.get("config"), split=spec["split"])
        except Exception as e:  # noqa: BLE001
            raise CmbenchError(f"data export {task}: cannot load {spec['path']} split {spec['split']} "
                               f"({type(e).__name__}); use --allow-download or fill the HF cache") from None
        cols = spec.get("columns", {})
        img_col, lab_col = cols.get("image", "image"), cols.get("label", "label")
        d = out / split
        n = 0
        for i, row in enumerate(ds):
            img = row[img_col] if img_col in row else row["img"]
            target = d / str(int(row[lab_col]))
            target.mkdir(parents=True, exist_ok=True)
            img.convert("RGB").save(target / f"{i}.png")
            n += 1
        log(f"{task}/{split}: {n} images -> {d}")
    return out
