"""EER movies (Falcon electron events): decoded and grouped exactly against the events this test encodes.

The EER files are written here by hand, independent of tomoguide and of tifffile's writer: a little-endian
BigTIFF with one strip per fraction, compression 65001 (7-bit runs, 2 + 2 sub-pixel bits) or 65000 (8-bit
runs), no BitsPerSample, and Thermo Fisher's XML acquisition metadata in tag 65001 (what makes tifffile call
the file EER). The bit stream follows the EER documentation as imagecodecs reads it: codes read least
significant bit first; a run of ``skip`` empty pixels, then (unless the run is all ones, which only skips)
the sub-pixel bits of one event on the pixel the run reached; the next run starts after that pixel.

Row order: the events are numbered in raster order from the first stored row (what tifffile returns); tomoguide
returns EER frames in the MRC frame, flipped in Y, as IMOD reads EER (libiimod/iitif.c convertEERpositions: an
event at raster row r goes to ``y = ny - 1 - r``) and as it reads every TIFF. The expected arrays below are the
encoded events with their rows reversed (``ev[..., ::-1, :]``).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tomoguide.compute.io import movies
from tomoguide.compute.io.errors import FormatError

pytest.importorskip("imagecodecs")

_BITS = {65000: (8, 2, 2), 65001: (7, 2, 2)}


def eer_encode(events: np.ndarray, compression: int = 65001, rng: np.random.Generator | None = None) -> bytes:
    """One fraction ``(ny, nx)`` of 0/1 events as an EER bit stream (random sub-pixel bits), even length."""
    skip_bits, hb, vb = _BITS[compression]
    full = (1 << skip_bits) - 1
    codes: list[tuple[int, int]] = []
    pos = 0
    for p in np.flatnonzero(np.asarray(events).ravel()):
        run = int(p) - pos
        while run >= full:
            codes.append((full, skip_bits))
            run -= full
        sub = int(rng.integers(0, 1 << (hb + vb))) if rng is not None else 0
        codes.append((run | (sub << skip_bits), skip_bits + hb + vb))
        pos = int(p) + 1
    rest = events.size - pos
    while rest > 0:  # runs to the last pixel end the stream
        c = min(rest, full)
        codes.append((c, skip_bits))
        rest -= c
        if c < full:
            break
    acc, shift = 0, 0
    for value, n in codes:
        acc |= value << shift
        shift += n
    nbytes = (shift + 7) // 8 + 4
    return acc.to_bytes(nbytes + nbytes % 2, "little")


def write_eer(path: Path, fractions: np.ndarray, compression: int = 65001, integrated_first: bool = False,
              seed: int = 0) -> None:
    """A BigTIFF EER file: one page per fraction ``(n, ny, nx)`` 0/1; optionally a first uncompressed
    uint16 page (the integrated image some versions write)."""
    rng = np.random.default_rng(seed)
    n, ny, nx = fractions.shape
    meta = (b'<metadata><item name="numberOfFrames">' + str(n).encode() + b'</item>'
            b'<item name="sensorPixelSize.width" unit="m">1.0e-10</item></metadata>')
    strips = [eer_encode(f, compression, rng) for f in fractions]
    pages: list[tuple[bytes, int, int | None]] = [(s, compression, None) for s in strips]
    if integrated_first:
        pages.insert(0, (fractions.sum(axis=0).astype("<u2").tobytes(), 1, 16))
    out = bytearray(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
    prev_next = 8  # where the offset of the next IFD is written
    for k, (strip, comp, bps) in enumerate(pages):
        data_off = len(out)
        out += strip
        if len(out) % 2:
            out += b"\0"
        blob_off = None
        if k == 0 or (integrated_first and k == 1):
            blob_off = len(out)
            out += meta + (b"\0" if len(meta) % 2 else b"")
        tags: list[tuple[int, int, int, bytes]] = [  # (tag, type, count, 8-byte value or offset)
            (256, 4, 1, struct.pack("<I", nx) + b"\0" * 4),
            (257, 4, 1, struct.pack("<I", ny) + b"\0" * 4),
            (259, 3, 1, struct.pack("<H", comp) + b"\0" * 6),
            (262, 3, 1, struct.pack("<H", 1) + b"\0" * 6),
            (273, 16, 1, struct.pack("<Q", data_off)),
            (277, 3, 1, struct.pack("<H", 1) + b"\0" * 6),
            (278, 4, 1, struct.pack("<I", ny) + b"\0" * 4),
            (279, 16, 1, struct.pack("<Q", len(strip))),
        ]
        if bps is not None:
            tags.append((258, 3, 1, struct.pack("<H", bps) + b"\0" * 6))
        if blob_off is not None:
            tags.append((65001, 7, len(meta), struct.pack("<Q", blob_off)))
        tags.sort()
        ifd_off = len(out)
        out[prev_next:prev_next + 8] = struct.pack("<Q", ifd_off)
        out += struct.pack("<Q", len(tags))
        for tag, typ, count, value in tags:
            out += struct.pack("<HHQ", tag, typ, count) + value
        prev_next = len(out)
        out += struct.pack("<Q", 0)
    path.write_bytes(bytes(out))


def _events(n: int, ny: int, nx: int, rate: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = (rng.random((n, ny, nx)) < rate).astype(np.uint8)
    ev[0, -1, -1] = 1  # an event on the very last pixel
    ev[1] = 0  # an empty fraction
    ev[2, 0, :] = 1  # a full row: runs of 0 between events
    return ev


@pytest.mark.parametrize("compression", [65001, 65000])
def test_eer_decoded_exactly(tmp_path: Path, compression: int) -> None:
    ev = _events(20, 70, 300, 0.03, 1)  # rows longer than the 127-pixel run limit
    path = tmp_path / "movie.eer"
    write_eer(path, ev, compression)
    with tifffile.TiffFile(path) as tif:  # the file is what tifffile calls EER (the oracle agrees)
        assert tif.is_eer and int(tif.pages[0].compression) == compression
        np.testing.assert_array_equal(np.stack([p.asarray() for p in tif.pages]).astype(np.uint8), ev)
    assert movies.read_movie_header(path) == (20, 70, 300, "uint8")  # raw fractions without a grouping
    every = movies.read_movie(path)
    assert every.dtype == np.uint8 and every.flags.c_contiguous
    np.testing.assert_array_equal(every, ev[:, ::-1, :])  # IMOD's y = ny - 1 - raster row
    assert every[0, 0, -1] == 1 and every[2, -1, :].all()  # the last pixel's event is bottom right in MRC
    np.testing.assert_array_equal(movies.read_movie_sum(path), ev.sum(axis=0)[::-1].astype(np.float64))
    d = movies.describe(path)
    assert d["format"] == "EER" and d["n_frames"] == 20 and d["compression"].startswith("EER")


def test_eer_grouping_into_frames(tmp_path: Path) -> None:
    ev = _events(50, 40, 64, 0.2, 2)
    path = tmp_path / "g.eer"
    write_eer(path, ev)
    for k in (1, 7, 16, 50, 80):
        n = max(50 // k, 1)
        assert movies.read_movie_header(path, eer_fractions_per_frame=k) == (n, 40, 64, "uint8")
        frames = movies.read_movie(path, eer_fractions_per_frame=k)
        kk = min(k, 50)
        expected = ev[: n * kk].reshape(n, kk, 40, 64).sum(axis=1)[:, ::-1]  # the last 50 % k left out; MRC rows
        assert frames.shape == (n, 40, 64) and frames.dtype == np.uint8
        np.testing.assert_array_equal(frames, expected)
    with pytest.raises(FormatError, match=r"g\.eer: EER fraction: 0 fractions per frame"):
        movies.read_movie(path, eer_fractions_per_frame=0)


def test_eer_with_an_integrated_first_page(tmp_path: Path) -> None:
    ev = _events(6, 32, 48, 0.1, 3)
    path = tmp_path / "i.eer"
    write_eer(path, ev, integrated_first=True)
    assert movies.read_movie_header(path) == (6, 32, 48, "uint8")
    np.testing.assert_array_equal(movies.read_movie(path, eer_fractions_per_frame=3),
                                  ev.reshape(2, 3, 32, 48).sum(axis=1)[:, ::-1])


def test_eer_fractions_per_frame_from_the_group_exposure() -> None:
    assert movies.eer_fractions_per_frame(400, 16) == 16
    # 400 fractions for 3 e/Å²: 0.0075 e/Å² each; 0.3 e/Å² per frame = 40 fractions
    assert movies.eer_fractions_per_frame(400, 16, group_exposure_e_A2=0.3, movie_dose_e_A2=3.0) == 40
    assert movies.eer_fractions_per_frame(400, 16, group_exposure_e_A2=0.3, movie_dose_e_A2=None) == 16
    assert movies.eer_fractions_per_frame(10, 16) == 10  # at least one frame
    assert movies.eer_fractions_per_frame(400, 16, group_exposure_e_A2=1e-6, movie_dose_e_A2=3.0) == 1


def test_movie_sum_of_other_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    frames = rng.poisson(3.0, (5, 12, 20)).astype(np.uint16)
    movies.write_movie_tiff(tmp_path / "m.tif", frames)
    movies.write_movie_mrc(tmp_path / "m.mrc", frames, 1.0)
    for name in ("m.tif", "m.mrc"):
        s = movies.read_movie_sum(tmp_path / name)
        assert s.dtype == np.float64
        np.testing.assert_array_equal(s, frames.sum(axis=0))
