"""Tests that attack (issue 15, item 9): a seeded fuzzer that mutates real inputs of the tiny demo and feeds them
to ``tomoguide inspect``, ``new``, ``status`` and the reading steps, in-process.

The inputs are those of a tiny project run through the steps (``tiny_project_root``: ROOT/data and ROOT/project),
plus a TIFF movie and a TIFF gain made from it and, when ``../shared/data`` is there, real RELION STAR files. Each
*case* is one mutated file (truncation, byte flips, deleted and duplicated lines, NaN/huge/negative/text values,
UTF-16, CRLF, and for MRC files mode, size, voxel-size, extended-header and map-identifier changes; for JSON
records structure-aware edits, the project file's manifest made consistent so that the record loader is reached)
in a private copy of the inputs (hard links for the large files that are never written), fed to every command that
reads it. A case fails on:

* ``traceback``: an exception escaping a command (or shown to the user as ``KeyError: ...``: an exception that
  a catch-all turned into text, or an "internal error" of ``inspect``);
* ``hang``: a command running past the per-case timeout (SIGALRM);
* ``bad_exit``: an exit status other than 0 or 2 (1 only for a step that failed while running);
* ``bad_message``: a refusal that is not one line naming the file and a field or line (``FILE: FIELD: problem``);
* ``silent_wrong``: exit 0 with a reading that is detectably wrong, the kinds issue 15 lists: an MRC voxel size
  that is negative, NaN, infinite or huge; an mdoc that lost a ``[ZValue = n]`` line, or an mdoc or STAR file cut
  short, read with fewer tilts or rows and no problem reported; a dose or tilt outside physical bounds (a total
  dose of −2,147,483,631 e⁻/Å²); a STAR row with fewer columns read as NaN; ``--json`` output that is not JSON.

``bench/fuzz.py --cases 5000`` runs the full campaign with the same engine and writes ``bench/results/fuzz.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import struct
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# ---------------------------------------------------------------------------------------------------------------
# physical bounds the oracles check a reading against (the readers enforce the same)
# ---------------------------------------------------------------------------------------------------------------

MAX_VOXEL_A = 1e5  # Å: larger than any pixel of a grid atlas
MAX_DOSE_PER_TILT = 1000.0  # e⁻/Å²
MAX_TILT_DEG = 90.0

# exception names that must never reach the user as text (a catch-all turned a bug into a message)
_LEAKED = re.compile(r"\b(KeyError|TypeError|IndexError|AttributeError|ZeroDivisionError|OverflowError|"
                     r"UnicodeDecodeError|UnicodeEncodeError|JSONDecodeError|ValidationError|RecursionError|"
                     r"AssertionError|NameError|UnboundLocalError|StopIteration|MemoryError|struct\.error|"
                     r"FloatingPointError|NotImplementedError|LinAlgError|ParserError|EmptyDataError|"
                     r"internal error)\b")


class CaseTimeout(BaseException):
    """Raised by SIGALRM inside a command that ran past its time (BaseException: no ``except Exception`` eats it)."""


# ---------------------------------------------------------------------------------------------------------------
# the seed: files to mutate and what reads them
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One file to mutate. ``rel`` is relative to the seed root; ``kind`` chooses the mutations and the oracles;
    ``readers`` are the commands fed with the mutant (see :func:`_commands`); ``step`` the step whose run folder
    holds the file (its manifest entry is made consistent), ``reader_step`` the step whose pre-flight reads it."""

    name: str
    rel: str
    kind: str
    readers: tuple[str, ...]
    step: str | None = None
    reader_step: str | None = None
    weight: float = 1.0


@dataclass
class Seed:
    root: Path
    targets: list[Target]
    baseline: dict[str, Any] = field(default_factory=dict)


def _run_dir(project: Path, step: str) -> str:
    raw = json.loads((project / "project.json").read_text())
    return raw["steps"][step]["run_dir"]


def prepare_seed(root: Path, shared: Path | None = None) -> Seed:
    """Add the extra inputs to ROOT (ROOT/data + ROOT/project of a tiny project run through the steps): a TIFF
    movie and a TIFF gain written by tomoguide's writers from the tiny movie and gain, and the real STAR files of
    ``shared`` (when given); return the targets."""
    from tomoguide.compute.io import movies

    root = Path(root)
    extra = root / "extra"
    extra.mkdir(exist_ok=True)
    data = root / "data"
    mdoc = next(iter(sorted(data.rglob("*.mdoc"))))
    movie = sorted(mdoc.parent.glob("*.mrc"))[0]
    gain = next(iter(sorted(data.glob("gain*"))), None)
    if not (extra / "movie.tif").exists():
        from tomoguide.compute.io import eer

        frames = movies.read_movie(movie)
        movies.write_movie_tiff(extra / "movie.tif", frames[:, :128, :160], compression="lzw")
        if gain is not None:
            movies.write_gain_tiff(extra / "gain.tif", movies.read_gain(gain)[:128, :160])
        counts = np.minimum(frames[:2, :64, :96].sum(axis=0), 16).astype(np.int64)
        eer.write_eer(extra / "movie.eer", eer.encode_counts(counts, 16, np.random.default_rng(1)), counts.shape)
    project = root / "project"
    rd = {s: _run_dir(project, s) for s in ("import_movies", "motion_ctf", "align", "reconstruct", "pick", "extract",
                                             "refine")}
    P = "project/"
    t = [
        Target("mdoc", str(mdoc.relative_to(root)), "mdoc", ("inspect", "inspect_json", "new_import"), weight=4),
        Target("movie", str(movie.relative_to(root)), "mrc", ("inspect", "inspect_json", "new_import", "mrc_direct"),
               weight=3),
        Target("tiff_movie", "extra/movie.tif", "tiff", ("inspect", "inspect_json", "tiff_direct"), weight=1.5),
        Target("project_json", "project/project.json", "json", ("status", "status_json", "preflight"),
               reader_step="xray_erase", weight=2),
        Target("rec_tilt_series", f"{P}{rd['import_movies']}/tilt_series.json", "json", ("preflight", "status"),
               step="import_movies", reader_step="motion_ctf", weight=1.5),
        Target("rec_series", f"{P}{rd['motion_ctf']}/series.json", "json", ("preflight", "status"),
               step="motion_ctf", reader_step="xray_erase", weight=1.5),
        Target("rec_tomograms", f"{P}{rd['reconstruct']}/series.json", "json", ("preflight",),
               step="reconstruct", reader_step="pick"),
        Target("rec_particles", f"{P}{rd['extract']}/particles.json", "json", ("preflight",),
               step="extract", reader_step="initial_model"),
        Target("rec_average", f"{P}{rd['refine']}/average.json", "json", ("preflight",),
               step="refine", reader_step="extract_fine"),
        Target("star_particles", f"{P}{rd['pick']}/particles.star", "star",
               ("inspect", "inspect_json", "star_direct", "preflight"), step="pick", reader_step="extract", weight=2),
        Target("star_ctf", f"{P}{rd['motion_ctf']}/TS_01_ctf.star", "star", ("inspect", "inspect_json", "star_direct"),
               step="motion_ctf", weight=1.5),
        Target("stack", f"{P}{rd['motion_ctf']}/TS_01.mrc", "mrc", ("inspect", "inspect_json", "mrc_direct",
                                                                   "preflight"),
               step="motion_ctf", reader_step="xray_erase", weight=1.5),
        Target("imod_xf", f"{P}{rd['align']}/TS_01.xf", "text", ("inspect", "inspect_json"), step="align",
               weight=0.5),
        Target("imod_tlt", f"{P}{rd['align']}/TS_01.tlt", "text", ("inspect", "inspect_json"), step="align",
               weight=0.5),
    ]
    t.append(Target("eer_movie", "extra/movie.eer", "tiff", ("inspect", "inspect_json", "tiff_direct"), weight=1))
    ref = project / _run_dir(project, "refine") / "map.mrc"
    if ref.is_file():
        if not (extra / "ref_map.mrc").exists():
            shutil.copy2(ref, extra / "ref_map.mrc")
        t.append(Target("ref_map", "extra/ref_map.mrc", "mrc", ("inspect", "mrc_direct", "pick_reference"),
                        reader_step="pick", weight=0.6))
    if gain is not None:
        t.append(Target("gain", str(gain.relative_to(root)), "mrc", ("inspect", "mrc_direct", "gain_direct",
                                                                      "new_import"), weight=1.5))
        t.append(Target("tiff_gain", "extra/gain.tif", "tiff", ("inspect", "gain_direct"), weight=1))
    if shared is not None and shared.is_dir():
        w = "relion5_warptools_particles/warptools_test_4-tomos_10-ptcls_box-32_angpix-12"
        for name, src in (("star_tomograms", f"{w}_tomograms.star"),
                          ("star_tilt_series", "relion/alisterburt__tomo_preprocessing/test_data/import/tilt_series/"
                                               "my_prefix_TS_01.star"),
                          ("star_relion_particles", f"{w}.star"),
                          ("star_relion_ctf", "ctf/alisterburt__tomo_preprocessing/test_data/ctffind/"
                                              "relion_ctf_estimation_output.star")):
            p = shared / src
            if p.is_file():
                dst = extra / f"{name}.star"
                if not dst.exists():
                    shutil.copy2(p, dst)
                t.append(Target(name, f"extra/{name}.star", "star", ("inspect", "inspect_json", "star_direct"),
                                weight=0.7))
        for name, src, kind in (("aln", "alignment/pypi__alnfile-0.1.1/global_and_local.aln", "text"),
                                ("ctffind_txt", "ctf/pypi__cryoet-alignment-0.2.0/test_8col_CTF.txt", "text"),
                                ("imod_edf", "imod/teamtomo__etomofiles/test_data/TS_001/TS_001.edf", "text"),
                                ("imod_mod", "imod/teamtomo__imodmodel/tests/test_data/multiple_objects_example.mod",
                                 "binary")):
            p = shared / src
            if p.is_file():
                dst = extra / f"{name}{p.suffix}"
                if not dst.exists():
                    shutil.copy2(p, dst)
                t.append(Target(name, f"extra/{dst.name}", kind, ("inspect", "inspect_json"), weight=0.5))
    return Seed(root, t)


# ---------------------------------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------------------------------

BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "1e30", "-1e30", "-2147483648", "2147483647", "-1", "0", "-0.5",
               "1e308", "abc", "", "12abc", "0x10", "--3", "1,5"]
_NUM_RE = re.compile(rb"(?<![A-Za-z_\d.])[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


@dataclass
class Mutant:
    data: bytes
    kind: str
    detail: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def m_truncate(data: bytes, rng: np.random.Generator) -> Mutant:
    cut = int(rng.integers(0, max(len(data), 1)))
    clean = cut == 0 or data[cut - 1:cut] == b"\n"
    return Mutant(data[:cut], "truncate", f"at byte {cut} of {len(data)}", {"cut": cut, "clean": clean})


def m_truncate_line(data: bytes, rng: np.random.Generator) -> Mutant:
    lines = _lines(data)
    k = int(rng.integers(0, max(len(lines), 1)))
    return Mutant(b"".join(lines[:k]), "truncate_line", f"after line {k} of {len(lines)}",
                  {"cut": len(b"".join(lines[:k])), "clean": True})


def m_flip(data: bytes, rng: np.random.Generator, lo: int = 0, hi: int | None = None) -> Mutant:
    b = bytearray(data)
    if not b:
        return Mutant(b"\x00", "flip", "empty file + one byte")
    hi = len(b) if hi is None else min(hi, len(b))
    n = int(rng.integers(1, 9))
    where = sorted(int(i) for i in rng.integers(lo, max(hi, lo + 1), n))
    for i in where:
        b[i] ^= int(rng.integers(1, 256))
    return Mutant(bytes(b), "flip", f"{n} bytes at {where[:4]}")


def m_delete_line(data: bytes, rng: np.random.Generator, pick: Callable[[bytes], bool] | None = None) -> Mutant:
    lines = _lines(data)
    idx = [i for i, ln in enumerate(lines) if ln.strip() and (pick is None or pick(ln))]
    if not idx:
        return m_flip(data, rng)
    i = int(rng.choice(idx))
    return Mutant(b"".join(lines[:i] + lines[i + 1:]), "delete_line", f"line {i + 1}: {lines[i][:40]!r}",
                  {"line": lines[i]})


def m_duplicate_line(data: bytes, rng: np.random.Generator) -> Mutant:
    lines = _lines(data)
    idx = [i for i, ln in enumerate(lines) if ln.strip()]
    if not idx:
        return m_flip(data, rng)
    i = int(rng.choice(idx))
    return Mutant(b"".join(lines[:i + 1] + [lines[i]] + lines[i + 1:]), "duplicate_line",
                  f"line {i + 1}: {lines[i][:40]!r}", {"line": lines[i]})


def m_value(data: bytes, rng: np.random.Generator) -> Mutant:
    nums = list(_NUM_RE.finditer(data))
    if not nums:
        return m_flip(data, rng)
    m = nums[int(rng.integers(0, len(nums)))]
    new = str(rng.choice(BAD_NUMBERS))
    if new == "-1" and rng.random() < 0.5:  # the negative of the value
        txt = m.group(0).decode()
        new = txt[1:] if txt.startswith("-") else "-" + txt
    out = data[:m.start()] + new.encode() + data[m.end():]
    line = data.count(b"\n", 0, m.start()) + 1
    return Mutant(out, "value", f"line {line}: {m.group(0)!r} -> {new!r}", {"line_no": line, "new": new})


def m_utf16(data: bytes, rng: np.random.Generator) -> Mutant:
    return Mutant(data.decode("latin-1").encode("utf-16"), "utf16", "text re-encoded as UTF-16 with BOM")


def m_crlf(data: bytes, rng: np.random.Generator) -> Mutant:
    if b"\r\n" in data:
        return Mutant(data.replace(b"\r\n", b"\n"), "crlf", "CRLF -> LF")
    return Mutant(data.replace(b"\n", b"\r\n"), "crlf", "LF -> CRLF")


def m_empty(data: bytes, rng: np.random.Generator) -> Mutant:
    return Mutant(b"", "empty", "empty file")


# --- mdoc ----------------------------------------------------------------------------------------------------

_SECTION_LINE = re.compile(rb"^\s*\[\s*(ZValue|FrameSet|MontSection)\s*=")


def m_mdoc_lost_section(data: bytes, rng: np.random.Generator) -> Mutant:
    """The issue's case: one ``[ZValue = n]`` line lost, its keys merged into the section before (or the globals)."""
    mt = m_delete_line(data, rng, pick=lambda ln: bool(_SECTION_LINE.match(ln)))
    mt.kind = "mdoc_lost_section"
    return mt


_MDOC_KEYS = [b"TiltAngle", b"ExposureDose", b"PixelSpacing", b"FrameDosesAndNumber", b"NumSubFrames",
              b"PriorRecordDose", b"Defocus", b"TargetDefocus", b"RotationAngle", b"Magnification", b"Binning",
              b"ExposureTime", b"Voltage", b"ImageSize", b"DateTime", b"Tilt axis angle"]


def m_mdoc_key_value(data: bytes, rng: np.random.Generator) -> Mutant:
    key = _MDOC_KEYS[int(rng.integers(0, len(_MDOC_KEYS)))]
    rx = re.compile(rb"(" + re.escape(key) + rb"\s*=\s*)([^\r\n\],]*)")
    hits = list(rx.finditer(data))
    if not hits:
        return m_value(data, rng)
    m = hits[int(rng.integers(0, len(hits)))]
    new = str(rng.choice(BAD_NUMBERS + ["1e6", "-2147483631", "95", "-91", "1001", "0.5 -2147483648"]))
    out = data[:m.start(2)] + new.encode() + data[m.end(2):]
    return Mutant(out, "mdoc_value", f"{key.decode()} {m.group(2)[:20]!r} -> {new!r}", {"key": key.decode(), "new": new})


# --- STAR ----------------------------------------------------------------------------------------------------


def _star_rows(data: bytes) -> list[int]:
    """Indices of data rows of loops (lines after a loop's labels, not labels, not blank, not data_/loop_)."""
    lines = _lines(data)
    out = []
    in_loop = False
    labels = False
    for i, ln in enumerate(lines):
        s = ln.strip()
        if s.startswith(b"loop_"):
            in_loop, labels = True, True
            continue
        if s.startswith(b"data_"):
            in_loop = False
            continue
        if not in_loop or not s or s.startswith(b"#"):
            continue
        if s.startswith(b"_"):
            if labels:
                continue
            in_loop = False
            continue
        labels = False
        out.append(i)
    return out


def m_star_drop_field(data: bytes, rng: np.random.Generator) -> Mutant:
    lines = _lines(data)
    rows = _star_rows(data)
    if not rows:
        return m_value(data, rng)
    i = int(rng.choice(rows))
    toks = lines[i].split()
    if len(toks) < 2:
        return m_value(data, rng)
    j = int(rng.integers(0, len(toks)))
    add = rng.random() < 0.3
    new = toks[:j] + ([b"1.0", toks[j]] if add else []) + toks[j + 1:]
    nl = b"\r\n" if lines[i].endswith(b"\r\n") else (b"\n" if lines[i].endswith(b"\n") else b"")
    lines[i] = b" ".join(new) + nl
    return Mutant(b"".join(lines), "star_columns", f"line {i + 1}: {'one value more' if add else 'one value less'}",
                  {"line_no": i + 1})


# --- MRC -----------------------------------------------------------------------------------------------------


def _put(b: bytearray, off: int, fmt: str, value: Any) -> None:
    b[off:off + struct.calcsize(fmt)] = struct.pack(fmt, value)


def m_mrc_mode(data: bytes, rng: np.random.Generator) -> Mutant:
    b = bytearray(data)
    v = int(rng.choice([-1, 3, 5, 7, 8, 9, 10, 11, 13, 16, 101, 1000, 0, 1, 2, 4, 6, 12]))
    _put(b, 12, "<i", v)
    return Mutant(bytes(b), "mrc_mode", f"mode -> {v}", {"mode": v})


def m_mrc_size(data: bytes, rng: np.random.Generator) -> Mutant:
    b = bytearray(data)
    which = int(rng.integers(0, 3))
    old = struct.unpack_from("<i", data, 4 * which)[0]
    v = int(rng.choice([0, -1, 1, old - 1, old + 1, 2 * old, max(old // 2, 1), 2 ** 31 - 1, 65535, 100000]))
    _put(b, 4 * which, "<i", v)
    return Mutant(bytes(b), "mrc_size", f"{'nx ny nz'.split()[which]} {old} -> {v}", {"axis": which, "value": v})


def m_mrc_voxel(data: bytes, rng: np.random.Generator) -> Mutant:
    b = bytearray(data)
    if rng.random() < 0.75:  # cella x, y or z (Å)
        which = int(rng.integers(0, 3))
        v = float(rng.choice([math.nan, math.inf, -math.inf, -1.0, -2.0, 0.0, 1e30, 1e-30, 1e6, -1e-3, 3e38]))
        _put(b, 40 + 4 * which, "<f", v)
        detail = f"cella.{'xyz'[which]} -> {v}"
    else:  # mx, my or mz (sampling)
        which = int(rng.integers(0, 3))
        iv = int(rng.choice([0, -1, -512, 2 ** 31 - 1]))
        _put(b, 28 + 4 * which, "<i", iv)
        v = float(iv)
        detail = f"m{'xyz'[which]} -> {iv}"
    return Mutant(bytes(b), "mrc_voxel", detail, {"voxel": v})


def m_mrc_ext(data: bytes, rng: np.random.Generator) -> Mutant:
    b = bytearray(data)
    v = int(rng.choice([-1, -1024, 1024, 128 * 1024, 2 ** 31 - 1, len(data), 7]))
    _put(b, 92, "<i", v)
    return Mutant(bytes(b), "mrc_nsymbt", f"nsymbt -> {v}")


def m_mrc_map(data: bytes, rng: np.random.Generator) -> Mutant:
    b = bytearray(data)
    v = [b"XXXX", b"\x00\x00\x00\x00", b"MAP\x00", b"PAM ", b"\xff\xff\xff\xff"][int(rng.integers(0, 5))]
    b[208:212] = v
    stamp = [b"\x44\x44\x00\x00", b"\x11\x11\x00\x00", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"][int(rng.integers(0, 4))]
    if rng.random() < 0.5:
        b[212:216] = stamp
    return Mutant(bytes(b), "mrc_map", f"map {v!r}")


def m_mrc_header_flip(data: bytes, rng: np.random.Generator) -> Mutant:
    mt = m_flip(data, rng, 0, 1024)
    mt.kind = "mrc_header_flip"
    return mt


def m_mrc_truncate_data(data: bytes, rng: np.random.Generator) -> Mutant:
    if len(data) <= 1024:
        return m_truncate(data, rng)
    cut = int(rng.integers(1024, len(data)))
    return Mutant(data[:cut], "mrc_truncate", f"at byte {cut} of {len(data)}", {"cut": cut})


def m_mrc_data_values(data: bytes, rng: np.random.Generator) -> Mutant:
    """NaN/inf/negative pixel values (float modes) or random bytes in the data block."""
    b = bytearray(data)
    mode = struct.unpack_from("<i", data, 12)[0] if len(data) >= 16 else -1
    n = int(rng.integers(1, 50))
    nsym = max(struct.unpack_from("<i", data, 92)[0], 0) if len(data) >= 96 else 0
    start = 1024 + nsym
    if len(b) <= start + 4:
        return m_flip(data, rng)
    for _ in range(n):
        i = int(rng.integers(start, len(b) - 4))
        if mode == 2:
            i -= (i - start) % 4
            _put(b, i, "<f", float(rng.choice([math.nan, math.inf, -math.inf, -1e30, 0.0, -1.0])))
        else:
            b[i] = int(rng.integers(0, 256))
    return Mutant(bytes(b), "mrc_data", f"{n} values")


# --- JSON (structure-aware) ------------------------------------------------------------------------------------

_JSON_BAD: list[Any] = [math.nan, math.inf, -math.inf, 1e308, -1.0, -2147483648, 10 ** 30, 0, "", "text", None, [],
                        {}, True, "../../elsewhere", "/etc/passwd", "x" * 300, 1.5]


def _json_paths(obj: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _json_paths(v, path + (i,))
    return out


def _json_get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def m_json(data: bytes, rng: np.random.Generator) -> Mutant:
    try:
        obj = json.loads(data)
    except ValueError:
        return m_flip(data, rng)
    paths = [p for p in _json_paths(obj) if p]
    if not paths:
        return m_flip(data, rng)
    p = paths[int(rng.integers(0, len(paths)))]
    parent = _json_get(obj, p[:-1])
    op = str(rng.choice(["value", "value", "value", "delete", "duplicate", "type"]))
    if op == "value":
        parent[p[-1]] = _JSON_BAD[int(rng.integers(0, len(_JSON_BAD)))]
    elif op == "delete":
        del parent[p[-1]]
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(p[-1], parent[p[-1]])
    elif op == "duplicate":
        parent[p[-1]] = [parent[p[-1]], parent[p[-1]]]
    else:
        parent[p[-1]] = "not what it should be" if not isinstance(parent[p[-1]], str) else 12345
    where = ".".join(str(x) for x in p)
    return Mutant(json.dumps(obj, indent=1).encode(), f"json_{op}", where)


# --- menus per kind --------------------------------------------------------------------------------------------

Mutator = Callable[[bytes, np.random.Generator], Mutant]
GENERIC: list[tuple[Mutator, float]] = [(m_truncate, 3), (m_truncate_line, 1), (m_flip, 2), (m_delete_line, 2),
                                        (m_duplicate_line, 1.5), (m_value, 3), (m_utf16, 0.4), (m_crlf, 0.6),
                                        (m_empty, 0.2)]
MENUS: dict[str, list[tuple[Mutator, float]]] = {
    "mdoc": GENERIC + [(m_mdoc_lost_section, 3), (m_mdoc_key_value, 4)],
    "star": GENERIC + [(m_star_drop_field, 2.5)],
    "json": [(m_json, 8), (m_truncate, 2), (m_flip, 1), (m_delete_line, 1), (m_duplicate_line, 0.5),
             (m_utf16, 0.3), (m_crlf, 0.3), (m_empty, 0.2)],
    "text": GENERIC,
    "mrc": [(m_mrc_mode, 2), (m_mrc_size, 2.5), (m_mrc_voxel, 3), (m_mrc_ext, 1), (m_mrc_map, 1),
            (m_mrc_header_flip, 2), (m_mrc_truncate_data, 2), (m_mrc_data_values, 1), (m_truncate, 0.5),
            (m_empty, 0.1)],
    "tiff": [(m_truncate, 3), (lambda d, r: m_flip(d, r, 0, 512), 3), (m_flip, 2), (m_empty, 0.2)],
    "binary": [(m_truncate, 3), (m_flip, 3), (m_empty, 0.2)],
}


def mutate(kind: str, data: bytes, rng: np.random.Generator) -> Mutant:
    menu = MENUS[kind]
    w = np.array([x[1] for x in menu], float)
    fn = menu[int(rng.choice(len(menu), p=w / w.sum()))][0]
    return fn(data, rng)


# ---------------------------------------------------------------------------------------------------------------
# running a case
# ---------------------------------------------------------------------------------------------------------------

_COPY_SUFFIXES = {".json", ".star", ".mdoc", ".bak", ".txt", ".xf", ".tlt", ".log", ".lock"}


def make_sandbox(seed_root: Path, dst: Path, parts: tuple[str, ...]) -> None:
    """A private copy of ``parts`` of the seed (``data``, ``project``, ``extra``): small text files copied, large
    binary files hard-linked (never written in place: a mutated file is unlinked first)."""
    for part in parts:
        src = seed_root / part
        for dirpath, dirnames, filenames in os.walk(src):
            rel = Path(dirpath).relative_to(seed_root)
            (dst / rel).mkdir(parents=True, exist_ok=True)
            for f in filenames:
                s = Path(dirpath) / f
                d = dst / rel / f
                if s.suffix.lower() in _COPY_SUFFIXES or s.stat().st_size < 8192:
                    shutil.copy2(s, d)
                else:
                    os.link(s, d)


def _write_mutant(path: Path, data: bytes) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.write_bytes(data)


def _consistent_manifest(project: Path, step: str, path: Path) -> None:
    """Make the project file's manifest agree with a tampered file of the step's run (an attacker who edits both),
    so that the reader's own checks are what must refuse it."""
    from tomoguide.integrity import content_digest, is_record_file

    pj = project / "project.json"
    raw = json.loads(pj.read_text())
    st = raw["steps"][step]
    rel = path.relative_to(project / st["run_dir"]).as_posix()
    size = path.stat().st_size
    st.setdefault("manifest", {})[rel] = [size, content_digest(path)] if is_record_file(rel, size) else [size]
    pj.write_text(json.dumps(raw, indent=1))


@dataclass
class Outcome:
    command: str
    rc: int | None
    out: str = ""
    err: str = ""
    exc: str | None = None
    seconds: float = 0.0
    facts: Any = None


def _alarm(seconds: float) -> Any:
    def handler(signum: int, frame: Any) -> None:
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, handler)
    prev = signal.setitimer(signal.ITIMER_REAL, seconds)
    return old, prev, time.monotonic()


def _unalarm(state: Any) -> None:
    old, prev, t0 = state
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
    if prev and prev[0] > 0:  # give back an outer timer (pytest-timeout) what is left of it
        signal.setitimer(signal.ITIMER_REAL, max(prev[0] - (time.monotonic() - t0), 0.001))


def _call(command: str, fn: Callable[[], Any], timeout_s: float) -> Outcome:
    """Run ``fn`` (returns an exit status or (status, facts)) with stdout/stderr captured and a timeout."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    res = Outcome(command, None)
    state = _alarm(timeout_s)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            r = fn()
        if isinstance(r, tuple):
            res.rc, res.facts = r
        else:
            res.rc = int(r) if r is not None else 0
    except CaseTimeout:
        res.exc = "hang"
    except SystemExit as exc:  # argparse
        res.rc = int(exc.code) if isinstance(exc.code, int) else 2
    except BaseException as exc:  # noqa: BLE001 - a traceback is what the fuzzer looks for
        res.exc = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
    finally:
        _unalarm(state)
    res.out, res.err, res.seconds = out.getvalue(), err.getvalue(), time.perf_counter() - t0
    return res


def _direct(fn: Callable[[], Any]) -> Callable[[], Any]:
    """A reader called directly: a FormatError is a refusal (exit 2, its text as the error line)."""
    from tomoguide.compute.io.errors import FormatError

    def run() -> Any:
        try:
            facts = fn()
        except FormatError as exc:
            print(f"tomoguide: error: {exc}", file=__import__("sys").stderr)
            return 2, None
        except FileNotFoundError as exc:
            print(f"tomoguide: error: {exc}", file=__import__("sys").stderr)
            return 2, None
        return 0, facts

    return run


def _preflight(project: Path, step: str) -> Callable[[], Any]:
    """What ``tomoguide run PROJECT --only STEP`` does before running: open, check, refuse in one line."""
    import sys

    from tomoguide.project import Project, ProjectError
    from tomoguide.runner import RunRefused, StepRun

    def run() -> int:
        try:
            proj = Project.open(project)
        except ProjectError as exc:
            print(f"tomoguide: error: {exc}", file=sys.stderr)
            return 2
        try:
            StepRun(proj, step).preflight()
        except RunRefused as exc:
            print(f"tomoguide: error: {step} cannot run: " + "; ".join(i.message for i in exc.issues),
                  file=sys.stderr)
            return 2
        finally:
            proj.close()
        return 0

    return run


def _commands(target: Target, box: Path, f: Path) -> list[tuple[str, Callable[[], Any]]]:
    """The commands that read the mutated file ``f`` in the sandbox ``box``."""
    from tomoguide.cli import main

    cmds: list[tuple[str, Callable[[], Any]]] = []
    for r in target.readers:
        if r == "inspect":
            cmds.append(("inspect", lambda: main(["inspect", str(f)])))
        elif r == "inspect_json":
            cmds.append(("inspect --json", lambda: main(["inspect", "--json", "--permissive", str(f)])))
        elif r == "status":
            cmds.append(("status", lambda: main(["status", str(box / "project")])))
        elif r == "status_json":
            cmds.append(("status --json", lambda: main(["status", "--json", str(box / "project")])))
        elif r == "preflight":
            cmds.append((f"preflight {target.reader_step}", _preflight(box / "project", str(target.reader_step))))
        elif r == "new_import":
            newp = box / "newproj"
            cmds.append(("new", lambda: main(["new", str(newp), "--movies", str(box / "data")])))
            cmds.append(("run --only import_movies", lambda: _import_and_record(newp)))
            cmds.append(("preflight motion_ctf", lambda: _if_project(newp, "motion_ctf")))
        elif r == "mrc_direct":
            from tomoguide.compute.io import mrc

            cmds.append(("mrc.read_header", _direct(lambda: mrc.read_header(f))))
            cmds.append(("mrc.read_mrc", _direct(lambda: mrc.read_mrc(f)[1])))
        elif r == "tiff_direct":
            from tomoguide.compute.io import movies

            cmds.append(("movies.read_movie", _direct(lambda: movies.read_movie(f).shape)))
            cmds.append(("movies.read_movie_sum", _direct(lambda: movies.read_movie_sum(f).shape)))
        elif r == "gain_direct":
            from tomoguide.compute.io import movies

            cmds.append(("movies.read_gain", _direct(lambda: movies.read_gain(f).shape)))
        elif r == "pick_reference":
            sets = ["--set", "pick.template=reference", "--set", f"pick.reference_map={f}"]
            cmds.append(("run --only pick (reference map)",
                         lambda: main(["run", str(box / "project"), "--only", "pick", *sets])))
        elif r == "star_direct":
            cmds.append(("star reader", _direct(lambda: _typed_star(f, target.name))))
    return cmds


def _typed_star(f: Path, name: str) -> Any:
    from tomoguide.compute.io import star

    if name in ("star_particles", "star_relion_particles"):
        return len(star.read_particles_star(f).particles)
    if name in ("star_ctf", "star_relion_ctf"):
        return len(star.read_ctf_star(f))
    if name == "star_tomograms":
        return len(star.read_tomograms_star(f).tomograms)
    if name == "star_tilt_series":
        return len(star.read_tilt_series_star(f))
    return sum(len(b) if hasattr(b, "columns") else 1 for b in star.read_star(f).values())


def _if_project(newp: Path, step: str) -> Any:
    if not (newp / "project.json").exists():
        return 0
    return _preflight(newp, step)()


def _import_and_record(newp: Path) -> Any:
    """``run --only import_movies`` on the new project; facts: the imported views (tilt, dose, prior dose, pixel)."""
    from tomoguide.cli import main

    if not (newp / "project.json").exists():
        return 0
    rc = main(["run", str(newp), "--only", "import_movies"])
    facts = None
    if rc == 0:
        raw = json.loads((newp / "project.json").read_text())
        rec = newp / raw["steps"]["import_movies"]["outputs"]["tilt_series"]
        facts = json.loads(rec.read_text())
    return rc, facts


# ---------------------------------------------------------------------------------------------------------------
# oracles
# ---------------------------------------------------------------------------------------------------------------


_WORKFLOW = re.compile(r"cannot run: run “[^”]+” first \(it is (stale|pending|failed)\b")

#: commands run only when the command before them exited 0 (the chain new -> import -> motion_ctf pre-flight)
GATED = ("run --only import_movies", "preflight motion_ctf")


def _error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("tomoguide: error:") or
            re.match(r"^tomoguide: \w+ failed:", ln)]


_WHOLE_FILE = re.compile(r"^(empty|no such file|missing|unreadable|not (a|an|valid|UTF|readable|JSON)|"
                         r"file has \d+ bytes|unknown file type|no data_ block|a project already|it is not|"
                         r"changed on disk|modified on disk)",
                         re.IGNORECASE)


def names_file_and_field(line: str, names: list[str]) -> bool:
    """One error line naming one of ``names`` (a path or a file name) followed by ``: FIELD: problem`` (or a
    whole-file problem: empty, not JSON, no such file ...)."""
    for name in names:
        i = line.find(name)
        while i >= 0:
            rest = line[i + len(name):]
            if re.match(r"^[^\s:;,]*: [^;]{1,160}?: \S", rest) or re.match(r"^[^\s:;,]*: ", rest) and \
                    _WHOLE_FILE.match(rest.split(": ", 1)[1]):
                return True
            i = line.find(name, i + 1)
    return False


def _json_strict(text: str) -> bool:
    def bad(x: str) -> Any:
        raise ValueError(x)

    try:
        json.loads(text, parse_constant=bad)
    except ValueError:
        return False
    return True


def _bad_number(v: Any, lo: float, hi: float, *, allow_none: bool = True, allow_zero: bool = True) -> bool:
    if v is None:
        return not allow_none
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return True
    if not math.isfinite(v):
        return True
    if v == 0 and allow_zero:
        return False
    return not (lo <= v <= hi)


def silent_wrong(target: Target, mt: Mutant, oc: Outcome, seed: Seed, f: Path) -> str | None:
    """Why a command that exited 0 gave a detectably wrong reading (None when it did not)."""
    base = seed.baseline.get(target.name, {})
    cmd = oc.command
    if cmd.startswith(("inspect", "status")) and "--json" in cmd and not _json_strict(oc.out):
        return "--json printed invalid JSON (bare NaN/Infinity?)"
    facts: Any = None
    if cmd.startswith("inspect"):
        try:
            facts = json.loads(oc.out) if "--json" in cmd else None
        except ValueError:
            facts = None
    if target.kind == "mrc":
        if cmd in ("mrc.read_header", "mrc.read_mrc") and oc.facts is not None:
            info = oc.facts
            for v in info.voxel_size_A:
                if _bad_number(v, 1e-6, MAX_VOXEL_A):
                    return f"voxel size {info.voxel_size_A} accepted"
            if info.file_size < info.data_offset + info.data_nbytes and not info.truncated:
                return "data block shorter than the header says, not flagged"
            if info.file_size > info.data_offset + info.data_nbytes:
                return "data block longer than the header says (sheared rows), not flagged"
        if facts is not None and facts.get("voxel_size_A") is not None:
            for v in facts["voxel_size_A"]:
                if _bad_number(v, 1e-6, MAX_VOXEL_A):
                    return f"inspect shows voxel size {facts['voxel_size_A']}"
        if cmd == "inspect" and mt.kind == "mrc_voxel":
            m = re.search(r"voxel_size_A: \[([^\]]*)\]", oc.out)
            if m and any(x.strip() not in ("0", "0.0") and _bad_number(_f(x), 1e-6, MAX_VOXEL_A)
                         for x in m.group(1).split(",")):
                return f"inspect shows voxel size [{m.group(1)}]"
    if target.kind == "mdoc":
        # a file cut exactly at the end of a section is a complete, shorter mdoc: only the movies left over tell
        fewer_ok = mt.kind in ("truncate", "truncate_line") and _cut_at_section_end(mt.data, f.parent, seed, target)
        n0 = base.get("n_tilts")
        if cmd == "inspect --json" and facts:
            told = bool(facts.get("problems") or facts.get("warnings") or
                        any("not in the mdoc" in n for n in facts.get("notes", [])))
            if n0 is not None and facts.get("n_tilts", n0) < n0 and not told and not fewer_ok:
                return f"{facts.get('n_tilts')} tilts read instead of {n0}, no problem listed"
        if facts and cmd == "inspect --json":
            for k, lo, hi in (("dose_per_tilt_e_A2", 0, MAX_DOSE_PER_TILT), ("pixel_size_A", 1e-6, MAX_VOXEL_A)):
                if facts.get(k) is not None and _bad_number(facts[k], lo, hi, allow_zero=k != "pixel_size_A"):
                    if not facts.get("problems"):
                        return f"{k} = {facts[k]} accepted with no problem listed"
            tot = facts.get("total_dose_e_A2")
            if tot is not None and (not math.isfinite(tot) or tot < 0) and not facts.get("problems"):
                return f"total dose {tot} accepted with no problem listed"
            rng_ = facts.get("tilt_range_deg") or []
            if any(abs(t) > MAX_TILT_DEG for t in rng_) and not facts.get("problems"):
                return f"tilt range {rng_} accepted with no problem listed"
        if cmd == "run --only import_movies" and oc.facts:
            views = [v for s in oc.facts.get("series", []) for v in s.get("tilts", [])]
            n = len(views)
            warned = "warning" in oc.err.lower()
            if n0 is not None and n < n0 and not fewer_ok and not warned:
                return f"import gave {n} views instead of {n0}, no warning"
            for v in views:
                for k, lo, hi in (("tilt_deg", -MAX_TILT_DEG, MAX_TILT_DEG),
                                  ("dose_e_A2", 0, MAX_DOSE_PER_TILT),
                                  ("prior_dose_e_A2", 0, 1e5)):
                    if k in v and _bad_number(v[k], lo, hi):
                        return f"import recorded {k} = {v[k]}"
    if target.kind == "star" and oc.rc == 0 and cmd in ("inspect", "star reader"):
        if mt.kind in ("truncate", "truncate_line") and not mt.meta.get("clean"):
            return "a STAR file cut inside a line read with no problem"
        if mt.kind == "star_columns":
            return "a STAR row with a value missing or added read with no problem"
    return None


def _cut_at_section_end(data: bytes, folder: Path, seed: Seed, target: Target) -> bool:
    """Whether a truncated mdoc ends after a complete section (every key of the original's same section)."""
    orig = (seed.root / target.rel).read_bytes()
    if not data or not data.endswith(b"\n"):
        return False

    def last_section(b: bytes) -> tuple[bytes | None, int]:
        head, n = None, 0
        for ln in b.splitlines():
            if _SECTION_LINE.match(ln):
                head, n = ln.strip(), 0
            elif head is not None and b"=" in ln:
                n += 1
        return head, n

    head, n = last_section(data)
    if head is None:
        return False
    rest = orig[len(data):]
    m = re.search(rb"^\s*\[\s*(ZValue|FrameSet|MontSection)\s*=", rest, re.M)
    whole = orig[: len(data) + (m.start() if m else len(rest))]
    return last_section(whole) == (head, n)


def _f(x: str) -> float:
    try:
        return float(x)
    except ValueError:
        return math.nan


@dataclass
class CaseResult:
    target: str
    mutation: str
    detail: str
    verdict: str  # ok | refused | traceback | hang | bad_exit | bad_message | silent_wrong
    command: str = ""
    why: str = ""
    seconds: float = 0.0


def judge(target: Target, mt: Mutant, oc: Outcome, seed: Seed, f: Path, names: list[str]) -> tuple[str, str]:
    if oc.exc == "hang":
        return "hang", "ran past the timeout"
    if oc.exc:
        return "traceback", oc.exc.strip().splitlines()[-1][:300]
    text = oc.out + oc.err
    leaked = _LEAKED.search(oc.err) or (_LEAKED.search(oc.out) if oc.command == "new" else None)
    if leaked and "Traceback" not in mt.detail:
        line = next((ln for ln in text.splitlines() if _LEAKED.search(ln)), "")
        return "traceback", f"exception shown as text: {line[:300]}"
    if oc.rc == 0:
        why = silent_wrong(target, mt, oc, seed, f)
        return ("silent_wrong", why) if why else ("ok", "")
    allowed = (2,) if not oc.command.startswith("run") else (1, 2)
    if oc.rc not in allowed:
        return "bad_exit", f"exit {oc.rc}: {text.strip()[-300:]}"
    lines = _error_lines(oc.err)
    if len(lines) != 1:
        return "bad_message", f"{len(lines)} error lines: {oc.err.strip()[:300]!r}"
    if not names_file_and_field(lines[0], names):
        if target.name == "project_json" and _WORKFLOW.search(lines[0]):
            # a project file edited into a consistent, other state (a parameter, a data path, a manifest entry
            # changed): the answer is the workflow's, "run X first (it is stale: why)", not a reading error
            return "refused_workflow", lines[0][:300]
        return "bad_message", lines[0][:400]
    return "refused", lines[0][:300]


def run_case(seed: Seed, target: Target, rng: np.random.Generator, work: Path, *,
             timeout_s: float = 20.0, mutant: Mutant | None = None) -> list[CaseResult]:
    """One mutant of ``target`` in a fresh sandbox under ``work``, fed to every command that reads it."""
    box = work / "box"
    if box.exists():
        shutil.rmtree(box)
    parts = tuple(p for p in ("data", "project", "extra") if
                  target.rel.startswith(p + "/") or (p == "data" and "new_import" in target.readers) or
                  (p == "project" and ({"preflight", "status", "status_json", "pick_reference"} &
                                       set(target.readers))))
    make_sandbox(seed.root, box, parts)
    f = box / target.rel
    original = (seed.root / target.rel).read_bytes()
    mt = mutant or mutate(target.kind, original, rng)
    _write_mutant(f, mt.data)
    if target.step and target.rel.startswith("project/") and rng.random() < 0.85:
        _consistent_manifest(box / "project", target.step, f)
    names = [str(f), f.name]
    out = []
    prev_rc: int | None = 0
    for cmd, fn in _commands(target, box, f):
        if cmd in GATED and prev_rc != 0:
            continue  # a later step of a chain whose earlier step refused: it would only say "run X first"
        oc = _call(cmd, fn, timeout_s)
        prev_rc = oc.rc
        verdict, why = judge(target, mt, oc, seed, f, names)
        out.append(CaseResult(target.name, mt.kind, mt.detail, verdict, cmd, why, oc.seconds))
        if verdict == "hang":
            break
    return out


def baseline(seed: Seed, work: Path, timeout_s: float = 60.0) -> dict[str, list[CaseResult]]:
    """Every target unmutated: every command must succeed (exit 0); records what a correct reading gives."""
    out = {}
    for t in seed.targets:
        data = (seed.root / t.rel).read_bytes()
        res = run_case(seed, t, np.random.default_rng(0), work, timeout_s=timeout_s,
                       mutant=Mutant(data, "none", "unmutated"))
        out[t.name] = res
        if t.kind == "mdoc":
            from tomoguide.compute.io import mdoc

            seed.baseline[t.name] = {"n_tilts": len(mdoc.read_mdoc(seed.root / t.rel).sections)}
    return out


def campaign(seed: Seed, n_cases: int, *, seed_value: int = 15, work: Path, timeout_s: float = 20.0,
             on_case: Callable[[int, list[CaseResult]], None] | None = None) -> list[CaseResult]:
    """``n_cases`` mutants, targets drawn by weight (reproducible from ``seed_value``)."""
    rng = np.random.default_rng(seed_value)
    w = np.array([t.weight for t in seed.targets], float)
    results: list[CaseResult] = []
    for i in range(n_cases):
        t = seed.targets[int(rng.choice(len(seed.targets), p=w / w.sum()))]
        case_rng = np.random.default_rng([seed_value, i])
        res = run_case(seed, t, case_rng, work, timeout_s=timeout_s)
        for r in res:
            r.detail = f"case {i}: {r.detail}"
        results.extend(res)
        if on_case:
            on_case(i, res)
    return results


FAILURES = ("traceback", "hang", "bad_exit", "bad_message", "silent_wrong")


def summarise(results: list[CaseResult], n_cases: int) -> dict[str, Any]:
    """Counts per verdict, per target and per mutation kind (cases: the worst verdict of a case's commands)."""
    rank = {v: i for i, v in enumerate(("ok", "refused", "refused_workflow") + FAILURES)}
    per_case: dict[str, CaseResult] = {}
    for r in results:
        key = r.detail.split(":", 1)[0]
        if key not in per_case or rank[r.verdict] > rank[per_case[key].verdict]:
            per_case[key] = r
    by_target: dict[str, Counter[str]] = defaultdict(Counter)
    by_mut: dict[str, Counter[str]] = defaultdict(Counter)
    for r in per_case.values():
        by_target[r.target][r.verdict] += 1
        by_mut[r.mutation][r.verdict] += 1
    commands = Counter(r.verdict for r in results)
    return {
        "cases": n_cases,
        "commands_run": len(results),
        "cases_by_verdict": dict(Counter(r.verdict for r in per_case.values())),
        "commands_by_verdict": dict(commands),
        "by_target": {k: dict(v) for k, v in sorted(by_target.items())},
        "by_mutation": {k: dict(v) for k, v in sorted(by_mut.items())},
        "failure_kinds": _failure_kinds(results),
        "workflow_refusals": sorted({r.why[:160] for r in results if r.verdict == "refused_workflow"})[:20],
        "failures": [r.__dict__ for r in results if r.verdict in FAILURES][:200],
    }


def _failure_kinds(results: list[CaseResult]) -> list[dict[str, Any]]:
    """Failures grouped by target, command, verdict and message shape (paths and numbers blanked)."""
    groups: dict[tuple[str, str, str, str], list[CaseResult]] = defaultdict(list)
    for r in results:
        if r.verdict in FAILURES:
            shape = re.sub(r"/\S+/", "…/", r.why)
            shape = re.sub(r"[-+]?\d[\d.e+-]*", "N", shape)[:140]
            groups[(r.target, r.command, r.verdict, shape)].append(r)
    out = []
    for (target, command, verdict, shape), rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        out.append({"target": target, "command": command, "verdict": verdict, "count": len(rs), "message": shape,
                    "example": f"{rs[0].detail} ({rs[0].mutation})"})
    return out


# ---------------------------------------------------------------------------------------------------------------
# the tests (CI: a few hundred cases)
# ---------------------------------------------------------------------------------------------------------------

CI_CASES = int(os.environ.get("TOMOGUIDE_FUZZ_CASES", "250"))

#: Defects the fuzzer finds outside the readers (files other parts of the project own; reported to them). A
#: failure matching one is listed, not counted against the readers, by the campaign test; each is replayed by
#: ``test_known_defect_elsewhere`` (xfail until its owner fixes it; it then passes).
KNOWN_ELSEWHERE: dict[str, tuple[str, str]] = {
    "pick_voxel_zero": (r"pick failed: ZeroDivisionError",
                        "app/steps/pick.py: a reference map whose voxel size is not recorded (0) is divided by"),
    "pick_map_shape": (r"pick failed: (reference map must be a cube|reference_template only downsamples)",
                       "app/steps/pick.py: a reference map of the wrong shape or voxel size: the message names "
                       "neither the map nor the field"),
    "pick_map_values": (r"pick failed: No particle picked: .*no peak",
                        "app/steps/pick.py: a reference map holding NaN/inf ends as 'no peak' instead of naming the "
                        "map"),
    "import_single_section": (r"import_movies cannot run: no tilt series among the \d+ mdoc",
                              "app/steps/import_movies.py: an mdoc cut inside its first section (one image) is "
                              "refused without naming the mdoc or the reason"),
    "record_type_leak": (r"(series|tilt_series)\.json: TypeError",
                         "app/steps/records.py / app/geometry.py: a record value of the wrong type (a dict for a "
                         "number) reaches float(): the message is Python's"),
    "record_info_unchecked": (r"(UFuncTypeError|the CTF window \(\d+ px\) is larger than the images|"
                              r"not enough (memory|disk space))",
                              "app/steps/records.py (SeriesEntry.info, the import record's frame_shape_px): sizes "
                              "read from a record are not checked; a step's check fails on them without naming the "
                              "record"),
}


def _known(r: CaseResult) -> str | None:
    for key, (rx, _) in KNOWN_ELSEWHERE.items():
        if re.search(rx, r.why):
            return key
    return None


@pytest.fixture(scope="module")
def fuzz_seed(tiny_project_root: Path, tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Seed:
    """The tiny project's inputs (a private copy) with the extra files, and the baseline readings."""
    root = tmp_path_factory.mktemp("fuzz_seed")
    for part in ("data", "project"):
        shutil.copytree(tiny_project_root / part, root / part, symlinks=True)
    seed = prepare_seed(root, shared_data_dir)
    res = baseline(seed, tmp_path_factory.mktemp("fuzz_baseline"))
    seed.baseline["_results"] = res
    return seed


def test_unmutated_inputs_read_cleanly(fuzz_seed: Seed) -> None:
    """The oracle's baseline: every command reads every unmutated input with exit 0 and a correct reading."""
    res = fuzz_seed.baseline["_results"]
    bad = [(k, r.command, r.verdict, r.why) for k, rs in res.items() for r in rs if r.verdict != "ok"]
    assert not bad, bad
    assert fuzz_seed.baseline["mdoc"]["n_tilts"] == 7
    assert {t.name for t in fuzz_seed.targets} >= {"mdoc", "movie", "gain", "tiff_movie", "tiff_gain", "eer_movie",
                                                   "star_particles", "project_json", "rec_tilt_series", "rec_series",
                                                   "rec_particles", "rec_average", "stack", "ref_map"}


def test_lost_zvalue_line_is_never_a_silent_view_fewer(fuzz_seed: Seed, tmp_path: Path) -> None:
    """The issue's case: each [ZValue = n] line deleted in turn. Every reader refuses it naming the file and the
    section (or the line): never one view fewer without a word."""
    t = next(t for t in fuzz_seed.targets if t.name == "mdoc")
    lines = _lines((fuzz_seed.root / t.rel).read_bytes())
    idx = [i for i, ln in enumerate(lines) if _SECTION_LINE.match(ln)]
    assert len(idx) == 7
    for i in idx:
        mt = Mutant(b"".join(lines[:i] + lines[i + 1:]), "mdoc_lost_section", f"line {i + 1}")
        res = run_case(fuzz_seed, t, np.random.default_rng(0), tmp_path, mutant=mt)
        assert all(r.verdict in ("ok", "refused") for r in res), [(r.command, r.verdict, r.why) for r in res]
        refused = {r.command: r.why for r in res if r.verdict == "refused"}
        assert {"inspect", "run --only import_movies"} <= set(refused), res
        assert re.search(r"TS_01\.mdoc: (\[ZValue = \d+\] TiltAngle: given twice|line \d+ TiltAngle: a section key "
                         r"before the first section)", refused["inspect"]), refused["inspect"]


@pytest.mark.parametrize("value", [math.nan, -2.0, math.inf, 1e30])
def test_a_voxel_size_that_cannot_be_one_is_never_returned(fuzz_seed: Seed, tmp_path: Path, value: float) -> None:
    """MRC voxel sizes negative, NaN, infinite or huge: refused (cella.x) by every reader, never read as a size."""
    t = next(t for t in fuzz_seed.targets if t.name == "movie")
    b = bytearray((fuzz_seed.root / t.rel).read_bytes())
    b[40:44] = struct.pack("<f", value)
    res = run_case(fuzz_seed, t, np.random.default_rng(0), tmp_path, mutant=Mutant(bytes(b), "mrc_voxel", str(value)))
    assert all(r.verdict in ("ok", "refused") for r in res), [(r.command, r.verdict, r.why) for r in res]
    assert all("cella.x" in r.why for r in res if r.command in ("inspect", "mrc.read_header", "run --only "
                                                                                               "import_movies"))


def test_fuzz_campaign(fuzz_seed: Seed, tmp_path: Path) -> None:
    """A few hundred seeded mutants (TOMOGUIDE_FUZZ_CASES): no traceback, no hang, exits 0 or 2, every refusal one
    line naming the file and a field or line, no silent wrong reading. Failures of KNOWN_ELSEWHERE are listed in
    the log, not counted (their owners have them; test_known_defect_elsewhere replays each)."""
    results = campaign(fuzz_seed, CI_CASES, seed_value=2026, work=tmp_path, timeout_s=30.0)
    summary = summarise(results, CI_CASES)
    failures = [r for r in results if r.verdict in FAILURES]
    known = [(k, r) for r in failures if (k := _known(r))]
    for k, r in known:
        print(f"known elsewhere ({k}): {r.target} {r.detail} [{r.command}] {r.why[:160]}")
    new = [f"{r.target} {r.detail} ({r.mutation}) [{r.command}] {r.verdict}: {r.why}" for r in failures if not _known(r)]
    assert not new, "\n".join(new[:40])
    cases = summary["cases_by_verdict"]
    assert cases.get("refused", 0) > CI_CASES // 4 and cases.get("ok", 0) > CI_CASES // 10  # both sides reached
    assert len(summary["by_target"]) >= 15


def _json_mutant(seed: Seed, target: str, path: tuple, value: Any) -> tuple[Target, Mutant]:
    t = next(t for t in seed.targets if t.name == target)
    obj = json.loads((seed.root / t.rel).read_bytes())
    _json_get(obj, path[:-1])[path[-1]] = value
    return t, Mutant(json.dumps(obj, indent=1).encode(), "json_value", ".".join(map(str, path)))


def _mrc_mutant(seed: Seed, target: str, offset: int, fmt: str, value: Any) -> tuple[Target, Mutant]:
    t = next(t for t in seed.targets if t.name == target)
    b = bytearray((seed.root / t.rel).read_bytes())
    b[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return t, Mutant(bytes(b), "mrc_header", f"byte {offset} -> {value}")


def _known_case(seed: Seed, key: str) -> tuple[Target, Mutant]:
    if key == "pick_voxel_zero":
        return _mrc_mutant(seed, "ref_map", 40, "<f", 0.0)
    if key == "pick_map_shape":
        t = next(t for t in seed.targets if t.name == "ref_map")
        data = (seed.root / t.rel).read_bytes()
        nx = struct.unpack_from("<i", data, 0)[0]
        b = bytearray(data[: len(data) - nx * nx * 4 * (nx // 2)])
        b[8:12] = struct.pack("<i", nx - nx // 2)  # a consistent file holding half the sections
        return t, Mutant(bytes(b), "mrc_size", "nz halved")
    if key == "pick_map_values":
        t = next(t for t in seed.targets if t.name == "ref_map")
        data = bytearray((seed.root / t.rel).read_bytes())
        n = (len(data) - 1024) // 4
        data[1024:] = np.full(n, np.nan, np.float32).tobytes()
        return t, Mutant(bytes(data), "mrc_data", "every voxel NaN")
    if key == "import_single_section":
        t = next(t for t in seed.targets if t.name == "mdoc")
        data = (seed.root / t.rel).read_bytes()
        cut = data.index(b"ExposureDose", data.index(b"[ZValue = 0]"))
        return t, Mutant(data[:cut], "truncate_line", "inside [ZValue = 0]")
    if key == "record_type_leak":
        return _json_mutant(seed, "rec_series", ("series", 0, "geometry", "tilt_angles_deg", 1), {})
    if key == "record_info_unchecked":
        return _json_mutant(seed, "rec_tomograms", ("series", 0, "info", "shape_zyx", 2), "text")
    raise KeyError(key)


@pytest.mark.parametrize("key", sorted(KNOWN_ELSEWHERE))
def test_known_defect_elsewhere(fuzz_seed: Seed, tmp_path: Path, key: str) -> None:
    """One case of each defect the fuzzer found in a file outside the readers, replayed: once its owner fixes it, the
    case is refused in one line naming the file and a field (or reads correctly) and this test passes."""
    t, mt = _known_case(fuzz_seed, key)
    res = run_case(fuzz_seed, t, np.random.default_rng(0), tmp_path, mutant=mt)
    bad = [(r.command, r.verdict, r.why) for r in res if r.verdict in FAILURES]
    if bad:
        assert all(_known(r) == key for r in res if r.verdict in FAILURES), bad  # no other failure hides here
        pytest.xfail(f"{KNOWN_ELSEWHERE[key][1]}: {bad[0][2][:200]}")
