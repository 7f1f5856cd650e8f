"""``tomoguide inspect``: what tomoguide reads from a file, as plain facts (a dict of JSON types).

The reader is chosen by the file's extension; each reader module has a ``describe(path) -> dict``. Errors are
the readers' :class:`~tomoguide.compute.io.errors.FormatError` (``FILE: FIELD: message``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tomoguide.compute.io.errors import FormatError, FormatWarning


def _describer(path: Path) -> Callable[[Path], dict[str, Any]]:
    name = path.name.lower()
    ext = path.suffix.lower()
    if ext == ".mdoc":
        from tomoguide.compute.io import mdoc

        return mdoc.describe
    if ext in (".mrc", ".mrcs", ".st", ".ali", ".map", ".rec", ".preali"):
        from tomoguide.compute.io import mrc

        return mrc.describe
    if ext in (".tif", ".tiff", ".eer"):
        from tomoguide.compute.io import movies

        return movies.describe
    if ext == ".star":
        from tomoguide.compute.io import star

        return star.describe
    if ext in (".tlt", ".rawtlt", ".xf", ".xtilt", ".mod", ".com", ".edf", ".prexf", ".prexg", ".xg"):
        from tomoguide.compute.io import imod

        return imod.describe
    if ext == ".aln":
        from tomoguide.compute.io import aretomo

        return aretomo.describe
    if ext in (".sqlite", ".db"):
        from tomoguide.compute.io import coords

        return coords.describe
    if ext in (".txt", ".csv", ".coords"):
        if name.endswith(".txt"):
            from tomoguide.compute.io import ctffind

            def ctf_or_coords(p: Path) -> dict[str, Any]:
                try:
                    return ctffind.describe(p)
                except FormatError:
                    from tomoguide.compute.io import coords

                    return coords.describe(p)

            return ctf_or_coords
        from tomoguide.compute.io import coords

        return coords.describe
    raise FormatError(path, None, f"unknown file type {ext or '(no extension)'!r}; tomoguide reads .mdoc, "
                      ".mrc/.mrcs/.st/.map, .tif, .star, .tlt/.rawtlt/.xf/.xtilt/.mod/.com/.edf, .aln, "
                      ".sqlite and coordinate/CTFFIND .txt files")


def describe_file(path: Path, *, strict: bool = True) -> dict[str, Any]:
    """Facts about one file, with ``file`` first.

    The protocol of the readers' ``describe`` functions: they read as much as they can (permissive mode) and
    report what they worked around as :class:`FormatWarning` (collected here under ``warnings``: e.g. an mdoc
    without ExposureDose, a trimmed .aln fixture whose RawSize disagrees with its rows); damage that makes the
    data itself unreliable (a truncated MRC) is listed under ``problems``. In strict mode (the default) the
    first problem is raised as a :class:`FormatError`; a file that cannot be read at all raises in both modes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(str(path))
    fn = _describer(path)
    kwargs: dict[str, Any] = {}
    if "strict" in inspect.signature(fn).parameters:
        kwargs["strict"] = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FormatWarning)
        facts = fn(path, **kwargs)
    problems = list(facts.get("problems") or [])
    if strict and problems:
        first = str(problems[0])
        if first.startswith(str(path)):
            first = first[len(str(path)):].lstrip(": ")
        raise FormatError(path, None, first)
    found = [str(w.message) for w in caught if issubclass(w.category, FormatWarning)]
    if found:
        facts = {**facts, "warnings": [*facts.get("warnings", []), *found]}
    return {"file": str(path), **facts}


def format_facts(facts: dict[str, Any]) -> str:
    """Human-readable block: the file name, then one ``key: value`` line per fact (nested dicts indented)."""
    lines = [str(facts.get("file", ""))]

    def emit(d: dict[str, Any], indent: str) -> None:
        for k, v in d.items():
            if k == "file" and indent == "  ":
                continue
            if isinstance(v, dict):
                lines.append(f"{indent}{k}:")
                emit(v, indent + "  ")
            elif isinstance(v, list) and len(v) > 12:
                shown = ", ".join(_fmt(x) for x in v[:6])
                lines.append(f"{indent}{k}: [{shown}, … {len(v)} values]")
            elif isinstance(v, list):
                lines.append(f"{indent}{k}: [{', '.join(_fmt(x) for x in v)}]")
            else:
                lines.append(f"{indent}{k}: {_fmt(v)}")

    emit(facts, "  ")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
