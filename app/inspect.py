"""``tomoguide inspect``: what tomoguide reads from a file, as plain facts (a dict of JSON types).

The reader is chosen by the file's content where its first bytes say what it is (sqlite, IMOD model, XML,
STAR, PyTom marker table), else by its extension; each reader module has a ``describe(path) -> dict`` whose
``kind`` (and ``flavour`` / ``version`` where a format has several) name what the file really is. Errors are
the readers' :class:`~tomoguide.compute.io.errors.FormatError` (``FILE: FIELD: message``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tomoguide.compute.io.errors import FormatError, FormatWarning


_SQLITE_MAGIC = b"SQLite format 3\0"
_KNOWN = (".mdoc, .mrc/.mrcs/.st/.map, .tif/.eer, .star, .tlt/.rawtlt/.xf/.xtilt/.mod/.com/.edf/.defocus/.dose, "
          ".aln, Warp .xml, TOM .em, Scipion .sqlite, PyTom marker / CTFFIND / coordinate .txt")


def _sniff(path: Path) -> str | None:
    """The kind a file's first bytes announce, whatever its extension: ``sqlite``, ``imod_model``, ``xml``
    (a Warp file or other XML), ``star``, ``pytom_markers`` (PyTom's text marker header) or None."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if head.startswith(_SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(b"IMODV1."):
        return "imod_model"
    if head.startswith((b"\xef\xbb\xbf<", b"\xff\xfe<\x00", b"\xfe\xff\x00<", b"<?xml", b"<TiltSeries")):
        return "xml"
    text = head.decode("latin-1")
    if "#MarkerIndex" in text.replace(" ", "") and "PositionX" in text:
        return "pytom_markers"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), "")
    if first.startswith("data_"):
        return "star"
    return None


def _describer(path: Path) -> Callable[[Path], dict[str, Any]]:
    """The describer for a file: by its content where the first bytes say what it is (an sqlite database,
    an IMOD model, XML, a STAR file, a PyTom marker table), else by its extension."""
    name = path.name.lower()
    ext = path.suffix.lower()
    sniffed = _sniff(path)
    if sniffed == "sqlite" or ext in (".sqlite", ".db"):
        from tomoguide.compute.io import scipion

        def scipion_set(p: Path) -> dict[str, Any]:
            try:
                scipion.scipion_set_class(p)
            except FormatError as err:
                if "no Properties/Objects tables" not in err.message:
                    raise
                import sqlite3

                from tomoguide.compute.io import coords  # a flat coordinate table without Properties

                try:
                    return coords.describe(p)
                except (sqlite3.Error, UnicodeDecodeError) as exc:
                    raise FormatError(p, None, f"damaged sqlite database ({exc})") from exc
            return scipion.describe(p)

        return scipion_set
    if sniffed == "xml" or ext == ".xml":
        from tomoguide.compute.io import warp

        return warp.describe
    if sniffed == "imod_model":
        from tomoguide.compute.io import imod

        return imod.describe if ext == ".mod" else lambda p: {"kind": "mod", **_mod_facts(p)}
    if sniffed == "pytom_markers":
        from tomoguide.compute.io import pytom

        return pytom.describe
    if ext == ".mdoc":
        from tomoguide.compute.io import mdoc

        return mdoc.describe
    if ext in (".mrc", ".mrcs", ".st", ".ali", ".map", ".rec", ".preali"):
        from tomoguide.compute.io import mrc

        return mrc.describe
    if ext in (".tif", ".tiff", ".eer"):
        from tomoguide.compute.io import movies

        return movies.describe
    if ext == ".star" or sniffed == "star":
        from tomoguide.compute.io import star

        def star_facts(p: Path) -> dict[str, Any]:
            info = star.describe(p)
            version = info.get("facts", {}).get("relion_version")
            flavour = f"RELION {version} {info.get('kind')} STAR" if version else f"RELION {info.get('kind')} STAR"
            return {"kind": info.get("kind"), "flavour": flavour, **{k: v for k, v in info.items() if k != "kind"}}

        return star_facts
    if ext in (".tlt", ".rawtlt", ".xf", ".xtilt", ".mod", ".com", ".edf", ".prexf", ".prexg", ".xg", ".defocus",
               ".dose"):
        from tomoguide.compute.io import imod

        return imod.describe
    if ext == ".em":
        from tomoguide.compute.io import em, pytom

        return pytom.describe if "marker" in name else em.describe
    if ext == ".aln":
        from tomoguide.compute.io import aretomo

        return aretomo.describe
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
    raise FormatError(path, None, f"unknown file type {ext or '(no extension)'!r}; tomoguide reads {_KNOWN}")


def _mod_facts(path: Path) -> dict[str, Any]:
    from tomoguide.compute.io import imod

    m = imod.read_mod_points(path, strict=False)
    return {"n_points": int(m.xyz.shape[0]), "n_contours": m.n_contours, "n_objects": m.n_objects,
            "image_shape_xyz": m.image_shape_xyz, "pixel_size": m.pixel_size, "units": m.units}


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
