"""What the subcommands share: suite names, data options, hyperparameters given as text."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import CmbenchError
from ..config import Config


def resolve_suite(arg: str) -> Path:
    from ..suite import resolve_suite as resolve  # lazily: `cmbench --help` never imports torch

    return resolve(arg)


def config_of(args) -> Config:
    """The command's configuration: the environment's defaults, then its flags (--data-root,
    --allow-download). Offline unless downloads are allowed: the Hugging Face libraries, which
    read their switches from the environment once, are told so before they are imported, so
    none of them tries the network, with or without retries."""
    cfg = Config.from_env()
    if getattr(args, "data_root", None):
        cfg = cfg.with_(data_root=Path(args.data_root).expanduser().resolve())
    if getattr(args, "allow_download", False):
        cfg = cfg.with_(allow_download=True)
    if not cfg.allow_download:
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.setdefault(k, "1")
    return cfg


def int_at_least(minimum: int):
    """argparse type: an integer ≥ ``minimum`` (``--seeds 0`` or ``-1`` used to select every
    seed, or all but one)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more (got {n})")
        return n

    return parse


positive_int = int_at_least(1)


def hparams_of(items: list[str] | None) -> dict[str, dict]:
    """``--hparam LABEL.NAME=VALUE`` (VALUE read as YAML) -> {label: {name: value}}."""
    import yaml

    out: dict[str, dict] = {}
    for item in items or []:
        target, eq, value = item.partition("=")
        label, dot, name = target.rpartition(".")
        if not (eq and dot and label and name):
            raise CmbenchError(f"--hparam {item!r}: write METHOD_OR_LABEL.NAME=VALUE, e.g. ode_m.post_refine_steps=1")
        out.setdefault(label, {})[name] = yaml.safe_load(value)
    return out


def added_methods(names: list[str] | None, sets: list[str] | None) -> list[dict] | None:
    """``--add NAME`` / ``--set NAME.k=v`` -> suite method entries (values read as YAML)."""
    if not names:
        if sets:
            raise CmbenchError("--set goes with --add: `--add ties --set ties.k=0.1`")
        return None
    values = hparams_of(sets)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise CmbenchError(
            f"--set {unknown[0]}.…: {unknown[0]!r} is not a method given with --add ({', '.join(names)})"
        )
    return [{"name": n, **({"hparams": values[n]} if n in values else {})} for n in names]


def store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        help="artefact store shared by workers: a directory or an fsspec URL "
        "(s3://…, gs://…); default OUT/.cmbench/cache",
    )


def data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="where datasets live (default: $CMBENCH_DATA_ROOT or ~/.cache/cmbench/data)")
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="let datasets and weights be fetched from the hubs (default: local caches only)",
    )
