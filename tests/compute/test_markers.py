"""Alignment refinement with particles as markers (tomoguide.compute.markers), against synthetic truth."""

from __future__ import annotations


import numpy as np
import pytest

from tomoguide.compute import markers
from tomoguide.geometry import TiltSeriesGeometry, rotation_2d
from tomoguide.truth import origin_removed_shift_rms


def _blob_profile(sigma: float = 1.5, radius: int = 6) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(0.0, radius + 1e-9, 0.25)
    prof = -np.exp(-r * r / (2 * sigma * sigma))
    prof -= prof[-1]
    return r, prof


def _render(shape: tuple[int, int], uv: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Dark Gaussian blobs at absolute (x, y) positions ``uv`` (K, 2)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    out = np.zeros(shape)
    for u, v in uv:
        out -= np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma * sigma))
    return out


def test_overlapping_markers_are_located_apart() -> None:
    """Two blobs 3 px apart overlap. The neighbours' modelled images are taken away at their *predicted* places,
    so each blob is found at its own centre to the accuracy of those predictions (0.1 px off here: within
    0.05 px; a lone blob exactly). Fitted alone, without the neighbour model, the pair pulls each other by a
    tenth of a pixel or more. (The refinement's rounds make the predictions better and better.)"""
    truth = np.array([[30.3, 31.6], [33.1, 32.4], [12.0, 14.5]])
    image = _render((48, 48), truth)
    r, prof = _blob_profile()
    predicted = truth + np.array([[0.1, -0.05], [-0.06, 0.1], [0.7, 0.6]])
    found, amp = markers.locate_markers(image, predicted, r, prof, half_box=4, max_move_px=2.0)
    np.testing.assert_allclose(found[:2], truth[:2], atol=0.05)
    np.testing.assert_allclose(found[2], truth[2], atol=0.005)
    np.testing.assert_allclose(amp, 1.0, atol=0.1)
    # fitted one at a time (no neighbour model), the overlapping pair is pulled towards each other
    alone = np.array([markers.locate_markers(image, predicted[k:k + 1], r, prof, half_box=4, max_move_px=2.0)[0][0]
                      for k in range(2)])
    assert np.linalg.norm(alone - truth[:2], axis=1).max() > 0.1
    # a marker whose prediction is further than max_move from anything dark is not found
    lost, _ = markers.locate_markers(image, np.array([[20.0, 40.0]]), r, prof, half_box=4, max_move_px=1.0)
    assert np.isnan(lost).all()


def test_marker_profile_is_measured_from_the_views() -> None:
    truth = np.array([[10.2, 11.7], [30.6, 25.1], [21.4, 36.8]])
    stack = np.stack([_render((48, 48), truth + d) for d in (0.0, 0.3)])
    uv = np.stack([truth, truth + 0.3])
    r, prof = markers.marker_profile(stack, uv, 6)
    ref_r, ref = _blob_profile()
    assert r.shape == ref_r.shape and prof[-1] == 0.0
    # the median subtraction and the outer-pixel level shift the measured profile a little; its shape is the blob's
    assert np.corrcoef(prof, ref)[0, 1] > 0.99
    assert prof.argmin() == 0


def _series(axis: float, rng: np.random.Generator, count: int = 90) -> tuple[np.ndarray, TiltSeriesGeometry,
                                                                          np.ndarray]:
    """A 41-view ±60° series of ``count`` dark blobs in a 24 px thick slab (100 × 100 px views), true axis
    ``axis``, random specimen shifts; returns the stack, the true geometry and the points."""
    tilts = np.arange(-60.0, 61.0, 3.0)
    n = tilts.size
    shape = (100, 100)
    pts = np.c_[rng.uniform(-38, 38, (count, 2)), rng.uniform(-12, 12, count)]
    shifts = rng.normal(0, 2.0, (n, 2))
    a = rotation_2d(-axis)
    xf = np.zeros((n, 2, 3))
    xf[:, :, :2] = a
    xf[:, :, 2] = -np.einsum("ij,nj->ni", a, shifts)
    geo = TiltSeriesGeometry(name="TS_syn", pixel_size_A=20.0, binning=1.0, image_shape_px=shape,
                             tilt_axis_deg=axis, tilt_angles_deg=tilts.tolist(), xf=xf)
    uv = geo.project(pts)[..., :2]
    stack = np.stack([_render(shape, uv[i]) for i in range(n)]) + rng.normal(0, 0.05, (n,) + shape)
    return stack.astype(np.float32), geo, pts


def _gauge_free_shift_rms(est: TiltSeriesGeometry, true: TiltSeriesGeometry) -> float:
    """RMS (px) of the specimen-shift differences after the best 3D translation of the origin."""
    return origin_removed_shift_rms(est.specimen_shifts_px(), true.specimen_shifts_px(), true.tilt_axis_deg,
                                    true.true_tilt_deg())[0]


def test_refinement_recovers_the_axis_and_shifts() -> None:
    """Start 1° off in the axis with shifts off by ~0.5 px: the markers bring the axis back within 0.1° and the
    shifts within 0.1 px (the blobs overlap often in projection: 90 of them, 3.5 px wide, in 100 × 100 px)."""
    rng = np.random.default_rng(7)
    stack, true, pts = _series(85.0, rng)
    start = true.with_xf_from_axis_and_shifts(86.0, true.specimen_shifts_px() + rng.normal(0, 0.5, (41, 2)))
    result = markers.refine_with_markers(stack, start, diameter_px=4.0, thickness_px=40, max_count=120)
    # the 90 blobs, less a few at the edges, and those stacked within half a diameter in (x, y) and three z
    # elongations of a stronger one (taken for its ghosts in the tomogram): about 7 such pairs here
    assert result.n_markers >= 70
    assert abs(result.geometry.tilt_axis_deg - 85.0) < 0.1, result.axis_history_deg
    assert _gauge_free_shift_rms(result.geometry, true) < 0.1
    assert result.fit.mean_residual_px < 0.5  # overlapping blobs located with their neighbours' predictions
    # the fitted 3D points are the blobs (up to the origin, which the fit puts at their mean)
    fitted = result.fit.points_px[~result.fit.rejected]
    nearest = pts[np.linalg.norm(fitted[:, None, :] - fitted.mean(0) - (pts - pts.mean(0))[None], axis=-1)
                  .argmin(axis=1)]
    origin = np.median(fitted - nearest, axis=0)  # the fit's origin: the mean of the markers it kept
    assert np.median(np.linalg.norm(fitted - origin - nearest, axis=1)) < 0.5


def test_too_few_markers_is_refused() -> None:
    """Ten particles are not enough to fit a tilt axis on: the refinement refuses (the step then keeps the
    patch-tracking alignment)."""
    rng = np.random.default_rng(3)
    stack, true, _ = _series(85.0, rng, count=10)
    with pytest.raises(ValueError, match="particles found to use as markers"):
        markers.refine_with_markers(stack, true, diameter_px=4.0, thickness_px=40, min_count=30)
