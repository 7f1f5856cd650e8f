"""The restructured WBP kernel (backproject_lines_tiled) against the reference kernel (backproject_lines) on
random lines: same result to float32 rounding with and without an X-axis tilt, with shifts and offsets, in both
modes (write and SIRT's scaled accumulation), tiled or not, and the public backproject() on it."""

from __future__ import annotations

import numpy as np
import pytest

from tomoguide.compute import backproject_numba as kern
from tomoguide.compute import reconstruct as rec


def _geometry(n: int, shape: tuple[int, int], seed: int, **fields: object):
    rng = np.random.default_rng(seed)
    g = rec.simple_geometry(np.linspace(-60.0, 60.0, n), shape, tilt_axis_deg=85.0,
                            shifts_px=rng.normal(0, 2.0, (n, 2)))
    if fields:
        g = g.model_validate({**g.model_dump(), **fields})
    return g


@pytest.mark.parametrize("fields", [{}, {"x_tilt_deg": 4.0}, {"x_tilt_deg": -3.0, "z_flip": True}])
@pytest.mark.parametrize("blocks", [(), (3, 7), (5, 64)])
def test_tiled_kernel_equals_the_reference(fields: dict, blocks: tuple) -> None:
    rng = np.random.default_rng(5)
    g = _geometry(13, (36, 44), 3, **fields)
    shape = (11, 30, 37)
    s = rec._setup(g, shape, shift_x_px=1.3, shift_z_px=-0.8, tilt_offset_deg=0.7, axis_offset_px=0.4)
    assert s.x_tilt == bool(fields)
    lines = rng.normal(size=(s.views.size, s.n_rows, s.n_cols)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, s.views.size)
    args = (lines, s.ky, s.kz, s.kc, s.ry, s.rz, s.rc, w)
    ref = np.empty(shape, np.float32)
    new = np.full(shape, np.nan, np.float32)
    kern.backproject_lines(*args, ref, np.empty((1, 1, 1), np.float32), False)
    kern.backproject_lines_tiled(*args, new, np.empty((1, 1, 1), np.float32), False, *blocks)
    scale_ = float(np.abs(ref).max())
    assert scale_ > 1.0
    np.testing.assert_allclose(new, ref, rtol=0, atol=1e-5 * scale_)
    # SIRT's mode: out += scale * s
    start = rng.normal(size=shape).astype(np.float32)
    sc = rng.uniform(0.1, 1.0, shape).astype(np.float32)
    ref_acc = start.copy()
    new_acc = start.copy()
    kern.backproject_lines(*args, ref_acc, sc, True)
    kern.backproject_lines_tiled(*args, new_acc, sc, True, *blocks)
    np.testing.assert_allclose(new_acc, ref_acc, rtol=0, atol=1e-5 * scale_)
    assert not np.allclose(new_acc, start, atol=1e-3)


def test_tiled_kernel_clips_like_the_reference_when_voxels_reach_past_the_lines() -> None:
    # lines shorter than the voxels' reach: every clipped entry must be handled as in the reference
    rng = np.random.default_rng(8)
    g = _geometry(9, (30, 40), 4)
    shape = (9, 30, 40)
    s = rec._setup(g, shape, shift_x_px=0.0, shift_z_px=0.0, tilt_offset_deg=0.0, axis_offset_px=0.0)
    lines = rng.normal(size=(s.views.size, s.n_rows, 31)).astype(np.float32)
    args = (lines, s.ky, s.kz, s.kc - 6.0, s.ry, s.rz, s.rc, np.ones(s.views.size))
    ref = np.empty(shape, np.float32)
    new = np.empty(shape, np.float32)
    kern.backproject_lines(*args, ref, np.empty((1, 1, 1), np.float32), False)
    kern.backproject_lines_tiled(*args, new, np.empty((1, 1, 1), np.float32), False, 4, 16)
    np.testing.assert_allclose(new, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
    assert np.count_nonzero(ref == 0.0) > 0  # some voxels do reach past the lines


def test_backproject_uses_the_new_kernel_with_the_reference_result() -> None:
    rng = np.random.default_rng(9)
    g = _geometry(11, (32, 40), 6, excluded=[i == 2 for i in range(11)])
    shape = (10, 32, 40)
    stack = rng.normal(size=(11, 32, 40)).astype(np.float32)
    vol = rec.backproject(stack, g, shape, shift_x_px=0.5)
    s = rec._setup(g, shape, shift_x_px=0.5, shift_z_px=0.0, tilt_offset_deg=0.0, axis_offset_px=0.0)
    lines, _ = rec._sample_lines(rec._as_stack(stack, g), s, True)
    rec._filter_lines(lines, s, rec.view_weights(s.beta_deg), cutoff=0.35, falloff=0.035, fake_sirt_iterations=0)
    ref = np.empty(shape, np.float32)
    kern.backproject_lines(lines, s.ky, s.kz, s.kc, s.ry, s.rz, s.rc, np.ones(s.views.size), ref,
                           np.empty((1, 1, 1), np.float32), False)
    np.testing.assert_allclose(vol, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


@pytest.mark.parametrize("fields", [{}, {"x_tilt_deg": 4.0}])
def test_sampling_with_sums_equals_sampling_then_view_means(fields: dict) -> None:
    rng = np.random.default_rng(12)
    g = _geometry(7, (30, 34), 2, **fields)
    s = rec._setup(g, (8, 30, 34), shift_x_px=0.3, shift_z_px=0.0, tilt_offset_deg=0.0, axis_offset_px=0.0)
    raw = (rng.normal(size=(7, 30, 34)) + 3.0).astype(np.float32)
    shape = (7, s.n_rows, s.n_cols)
    ref, ref_valid = np.empty(shape, np.float32), np.empty(shape, np.uint8)
    kern.sample_stretched(raw, np.ascontiguousarray(s.raw_map), ref, ref_valid)
    ref_means = kern.subtract_view_means(ref, ref_valid)
    new, valid = np.empty(shape, np.float32), np.empty(shape, np.uint8)
    sums, counts = np.empty(shape[:2]), np.empty(shape[:2])
    kern.sample_stretched_sums(raw, np.ascontiguousarray(s.raw_map), new, valid, sums, counts)
    means = kern.subtract_means_from_sums(new, valid, sums, counts)
    np.testing.assert_array_equal(valid, ref_valid)
    assert 0 < valid.mean() < 1  # both valid and invalid samples occur
    np.testing.assert_allclose(means, ref_means, rtol=1e-6)
    assert np.all(np.abs(means - 3.0) < 0.5)
    np.testing.assert_allclose(new, ref, rtol=0, atol=1e-5)
