"""MRC / MRCS / ST files: header facts, data (optionally memory-mapped) and atomic writing.

Built on ``mrcfile`` for the header and its dtypes; the data block is read with numpy so that a
memory map, a truncated file and old-style headers are handled the same way.

Conventions
-----------
* Arrays are in numpy order: ``(z, y, x)`` for volumes and stacks (``z`` = section / tilt index),
  ``(y, x)`` for a single image (``ispg`` 0 and ``nz`` 1), ``(n, z, y, x)`` for volume stacks
  (``ispg`` 401-630), exactly as ``mrcfile`` shapes them.
* Voxel size is in Å and always given in file-axis order ``(x, y, z)`` (``cella / mx`` ...). 0 means
  "not recorded" (IMOD and others leave it so): it is never a size, and a step that needs one asks for it.
  A voxel size that is not a number, infinite, negative, below :data:`MIN_VOXEL_A` or above
  :data:`MAX_VOXEL_A` (or a sampling ``mx``/``my``/``mz`` that is not positive while ``cella`` is set) cannot be
  a reading: it is an error (field ``cella.x`` ...) when strict, else a warning and the axis reads 0.
* Tilt angles (degrees, as the microscope reports the stage alpha tilt) are read from the extended
  header when there is one: ``FEI1``/``FEI2`` (field ``Alpha tilt`` of mrcfile's indexed extended
  header), the old FEI layout of 2003 (no ``exttyp``; 128-byte records whose first float32 is the
  alpha tilt) and SerialEM's ``SERI`` layout (first int16 of each section record = tilt x 100 when bit 1
  of ``nreal`` is set).
* Old-style files without the ``MAP `` identifier (e.g. FEI 2003 files; the field is all zeros) are
  accepted when the rest of the header is consistent; a map identifier holding anything else is an error.
* Mode 0 is read as int8 (MRC2014, as mrcfile does). On writing, ``uint8`` data is stored losslessly as
  mode 6 (uint16), because mode 0 is signed for MRC2014 but unsigned for older IMOD files: mode 6 is
  unambiguous for every reader. ``float64`` is stored as float32 (mode 2).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import mrcfile
import mrcfile.utils
from mrcfile.mrcfile import MrcFile
import numpy as np

from .errors import FormatError, problem

#: Files whose data block is larger than this are memory-mapped by :func:`read_mrc` (bytes).
MMAP_THRESHOLD_BYTES = 512 * 1024**2

HEADER_BYTES = 1024
#: Bounds of a recorded voxel size (Å): 0.01 Å is far below any detector pixel, 1e5 Å (10 µm) above a grid atlas.
MIN_VOXEL_A = 0.01
MAX_VOXEL_A = 1e5
#: Tilt angles from an extended header beyond this (degrees) are not tilt angles (another layout, or damage).
MAX_TILT_DEG = 90.0
_STACK_SUFFIXES = {".st", ".mrcs", ".ali", ".preali", ".tilt"}
_FEI_OLD_RECORD_BYTES = 128


@dataclass
class MrcInfo:
    """Facts from an MRC header (no data read).

    ``shape`` is the numpy shape of the data (``(z, y, x)``, ``(y, x)`` or ``(n, z, y, x)``); ``dtype`` the
    numpy type name of the data as stored (``"float32"``, ``"int16"`` ...); ``voxel_size_A`` is
    ``(x, y, z)`` in Å (0 = not recorded); ``n_sections`` is the header's ``nz``; ``exttyp`` the
    extended-header type (``"FEI1"``, ``"SERI"`` ..., ``None`` when empty); ``tilt_angles_deg`` one alpha
    tilt per section from the extended header when it records them (``tilt_angles_source`` says which
    layout), else ``None``; ``is_volume`` tells a 3D map/tomogram from a stack of 2D images (see
    :func:`_is_volume`).
    """

    path: Path
    shape: tuple[int, ...]
    dtype: str
    voxel_size_A: tuple[float, float, float]
    n_sections: int
    mode: int
    exttyp: str | None
    tilt_angles_deg: list[float] | None
    is_volume: bool
    ispg: int = 0
    nsymbt: int = 0
    origin_A: tuple[float, float, float] = (0.0, 0.0, 0.0)
    labels: list[str] = field(default_factory=list)
    tilt_angles_source: str | None = None
    map_id_ok: bool = True
    byte_order: str = "<"
    data_offset: int = HEADER_BYTES
    data_nbytes: int = 0
    file_size: int = 0
    truncated: bool = False
    n_complete_sections: int = 0
    header_stats: dict[str, float] = field(default_factory=dict)

    @property
    def nx(self) -> int:
        return self.shape[-1]

    @property
    def ny(self) -> int:
        return self.shape[-2]


def _fmt_voxel(v: float) -> float:
    """float32 header value -> a clean Python float (6 significant digits, as the header holds)."""
    v = float(v)
    return float(f"{v:.7g}") if math.isfinite(v) else v


def _voxel_sizes(p: Path, h: Any, strict: bool) -> tuple[float, float, float]:
    """``cella / (mx, my, mz)`` per axis (Å), checked: 0 when not recorded (``cella`` 0), else a positive finite
    size within [:data:`MIN_VOXEL_A`, :data:`MAX_VOXEL_A`]; anything else is a problem naming the field, and the
    axis reads 0 ("not recorded") when not strict."""
    out = []
    for axis in "xyz":
        with np.errstate(all="ignore"):
            cell = float(h.cella[axis])
            m = int(h["m" + axis])
        if cell == 0.0:
            out.append(0.0)
            continue
        if not math.isfinite(cell) or cell < 0:
            problem(strict, p, f"cella.{axis}", f"cell size {cell:g} A: must be positive and finite (0 = not "
                                                f"recorded)")
            out.append(0.0)
            continue
        if m <= 0:
            problem(strict, p, f"m{axis}", f"sampling {m}: must be positive when the cell size ({cell:g} A) is set")
            out.append(0.0)
            continue
        v = _fmt_voxel(cell / m)
        if not (MIN_VOXEL_A <= v <= MAX_VOXEL_A):
            problem(strict, p, f"cella.{axis}", f"voxel size {v:g} A (cella.{axis} {cell:g} / m{axis} {m}) is outside "
                                                f"{MIN_VOXEL_A:g} to {MAX_VOXEL_A:g} A")
            out.append(0.0)
            continue
        out.append(v)
    return out[0], out[1], out[2]


def _decode(b: Any) -> str:
    return bytes(b).decode("latin-1").rstrip("\x00 ").strip()


def _is_volume(path: Path, ispg: int, nz: int) -> bool:
    """A 3D map/tomogram (True) or a stack of 2D images / a single image (False).

    Rules, in order: one section -> image; a stack-like suffix (``.st .mrcs .ali .preali``) -> stack;
    ``ispg`` 0 -> stack (MRC2014: image or image stack); ``ispg`` 1-230 (space group) or 401-630 (volume
    stack) -> volume.
    """
    if nz <= 1:
        return False
    if path.suffix.lower() in _STACK_SUFFIXES:
        return False
    return 1 <= ispg <= 230 or 401 <= ispg <= 630


def _fei_old_tilts(ext: bytes, nz: int, byte_order: str) -> list[float] | None:
    """Alpha tilts from a 2003-style FEI extended header: first float32 of each 128-byte record."""
    if len(ext) < nz * _FEI_OLD_RECORD_BYTES or len(ext) % _FEI_OLD_RECORD_BYTES:
        return None
    recs = np.frombuffer(ext, dtype=np.dtype(np.float32).newbyteorder(byte_order))
    alpha = recs.reshape(-1, _FEI_OLD_RECORD_BYTES // 4)[:nz, 0].astype(np.float64)
    if not np.all(np.isfinite(alpha)) or np.any(np.abs(alpha) > MAX_TILT_DEG):
        return None
    return [round(float(a), 4) for a in alpha]


def _seri_tilts(ext: bytes, nz: int, nint: int, nreal: int, byte_order: str) -> list[float] | None:
    """SerialEM (``SERI``) extended header: tilt x 100 as the first int16 of each section record."""
    if not (nreal & 1) or nint < 2 or nint % 2 or len(ext) < nz * nint:
        return None
    words = np.frombuffer(ext[: nz * nint], dtype=np.dtype(np.int16).newbyteorder(byte_order))
    tilts = [float(t) / 100.0 for t in words.reshape(nz, nint // 2)[:, 0]]
    return tilts if all(abs(t) <= MAX_TILT_DEG for t in tilts) else None


def read_header(path: str | PathLike[str], *, strict: bool = True) -> MrcInfo:
    """Read the header (and extended header) of an MRC file; the data block is not read.

    Raises :class:`FormatError` (``"FILE: FIELD: message"``) for a missing file, a header too short, an
    unknown ``mode`` or non-positive dimensions (always: the data cannot be interpreted), and, when
    ``strict``, for a map identifier that is neither ``MAP `` nor empty, a voxel size that cannot be one
    (module docstring: fields ``cella.x`` ..., ``mx`` ...) or a data block shorter or longer than the header
    says (field ``data``: a longer one means a wrong size or mode, and the data would read sheared). With ``strict=False`` those are warnings (:class:`FormatWarning`): a bad voxel size reads 0 (not
    recorded), and ``truncated`` / ``n_complete_sections`` say how much data is there.
    """
    p = Path(path)
    if not p.is_file():
        raise FormatError(p, None, "no such file")
    file_size = p.stat().st_size
    if file_size < HEADER_BYTES:
        raise FormatError(p, "header", f"file has {file_size} bytes, shorter than the 1024-byte MRC header")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every check mrcfile warns about is redone below, by field
        try:
            with mrcfile.open(p, mode="r", permissive=True, header_only=True) as m:
                h = m.header.copy()
                ext = b"" if m.extended_header is None else m.extended_header.tobytes()
                indexed = None
                exttyp_b = bytes(h.exttyp)
                if exttyp_b in (b"FEI1", b"FEI2"):
                    try:
                        indexed = m.indexed_extended_header
                    except Exception:  # malformed FEI header: no tilt angles, not an error
                        indexed = None
        except (ValueError, OSError) as exc:
            raise FormatError(p, "header", f"not readable as MRC ({exc})") from exc

    byte_order = h.mode.dtype.byteorder
    if byte_order in ("=", "|"):
        byte_order = "<" if np.little_endian else ">"
    mode = int(h.mode)
    try:
        dtype = mrcfile.utils.data_dtype_from_header(h)
    except ValueError:
        raise FormatError(p, "mode", f"unknown MRC mode {mode} (known: 0, 1, 2, 4, 6, 12)") from None
    nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
    for name, n in (("nx", nx), ("ny", ny), ("nz", nz)):
        if n <= 0:
            raise FormatError(p, name, f"dimension is {n}, must be positive")

    map_id = bytes(h.map)
    map_id_ok = map_id.startswith(b"MAP")
    if not map_id_ok and map_id.strip(b"\x00 ") != b"":
        problem(strict, p, "map", f"map identifier is {map_id!r}, expected b'MAP ' (not an MRC file, or corrupt)")

    voxel = _voxel_sizes(p, h, strict)
    nsymbt = int(h.nsymbt)
    if nsymbt < 0 or HEADER_BYTES + nsymbt > file_size:
        raise FormatError(p, "nsymbt", f"extended header of {nsymbt} bytes does not fit in a {file_size}-byte file")

    shape = tuple(int(s) for s in mrcfile.utils.data_shape_from_header(h))
    data_nbytes = int(np.prod(shape)) * dtype.itemsize
    offset = HEADER_BYTES + nsymbt
    available = file_size - offset
    section_bytes = nx * ny * dtype.itemsize
    n_complete = min(nz, available // section_bytes)
    truncated = available < data_nbytes
    if available > data_nbytes:  # every MRC writer ends the file with the data: a wrong nx/ny/nz/mode otherwise
        problem(
            strict,
            p,
            "data",
            f"the file holds {available - data_nbytes} bytes more than the header's {nz} sections of {ny}x{nx} "
            f"{dtype.name} ({data_nbytes} bytes): a wrong size (nx, ny, nz) or mode in the header?",
        )
    if truncated:
        problem(
            strict,
            p,
            "data",
            f"file is truncated: the header says {nz} sections of {ny}x{nx} {dtype.name} ({data_nbytes} bytes) "
            f"but only {available} bytes follow the header ({n_complete} complete sections)",
        )

    exttyp = _decode(h.exttyp) or None
    if exttyp is not None and not (exttyp.isascii() and exttyp.isprintable()):
        exttyp = None  # pre-2014 headers used these bytes for other things
    tilts: list[float] | None = None
    source: str | None = None
    if indexed is not None and "Alpha tilt" in (indexed.dtype.names or ()):
        alpha = np.asarray(indexed["Alpha tilt"], dtype=np.float64)
        if alpha.size >= nz and np.all(np.isfinite(alpha[:nz])) and np.all(np.abs(alpha[:nz]) <= MAX_TILT_DEG):
            tilts, source = [round(float(a), 4) for a in alpha[:nz]], exttyp
    elif exttyp == "SERI":
        int16 = np.dtype(np.int16).newbyteorder(byte_order)
        nint, nreal = (int(v) for v in np.frombuffer(h.tobytes()[128:132], dtype=int16))
        tilts = _seri_tilts(ext, nz, nint, nreal, byte_order)
        source = "SERI" if tilts is not None else None
    labels = [_decode(lab) for lab in h.label[: max(0, min(10, int(h.nlabl)))]]
    if tilts is None and exttyp not in ("FEI1", "FEI2", "SERI") and nsymbt:
        looks_fei = nsymbt == 1024 * _FEI_OLD_RECORD_BYTES or any("fei" in lab.lower() for lab in labels)
        if looks_fei:
            tilts = _fei_old_tilts(ext, nz, byte_order)
            source = "FEI (2003 layout)" if tilts is not None else None

    ispg = int(h.ispg)
    return MrcInfo(
        path=p,
        shape=shape,
        dtype=dtype.name,
        voxel_size_A=voxel,
        n_sections=nz,
        mode=mode,
        exttyp=exttyp,
        tilt_angles_deg=tilts,
        is_volume=_is_volume(p, ispg, nz),
        ispg=ispg,
        nsymbt=nsymbt,
        origin_A=(_fmt_voxel(h.origin.x), _fmt_voxel(h.origin.y), _fmt_voxel(h.origin.z)),
        labels=labels,
        tilt_angles_source=source,
        map_id_ok=map_id_ok,
        byte_order=byte_order,
        data_offset=offset,
        data_nbytes=data_nbytes,
        file_size=file_size,
        truncated=truncated,
        n_complete_sections=int(n_complete),
        header_stats={k: float(h[k]) for k in ("dmin", "dmax", "dmean", "rms")},
    )


def read_mrc(
    path: str | PathLike[str], *, mmap: bool = False, strict: bool = True
) -> tuple[np.ndarray, MrcInfo]:
    """Read an MRC file: ``(data, info)``.

    ``data`` has the shape in ``info.shape`` (numpy order, see the module docstring) and the stored dtype
    in native byte order. It is a read-only ``numpy.memmap`` (in the file's byte order) when ``mmap`` is
    true or the data block is larger than :data:`MMAP_THRESHOLD_BYTES` (512 MiB). A truncated file raises :class:`FormatError`
    (field ``data``) when ``strict``; otherwise a :class:`FormatWarning` is issued and the complete
    sections present are returned (``info.shape`` and ``info.truncated`` describe what was read).
    """
    info = read_header(path, strict=strict)
    dtype = np.dtype(mrcfile.utils.dtype_from_mode(info.mode)).newbyteorder(info.byte_order)
    shape = info.shape
    if info.truncated:
        ny, nx = shape[-2], shape[-1]
        shape = (info.n_complete_sections, ny, nx)
        info.shape = shape
    count = int(np.prod(shape))
    use_mmap = mmap or count * dtype.itemsize > MMAP_THRESHOLD_BYTES
    if count == 0:
        return np.zeros(shape, dtype=dtype.newbyteorder("=")), info
    if use_mmap:
        data: np.ndarray = np.memmap(info.path, dtype=dtype, mode="r", offset=info.data_offset, shape=shape)
        return data, info
    with open(info.path, "rb") as fh:
        fh.seek(info.data_offset)
        data = np.fromfile(fh, dtype=dtype, count=count)
    if data.size != count:  # the file changed under us
        raise FormatError(info.path, "data", f"could read only {data.size} of {count} values")
    data = data.reshape(shape)
    if not dtype.isnative:
        data = data.astype(dtype.newbyteorder("="))
    return data, info


def _mrc_compatible(data: np.ndarray) -> np.ndarray:
    """Cast to a dtype with an MRC mode: float64 -> float32, uint8 -> uint16 (mode 6); others kept."""
    kind = (data.dtype.kind, data.dtype.itemsize)
    if kind == ("f", 8):
        return data.astype(np.float32)
    if kind in (("u", 1), ("b", 1)):
        return data.astype(np.uint16)
    if kind == ("c", 16):
        return data.astype(np.complex64)
    if kind in {("f", 4), ("f", 2), ("i", 1), ("i", 2), ("u", 2), ("c", 8)}:
        return data
    raise ValueError(
        f"cannot store {data.dtype} in MRC (modes: int8, int16, uint16, float16, float32, complex64); "
        "convert to float32 or int16 first"
    )


class _MrcFileF16Stats(MrcFile):
    """An MRC file being written whose header statistics of float16 data are computed in one pass over the bits
    (:func:`tomoguide.compute.float16.float16_stats`; with mrcfile's warnings for NaN and infinities, the
    statistics of the values that are not NaN): mrcfile's own reductions over float16 arrays run element by
    element, and the extraction writes thousands of float16 sub-tilt stacks. The same statistics as mrcfile's to
    float32 rounding (the summation order differs); other data types as mrcfile computes them."""

    def update_header_stats(self) -> None:
        from tomoguide.compute.float16 import float16_stats

        data = self.data
        if data is None or data.dtype != np.float16 or data.size == 0:
            super().update_header_stats()
            return
        lo, hi, mean, rms, n_nan = float16_stats(data)  # one pass over the bits
        if n_nan:
            warnings.warn("Data array contains NaN values", RuntimeWarning)
        if math.isinf(lo) or math.isinf(hi):
            warnings.warn("Data array contains infinite values", RuntimeWarning)
        if n_nan == data.size:  # nothing but NaN: the statistics are unknown
            self.reset_header_stats()
            return
        self.header.dmin, self.header.dmax = np.float32(lo), np.float32(hi)
        self.header.dmean, self.header.rms = np.float32(mean), np.float32(rms)


def write_mrc(
    path: str | PathLike[str],
    data: np.ndarray,
    voxel_size_A: float | tuple[float, float, float],
    *,
    overwrite: bool = True,
    is_stack: bool = False,
) -> None:
    """Write ``data`` (``(y, x)`` or ``(z, y, x)``) to an MRC file, atomically.

    ``voxel_size_A`` is one number or ``(x, y, z)`` in Å. Types: float64 -> float32 (mode 2); float32,
    float16, int8 (mode 0), int16 (mode 1), uint16 (mode 6) kept; uint8/bool -> uint16 (mode 6, lossless;
    see the module docstring). Header statistics (dmin, dmax, dmean, rms) are computed from the data.
    A 3D array is marked as an image stack (``ispg`` 0, ``mz`` 1) when ``is_stack`` (tilt series, movies,
    particle stacks), otherwise as a volume (``ispg`` 1, ``mz`` = nz). The file is written to a temporary
    name in the same folder and moved into place with :func:`os.replace`, so a reader never sees half a file.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p}: exists and overwrite=False")
    if not isinstance(data, np.ndarray) and hasattr(data, "get"):
        data = data.get()  # CuPy array -> host
    arr = np.ascontiguousarray(_mrc_compatible(np.asarray(data)))
    if arr.ndim not in (2, 3):
        raise ValueError(f"{p}: data must be 2D (y, x) or 3D (z, y, x), got shape {arr.shape}")
    if isinstance(voxel_size_A, (int, float, np.floating, np.integer)):
        voxel = (float(voxel_size_A),) * 3
    else:
        voxel = tuple(float(v) for v in voxel_size_A)
        if len(voxel) != 3:
            raise ValueError(f"{p}: voxel_size_A must be a number or (x, y, z), got {voxel_size_A!r}")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with _MrcFileF16Stats(tmp, mode="w+", overwrite=True) as m:
            m.set_data(arr)  # also sets dmin, dmax, dmean and rms from the data (float16: on float32 slabs)
            if arr.ndim == 3:
                if is_stack:
                    m.set_image_stack()
                else:
                    m.set_volume()
            m.voxel_size = voxel
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def describe(path: str | PathLike[str]) -> dict[str, Any]:
    """Plain-JSON facts about an MRC file for ``tomoguide inspect`` (permissive: problems are listed).

    Keys: ``path, format, shape, dtype, mode, voxel_size_A`` (x, y, z), ``n_sections, is_volume, ispg,
    exttyp, labels, file_size_bytes``, and, when the extended header records tilt angles,
    ``n_tilt_angles, tilt_range_deg`` ([min, max]), ``tilt_step_deg`` (median step of the sorted angles)
    and ``tilt_angles_source``; ``problems`` lists warnings (e.g. truncation).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = read_header(path, strict=False)
    out: dict[str, Any] = {
        "path": str(info.path),
        "format": "MRC",
        "shape": list(info.shape),
        "dtype": info.dtype,
        "mode": info.mode,
        "voxel_size_A": list(info.voxel_size_A) if any(info.voxel_size_A) else None,
        "n_sections": info.n_sections,
        "is_volume": info.is_volume,
        "ispg": info.ispg,
        "exttyp": info.exttyp,
        "labels": info.labels,
        "file_size_bytes": info.file_size,
        "problems": [str(w.message) for w in caught],
    }
    if not all(info.voxel_size_A):
        axes = [a for a, v in zip("xyz", info.voxel_size_A) if v == 0]
        out["notes"] = [f"voxel size not recorded along {', '.join(axes)} (0 in the header): a step that needs "
                        "it asks for it"]
    if info.tilt_angles_deg:
        t = np.sort(np.asarray(info.tilt_angles_deg))
        out["n_tilt_angles"] = len(t)
        out["tilt_range_deg"] = [float(t[0]), float(t[-1])]
        out["tilt_step_deg"] = float(np.round(np.median(np.diff(t)), 3)) if len(t) > 1 else None
        out["tilt_angles_source"] = info.tilt_angles_source
    return out


def info_as_dict(info: MrcInfo) -> dict[str, Any]:
    """An :class:`MrcInfo` as plain JSON types (path as a string, tuples as lists)."""
    d = asdict(info)
    d["path"] = str(info.path)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
