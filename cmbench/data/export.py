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
from ..config import current
from ..catalog import clip_tasks
from .vision import CIL_SOURCES


def _size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    files = [f for f in path.rglob("*") if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files)


def _hf_cache(repo: str) -> Path | None:
    """The datasets library's hub cache folder of ``repo``, if it is there."""
    roots = [Path(os.environ[k]) for k in ("HF_HUB_CACHE",) if k in os.environ]
    roots.append(Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    for root in roots:
        d = root / ("datasets--" + repo.replace("/", "--"))
        if d.is_dir():
            return d
    return None


def status() -> list[str]:
    """Per dataset (once each): present or absent, where, how big, and what to do if absent."""
    root = current().data_root
    lines = [f"data root: {root}  (set --data-root or $CMBENCH_DATA_ROOT)"]
    for name in dict.fromkeys([*clip_tasks(), *CIL_SOURCES]):
        folder = root / name
        if all((folder / s).is_dir() for s in ("train", "test")):
            n, b = _size(folder)
            lines.append(f"  {name}: present, image folder {folder} ({n} files, {b / 2**20:.0f} MB)")
            continue
        if name in clip_tasks():
            repo = clip_tasks()[name]["hub"]["test"]["path"]
            cached = _hf_cache(repo)
            if cached is not None:
                lines.append(f"  {name}: present, hub copy {repo} in the HF cache ({_size(cached)[1] / 2**20:.0f} MB)")
            else:
                lines.append(
                    f"  {name}: absent; hub copy {repo}: run with --allow-download once (or "
                    f"`cmbench data export {name} --allow-download` for an image folder)"
                )
        else:
            lines.append(
                f"  {name}: absent; no hub copy: put the images at {folder}/{{train,test}}/<class>/<image> "
                "(the splits of the InfLoRA / P&M code, see the suite's header)"
            )
    return lines


def export(task: str, splits=("train", "test"), log=print) -> Path:
    if task not in clip_tasks():
        raise CmbenchError(f"data export: {task!r} has no hub copy; known: {', '.join(clip_tasks())}")
    try:
        import datasets
    except ImportError:
        raise CmbenchError("data export needs the `datasets` library: pip install datasets") from None
    if not current().allow_download:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = current().data_root / task
    for split in splits:
        spec = clip_tasks()[task]["hub"][split]
        try:
            ds = datasets.load_dataset(spec["path"], spec.get("config"), split=spec["split"])
        except Exception as e:  # noqa: BLE001
            raise CmbenchError(
                f"data export {task}: cannot load {spec['path']} split {spec['split']} "
                f"({type(e).__name__}); use --allow-download or fill the HF cache"
            ) from None
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
