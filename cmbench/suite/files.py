"""Suite files: finding them by name, reading YAML safely, one-line errors naming file and field."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from .. import CmbenchError
from .base import FieldError, NAME
from .model import Suite


def _fmt_loc(loc: tuple) -> str:
    if len(loc) > 1 and loc[0] == "backbone" and loc[1] in ("tiny_vit", "open_clip", "timm"):
        loc = loc[:1] + loc[2:]  # the union's tag is not a field the user wrote

    def part(x) -> str:
        x = str(x)
        return x if x and x.isprintable() and "." not in x else repr(x)

    return ".".join(part(x) for x in loc) or "(top level)"


def _pydantic_message(err: ErrorDetails) -> tuple[str, str]:
    loc = _fmt_loc(err["loc"])
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, FieldError):
        return ctx_err.field, ctx_err.msg
    kind = err["type"]
    if kind == "extra_forbidden":
        return loc, "unknown key; remove it or check its spelling"
    if kind == "missing":
        return loc, "required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return loc, msg


def did_you_mean(name: str, known) -> str:
    """ "; did you mean 'x'?" for the closest of ``known``, or nothing."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def suite_dirs() -> list[Path]:
    """Where suites are found by name: ./suites, then the repository's suites/."""
    dirs = [Path.cwd() / "suites", Path(__file__).resolve().parents[2] / "suites"]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d.resolve() not in [x.resolve() for x in dirs[:i]]]


def resolve_suite(arg: str) -> Path:
    """A suite file from a path or a name (``micro-digits-merge`` → ``suites/micro-digits-merge.yaml``)."""
    p = Path(arg)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    for d in suite_dirs():
        if (d / f"{arg}.yaml").exists():
            return d / f"{arg}.yaml"
    return p


def suite_named(name: str, files: list[Path] | None = None) -> tuple[Path, "Suite"]:
    """The suite called ``name``: among ``files`` (suite files the user named), else
    ``suites/NAME.yaml`` in the suite folders. Never a path taken from elsewhere (a result
    file's ``suite`` field names a suite; it is not a path to load)."""
    for f in files or []:
        s = load_suite(f)
        if s.name == name:
            return Path(f), s
    if re.fullmatch(NAME, name):
        for d in suite_dirs():
            if (d / f"{name}.yaml").is_file():
                s = load_suite(d / f"{name}.yaml")
                if s.name == name:
                    return d / f"{name}.yaml", s
    raise CmbenchError(
        f"no suite named {name!r} in "
        + (", ".join(str(f) for f in files) + " or " if files else "")
        + "suites/; name its file with --suite FILE"
    )


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader: no tag constructs a Python object; a key given twice in one mapping is an
    error (YAML would keep the last silently); aliases are limited (an alias bomb would expand
    to billions of nodes when the suite is hashed: see ``_expanded_size``)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(obj, memo: dict | None = None) -> int:
    """Nodes ``obj`` has once its aliases are expanded, counted without expanding them."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = 1  # a cycle counts once
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    memo[id(obj)] = n = 1 + sum(_expanded_size(c, memo) for c in children)
    return n


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        import difflib

        names = sorted({f.stem for d in suite_dirs() for f in d.glob("*.yaml")})
        close = (
            difflib.get_close_matches(Path(path).stem, names, n=3, cutoff=0.4)
            or [n for n in names if Path(path).stem in n][:3]
        )
        hint = (  # by name: that works from any directory
            f"; did you mean {' or '.join(f'`cmbench run {c}`' for c in close)}?"
            if close
            else "; `cmbench list suites` lists them"
        )
        raise CmbenchError(f"{path}: suite file not found{hint}") from None
    except UnicodeDecodeError as e:
        raise CmbenchError(f"{path}: not UTF-8 text (byte {e.start}); save the suite as UTF-8") from None
    except OSError as e:
        raise CmbenchError(f"{path}: cannot read suite: {e.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise CmbenchError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CmbenchError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise CmbenchError(f"{path}: (top level): a suite is a mapping of keys (name, tasks, methods, ...)")
    if _expanded_size(raw) > 100_000:
        raise CmbenchError(f"{path}: invalid YAML: its aliases (*name) expand to more than 100000 values")
    if isinstance(raw.get("shipped"), str):  # relative to the suite file, wherever it is run from
        raw = {**raw, "shipped": str((path.parent / raw["shipped"]).resolve())}
    try:
        return Suite.model_validate(raw)
    except ValidationError as e:
        field, msg = _pydantic_message(e.errors()[0])
        raise CmbenchError(f"{path}: {field}: {msg}".replace("\n", "\\n")) from None
