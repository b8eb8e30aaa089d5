"""Micro datasets that run on a laptop CPU: scikit-learn's digits and small image tasks
generated from seeds (grayscale, ``img_size``², default 16).

Each generated task draws every split from its own random stream
``(data_seed, task name, split)``, so splits never share an image.
"""

from __future__ import annotations

import inspect
import zlib
from typing import Any, Callable

import numpy as np
import torch

from .. import CmbenchError
from ..catalog import colour_error
from . import SPLITS, Split, TaskData, dataset, param_value, split_defaults

# Bump when a change alters any image, label or split these builders produce (digits and
# the generated tasks); every artefact and job on a micro dataset is then recomputed.
MICRO_DATA_VERSION = 1


def _rng(data_seed: int, task: str, stream: str) -> np.random.Generator:
    return np.random.default_rng([data_seed, zlib.crc32(task.encode()), zlib.crc32(stream.encode())])


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """(N, H, W) grey or (N, 3, H, W) colour images in [0, 1] as a uint8 split."""
    x = torch.from_numpy(np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8))
    return Split(x=(x[:, None] if x.dim() == 3 else x).contiguous(), y=torch.from_numpy(labels.astype(np.int64)))


def _paint(images: np.ndarray, colour, rng: np.random.Generator) -> np.ndarray:
    """Grey images (N, H, W) in a colour domain, (N, 3, H, W): bg + (fg − bg)·grey, with one
    (fg, bg) pair for the task or, ``random``, a pair drawn per image (broad pretraining data).
    Tasks in different colours differ in their inputs as CLIP's tasks (photos, satellite
    images, digits, textures) do."""
    why = colour_error(colour)
    if why:
        raise CmbenchError(why)
    images = np.clip(images, 0.0, 1.0)
    if colour == "random":
        fg, bg = rng.uniform(0, 1, (2, len(images), 3, 1, 1))
    else:
        fg, bg = (np.asarray(colour[k], dtype=np.float64).reshape(1, 3, 1, 1) for k in ("fg", "bg"))
    return bg + (fg - bg) * images[:, None]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(images.astype(np.float32))[:, None]
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t[:, 0].numpy()


def _digits_sizes(params: dict) -> tuple[int, int, int]:
    """scikit-learn's digits: 1797 images (about 180 per class), split by fractions."""
    total = 1797 * len(params.get("classes") or range(10)) // 10
    test, val = round(total * params.get("test_frac", 0.3)), round(total * params.get("val_frac", 0.1))
    return total - test - val, val, test


@dataset("digits", MICRO_DATA_VERSION, _digits_sizes)
def digits(
    task: str,
    data_seed: int,
    img_size: int,
    *,
    val_frac: float = 0.1,
    test_frac: float = 0.3,
    noise: float = 0.0,
    classes: list[int] | None = None,
    colour: str | dict | None = None,
) -> TaskData:
    """scikit-learn's 8×8 digits (1797 images), upscaled; stratified fixed split (the same
    partition for every digits task). ``classes`` keeps a subset (a class-incremental split);
    its labels become local 0..C−1 with the digit as the global class id. ``colour``: the
    images in a colour domain (three channels, see ``_paint``)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = _resize(d.images / 16.0, img_size)
    labels = d.target
    rng = _rng(data_seed, "digits-split", "split")  # the same partition for every digits task
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test, n_val = round(len(idx) * test_frac), round(len(idx) * val_frac)
        parts["test"] += idx[:n_test].tolist()
        parts["val"] += idx[n_test : n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val :].tolist()
    keep = list(range(10)) if classes is None else [int(c) for c in classes]
    if not keep or any(c not in range(10) for c in keep) or len(set(keep)) != len(keep):
        raise CmbenchError(f"digits: classes must be distinct digits 0-9, got {classes}")
    local = {c: i for i, c in enumerate(keep)}
    splits: dict[str, Any] = {}  # train, val, test: Splits, passed to TaskData by keyword
    for s in SPLITS:
        idx = np.sort(np.array(parts[s]))
        idx = idx[np.isin(labels[idx], keep)]
        x = images[idx]
        if noise:
            x = x + _rng(data_seed, task, s + "-noise").normal(0, noise, x.shape)
        if colour is not None:
            x = _paint(x, colour, _rng(data_seed, task, s + "-colour"))
        splits[s] = _to_split(x, np.array([local[c] for c in labels[idx]]))
    population = int(np.isin(labels, keep).sum())  # the test split is a subset of these images
    return TaskData(task, [str(c) for c in keep], **splits, class_ids=keep, test_population=population)


# -- generated tasks ----------------------------------------------------------------------

Sampler = Callable[[np.random.Generator, int, int], np.ndarray]  # (rng, label, size) -> image


def _grid(size: int):
    return np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # (yy, xx)


def _generated(
    task: str,
    data_seed: int,
    size: int,
    classes: list[str],
    sample: Sampler,
    n_train: int,
    n_val: int,
    n_test: int,
    noise: float,
    colour: str | dict | None,
    params: dict,
) -> TaskData:
    splits: dict[str, Any] = {}  # train, val, test: Splits, passed to TaskData by keyword
    for s, n in zip(SPLITS, (n_train, n_val, n_test)):
        rng = _rng(data_seed, task, s)
        labels = rng.permutation(np.arange(n) % len(classes))
        imgs = np.stack([sample(rng, int(c), size, **params) for c in labels])
        imgs = imgs + rng.normal(0.0, noise, imgs.shape)
        if colour is not None:
            imgs = _paint(imgs, colour, _rng(data_seed, task, s + "-colour"))
        splits[s] = _to_split(imgs, labels)
    return TaskData(task, classes, **splits)


def _task(name: str, classes: list[str] | Callable[..., list[str]]):
    """Register a generated dataset from a per-image sampler ``sample(rng, label, size, **params)``;
    ``classes`` may be a function of those params."""

    def deco(sample: Sampler) -> Sampler:
        def build(
            task: str,
            data_seed: int,
            img_size: int,
            *,
            n_train: int = 1200,
            n_val: int = 200,
            n_test: int = 500,
            noise: float = 0.05,
            colour: str | dict | None = None,
            **params,
        ) -> TaskData:
            names = classes(**params) if callable(classes) else classes
            return _generated(task, data_seed, img_size, names, sample, n_train, n_val, n_test, noise, colour, params)

        build.__doc__ = sample.__doc__
        # the parameters a suite may give: the split sizes, noise and colour, and the sampler's own
        # (so an unknown one is refused when the suite is read, see suite.Task)
        own = list(inspect.signature(build).parameters.values())[:-1]
        extra = list(inspect.signature(sample).parameters.values())[3:]
        # read by inspect.signature; function types do not declare the attribute
        build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            own + [p.replace(kind=p.KEYWORD_ONLY) for p in extra]
        )
        dataset(name, MICRO_DATA_VERSION, lambda params: split_defaults(build, params))(build)
        return sample

    return deco


@_task("shapes", ["disk", "square", "triangle", "cross", "ring"])
def _shape(rng, c, size):
    """One of five shapes at a random place, size and brightness."""
    yy, xx = _grid(size)
    r = rng.uniform(0.2, 0.32) * size
    cy, cx = rng.uniform(r, size - r, 2)
    dy, dx = yy - cy, xx - cx
    if c == 0:
        m = dy**2 + dx**2 <= r**2
    elif c == 1:
        m = (abs(dy) <= r * 0.85) & (abs(dx) <= r * 0.85)
    elif c == 2:
        m = (dy <= r * 0.8) & (dy >= -r) & (abs(dx) <= (dy + r) * 0.55)
    elif c == 3:
        w = max(1.0, r * 0.3)
        m = ((abs(dy) <= w) & (abs(dx) <= r)) | ((abs(dx) <= w) & (abs(dy) <= r))
    else:
        d2 = dy**2 + dx**2
        m = (d2 <= r**2) & (d2 >= (r * 0.55) ** 2)
    return m * rng.uniform(0.6, 1.0)


@_task("bars", ["0°", "30°", "60°", "90°", "120°", "150°"])
def _bar(rng, c, size):
    """A bar at one of six orientations through a random point."""
    yy, xx = _grid(size)
    a = np.deg2rad(30 * c + rng.uniform(-6, 6))
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
    along = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
    across = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
    m = (abs(across) <= rng.uniform(0.6, 1.1)) & (abs(along) <= rng.uniform(0.3, 0.45) * size)
    return m * rng.uniform(0.6, 1.0)


@_task("dots", ["1", "2", "3", "4", "5"])
def _dots(rng, c, size):
    """Count the dots: 1 to 5 small blobs at distinct places."""
    yy, xx = _grid(size)
    img = np.zeros((size, size), np.float32)
    cells = rng.choice(16, c + 1, replace=False)  # a 4×4 grid of cells keeps dots apart
    for cell in cells:
        cy = (cell // 4 + rng.uniform(0.3, 0.7)) * size / 4
        cx = (cell % 4 + rng.uniform(0.3, 0.7)) * size / 4
        img = np.maximum(img, ((yy - cy) ** 2 + (xx - cx) ** 2 <= (0.07 * size) ** 2 + 0.5) * 1.0)
    return img * rng.uniform(0.6, 1.0)


@_task("stripes", lambda freqs=(1, 2, 3, 4, 5): [f"f{f}" for f in freqs])
def _stripes(rng, c, size, freqs=(1, 2, 3, 4, 5)):
    """A grating at a random orientation and phase; the class is its spatial frequency
    (``freqs``: cycles per image)."""
    yy, xx = _grid(size)
    a = rng.uniform(0, np.pi)
    u = (xx * np.cos(a) + yy * np.sin(a)) / size
    return 0.5 + 0.4 * np.sin(2 * np.pi * freqs[c] * u + rng.uniform(0, 2 * np.pi))


@_task("quadrant", ["top-left", "top-right", "bottom-left", "bottom-right"])
def _quadrant(rng, c, size):
    """A bright blob in one quadrant, a dimmer distractor anywhere."""
    yy, xx = _grid(size)
    h = size / 2
    cy = (c // 2) * h + rng.uniform(0.25, 0.75) * h
    cx = (c % 2) * h + rng.uniform(0.25, 0.75) * h
    s = rng.uniform(0.08, 0.14) * size
    img = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))
    dy, dx = rng.uniform(0, size, 2)
    return img + 0.35 * np.exp(-((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * (0.06 * size) ** 2))


@_task("sizes", ["xs", "s", "m", "l", "xl"])
def _size(rng, c, size):
    """A filled square; the class is its side (5 sizes)."""
    side = (0.15 + 0.14 * c) * size
    y0, x0 = rng.uniform(0, size - side, 2)
    yy, xx = _grid(size)
    m = (yy >= y0) & (yy <= y0 + side) & (xx >= x0) & (xx <= x0 + side)
    return m * rng.uniform(0.5, 1.0)


@_task("texture", ["sparse", "light", "medium", "dense", "solid"])
def _texture(rng, c, size):
    """Speckle density (5 levels)."""
    p = (0.06, 0.18, 0.32, 0.48, 0.66)[c] + rng.uniform(-0.03, 0.03)
    return (rng.random((size, size)) < p) * rng.uniform(0.6, 1.0)


# -- glyphs: many classes, one concept per class, several renditions ------------------------
# Each class is a fixed glyph (three strokes drawn from the class's own random stream, the
# same for every data seed and domain), so a θ0 pretrained on one rendition has seen the
# concepts that the continual tasks show in others: the micro analogue of ImageNet-21k's
# photos and ImageNet-R's renditions of the same classes.

GLYPH_DOMAINS = ("clean", "inverted", "outline", "texture", "blur")
GLYPH_RENDITIONS = ("inverted", "outline", "blur")  # "rendition": one of these per image


def _glyph_strokes(c: int) -> np.ndarray:
    """Class c's glyph: three segments (x0, y0, x1, y1) in [0.2, 0.8] of the image side."""
    return np.random.default_rng([0x676C79, c]).uniform(0.2, 0.8, (3, 4))


def _segments_distance(xx, yy, seg: np.ndarray) -> np.ndarray:
    d = np.full(xx.shape, np.inf, np.float32)
    for x0, y0, x1, y1 in seg:
        vx, vy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * vx + (yy - y0) * vy) / max(vx * vx + vy * vy, 1e-6), 0, 1)
        d = np.minimum(d, np.hypot(xx - x0 - t * vx, yy - y0 - t * vy))
    return d


def _glyph(rng, c: int, size: int, domain: str, renditions: tuple[str, ...] = GLYPH_RENDITIONS) -> np.ndarray:
    yy, xx = _grid(size)
    seg = _glyph_strokes(c) * size
    a, s = np.deg2rad(rng.uniform(-8, 8)), rng.uniform(0.9, 1.1)  # a random similarity, then jitter
    ctr = size / 2
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * s
    pts = seg.reshape(-1, 2) - ctr
    pts = pts @ rot.T + ctr + rng.uniform(-1.0, 1.0, 2) + rng.uniform(-0.3, 0.3, pts.shape)
    d = _segments_distance(xx, yy, pts.reshape(-1, 4))
    w = rng.uniform(0.3, 0.6)
    stroke = np.clip(1.0 - (d - w) / 0.6, 0, 1)
    if domain == "rendition":
        domain = renditions[rng.integers(len(renditions))]
    if domain == "clean":
        return stroke * rng.uniform(0.7, 1.0)
    if domain == "inverted":
        return 1.0 - stroke * rng.uniform(0.6, 0.9)
    if domain == "outline":
        return np.clip(np.clip(1.0 - (d - w - 1.0) / 0.7, 0, 1) - stroke, 0, 1) * rng.uniform(0.7, 1.0)
    if domain == "texture":
        f, ph = rng.uniform(0.8, 1.6), rng.uniform(0, 2 * np.pi)
        fill = 0.6 + 0.4 * np.sin(f * (xx + yy) + ph)
        return np.maximum(stroke * fill, (rng.random((size, size)) < 0.15) * 0.4)
    if domain == "blur":
        k = np.exp(-0.5 * (np.arange(-3, 4) / rng.uniform(0.6, 0.9)) ** 2)
        k /= k.sum()
        img = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 0, stroke)
        img = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, img)
        return 0.15 + img * rng.uniform(0.7, 0.9)
    raise CmbenchError(f"glyphs: unknown domain {domain!r}; known: {GLYPH_DOMAINS + ('rendition',)}")


def _glyph_sizes(params: dict) -> tuple[int, int, int]:
    """n_train, n_val, n_test are per class."""
    per = split_defaults(glyphs, params)
    k = len(params.get("classes") or range(param_value(glyphs, params, "n_classes")))
    return per[0] * k, per[1] * k, per[2] * k


@dataset("glyphs", MICRO_DATA_VERSION, _glyph_sizes)
def glyphs(
    task: str,
    data_seed: int,
    img_size: int,
    *,
    n_classes: int = 100,
    classes: list[int] | None = None,
    domain: str = "clean",
    renditions: list[str] | None = None,
    n_train: int = 60,
    n_val: int = 10,
    n_test: int = 30,
    noise: float = 0.05,
    colour: str | dict | None = None,
) -> TaskData:
    """``n_classes`` glyphs (class c: three fixed strokes) under a random similarity
    transform and stroke jitter, drawn in ``domain``: ``clean`` (bright strokes), one
    rendition (``inverted``, ``outline``, ``texture``, ``blur``) or ``rendition`` (one of
    ``renditions`` at random per image; default inverted, outline, blur). ``classes`` keeps a
    subset (a class-incremental split; labels local, class ids global);
    ``n_train``/``n_val``/``n_test`` are per class; ``colour``: see ``_paint``."""
    if domain not in GLYPH_DOMAINS + ("rendition",):
        raise CmbenchError(f"glyphs: unknown domain {domain!r}; known: {GLYPH_DOMAINS + ('rendition',)}")
    picks = tuple(renditions or GLYPH_RENDITIONS)
    if any(r not in GLYPH_DOMAINS for r in picks):
        raise CmbenchError(f"glyphs: renditions must be among {GLYPH_DOMAINS}, got {renditions}")
    keep = list(range(n_classes)) if classes is None else [int(c) for c in classes]
    if not keep or len(set(keep)) != len(keep) or any(not 0 <= c < n_classes for c in keep):
        raise CmbenchError(f"glyphs: classes must be distinct ids 0..{n_classes - 1}, got {classes}")
    splits: dict[str, Any] = {}  # train, val, test: Splits, passed to TaskData by keyword
    for s, per in zip(SPLITS, (n_train, n_val, n_test)):
        rng = _rng(data_seed, task, s)
        labels = rng.permutation(np.arange(per * len(keep)) % len(keep))
        imgs = np.stack([_glyph(rng, keep[int(c)], img_size, domain, picks) for c in labels])
        imgs = imgs + rng.normal(0.0, noise, imgs.shape)
        if colour is not None:
            imgs = _paint(imgs, colour, _rng(data_seed, task, s + "-colour"))
        splits[s] = _to_split(imgs, labels)
    return TaskData(task, [f"glyph{c}" for c in keep], **splits, class_ids=keep)
