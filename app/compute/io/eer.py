"""Writing Thermo Fisher EER movies (Falcon 4 electron-event representation), for the simulator.

File layout (what Falcon 4 cameras write and ``tifffile`` + ``imagecodecs`` read)
-------------------------------------------------------------------------------
* A little-endian **BigTIFF**; every page is one EER *fraction* (the camera's native frame, a few ms) of the
  sensor size, stored as ONE strip with compression **65001** (EER v1: 7-bit runs, 2 + 2 sub-pixel bits) and
  no ``BitsPerSample`` (readers take one bit per pixel: an event or none).
* Page 0 carries the acquisition metadata in tag **65001** (type UNDEFINED): an XML block
  ``<metadata><item name="..." unit="...">value</item>...</metadata>`` (``numberOfFrames``,
  ``sensorImageWidth``/``Height``, ``sensorPixelSize.width``/``height`` in m at the specimen, ``exposureTime``,
  ``totalDose``, ``mode``, ``cameraName``, ``commercialName``, ``timestamp``, ...). ``tifffile`` recognises an
  EER file by this tag (``TiffFile.is_eer``, ``eer_metadata``).

Event coding (the EER documentation, section 4, as ``imagecodecs.eer_decode`` reads it)
----------------------------------------------------------------------------------------
The strip is a bit stream read **least significant bit first**. Each code starts with a run of 7 bits: that
many pixels (raster order, x fastest) hold no event. A run of 127 (all ones) continues into the next code
with no event. Any other run is followed by 2 + 2 bits of sub-pixel position (x then y), and the event lies
on the pixel the run reached; the next run starts on the pixel after it, so a pixel holds at most one event
per fraction. After the last event a final run reaches the end of the image (a reader stops there), then
zero bits pad the strip to a multiple of 8 bytes. The sub-pixel bits written here are a fixed hash of the
pixel index (events at the physical pixel grid; no super-resolution information is simulated).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numba
import numpy as np

__all__ = ["COMPRESSION_EER_7_2_2", "encode_counts", "encode_fraction", "metadata_xml", "write_eer"]

COMPRESSION_EER_7_2_2 = 65001
_SKIP_BITS = 7
_SUB_BITS = 4  # 2 horizontal + 2 vertical


@numba.njit(cache=True, nogil=True, inline="always")
def _put(out: np.ndarray, f: int, bitpos: int, value: int) -> None:  # pragma: no cover - numba
    """OR ``value`` (< 2**17) into the LSB-first bit stream ``out[f]`` at bit ``bitpos``."""
    shifted = value << (bitpos & 7)
    b = bitpos >> 3
    out[f, b] |= shifted & 0xFF
    out[f, b + 1] |= (shifted >> 8) & 0xFF
    out[f, b + 2] |= (shifted >> 16) & 0xFF


@numba.njit(cache=True, nogil=True, inline="always")
def _event(out: np.ndarray, f: int, bitpos: int, last: int, i: int) -> int:  # pragma: no cover - numba
    """Append to stream ``out[f]`` the codes of an event at pixel ``i`` after the previous one (next free
    pixel ``last``); returns the new bit position."""
    maxrun = (1 << _SKIP_BITS) - 1
    run = i - last
    while run >= maxrun:
        _put(out, f, bitpos, maxrun)
        bitpos += _SKIP_BITS
        run -= maxrun
    sub = ((i * 2654435761) >> 13) & 0xF
    _put(out, f, bitpos, run | (sub << _SKIP_BITS))
    return bitpos + _SKIP_BITS + _SUB_BITS


@numba.njit(cache=True, nogil=True)
def _finish(out: np.ndarray, f: int, bitpos: int, last: int, n: int) -> int:  # pragma: no cover - numba
    """Final run to the end of the image and padding; returns the strip length in bytes (multiple of 8)."""
    maxrun = (1 << _SKIP_BITS) - 1
    run = n - last
    while run >= maxrun:
        _put(out, f, bitpos, maxrun)
        bitpos += _SKIP_BITS
        run -= maxrun
    _put(out, f, bitpos, run)
    bitpos += _SKIP_BITS
    # a reader takes a code only while a full code (11 bits) remains after it: pad past that, to 8 bytes
    nbytes = (bitpos + _SKIP_BITS + _SUB_BITS + 7) // 8
    return ((nbytes + 7) // 8) * 8


@numba.njit(cache=True, nogil=True)
def _encode_events(flat: np.ndarray, out: np.ndarray) -> int:  # pragma: no cover - numba
    bitpos = 0
    last = 0
    for i in range(flat.shape[0]):
        if flat[i] != 0:
            bitpos = _event(out, 0, bitpos, last, i)
            last = i + 1
    return _finish(out, 0, bitpos, last, flat.shape[0])


@numba.njit(cache=True, nogil=True)
def _encode_counts(counts: np.ndarray, seed: np.uint64, out: np.ndarray,
                   used: np.ndarray) -> None:  # pragma: no cover - numba
    """Spread each pixel's counts over distinct fractions (uniform draws, a fraction already taken drawn
    again; splitmix64 random numbers from ``seed``) and append the events to each fraction's stream
    ``out[f]``; ``used[f]`` receives the strip length of fraction f."""
    nf = out.shape[0]
    n = counts.shape[0]
    bitpos = np.zeros(nf, dtype=np.int64)
    last = np.zeros(nf, dtype=np.int64)
    state = seed
    golden = np.uint64(0x9E3779B97F4A7C15)
    m1 = np.uint64(0xBF58476D1CE4E5B9)
    m2 = np.uint64(0x94D049BB133111EB)
    one = np.uint64(1)
    for i in range(n):
        c = counts[i]
        if c == 0:
            continue
        mask = np.uint64(0)
        for _ in range(c):
            while True:  # a fraction this pixel has no event in yet (rejection: a uniform c-subset)
                state += golden
                z = state
                z = (z ^ (z >> np.uint64(30))) * m1
                z = (z ^ (z >> np.uint64(27))) * m2
                z = z ^ (z >> np.uint64(31))
                f = np.int64(((z >> np.uint64(32)) * np.uint64(nf)) >> np.uint64(32))  # uniform 0..nf-1
                if ((mask >> np.uint64(f)) & one) == 0:
                    break
            mask |= one << np.uint64(f)
            # each fraction's stream is independent: events stay in raster order within it
            bitpos[f] = _event(out, f, bitpos[f], last[f], i)
            last[f] = i + 1
    for f in range(nf):
        used[f] = _finish(out, f, bitpos[f], last[f], n)


def _bound(n_pixels: int, n_events: int) -> int:
    return (n_events * (_SKIP_BITS + _SUB_BITS) + (n_pixels // 127 + 2) * _SKIP_BITS) // 8 + 32


def encode_fraction(events: np.ndarray) -> bytes:
    """EER (compression 65001) strip of one fraction: ``events`` (ny, nx) bool or 0/1 integers, at most one
    event per pixel. Raises ``ValueError`` for other values."""
    a = np.asarray(events)
    if a.ndim != 2:
        raise ValueError(f"an EER fraction is one (ny, nx) image, got shape {a.shape}")
    flat = np.ascontiguousarray(a, dtype=np.uint8).reshape(-1)
    if flat.size and int(flat.max()) > 1:
        raise ValueError("an EER fraction holds at most one event per pixel (values 0 or 1)")
    out = np.zeros((1, _bound(flat.size, int(np.count_nonzero(flat)))), dtype=np.uint8)
    used = _encode_events(flat, out)
    return out[0, :used].tobytes()


def encode_counts(counts: np.ndarray, n_fractions: int, rng: np.random.Generator) -> list[bytes]:
    """EER strips of ``n_fractions`` fractions whose sum is the frame ``counts`` (ny, nx) (integers
    0..``n_fractions``): each pixel's ``c`` counts go to ``c`` distinct fractions, every choice equally likely
    (a fraction holds at most one event per pixel). Deterministic for ``rng`` (one draw seeds the split).
    Raises ``ValueError`` when a pixel holds more counts than fractions, or for more than 64 fractions."""
    c = np.asarray(counts)
    if c.ndim != 2:
        raise ValueError(f"a frame of counts is one (ny, nx) image, got shape {c.shape}")
    if not 1 <= n_fractions <= 64:
        raise ValueError(f"n_fractions must be 1..64, got {n_fractions}")
    if c.size and (int(c.min()) < 0 or int(c.max()) > n_fractions):
        raise ValueError(f"counts must lie in 0..{n_fractions} to split into {n_fractions} EER fractions "
                         f"(found {int(c.min())}..{int(c.max())})")
    flat = np.ascontiguousarray(c, dtype=np.int64).reshape(-1)
    out = np.zeros((n_fractions, _bound(flat.size, int(np.count_nonzero(flat)))), dtype=np.uint8)
    used = np.zeros(n_fractions, dtype=np.int64)
    seed = np.uint64(int(rng.integers(0, 2**63 - 1)))
    _encode_counts(flat, seed, out, used)
    return [out[f, :used[f]].tobytes() for f in range(n_fractions)]


def metadata_xml(items: dict[str, Any]) -> bytes:
    """The XML block of tag 65001: ``items`` maps a name to a value or to ``(value, unit)``; booleans are
    written ``Yes``/``No``, datetimes in ISO 8601."""
    lines = ["<metadata>"]
    for name, v in items.items():
        unit = None
        if isinstance(v, tuple):
            v, unit = v
        if isinstance(v, bool):
            text = "Yes" if v else "No"
        elif isinstance(v, datetime):
            text = v.isoformat()
        elif isinstance(v, float):
            text = f"{v:.9g}"
        else:
            text = str(v)
        attrs = f' name="{escape(name)}"' + (f' unit="{escape(unit)}"' if unit else "")
        lines.append(f"<item{attrs}>{escape(text)}</item>")
    lines.append("</metadata>")
    return "\n".join(lines).encode("utf-8")


# BigTIFF field types
_SHORT, _LONG, _UNDEFINED, _LONG8 = 3, 4, 7, 16
_TYPE_FMT = {_SHORT: "H", _LONG: "I", _LONG8: "Q"}


def _ifd(entries: list[tuple[int, int, int, Any]], out_of_line: dict[int, int]) -> bytes:
    """One BigTIFF IFD (without the next-IFD pointer): entries (tag, type, count, value); values longer
    than 8 bytes are given by their offset in ``out_of_line`` (tag -> offset)."""
    buf = [struct.pack("<Q", len(entries))]
    for tag, typ, count, value in sorted(entries, key=lambda e: e[0]):
        if tag in out_of_line:
            field = struct.pack("<Q", out_of_line[tag])
        elif typ == _UNDEFINED:
            field = bytes(value).ljust(8, b"\0")
        else:
            field = struct.pack("<" + _TYPE_FMT[typ], value).ljust(8, b"\0")
        buf.append(struct.pack("<HHQ", tag, typ, count) + field)
    return b"".join(buf)


def write_eer(
    path: str | PathLike[str],
    strips: Iterable[bytes],
    shape: tuple[int, int],
    *,
    metadata: dict[str, Any] | None = None,
) -> int:
    """Write EER fractions, given as encoded strips (:func:`encode_fraction`, :func:`encode_counts`) of
    ``shape`` (ny, nx), as a Falcon-style EER file (one page per fraction).

    ``metadata`` (see :func:`metadata_xml`) goes into tag 65001 of the first page; ``numberOfFrames`` and the
    sensor size are filled in when missing. The file is written atomically. Returns the number of fractions.
    """
    p = Path(path)
    strips = list(strips)
    if not strips:
        raise ValueError(f"{p}: no fractions to write")
    ny, nx = shape
    items = {"numberOfFrames": len(strips), "sensorImageHeight": (ny, "pixels"),
             "sensorImageWidth": (nx, "pixels")}
    items.update(metadata or {})
    xml = metadata_xml(items)

    buf = io.BytesIO()
    buf.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))  # BigTIFF header; first IFD offset patched below
    prev_next_ptr = 8
    for i, strip in enumerate(strips):
        strip_offset = buf.tell()
        buf.write(strip)
        out_of_line = {}
        entries: list[tuple[int, int, int, Any]] = [
            (256, _LONG, 1, nx), (257, _LONG, 1, ny), (259, _SHORT, 1, COMPRESSION_EER_7_2_2),
            (262, _SHORT, 1, 1), (273, _LONG8, 1, strip_offset), (277, _SHORT, 1, 1), (278, _LONG, 1, ny),
            (279, _LONG8, 1, len(strip)),
        ]
        if i == 0:
            out_of_line[65001] = buf.tell()
            buf.write(xml)
            buf.write(b"\0" * (-buf.tell() % 8))
            entries.append((65001, _UNDEFINED, len(xml), xml))
        ifd_offset = buf.tell()
        buf.write(_ifd(entries, out_of_line))
        next_ptr = buf.tell()
        buf.write(struct.pack("<Q", 0))
        buf.seek(prev_next_ptr)
        buf.write(struct.pack("<Q", ifd_offset))
        buf.seek(0, os.SEEK_END)
        prev_next_ptr = next_ptr
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(buf.getbuffer())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(strips)
