"""Tilt movies (MRC/MRCS and TIFF) and gain references.

Shapes and units
----------------
* A movie is an array ``(n_frames, ny, nx)`` in its stored dtype (counts: uint8/uint16/int16, or float32).
* A gain reference is ``(ny, nx)`` float32, multiplied into each frame (``frame * gain``).
* Pixel size in Å.

Formats: MRC/MRCS through :mod:`.mrc` (mrcfile header), TIFF through ``tifffile`` (the header is read
without decoding pixels). LZW-compressed TIFF (what SerialEM writes) and EER need the ``imagecodecs``
package; without it the error says so. DM4 gain references are not read: convert them to MRC with
IMOD's ``dm2mrc``.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from . import mrc
from .errors import FormatError, problem

MRC_SUFFIXES = {".mrc", ".mrcs", ".st"}
TIFF_SUFFIXES = {".tif", ".tiff", ".eer"}


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in MRC_SUFFIXES:
        return "MRC"
    if suffix in TIFF_SUFFIXES:
        return "EER" if suffix == ".eer" else "TIFF"
    if suffix in (".dm4", ".dm3", ".gain"):
        raise FormatError(path, None, f"{suffix} files are not read here; convert to MRC (IMOD: dm2mrc) or TIFF")
    # unknown suffix: sniff the first bytes
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return "MRC"


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FormatError(path, None, "no such file")


def _tiff_error(path: Path, exc: Exception) -> FormatError:
    text = str(exc)
    if "imagecodecs" in text:
        return FormatError(path, "compression", f"{text.strip(chr(34))}: install it with 'pip install imagecodecs'")
    return FormatError(path, None, f"not a readable TIFF ({type(exc).__name__}: {text})")


def _tiff_shape(path: Path) -> tuple[tuple[int, int, int], np.dtype, str]:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            dtype = np.dtype(series.dtype)
            compression = tif.pages[0].compression.name if tif.pages else "NONE"
            if len(shape) == 3 and shape[-1] in (3, 4) and series.axes.endswith("S"):
                raise FormatError(path, "samples", f"colour TIFF ({series.axes} {shape}); a movie has one sample per pixel")
            if len(shape) == 2:
                shape = (1, *shape)
            elif len(shape) > 3:
                squeezed = tuple(s for s in shape[:-2] if s != 1)
                if len(squeezed) > 1:
                    raise FormatError(path, "shape", f"TIFF of shape {shape} ({series.axes}) is not a frame stack")
                shape = (int(np.prod(shape[:-2])), shape[-2], shape[-1])
    except FormatError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error ...
        raise _tiff_error(path, exc) from exc
    return shape, dtype, compression  # type: ignore[return-value]


def read_movie_header(path: str | PathLike[str], *, strict: bool = True) -> tuple[int, int, int, str]:
    """``(n_frames, ny, nx, dtype)`` of a movie without reading its pixels (MRC/MRCS or TIFF/EER).

    A single 2D image counts as one frame. Errors (:class:`FormatError`) name the file.
    """
    p = Path(path)
    _check_exists(p)
    if _format_of(p) == "MRC":
        info = mrc.read_header(p, strict=strict)
        shape = info.shape if len(info.shape) == 3 else (1, *info.shape[-2:])
        if len(info.shape) == 4:
            raise FormatError(p, "ispg", f"a stack of volumes ({info.shape}), not a movie")
        n = info.n_complete_sections if info.truncated else shape[0]
        return int(n), int(shape[1]), int(shape[2]), info.dtype
    shape, dtype, _ = _tiff_shape(p)
    return shape[0], shape[1], shape[2], dtype.name


def read_movie(path: str | PathLike[str], *, strict: bool = True) -> np.ndarray:
    """Read all frames of a movie: ``(n_frames, ny, nx)`` in the stored dtype (MRC/MRCS or TIFF)."""
    p = Path(path)
    _check_exists(p)
    if _format_of(p) == "MRC":
        data, info = mrc.read_mrc(p, strict=strict)
        if data.ndim == 4:
            raise FormatError(p, "ispg", f"a stack of volumes ({data.shape}), not a movie")
        arr = np.asarray(data)
        return arr[None] if arr.ndim == 2 else arr
    shape, _, _ = _tiff_shape(p)
    try:
        arr = tifffile.imread(p)
    except Exception as exc:
        raise _tiff_error(p, exc) from exc
    return np.asarray(arr).reshape(shape)


def _atomic_tmp(p: Path) -> Path:
    return p.with_name(f".{p.name}.{os.getpid()}.tmp{p.suffix}")


def write_movie_tiff(path: str | PathLike[str], frames: np.ndarray, *, compression: str | None = "zlib") -> None:
    """Write frames ``(n_frames, ny, nx)`` (or one ``(ny, nx)`` frame) as a multi-page TIFF, one page per
    frame, dtype kept; ``compression`` ``"zlib"`` (lossless, no extra package) or ``None``. Atomic."""
    p = Path(path)
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{p}: frames must be (n_frames, ny, nx), got shape {arr.shape}")
    tmp = _atomic_tmp(p)
    try:
        tifffile.imwrite(tmp, arr, compression=compression, photometric="minisblack")
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_movie_mrc(path: str | PathLike[str], frames: np.ndarray, pixel_size_A: float) -> None:
    """Write frames ``(n_frames, ny, nx)`` as an MRC image stack (``ispg`` 0), pixel size in Å.

    dtypes as :func:`.mrc.write_mrc` (uint8 is stored as uint16, float64 as float32). Atomic."""
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    mrc.write_mrc(path, arr, pixel_size_A, is_stack=True)


def read_gain(
    path: str | PathLike[str],
    *,
    flip_x: bool = False,
    flip_y: bool = False,
    transpose: bool = False,
    strict: bool = True,
) -> np.ndarray:
    """Read a gain reference (MRC or TIFF) as ``(ny, nx)`` float32, oriented to match the movies.

    Order of operations (as RELION and Warp apply them): **transpose first** (``g.T``: the pixel at
    ``(y, x)`` moves to ``(x, y)``), **then flip X** (mirror columns, ``x -> nx - 1 - x``), **then flip Y**
    (mirror rows, ``y -> ny - 1 - y``). Zero, negative or non-finite gain values are an error (field
    ``gain``, with how many pixels) when ``strict``; otherwise a warning, and they are replaced by the
    median of the valid pixels.
    """
    p = Path(path)
    _check_exists(p)
    fmt = _format_of(p)
    if fmt == "MRC":
        data, _ = mrc.read_mrc(p, strict=strict)
        g = np.asarray(data)
    else:
        try:
            g = np.asarray(tifffile.imread(p))
        except Exception as exc:
            raise _tiff_error(p, exc) from exc
    g = np.squeeze(g)
    if g.ndim != 2:
        raise FormatError(p, "shape", f"a gain reference is one 2D image, this file holds shape {g.shape}")
    g = g.astype(np.float32, copy=True)
    if transpose:
        g = g.T
    if flip_x:
        g = g[:, ::-1]
    if flip_y:
        g = g[::-1, :]
    g = np.ascontiguousarray(g)
    bad = ~np.isfinite(g) | (g <= 0)
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        problem(strict, p, "gain", f"{n_bad} of {g.size} pixels are zero, negative or not finite")
        good = g[~bad]
        g[bad] = float(np.median(good)) if good.size else 1.0
    return g


def check_gain_shape(gain: np.ndarray, frame_shape: tuple[int, ...], gain_path: str | PathLike[str]) -> None:
    """Raise :class:`FormatError` (field ``shape``) when a gain ``(ny, nx)`` does not match the frames.

    ``frame_shape`` is ``(ny, nx)`` or a movie shape ``(n_frames, ny, nx)``. The message gives both shapes
    and a hint when the transposed gain would match (set ``transpose``) or when the sizes differ by a
    factor of 2 (super-resolution vs counted mode).
    """
    fy, fx = (int(s) for s in tuple(frame_shape)[-2:])
    gy, gx = (int(s) for s in gain.shape[-2:])
    if (gy, gx) == (fy, fx):
        return
    hint = ""
    if (gx, gy) == (fy, fx):
        hint = "; the transposed gain would match: set transpose"
    elif (gy, gx) == (2 * fy, 2 * fx) or (2 * gy, 2 * gx) == (fy, fx):
        hint = "; a factor of 2: super-resolution gain with counted movies (or the reverse)? bin or upsample the gain"
    elif (gx, gy) in ((2 * fy, 2 * fx), (fy // 2, fx // 2)):
        hint = "; transposed and a factor of 2 (super-resolution)"
    raise FormatError(gain_path, "shape", f"gain is {gy} x {gx} (ny x nx) but the frames are {fy} x {fx}{hint}")


def describe(path: str | PathLike[str]) -> dict[str, Any]:
    """Plain-JSON facts about a movie for ``tomoguide inspect``: ``path, format, n_frames, ny, nx,
    dtype, file_size_bytes``, and ``pixel_size_A`` (MRC, when recorded) or ``compression`` (TIFF)."""
    p = Path(path)
    _check_exists(p)
    fmt = _format_of(p)
    out: dict[str, Any] = {"path": str(p), "format": fmt}
    n, ny, nx, dtype = read_movie_header(p, strict=False)
    out.update(n_frames=n, ny=ny, nx=nx, dtype=dtype, file_size_bytes=p.stat().st_size)
    if fmt == "MRC":
        vx = mrc.read_header(p, strict=False).voxel_size_A[0]
        out["pixel_size_A"] = vx if vx > 0 else None
    else:
        out["compression"] = _tiff_shape(p)[2]
    return out
