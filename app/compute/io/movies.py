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

Row order: every image is returned in the **MRC frame** (IMOD's): array row 0 is the bottom row of the image
as IMOD and SerialEM display it, the frame SerialEM's mdoc "Tilt axis angle" is measured in (geometry.py).
MRC files are read as stored (``mrcfile``: row 0 = the first line in the file = y = 0, origin bottom-left).
A TIFF stores its top row first (origin top-left), so **TIFF movies, EER movies and TIFF gain references
(.tif/.tiff/.gain) are flipped in Y** (:func:`tiff_rows`) — what IMOD does for every TIFF and EER it reads
(``libiimod/iitif.c``: a strip's rows go to ``y = ny − 1 − row``; EER events to ``y = ny − 1 − row``), what
SerialEM relies on when it writes TIFF frames unflipped but MRC frames flipped (``SerialEMCCD``
``TemplatePlugIn.cpp``: ``rotateFlipImage(..., invertAfter = !bWriteTiff)``, ``tiffWriteSection(...,
inverted = 1)``), so that the same frames saved as MRC or as TIFF read into the same array here, and what
RELION (``rwTIFF.h``: "IMOD, EMAN2, SerialEM and MotionCor2 flip the Y axis whenever they read or write a
TIFF file. We follow this.") and Warp (``TiffNative.cpp`` ``flipy``, "flip Y axis to adhere to MRC
convention") do for TIFF movies. EER: IMOD and SerialEM flip EER frames too; RELION's and Warp's EER readers
do not (RELION therefore un-flips a ``.gain`` for EER, ``renderEER.h``), so an EER movie read here is
RELION's EER frame mirrored in Y. Both frames hold the same gain relation (an EER movie and its ``.gain`` are
flipped together here). An EER file holds the camera's native orientation: SerialEM turns its EER sums by the
camera's RotationAndFlip property (``FalconHelper.cpp``: "Falcon 4 saves MRC reoriented, but rotation/flip is
needed for EER"), so on a camera where that is not the identity the mdoc axis is off by it, as for MRC frames
saved in native orientation; the tilt axis is then found from the data. The writers (:func:`write_movie_tiff`,
:func:`write_gain_tiff`) take arrays in the MRC frame and store them the way SerialEM does, so that writing
and reading give back the same array.

EER (Thermo Fisher Falcon 4/4i/C electron-event movies, ``.eer``): a (Big)TIFF whose every page is one
*fraction* (a few ms of exposure, 0/1 events per pixel), compression 65000, 65001 or 65002. They are
decoded at the physical pixel size (the events' super-resolution sub-pixel bits are ignored, as RELION and
Warp do by default), one page at a time, and summed into *frames* of ``eer_fractions_per_frame`` fractions
(RELION's "EER fractionation", the tutorial's "EER fraction"); the last ``n_fractions %
eer_fractions_per_frame`` fractions are left out, as RELION does. A first page that is not an EER page
(an integrated image some versions write) is skipped.
"""

from __future__ import annotations

import contextlib
import logging
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
EER_COMPRESSIONS = {65000, 65001, 65002}  # Thermo Fisher's EER codes (tifffile: EER_V0, EER_V1, EER_V2)


def tiff_rows(a: np.ndarray) -> np.ndarray:
    """An image ``(..., ny, nx)`` between TIFF/EER row order (top row first, as ``tifffile`` and an EER
    decoder give it) and the MRC frame (bottom row first, as IMOD reads the same file): the rows reversed
    (``a[..., ::-1, :]``, a view). Its own inverse, so it converts both ways (module docstring)."""
    return np.asarray(a)[..., ::-1, :]


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in MRC_SUFFIXES:
        return "MRC"
    if suffix in TIFF_SUFFIXES:
        return "EER" if suffix == ".eer" else "TIFF"
    if suffix in (".dm4", ".dm3"):
        raise FormatError(path, None, f"{suffix} files are not read here; convert to MRC (IMOD: dm2mrc) or TIFF")
    # unknown suffix (and .gain, which SerialEM and EPU write as a TIFF): sniff the first bytes
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if suffix == ".gain":
        raise FormatError(path, None, "a .gain file that is not a TIFF: not read here; convert it to MRC or TIFF")
    return "MRC"


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FormatError(path, None, "no such file")


def _tiff_error(path: Path, exc: Exception) -> FormatError:
    """A one-line error for what ``tifffile`` (or a codec) raised on a damaged or foreign file: the library's own
    text when it describes the file (tifffile's errors, a codec's), never a Python exception's name."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "imagecodecs" in text:
        return FormatError(path, "compression", f"{text.strip(chr(34))}: install it with 'pip install imagecodecs'")
    known = type(exc).__name__ in ("TiffFileError", "ValueError", "OSError", "EOFError") or \
        type(exc).__module__.startswith("imagecodecs")
    detail = f" ({text[:120]})" if known and text else ""
    return FormatError(path, "TIFF", f"damaged or not a TIFF: its image directory or data cannot be read{detail}")


@contextlib.contextmanager
def _quiet_tifffile() -> Any:
    """tifffile logs what it works around in a damaged file; the reader reports it as one FormatError instead."""
    log = logging.getLogger("tifffile")
    old = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(old)


def _check_tiff_chain(path: Path, tif: Any) -> None:
    """The chain of image directories complete: tifffile stops quietly at a directory beyond the end of a file cut
    short (an uncompressed TIFF stores each page's directory after its data), which would read as fewer frames."""
    pages = tif.pages
    n = len(pages)
    off = getattr(pages, "_nextpageoffset", None)
    if not off:
        return
    fh = tif.filehandle
    size = int(getattr(tif.tiff, "offsetsize", 4))
    try:
        fh.seek(int(off))
        raw = fh.read(size)
    except (OSError, ValueError):
        return
    if len(raw) < size:
        ptr = -1
    else:
        ptr = int.from_bytes(raw, "little" if tif.byteorder == "<" else "big")
    if ptr != 0:
        where = f"byte {ptr}" if ptr > 0 else "the end of the file"
        raise FormatError(path, f"page {n}", f"the image directory at {where} cannot be read (the file has "
                                             f"{path.stat().st_size} bytes): the file is cut short or damaged")


def _check_tiff_extent(path: Path, pages: Any) -> None:
    """Every page's image data inside the file: a TIFF cut short otherwise reads as zeros or garbage."""
    size = path.stat().st_size
    for i, page in enumerate(pages):
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        end = max((int(o) + int(c) for o, c in zip(offsets, counts)), default=0)
        if end > size:
            raise FormatError(path, f"page {i}", f"its image data end at byte {end} but the file has {size} bytes: "
                                                 "the file is cut short")
        if counts and not any(int(c) for c in counts):
            raise FormatError(path, f"page {i}", "no image data (byte counts 0): the file is damaged")


def _eer_pages(tif: tifffile.TiffFile) -> list[Any]:
    """The EER pages (fractions) of an open TIFF, in file order; empty when it is not an EER file."""
    first = tif.pages.first
    if int(first.compression) not in EER_COMPRESSIONS and not (len(tif.pages) > 1 and
                                                               int(tif.pages[1].compression) in EER_COMPRESSIONS):
        return []
    return [p for p in tif.pages if int(p.compression) in EER_COMPRESSIONS]


def _tiff_shape(path: Path) -> tuple[tuple[int, int, int], np.dtype, str]:
    """``((n, ny, nx), dtype, compression name)`` of a TIFF movie; for EER ``n`` is the number of fractions
    and the dtype uint8 (0/1 events per pixel and fraction)."""
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            eer = _eer_pages(tif) if tif.pages else []
            if not len(tif.pages):
                raise FormatError(path, "TIFF", "no image in the file")
            _check_tiff_chain(path, tif)
            _check_tiff_extent(path, eer or tif.pages)
            if eer:
                ny, nx = (int(v) for v in eer[0].shape[-2:])
                return (len(eer), ny, nx), np.dtype(np.uint8), eer[0].compression.name
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


def eer_fractions_per_frame(
    n_fractions: int,
    fractions_per_frame: int,
    *,
    group_exposure_e_A2: float | None = None,
    movie_dose_e_A2: float | None = None,
) -> int:
    """How many EER fractions make one frame: ``fractions_per_frame`` (the tutorial's "EER fraction"), or,
    when ``group_exposure_e_A2`` (e⁻/Å² per frame, the tutorial's "EER group exposure") and the movie's dose
    ``movie_dose_e_A2`` (e⁻/Å², all fractions) are both given and positive, the number of fractions that
    received that exposure: ``round(group_exposure / (movie_dose / n_fractions))``. Clipped to
    ``1 .. n_fractions`` (a movie always gives at least one frame)."""
    n = max(int(n_fractions), 1)
    k = int(fractions_per_frame)
    if group_exposure_e_A2 and movie_dose_e_A2 and group_exposure_e_A2 > 0 and movie_dose_e_A2 > 0:
        k = int(round(float(group_exposure_e_A2) / (float(movie_dose_e_A2) / n)))
    return int(min(max(k, 1), n))


def _eer_dtype(k: int) -> np.dtype:
    return np.dtype(np.uint8 if k <= 255 else np.uint16)


def read_movie_header(
    path: str | PathLike[str], *, strict: bool = True, eer_fractions_per_frame: int | None = None
) -> tuple[int, int, int, str]:
    """``(n_frames, ny, nx, dtype)`` of a movie without reading its pixels (MRC/MRCS, TIFF or EER).

    A single 2D image counts as one frame. For an EER movie: with ``eer_fractions_per_frame = k`` the number
    of frames after grouping, ``max(n_fractions // k, 1)`` (dtype ``uint8``, or ``uint16`` for k > 255),
    as :func:`read_movie` returns them; without it (``None``) the number of raw fractions (dtype ``uint8``).
    ``eer_fractions_per_frame`` is ignored for other formats. Errors (:class:`FormatError`) name the file.
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
    shape, dtype, compression = _tiff_shape(p)
    if compression.startswith("EER") and eer_fractions_per_frame is not None:
        k = _check_grouping(p, eer_fractions_per_frame)
        return max(shape[0] // k, 1), shape[1], shape[2], _eer_dtype(k).name
    return shape[0], shape[1], shape[2], dtype.name


def _check_grouping(p: Path, k: int) -> int:
    if int(k) < 1:
        raise FormatError(p, "EER fraction", f"{k} fractions per frame: must be at least 1")
    return int(k)


def _read_eer(p: Path, k: int | None, *, total: bool = False) -> np.ndarray:
    """Decode an EER file page by page (physical pixels). ``k`` fractions per frame (``None``: every
    fraction its own frame); ``total``: only the sum of all fractions ``(ny, nx)`` uint32. Returned in the
    MRC frame (rows flipped, :func:`tiff_rows`)."""
    try:
        with tifffile.TiffFile(p) as tif:
            pages = _eer_pages(tif)
            if not pages:
                raise FormatError(p, "compression", "no EER pages (compression 65000-65002) in this file")
            ny, nx = (int(v) for v in pages[0].shape[-2:])
            n = len(pages)
            if total:
                out = np.zeros((ny, nx), np.uint32)
                for page in pages:
                    out += page.asarray()
                return np.ascontiguousarray(tiff_rows(out))
            kk = 1 if k is None else min(_check_grouping(p, k), n)
            n_frames = n // kk
            out = np.zeros((n_frames, ny, nx), _eer_dtype(kk))
            for i, page in enumerate(pages[: n_frames * kk]):
                ev = page.asarray()
                if ev.shape != (ny, nx):
                    raise FormatError(p, "shape", f"EER fraction {i} is {ev.shape[-1]}×{ev.shape[-2]} px, the "
                                      f"first is {nx}×{ny}")
                out[i // kk] += ev
            return np.ascontiguousarray(tiff_rows(out))
    except FormatError:
        raise
    except Exception as exc:
        raise _tiff_error(p, exc) from exc


def read_movie(
    path: str | PathLike[str], *, strict: bool = True, eer_fractions_per_frame: int | None = None
) -> np.ndarray:
    """Read all frames of a movie: ``(n_frames, ny, nx)`` in the stored dtype (MRC/MRCS, TIFF or EER), in the
    MRC frame (TIFF and EER rows flipped in Y as IMOD reads them; module docstring).

    EER: the fractions decoded one page at a time at the physical pixel size and summed into frames of
    ``eer_fractions_per_frame`` fractions (``uint8`` counts, ``uint16`` above 255 fractions per frame); the
    last ``n_fractions % k`` fractions are left out. Without a grouping every fraction is a frame: fine for
    tests, but a real Falcon movie then needs (fractions × 16 MB) of memory; give the grouping, or use
    :func:`read_movie_sum` for the sum. ``eer_fractions_per_frame`` is ignored for other formats.
    """
    p = Path(path)
    _check_exists(p)
    if _format_of(p) == "MRC":
        data, info = mrc.read_mrc(p, strict=strict)
        if data.ndim == 4:
            raise FormatError(p, "ispg", f"a stack of volumes ({data.shape}), not a movie")
        arr = np.asarray(data)
        return arr[None] if arr.ndim == 2 else arr
    shape, _, compression = _tiff_shape(p)
    if compression.startswith("EER"):
        return _read_eer(p, eer_fractions_per_frame)
    try:
        arr = np.asarray(tifffile.imread(p)).reshape(shape)
    except Exception as exc:
        raise _tiff_error(p, exc) from exc
    return np.ascontiguousarray(tiff_rows(arr))


def read_movie_sum(path: str | PathLike[str], *, strict: bool = True) -> np.ndarray:
    """The sum of all frames of a movie, ``(ny, nx)`` float64, read one frame (EER: one fraction) at a time,
    so that a long movie never sits in memory whole: the raw frame sum for previews and for the gain's
    orientation (:func:`tomoguide.compute.gain.detect_orientation`). For EER every fraction counts (no
    grouping, nothing left out). In the MRC frame, as :func:`read_movie`."""
    p = Path(path)
    _check_exists(p)
    if _format_of(p) == "MRC":
        data, _ = mrc.read_mrc(p, mmap=True, strict=strict)
        if data.ndim == 4:
            raise FormatError(p, "ispg", f"a stack of volumes ({data.shape}), not a movie")
        if data.ndim == 2:
            return np.asarray(data, dtype=np.float64)
        out = np.zeros(data.shape[-2:], np.float64)
        for j in range(data.shape[0]):
            out += data[j]
        return out
    shape, _, compression = _tiff_shape(p)
    if compression.startswith("EER"):
        return _read_eer(p, None, total=True).astype(np.float64)
    try:
        with tifffile.TiffFile(p) as tif:
            if len(tif.series[0].pages) == shape[0]:
                out = np.zeros(shape[1:], np.float64)
                for page in tif.series[0].pages:
                    out += np.asarray(page.asarray()).reshape(shape[1:])
                return np.ascontiguousarray(tiff_rows(out))
            arr = tif.series[0].asarray()
    except Exception as exc:
        raise _tiff_error(p, exc) from exc
    return np.ascontiguousarray(tiff_rows(np.asarray(arr, dtype=np.float64).reshape(shape).sum(axis=0)))


def _atomic_tmp(p: Path) -> Path:
    return p.with_name(f".{p.name}.{os.getpid()}.tmp{p.suffix}")


def write_movie_tiff(path: str | PathLike[str], frames: np.ndarray, *, compression: str | None = "lzw") -> None:
    """Write frames ``(n_frames, ny, nx)`` (or one ``(ny, nx)`` frame) in the MRC frame as a multi-page TIFF,
    one page per frame, dtype kept, the rows stored top row first as SerialEM stores them (:func:`tiff_rows`),
    so that :func:`read_movie` gives ``frames`` back and IMOD shows the file like the same frames saved as
    MRC; ``compression`` ``"lzw"`` (what SerialEM writes; needs ``imagecodecs``), ``"zlib"`` (lossless, no
    extra package) or ``None``. Atomic."""
    p = Path(path)
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{p}: frames must be (n_frames, ny, nx), got shape {arr.shape}")
    tmp = _atomic_tmp(p)
    try:
        tifffile.imwrite(tmp, np.ascontiguousarray(tiff_rows(arr)), compression=compression,
                         photometric="minisblack")
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_gain_tiff(path: str | PathLike[str], gain: np.ndarray) -> None:
    """Write a gain reference ``(ny, nx)``, an array as :func:`read_gain` returns it before any orientation
    switch (MRC frame), as a single-page float32 TIFF (uncompressed), top row first (:func:`tiff_rows`).
    Atomic."""
    p = Path(path)
    g = np.asarray(gain, dtype=np.float32)
    if g.ndim != 2:
        raise ValueError(f"{p}: a gain reference is one (ny, nx) image, got shape {g.shape}")
    tmp = _atomic_tmp(p)
    try:
        tifffile.imwrite(tmp, np.ascontiguousarray(tiff_rows(g)), photometric="minisblack")
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
    keep_bad: bool = False,
) -> np.ndarray:
    """Read a gain reference (MRC or TIFF) as ``(ny, nx)`` float32, oriented to match the movies.

    The stored image is first taken into the MRC frame like the movies (TIFF rows flipped in Y; module
    docstring), so a TIFF gain and the TIFF or EER movies it was recorded with keep the relation they have on
    disk, and an MRC gain written by SerialEM (CountRef) matches its TIFF frames as it matches MRC frames.
    Order of operations (as RELION and Warp apply them; :func:`tomoguide.compute.gain.apply_orientation`):
    **transpose first** (``g.T``: the pixel at ``(y, x)`` moves to ``(x, y)``), **then flip X** (mirror
    columns, ``x -> nx - 1 - x``), **then flip Y** (mirror rows, ``y -> ny - 1 - y``). Zero, negative or
    non-finite gain values are an error (field ``gain``, with how many pixels) when ``strict``; otherwise a
    warning, and they are replaced by the median of the valid pixels. ``keep_bad``: return them as stored,
    with no error or warning (for :func:`tomoguide.compute.gain.detect_orientation`, which masks them).
    """
    from tomoguide.compute.gain import apply_orientation

    p = Path(path)
    _check_exists(p)
    fmt = _format_of(p)
    if fmt == "MRC":
        data, _ = mrc.read_mrc(p, strict=strict)
        g = np.asarray(data)
    else:
        _tiff_shape(p)  # the structure checked first (a file cut short, a damaged directory)
        try:
            g = np.asarray(tifffile.imread(p))
        except Exception as exc:
            raise _tiff_error(p, exc) from exc
    g = np.squeeze(g)
    if g.ndim != 2:
        raise FormatError(p, "shape", f"a gain reference is one 2D image, this file holds shape {g.shape}")
    if fmt != "MRC":
        g = tiff_rows(g)  # a TIFF (.tif/.tiff/.gain) gain in the MRC frame, as its movies are read
    g = np.ascontiguousarray(apply_orientation(g.astype(np.float32, copy=True), transpose, flip_x, flip_y))
    if keep_bad:
        return g
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
