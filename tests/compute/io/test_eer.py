"""The EER writer (Falcon 4 movies for the simulator) against an independent decoder: imagecodecs'
``eer_decode`` (C, from Thermo Fisher's EER documentation) and tifffile's EER support (page layout, tag 65001
metadata)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from tomoguide.compute.io import eer


def _decode(strip: bytes, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(imagecodecs.eer_decode(strip, shape, 7, 2, 2), dtype=np.uint8)  # 65001: 7-bit runs


def test_encode_fraction_edge_cases_decode_exactly() -> None:
    shape = (7, 300)  # 2100 px: runs across rows, runs of exactly 127 and 254 pixels, long empty stretches
    n = shape[0] * shape[1]
    cases = {
        "empty": [],
        "first pixel": [0],
        "last pixel": [n - 1],
        "first and last": [0, n - 1],
        "run of 127": [127],
        "runs of 127 and 254": [0, 128, 383],
        "neighbours": [10, 11, 12, 13],
        "run of 126 then 127": [126, 254],
    }
    for name, idx in cases.items():
        ev = np.zeros(n, np.uint8)
        ev[idx] = 1
        strip = eer.encode_fraction(ev.reshape(shape))
        assert len(strip) % 8 == 0, name
        np.testing.assert_array_equal(_decode(strip, shape).ravel(), ev, err_msg=name)
    full = np.ones(shape, bool)
    np.testing.assert_array_equal(_decode(eer.encode_fraction(full), shape), full)
    rng = np.random.default_rng(4)
    for density in (0.001, 0.1, 0.7):
        ev = rng.random(shape) < density
        np.testing.assert_array_equal(_decode(eer.encode_fraction(ev), shape), ev)


def test_encode_counts_splits_frames_exactly_and_uniformly() -> None:
    rng = np.random.default_rng(0)
    shape = (200, 333)
    counts = rng.poisson(2.0, shape).clip(0, 16)
    counts[0, 0], counts[-1, -1], counts[5, 7] = 16, 16, 1
    strips = eer.encode_counts(counts, 16, rng)
    frac = np.stack([_decode(s, shape) for s in strips])
    assert frac.shape == (16, *shape) and frac.max() == 1  # at most one event per pixel and fraction
    np.testing.assert_array_equal(frac.sum(axis=0), counts)  # the fractions add up to the frame exactly
    assert frac[:, 0, 0].all() and frac[:, -1, -1].all()
    # every fraction takes an equal share (binomial spread)
    share = frac.reshape(16, -1).sum(axis=1) / counts.sum()
    assert np.all(np.abs(share - 1 / 16) < 4 * np.sqrt(1 / 16 / counts.sum()))
    # pixels with two counts: each of the 120 pairs of fractions equally likely (neighbours not avoided or
    # favoured by the split)
    two = frac[:, counts == 2]
    pairs = np.array([[int(np.sum(two[i] & two[j])) for j in range(16)] for i in range(16)])
    expected = two.shape[1] / 120
    off = pairs[~np.eye(16, dtype=bool)]
    assert off.sum() == 2 * two.shape[1]
    assert np.all(np.abs(off - expected) < 5 * np.sqrt(expected)), (off.min(), off.max(), expected)
    # deterministic for the generator's state
    again = eer.encode_counts(counts, 16, np.random.default_rng(5))
    assert again == eer.encode_counts(counts, 16, np.random.default_rng(5))
    assert again != strips


def test_encode_rejects_what_eer_cannot_hold() -> None:
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="0..8"):
        eer.encode_counts(np.full((4, 4), 9), 8, rng)
    with pytest.raises(ValueError, match="at most one event"):
        eer.encode_fraction(np.full((4, 4), 2))
    with pytest.raises(ValueError, match="1..64"):
        eer.encode_counts(np.zeros((4, 4), int), 65, rng)


def test_write_eer_is_read_by_tifffile(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    shape = (96, 128)
    frames = rng.poisson(1.5, (3, *shape)).clip(0, 8)
    strips = [s for f in frames for s in eer.encode_counts(f, 8, rng)]
    when = datetime(2026, 1, 15, 9, 30, 0)
    path = tmp_path / "movie.eer"
    n = eer.write_eer(path, strips, shape, metadata={"exposureTime": (1.2, "s"), "totalDose": (3.0, "e/A^2"),
                                                     "sensorPixelSize.width": (2e-10, "m"), "mode": "Counting",
                                                     "timestamp": when})
    assert n == 24
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.is_eer
        assert all(int(p.compression) == eer.COMPRESSION_EER_7_2_2 for p in tif.pages)
        meta = tif.eer_metadata
        data = tif.asarray()
    assert meta["numberOfFrames"] == 24 and meta["sensorImageWidth"] == 128 and meta["sensorImageHeight"] == 96
    assert meta["exposureTime"] == pytest.approx(1.2) and meta["exposureTime.unit"] == "s"
    assert meta["sensorPixelSize.width"] == pytest.approx(2e-10) and meta["mode"] == "Counting"
    assert meta["timestamp"] == when
    assert data.shape == (24, *shape)
    np.testing.assert_array_equal(data.reshape(3, 8, *shape).sum(axis=1), frames)  # groups of 8 = the frames


def test_eer_movie_read_as_frames_by_the_movie_reader(tmp_path: Path) -> None:
    from tomoguide.compute.io import movies

    rng = np.random.default_rng(3)
    shape = (64, 80)
    frames = rng.poisson(2.0, (4, *shape)).clip(0, 16)
    path = tmp_path / "m.eer"
    # encoded in raster order (top row first, as a Falcon stores it); the reader returns the MRC frame (flipped)
    eer.write_eer(path, [s for f in frames for s in eer.encode_counts(movies.tiff_rows(f), 16, rng)], shape)
    got = movies.read_movie(path, eer_fractions_per_frame=16)
    np.testing.assert_array_equal(got, frames)
    np.testing.assert_array_equal(movies.read_movie_sum(path), frames.sum(0))
