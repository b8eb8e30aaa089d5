"""Escaping for every output format: text read from result files is data, never markup.

Result files come from other people (contributed rows, a colleague's ``--results``); names
obey the suite files' name rule, but free text (hyperparameter values, error lines, a
paper's reference, a device's name) can hold anything. Each writer passes such text through
the function of its format, here, once.
"""

from __future__ import annotations

import html as _html
import json
import math
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _line(text: Any) -> str:
    """One line of text: control characters (newlines included) become spaces."""
    return _CONTROL.sub(" ", str(text))


# Markdown (GitHub's): characters that start markup anywhere in a table cell or a list item.
# `_` is markup only where it can open or close emphasis, i.e. not between two letters or
# digits (`weight_average` stays as it is).
_MD_ALWAYS = set("\\`*[]<>|~$#!")


def md(text: Any) -> str:
    s = _line(text)
    out = []
    for i, c in enumerate(s):
        if c in _MD_ALWAYS:
            out.append({"<": "&lt;", ">": "&gt;"}.get(c, "\\" + c))
        elif c == "&":
            out.append("&amp;")
        elif c == "_" and not (0 < i < len(s) - 1 and s[i - 1].isalnum() and s[i + 1].isalnum()):
            out.append("\\_")
        else:
            out.append(c)
    return "".join(out)


_LATEX = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "#": r"\#",
    "^": r"\textasciicircum{}",
    "_": r"\_",
    "%": r"\%",
    "~": r"\textasciitilde{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}


def latex(text: Any) -> str:
    """Every character LaTeX treats specially, as text (`\\input{…}` prints, never runs)."""
    return "".join(_LATEX.get(c, c) for c in _line(text))


def csv_text(text: Any) -> str:
    """A text cell for a spreadsheet: one that would start a formula (``=``, ``+``, ``-``,
    ``@``, tab, carriage return) is prefixed with ``'`` (OWASP's CSV injection advice).
    Numbers cmbench formats itself are written as they are."""
    s = str(text)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def html(text: Any) -> str:
    """Text for an HTML text node or a quoted attribute."""
    return _html.escape(str(text), quote=True)


def plot(text: Any) -> str:
    """Text for matplotlib: `$` would start mathtext (and a malformed formula raises)."""
    return _line(text).replace("$", r"\$")


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float as None (JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_in_html(obj: Any) -> str:
    """JSON for a ``<script type="application/json">`` element: no character of it can end
    the element or open a comment (``<``, ``>``, ``&`` as \\u escapes), line separators
    escaped, non-finite numbers as null."""
    text = json.dumps(finite(obj), sort_keys=True, ensure_ascii=False, allow_nan=False)
    for c, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(c, esc)
    return text
