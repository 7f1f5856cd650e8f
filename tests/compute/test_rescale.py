"""Binning by Fourier cropping: the mean is kept, frequencies below the new Nyquist pass, above are removed."""

import numpy as np
import pytest

from tomoguide.compute.rescale import bin_to_at_most, binned_size, fourier_bin, fourier_crop


def test_binned_size_even_and_positive():
    assert binned_size(1024, 10) == 102
    assert binned_size(1000, 3) == 332
    assert binned_size(5, 4) == 2
    with pytest.raises(ValueError):
        binned_size(100, 0.5)


@pytest.mark.parametrize("factor", [2, 3, 10])
def test_mean_is_kept(factor):
    rng = np.random.default_rng(0)
    img = rng.normal(5.0, 2.0, (300, 400)).astype(np.float32)
    out = fourier_bin(img, factor)
    m = (binned_size(300, factor), binned_size(400, factor))
    assert out.shape == m
    # the image is first cut about its centre to m * factor px (exact pixel size); that region's mean is kept
    cy, cx = (300 - round(m[0] * factor)) // 2, (400 - round(m[1] * factor)) // 2
    region = img[cy:cy + round(m[0] * factor), cx:cx + round(m[1] * factor)]
    assert out.mean() == pytest.approx(region.mean(), rel=1e-4)


def test_sine_above_new_nyquist_is_removed_and_below_is_kept():
    n, factor = 512, 4
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    # new Nyquist: 0.5 / factor = 0.125 cycles per input px; 100/512 ≈ 0.195 lies above it (a whole number of
    # periods in the box, so there is no leakage); block averaging would alias it to a low frequency
    above = np.sin(2 * np.pi * (100 / n) * x)
    below = np.sin(2 * np.pi * (8 / n) * x + 0.3)
    out_above = fourier_bin(above, factor)
    out_below = fourier_bin(below, factor)
    assert np.abs(out_above).max() < 1e-4
    m = out_below.shape[1]
    # output px j samples input x = (n-1)/2 + factor (j - (m-1)/2): centre on centre, spacing exactly factor
    xb = (n - 1) / 2 + factor * (np.arange(m) - (m - 1) / 2)
    expected = np.sin(2 * np.pi * (8 / n) * xb + 0.3)
    np.testing.assert_allclose(out_below[10], expected, atol=2e-3)
    # block averaging, for contrast, aliases the high sine into a visible signal
    blocks = above.reshape(n // factor, factor, n // factor, factor).mean(axis=(1, 3))
    assert np.abs(blocks).max() > 0.1


def test_3d_crop_and_stack_of_images():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(32, 40, 48)).astype(np.float32) + 3
    out = fourier_crop(vol, (16, 20, 24))
    assert out.shape == (16, 20, 24)
    assert out.mean() == pytest.approx(vol.mean(), rel=1e-4)
    stack = rng.normal(size=(3, 64, 64)).astype(np.float32)
    binned = fourier_bin(stack, 2)  # the last two axes only
    assert binned.shape == (3, 32, 32)
    np.testing.assert_allclose(binned[1], fourier_bin(stack[1], 2), atol=1e-5)


def test_bin_to_at_most():
    img = np.ones((1000, 700), np.float32)
    out = bin_to_at_most(img, 512)
    assert max(out.shape) <= 512
    np.testing.assert_allclose(out, 1.0, atol=1e-5)
    small = np.ones((100, 80), np.float32)
    assert bin_to_at_most(small, 512).shape == (100, 80)


@pytest.mark.parametrize("n,factor", [(1024, 10), (101, 3), (64, 2)])
def test_binning_keeps_the_image_centre(n, factor):
    """A smooth blob at (n-1)/2 + s stays at (m-1)/2 + s/factor, as the geometry record's at_binning assumes."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    c = (n - 1) / 2
    s = 3.0 * factor
    blob = np.exp(-((x - c - s) ** 2 + (y - c) ** 2) / (2 * (2.5 * factor) ** 2))
    out = fourier_bin(blob, factor)
    m = out.shape[1]
    yy, xx = np.mgrid[0:m, 0:m]
    w = np.clip(out, 0, None)
    cx = (w * xx).sum() / w.sum()
    cy = (w * yy).sum() / w.sum()
    assert cx == pytest.approx((m - 1) / 2 + s / factor, abs=0.05)
    assert cy == pytest.approx((m - 1) / 2, abs=0.05)
