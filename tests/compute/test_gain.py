"""Gain orientation: the 8 operations against read_gain, and the orientation detected from raw frame sums
(simulated counts with a known gain, the simulator's tiny preset) with its confidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage

from tomoguide.compute import gain as G
from tomoguide.compute import simulate
from tomoguide.compute.io import movies, mrc


def _stored_for(truth: np.ndarray, o: tuple[bool, bool, bool]) -> np.ndarray:
    """The array to store so that ``apply_orientation(stored, *o) == truth`` (the inverse operations in
    reverse order)."""
    t, fx, fy = o
    s = truth
    if fy:
        s = s[::-1, :]
    if fx:
        s = s[:, ::-1]
    if t:
        s = s.T
    return np.ascontiguousarray(s)


def _raw_sum(gain_cam: np.ndarray, rng: np.random.Generator, counts: float = 60.0,
             contrast: float = 0.3) -> np.ndarray:
    """Raw (uncorrected) counts ``Poisson(counts · I / gain)`` of a smooth specimen-like image ``I``."""
    w = scipy.ndimage.gaussian_filter(rng.standard_normal(gain_cam.shape), 6.0)
    img = np.clip(1.0 + contrast * w / w.std(), 0.05, None)
    return rng.poisson(counts * img / gain_cam).astype(np.float64)


def test_the_eight_orientations_are_read_gains() -> None:
    assert len(set(G.ORIENTATIONS)) == 8 and G.ORIENTATIONS[0] == (False, False, False)
    assert len({G.orientation_name(*o) for o in G.ORIENTATIONS}) == 8
    assert G.orientation_name(True, False, True) == "transpose + flip Y"
    y, x = np.mgrid[0:3, 0:5]
    g = (1.0 + 10.0 * y + x).astype(np.float32)  # every pixel distinct, no symmetry
    images = set()
    for o in G.ORIENTATIONS:
        out = G.apply_orientation(g, *o)
        images.add(out.tobytes() + bytes(out.shape))
        assert out.shape == ((5, 3) if o[0] else (3, 5))
        # the inverse used by the tests really inverts
        np.testing.assert_array_equal(G.apply_orientation(_stored_for(out, o), *o), out)
    assert len(images) == 8  # 8 different images
    # transpose first, then flip X, then flip Y: out[a, b] = g[ny-1-b, nx-1-a] for all three
    a, b = np.mgrid[0:5, 0:3]
    np.testing.assert_array_equal(G.apply_orientation(g, True, True, True)[a, b], g[2 - b, 4 - a])


def test_apply_orientation_equals_read_gain(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    g = rng.uniform(0.5, 1.5, (6, 9)).astype(np.float32)
    path = tmp_path / "gain.mrc"
    mrc.write_mrc(path, g, 1.0)
    for o in G.ORIENTATIONS:
        t, fx, fy = o
        np.testing.assert_array_equal(movies.read_gain(path, transpose=t, flip_x=fx, flip_y=fy),
                                      G.apply_orientation(g, *o))


def test_bin_gain_2x_is_the_harmonic_mean() -> None:
    g = np.array([[1.0, 2.0, 1.0, 1.0], [4.0, 4.0, 1.0, 0.0]], np.float32)
    out = G.bin_gain_2x(g)
    assert out.shape == (1, 2)
    assert out[0, 0] == pytest.approx(4.0 / (1 + 0.5 + 0.25 + 0.25))
    assert np.isnan(out[0, 1])  # a dead sub-pixel spoils its block
    with pytest.raises(ValueError, match="even"):
        G.bin_gain_2x(np.ones((3, 4)))


@pytest.mark.parametrize("o", G.ORIENTATIONS, ids=[G.orientation_name(*o) for o in G.ORIENTATIONS])
def test_every_orientation_detected_on_a_non_square_camera(o: tuple[bool, bool, bool]) -> None:
    """A 192 × 256 camera: the stored gain is (256, 192) for the transposed orientations, so 4 candidates."""
    rng = np.random.default_rng(11)
    cam = simulate.make_gain_reference((192, 256), rng)
    raw = _raw_sum(cam, rng)
    res = G.detect_orientation(raw, _stored_for(cam, o))
    assert res.switches == o, res.describe()
    assert res.decided and res.confidence > 15.0, res.describe()
    assert len(res.scores) == 8 and res.score == max(res.scores.values())  # 4 orientations × (gain, inverse)
    assert not res.inverted
    assert res.name == G.orientation_name(*o) and res.second != res.name
    assert res.gain_binning == res.frames_binning == 1 and res.n_pixels > 0.9 * raw.size
    d = res.to_dict()
    assert d["name"] == res.name and d["transpose"] == o[0] and d["scores"] == res.scores


def test_every_orientation_on_the_tiny_preset(tiny_dataset: Path) -> None:
    """The simulator's movies (specimen, CTF, hot pixels, X-ray hits, 7 tilts × 4 frames, ~12 counts per pixel
    per tilt) with the true gain stored in each of the 8 orientations: all found, with high confidence."""
    raw = sum(movies.read_movie(m).astype(np.float64).sum(axis=0)
              for m in sorted((tiny_dataset / "data").glob("TS_01/*.mrc")))
    cam = movies.read_gain(tiny_dataset / "data" / "gain.mrc", flip_x=True)  # summary.json: stored flipped in X
    confidences = []
    for o in G.ORIENTATIONS:
        res = G.detect_orientation(raw, _stored_for(cam, o))
        assert res.switches == o and res.decided, res.describe()
        assert len(res.scores) == 16 and not res.inverted
        confidences.append(res.confidence)
    assert min(confidences) > 20.0, confidences
    # the stored file as it is: flip X (the preset's convention)
    res = G.detect_orientation(raw, movies.read_gain(tiny_dataset / "data" / "gain.mrc"))
    assert res.switches == (False, True, False) and res.decided
    # a single movie (4 frames, ~12 counts per pixel) still decides
    one = movies.read_movie(sorted((tiny_dataset / "data").glob("TS_01/*.mrc"))[0]).astype(np.float64).sum(0)
    res1 = G.detect_orientation(one, _stored_for(cam, (True, False, True)))
    assert res1.switches == (True, False, True) and res1.decided, res1.describe()


def test_uniform_or_unrelated_gain_is_undecided() -> None:
    rng = np.random.default_rng(3)
    cam = simulate.make_gain_reference((256, 256), rng)
    raw = _raw_sum(cam, rng)
    flat = G.detect_orientation(raw, np.ones((256, 256), np.float32))
    assert not flat.decided and flat.confidence == 0.0 and flat.switches == (False, False, False)
    assert flat.describe().startswith("undecided")
    other = simulate.make_gain_reference((256, 256), np.random.default_rng(99), column_sigma=0.0,
                                         smooth_amplitude=0.0)
    res = G.detect_orientation(raw, other)
    assert not res.decided and res.confidence < G.MIN_CONFIDENCE, res.describe()
    # the movies are already gain-corrected (flat counts): nothing to find either
    flat_raw = rng.poisson(60.0, (256, 256)).astype(np.float64)
    assert not G.detect_orientation(flat_raw, cam).decided


def test_super_resolution_gain_and_movies() -> None:
    rng = np.random.default_rng(5)
    cam_sr = simulate.make_gain_reference((256, 384), rng, pixel_sigma=0.06)  # super-resolution sub-pixels
    cam = G.bin_gain_2x(cam_sr)  # the counted pixels' gain (128, 192)
    raw = _raw_sum(cam.astype(np.float64), rng)
    o = (True, False, True)
    res = G.detect_orientation(raw, _stored_for(cam_sr, o))
    assert res.switches == o and res.decided and res.gain_binning == 2, res.describe()
    assert "super-resolution" in res.describe()
    # movies at twice the gain's size (super-resolution movies, counted gain): the raw sum is binned
    raw_sr = _raw_sum(cam_sr.astype(np.float64), rng, counts=15.0)
    o2 = (False, True, True)
    res2 = G.detect_orientation(raw_sr, _stored_for(cam, o2))
    assert res2.switches == o2 and res2.decided and res2.frames_binning == 2, res2.describe()


def test_dead_pixels_hot_pixels_and_empty_regions() -> None:
    rng = np.random.default_rng(7)
    cam = simulate.make_gain_reference((200, 200), rng)
    raw = _raw_sum(cam, rng)
    raw[:, :30] = 0.0  # a region without counts (beam edge)
    raw[rng.integers(0, 200, 40), rng.integers(30, 200, 40)] += 5000.0  # hot pixels
    o = (False, False, True)
    stored = _stored_for(cam, o).astype(np.float32)
    stored[:, 77] = 0.0  # a dead column
    stored[rng.integers(0, 200, 300), rng.integers(0, 200, 300)] = np.nan
    stored[5, 5] = -1.0
    res = G.detect_orientation(raw, stored)
    assert res.switches == o and res.decided and res.confidence > 10.0, res.describe()
    assert res.n_pixels < 0.85 * raw.size  # the empty region and the bad pixels took no part


def test_shapes_that_fit_no_orientation() -> None:
    with pytest.raises(ValueError, match=r"gain is 100 x 120 .* frames are 100 x 110"):
        G.detect_orientation(np.ones((100, 110)), np.ones((100, 120)))
    with pytest.raises(ValueError, match="2D"):
        G.detect_orientation(np.ones((2, 10, 10)), np.ones((10, 10)))


def test_a_file_holding_the_inverse_gain() -> None:
    """A sensitivity map instead of a gain (raw ∝ file; Thermo Fisher's MRC gain references for EER): found as
    the inverse, in the right orientation; invert_gain turns it into the multiplicative gain."""
    rng = np.random.default_rng(17)
    cam = simulate.make_gain_reference((160, 224), rng)
    raw = _raw_sum(cam, rng)
    o = (True, True, False)
    stored = _stored_for((1.0 / cam).astype(np.float32), o)
    stored[3, 4] = 0.0  # a defect
    res = G.detect_orientation(raw, stored)
    assert res.switches == o and res.inverted and res.decided, res.describe()
    assert res.name == "transpose + flip X" + G.INVERSE_SUFFIX and res.name in res.scores
    plain = G.detect_orientation(raw, _stored_for(cam, o))  # the same gain stored as a gain: not inverted
    assert plain.switches == o and not plain.inverted
    assert res.confidence == pytest.approx(plain.confidence, rel=0.3)
    oriented = G.apply_orientation(stored, *o)
    g = G.invert_gain(oriented)
    assert g.dtype == np.float32 and np.array_equal(g == 0, oriented == 0)  # the defect stays a defect, alone
    ok = g > 0
    ratio = g[ok] / cam[ok]  # the gain up to a common factor (mean of the file ≈ 1)
    np.testing.assert_allclose(ratio / ratio.mean(), 1.0, rtol=1e-5)
    assert abs(ratio.mean() - 1.0) < 0.01
