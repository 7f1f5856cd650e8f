"""The record that tilt-series steps pass on: ``series.json`` beside the stacks a step wrote.

Every step after the import writes one :class:`SeriesSet` (output name ``series``): per tilt series its name,
its stack (MRC, views in angle order, the geometry record's binning), optional companion files (even/odd
stacks, CTF STAR, masks, previews) and the geometry record, which carries the tilt angles, doses, optics and,
once aligned, the per-view transforms. File names are stored relative to the folder of ``series.json``, so a
project folder can be moved; :meth:`SeriesSet.load` turns them into absolute paths.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from tomoguide.compute.io.errors import FormatError
from tomoguide.geometry import TiltSeriesGeometry
from tomoguide.integrity import check_name, check_relative_file, guarded_path

SERIES_FILE = "series.json"
TILT_SERIES_FILE = "tilt_series.json"

M = TypeVar("M", bound=BaseModel)


class RecordError(FormatError):
    """A step record on disk that cannot be used: ``str(err)`` is ``FILE: field: problem`` (one line)."""


def _pydantic_problem(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "(record)"
    msg = str(first.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    more = len(exc.errors()) - 1
    return loc, msg + (f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else "")


def read_json_record(path: Path) -> Any:
    """The JSON content of a record file, or :class:`RecordError` naming the file and what is wrong with it
    (missing, empty, not UTF-8, not JSON: with line and column)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecordError(path, None, "missing (the step's output was deleted or moved)") from None
    except OSError as exc:
        raise RecordError(path, None, f"unreadable ({exc.strerror or exc})") from None
    if not data.strip():
        raise RecordError(path, None, "empty file (the step's output is damaged: run the step again)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(path, f"byte {exc.start}", "not UTF-8 text (the file is damaged)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(path, f"line {exc.lineno} column {exc.colno}",
                          f"not valid JSON ({exc.msg}; the file is damaged or cut short)") from None
    except (ValueError, RecursionError) as exc:
        raise RecordError(path, None, f"not valid JSON ({type(exc).__name__})") from None


def load_record(model: type[M], path: Path, file_name: str | None = None) -> tuple[M, Path]:
    """The one loader of step records: ``path`` (or ``path/file_name`` when ``path`` is a folder) validated as
    ``model``. Returns the record and the folder its file names are relative to. Any problem (missing, empty,
    truncated, not UTF-8, wrong type, a name that is a path, a value out of range) raises :class:`RecordError`
    as ``FILE: field: problem``."""
    p = Path(path)
    if file_name is not None and p.is_dir():
        p = p / file_name
    raw = read_json_record(p)
    try:
        return model.model_validate(raw), p.parent
    except ValidationError as exc:
        loc, msg = _pydantic_problem(exc)
        raise RecordError(p, loc, msg) from None
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise RecordError(p, None, f"{type(exc).__name__}: {exc}") from None


def write_record(model: BaseModel, path: Path) -> Path:
    """Write a record atomically (temporary file, then rename): a reader never sees half a record."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(model.model_dump_json(indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def resolve_in(base: Path, name: str, what: str) -> Path:
    """``base / name`` for a file name read from a record, refused unless it stays inside ``base`` (also through
    symbolic links)."""
    base = Path(base)
    try:
        check_relative_file(name, what)
    except ValueError as exc:
        raise RecordError(base, what, str(exc)) from None
    p = base / name
    try:
        p.resolve().relative_to(base.resolve())
    except ValueError:
        raise RecordError(p, what, f"leads outside its folder {base} (a symbolic link?)") from None
    return p


MAX_SIZE_PX = 100_000  # no camera or tomogram is larger along one axis: a bigger size in a record is damage



def write_imod_alignment(run_dir: Path, name: str, g: TiltSeriesGeometry) -> dict[str, str]:
    """IMOD's ``NAME.xf`` (px of the stack this record describes) and ``NAME.tlt`` (true tilts) beside a stack a
    step wrote into ``run_dir`` (guarded paths), so that ``newstack -xform NAME.xf`` and ``tilt`` take it as it
    is; the file roles ``{"xf": ..., "tlt": ...}`` for the series entry, or {} when the record is not aligned."""
    if g.xf is None:
        return {}
    from tomoguide.compute.io.imod import write_tlt, write_xf

    rows, tlt = g.to_imod()
    files = {"xf": f"{name}.xf", "tlt": f"{name}.tlt"}
    write_xf(guarded_path(Path(run_dir), files["xf"]), rows)
    write_tlt(guarded_path(Path(run_dir), files["tlt"]), tlt, fmt="%9.4f")
    return files

class SeriesEntry(BaseModel):
    """One tilt series as a step wrote it. ``files`` maps a role ("stack", "even", "odd", "ctf_star",
    "ctf_preview", "mask", ...) to a file name relative to the record's folder; ``flags`` holds per-view markers
    (e.g. ``ctf_failed``). ``name`` and the roles are plain names and the file names stay inside the record's
    folder: a record that breaks this is refused when it is read (names from files are never trusted)."""

    name: str
    geometry: TiltSeriesGeometry
    files: dict[str, str] = Field(default_factory=dict)
    flags: dict[str, list[bool]] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return check_name(v, "series name")

    @field_validator("files")
    @classmethod
    def _relative_files(cls, v: dict[str, str]) -> dict[str, str]:
        for role, name in v.items():
            check_name(role, "file role")
            check_relative_file(name, f"file name of {role!r}")
        return v

    @field_validator("info")
    @classmethod
    def _sizes(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Sizes that later steps compute with are checked when read: ``shape_zyx`` (a tomogram's voxels)."""
        shape = v.get("shape_zyx")
        if shape is not None:
            ok = isinstance(shape, list) and len(shape) == 3 and all(
                isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_SIZE_PX for n in shape)
            if not ok:
                raise ValueError(f"info.shape_zyx must be three whole numbers from 1 to {MAX_SIZE_PX}, got {shape!r}")
        return v

    def path(self, role: str, base: Path) -> Path:
        if role not in self.files:
            raise KeyError(f"tilt series {self.name} has no {role!r} file (it has: {', '.join(self.files)})")
        return resolve_in(base, self.files[role], f"files.{role}")


class SeriesSet(BaseModel):
    """All tilt series of one step's output."""

    series: list[SeriesEntry]

    @field_validator("series")
    @classmethod
    def _unique_names(cls, v: list[SeriesEntry]) -> list[SeriesEntry]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tilt series {', '.join(dup)} appear more than once")
        return v

    def save(self, folder: Path) -> Path:
        """Write ``series.json`` into ``folder`` (atomically; refused outside it or through a link)."""
        return write_record(self, guarded_path(Path(folder), SERIES_FILE))

    @classmethod
    def load(cls, path: Path) -> tuple[SeriesSet, Path]:
        """Read and validate ``series.json`` (or the folder holding it); returns the set and the folder its file
        names are relative to. :class:`RecordError` (``FILE: field: problem``) when it is damaged or tampered."""
        return load_record(cls, path, SERIES_FILE)

    def names(self) -> list[str]:
        return [s.name for s in self.series]


def load_tilt_series(path: Path) -> list[Any]:
    """The import step's ``tilt_series.json`` validated (its :class:`~tomoguide.steps.import_movies.ImportedSeries`
    models, plain series names, no duplicates): the list of series, or :class:`RecordError`."""
    from pydantic import create_model

    from tomoguide.steps.import_movies import ImportedSeries

    wrapper = create_model("TiltSeriesRecord", series=(list[ImportedSeries], ...))
    rec, folder = load_record(wrapper, path, TILT_SERIES_FILE)
    names: list[str] = []
    for i, s in enumerate(rec.series):  # type: ignore[attr-defined]
        try:
            check_name(s.name, "series name")
        except ValueError as exc:
            raise RecordError(path, f"series.{i}.name", str(exc)) from None
        if s.name in names:
            raise RecordError(path, f"series.{i}.name", f"tilt series {s.name} appears more than once")
        names.append(s.name)
    # data paths (movies, mdocs, gain) are stored relative to the record's folder: absolute from here on
    for s in rec.series:  # type: ignore[attr-defined]
        s.mdoc = _absolute(s.mdoc, folder)
        s.gain = None if s.gain is None else _absolute(s.gain, folder)
        for t in s.tilts:
            t.movie = _absolute(t.movie, folder)
            t.mdoc = None if t.mdoc is None else _absolute(t.mdoc, folder)
    return list(rec.series)  # type: ignore[attr-defined]


def _absolute(path: str, folder: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else os.path.normpath(Path(folder) / p))


def output_items(path: Path) -> tuple[int, str] | None:
    """How many things a validated output holds for the next step: (tilt series | particles, what), or None when
    it is not a counted record. A count of 0 is a dead end (the runner reports it on the step's own page)."""
    from tomoguide.steps.average_records import ParticleStack

    p = Path(path)
    if p.is_dir():
        for name in (SERIES_FILE, TILT_SERIES_FILE, "particles.json"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            return None
    if p.name == SERIES_FILE:
        return len(SeriesSet.load(p)[0].series), "tilt series"
    if p.name == TILT_SERIES_FILE:
        return len(load_tilt_series(p)), "tilt series"
    if p.name == "particles.json":
        return ParticleStack.load(p)[0].n_particles, "particles"
    if p.suffix.lower() == ".star":
        from tomoguide.compute.io.star import read_star

        try:
            blocks = read_star(p)
        except (FormatError, OSError, ValueError):
            return None
        table = blocks.get("particles")
        if table is not None and hasattr(table, "__len__") and not isinstance(table, dict):
            return len(table), "particles"
    return None


def empty_map_problem(path: Path) -> str | None:
    """For an ``average.json`` output (or its folder): why its map is empty (not finite, or every voxel equal —
    nothing a later step could align to), else None."""
    import numpy as np

    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.steps.average_records import AverageRecord

    p = Path(path)
    if p.is_dir():
        p = p / "average.json"
    if p.name != "average.json" or not p.is_file():
        return None
    rec, base = AverageRecord.load(p)
    volume, _ = read_mrc(rec.path("map", base))
    data = np.asarray(volume, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        return f"{rec.path('map', base)}: the map holds non-finite values (NaN or infinity)"
    if float(data.std()) == 0.0:
        return f"{rec.path('map', base)}: the map is empty (every voxel is {float(data.flat[0]):g})"
    return None


def validate_output(path: Path) -> None:
    """Validate a step output that is (or holds) a record: ``series.json``, ``tilt_series.json``,
    ``particles.json``, ``average.json`` (their models and names) or a STAR table. Raises :class:`RecordError`
    (``FILE: field: problem``); other outputs (images, folders of images) only need to exist."""
    from tomoguide.steps.average_records import AverageRecord, ParticleStack

    p = Path(path)
    if not p.exists():
        raise RecordError(p, None, "missing (the step's output was deleted or moved)")
    if p.is_dir():
        for name in (SERIES_FILE, TILT_SERIES_FILE, "particles.json", "average.json"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            return
    name = p.name
    if name == SERIES_FILE:
        SeriesSet.load(p)
    elif name == TILT_SERIES_FILE:
        load_tilt_series(p)
    elif name == "particles.json":
        ParticleStack.load(p)
    elif name == "average.json":
        AverageRecord.load(p)
    elif p.suffix.lower() == ".star":
        from tomoguide.compute.io.star import read_star

        try:
            read_star(p)
        except FormatError as exc:
            raise RecordError(exc.path, exc.field, exc.message) from None
        except (OSError, ValueError, UnicodeDecodeError, KeyError, IndexError) as exc:
            raise RecordError(p, None, f"not a readable STAR file ({type(exc).__name__}: {exc})") from None


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (a step passing an unchanged stack on), or copy it across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def ctf_row(name: str, i: int, tilt_deg: float, fit: Any) -> dict[str, Any]:
    """One row of a per-tilt CTF STAR from a :class:`~tomoguide.compute.ctffit.CtfFit` (view ``i``, 0-based)."""
    return {"rlnMicrographName": f"{name}.mrc:{i + 1}", "rlnTomoNominalStageTiltAngle": tilt_deg,
            **fit.star_row(), "tomoguideCtfFailed": int(fit.failed), "tomoguideCtfReason": fit.reason or "-"}


CTF_PREVIEW_PX = 256


def ctf_preview(spectrum: Any, fit: Any) -> Any:
    """The wizard's CTF image of one tilt: data | fitted rings (:func:`~tomoguide.compute.ctffit.ctf_rings_overlay`),
    Fourier-cropped to at most :data:`CTF_PREVIEW_PX` px, float32."""
    import numpy as np

    from tomoguide.compute.ctffit import ctf_rings_overlay
    from tomoguide.compute.rescale import fourier_crop

    box = int(getattr(spectrum, "box", 0) or np.asarray(spectrum).shape[0])
    overlay = ctf_rings_overlay(spectrum, fit, display_px=CTF_PREVIEW_PX if box > CTF_PREVIEW_PX else None)
    if overlay.shape[0] > CTF_PREVIEW_PX:
        overlay = fourier_crop(overlay, (CTF_PREVIEW_PX, CTF_PREVIEW_PX))
    return np.asarray(overlay, dtype=np.float32)


def write_ctf_results(folder: Path, name: str, rows: list[dict[str, Any]], previews: list[Any], optics: Any,
                      pixel_size_A: float) -> dict[str, str]:
    """Write one series' per-tilt CTF STAR and preview stack into ``folder``; returns their roles and file names
    (``ctf_star``, ``ctf_preview``), as :class:`SeriesEntry` stores them."""
    import numpy as np
    import pandas as pd

    from tomoguide.compute.io.mrc import write_mrc
    from tomoguide.compute.io.star import write_ctf_star

    check_name(name, "series name")
    files = {"ctf_star": f"{name}_ctf.star", "ctf_preview": f"{name}_ctf_preview.mrc"}
    write_ctf_star(guarded_path(Path(folder), files["ctf_star"]), pd.DataFrame(rows),
                   optics={"rlnVoltage": optics.voltage_kV, "rlnSphericalAberration": optics.cs_mm,
                           "rlnAmplitudeContrast": optics.amplitude_contrast, "rlnMicrographPixelSize": pixel_size_A})
    write_mrc(guarded_path(Path(folder), files["ctf_preview"]), np.stack(previews), voxel_size_A=1.0, is_stack=True)
    return files


def ctf_summary(rows: list[dict[str, Any]], failed: list[bool]) -> dict[str, Any]:
    """Metrics of one series' CTF fits: failed count, defocus range (µm) and median fit resolution (Å) of the rest."""
    import numpy as np

    ok = [r for r, f in zip(rows, failed) if not f]
    return {"n_failed": int(sum(failed)),
            "defocus_range_um": [min(r["rlnDefocusU"] for r in ok) / 1e4, max(r["rlnDefocusU"] for r in ok) / 1e4]
            if ok else None,
            "median_fit_resolution_A": float(np.median([r["rlnCtfMaxResolution"] for r in ok])) if ok else None}
