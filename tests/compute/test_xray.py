"""X-ray eraser: synthetic Poisson images with known hits, real features left alone, the simulator's truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.xray import XrayResult, erase_xrays, erase_xrays_stack, find_hot_pixels

DOSE = 12.0  # counts per pixel of a tilt sum (3 e/Å² at 2 Å/px)
STEPS = ((0, 1), (1, 0), (0, -1), (-1, 0))


def _hit_cells(rng: np.random.Generator, y: int, x: int, size: int) -> list[tuple[int, int]]:
    """A 4-connected random cluster of ``size`` pixels starting at (y, x) (like the simulator's hits)."""
    cells = [(y, x)]
    while len(cells) < size:
        cy, cx = cells[int(rng.integers(len(cells)))]
        dy, dx = STEPS[int(rng.integers(4))]
        if (cy + dy, cx + dx) not in cells:
            cells.append((cy + dy, cx + dx))
    return cells


def _spiky_image(seed: int, shape: tuple[int, int] = (512, 512), n_hits: int = 120,
                 amplitude: tuple[float, float] = (45.0, 300.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson(DOSE) image with X-ray hits of 1-4 px; returns (image, clean image, truth mask).

    Hit centres are 10 px apart at least, except deliberate adjacent pairs (centres 2-3 px apart); some hits
    touch the border and the corners.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    clean = rng.poisson(DOSE, shape).astype(np.float32)
    img = clean.copy()
    truth = np.zeros(shape, dtype=bool)
    centres = [(0, 0), (ny - 1, nx - 1), (0, nx // 2), (ny // 2, 0), (ny - 1, 7), (5, nx - 1)]
    while len(centres) < n_hits:
        y, x = int(rng.integers(0, ny)), int(rng.integers(0, nx))
        if all(max(abs(y - cy), abs(x - cx)) >= 12 for cy, cx in centres):
            centres.append((y, x))
            if len(centres) % 10 == 0 and 3 < y < ny - 4 and 3 < x < nx - 4:  # an adjacent pair
                centres.append((y + 2, x + int(rng.integers(-1, 2))))
    for y, x in centres:
        for cy, cx in _hit_cells(rng, y, x, int(rng.integers(1, 5))):
            if 0 <= cy < ny and 0 <= cx < nx and not truth[cy, cx]:
                img[cy, cx] += float(rng.uniform(*amplitude))
                truth[cy, cx] = True
    return img, clean, truth


@pytest.mark.parametrize("seed", [1, 2])
def test_finds_hits_in_poisson_images(seed: int) -> None:
    img, clean, truth = _spiky_image(seed)
    res = erase_xrays(img)
    assert isinstance(res, XrayResult)
    assert res.image.dtype == np.float32 and res.image.shape == img.shape
    found = (res.mask & truth).sum() / truth.sum()
    false_pos = (res.mask & ~truth).sum() / (~truth).sum()
    assert found >= 0.99, found
    assert false_pos <= 1e-4, false_pos
    # replaced pixels look like the background: mean near the dose, no value near a hit's amplitude
    rep = res.image[truth & res.mask]
    assert abs(float(rep.mean()) - DOSE) < 1.0
    assert float(rep.max()) < DOSE + 6 * np.sqrt(DOSE)
    # untouched pixels are returned unchanged
    assert np.array_equal(res.image[~res.mask], img[~res.mask])
    # the patch list agrees with the mask
    assert sum(p.n_pixels for p in res.patches) == res.mask.sum() == res.n_pixels
    assert res.count == len(res.patches)
    assert all(p.kind == "bright" and p.peak_sd > 4.0 and p.radius_px <= 4.2 for p in res.patches)


def test_border_and_corner_hits_and_pairs() -> None:
    rng = np.random.default_rng(5)
    img = rng.poisson(DOSE, (128, 160)).astype(np.float32)
    spots = [(0, 0), (0, 159), (127, 0), (127, 159), (0, 80), (64, 0), (1, 1), (126, 158),
             (60, 60), (60, 62), (61, 61), (90, 90), (91, 91)]  # corners, edges, a touching pair, a diagonal pair
    truth = np.zeros(img.shape, dtype=bool)
    for y, x in spots:
        img[y, x] += 60.0
        truth[y, x] = True
    res = erase_xrays(img)
    assert res.mask[truth].all()
    assert not (res.mask & ~truth).any()
    # the touching pair (60,60),(61,61),(60,62) is one 8-connected patch; the diagonal pair is another
    centres = {(round(p.y), round(p.x)): p.n_pixels for p in res.patches}
    assert centres[(60, 61)] == 3
    assert centres[(90, 90)] == 2 or centres[(91, 91)] == 2


def test_pure_noise_is_left_alone() -> None:
    rng = np.random.default_rng(11)
    for dose in (2.0, 12.0, 200.0):
        img = rng.poisson(dose, (512, 512)).astype(np.float32)
        res = erase_xrays(img)
        assert res.mask.sum() <= 1e-4 * img.size, dose
    gauss = rng.normal(0.0, 1.0, (512, 512)).astype(np.float32)
    assert erase_xrays(gauss, dark=True).mask.sum() <= 1e-4 * gauss.size


def _blob_image(noise: bool, seed: int = 3) -> np.ndarray:
    """Smooth background gradient with strong, band-limited particle-like blobs of ~20 px."""
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    img = 40.0 + 0.05 * xx - 0.03 * yy
    for cy, cx, amp, fwhm in ((80, 90, 120.0, 20.0), (180, 170, -25.0, 20.0), (60, 200, 60.0, 12.0)):
        s = fwhm / 2.355
        img += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    # a sharp-edged disc (gold-bead-like, 20 px) softened by a 1 px Gaussian blur
    import scipy.ndimage as ndi

    disc = (((yy - 200) ** 2 + (xx - 60) ** 2) <= 10.0**2).astype(np.float32)
    img += 80.0 * ndi.gaussian_filter(disc, 1.0)
    if noise:
        img = np.random.default_rng(seed).poisson(img).astype(np.float32)
    return img.astype(np.float32)


@pytest.mark.parametrize("noise", [True, False])
def test_strong_real_features_untouched(noise: bool) -> None:
    img = _blob_image(noise)
    res = erase_xrays(img, dark=True)
    assert not res.mask.any(), [(p.y, p.x, p.n_pixels, p.peak_sd) for p in res.patches]
    assert np.array_equal(res.image, img)


def test_hit_beside_a_blob_is_found() -> None:
    img = _blob_image(True)
    img[80, 70] += 120.0  # on the flank of the bright blob (10 px from its centre)
    img[140, 140] += 80.0
    res = erase_xrays(img)
    assert res.mask[80, 70] and res.mask[140, 140]
    assert res.mask.sum() == 2


def test_big_bright_patches_are_left_alone() -> None:
    rng = np.random.default_rng(4)
    img = rng.poisson(DOSE, (128, 128)).astype(np.float32)
    img[20:27, 20:27] += 200.0  # a flat 7 x 7 square: wider than max_radius_px, not sharp
    img[60, 40:53] += 150.0  # a 13 px streak: sharp, but it grows beyond max_radius_px
    img[100, 20] += 100.0
    res = erase_xrays(img)
    assert res.n_rejected >= 1
    assert not res.mask[20:27, 20:27].any()
    assert not res.mask[60, 40:53].any()
    assert res.mask[100, 20] and res.count == 1
    # a larger radius (8 px) takes the sharp-edged square (radius 4.2 px) and the streak (6 px) as patches
    big = erase_xrays(img, max_radius_px=8.0)
    assert big.mask[60, 40:53].all() and big.mask[20:27, 20:27].all() and big.count == 3
    assert sorted(round(p.radius_px, 1) for p in big.patches) == [0.0, 4.2, 6.0]


@pytest.mark.parametrize("order", [1, 2])
def test_replacement_reproduces_smooth_surfaces(order: int) -> None:
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float64)
    surf = 100.0 + 0.5 * xx - 0.3 * yy + (0.01 * (xx - 40) ** 2 - 0.02 * (xx - 40) * (yy - 50) if order == 2 else 0)
    img = surf.astype(np.float32)
    # tiny noise so the statistics are defined; spikes far above it
    img += np.random.default_rng(0).normal(0, 0.5, img.shape).astype(np.float32)
    clean = img.copy()
    spikes = [(20, 30), (21, 30), (60, 70), (0, 50), (95, 95)]
    for y, x in spikes:
        img[y, x] += 500.0
    res = erase_xrays(img, fit_order=order)
    ys, xs = zip(*spikes, strict=True)
    assert res.mask[ys, xs].all() and res.mask.sum() == len(spikes)
    err = np.abs(res.image[ys, xs] - surf[ys, xs])
    assert err.max() < 3.0 * 0.5, err  # within the noise of the fit
    assert np.abs(res.image[ys, xs] - clean[ys, xs]).max() < 5.0 * 0.5


def test_dark_outliers_only_when_asked() -> None:
    rng = np.random.default_rng(8)
    img = rng.normal(100.0, 3.0, (128, 128)).astype(np.float32)
    img[40, 40] -= 60.0
    img[41, 40] -= 50.0
    img[90, 30] += 60.0
    bright = erase_xrays(img)
    assert bright.mask[90, 30] and not bright.mask[40, 40] and bright.count == 1
    both = erase_xrays(img, dark=True)
    assert both.mask[40, 40] and both.mask[41, 40] and both.mask[90, 30]
    assert sorted(p.kind for p in both.patches) == ["bright", "dark"]
    assert abs(float(both.image[40, 40]) - 100.0) < 6.0


def test_add_noise_gives_local_texture() -> None:
    rng = np.random.default_rng(9)
    img = rng.normal(50.0, 4.0, (256, 256)).astype(np.float32)
    ys = rng.integers(5, 250, 200)
    xs = rng.integers(5, 250, 200)
    img[ys, xs] += 300.0
    flat = erase_xrays(img)
    noisy = erase_xrays(img, add_noise=True, seed=1)
    assert np.array_equal(flat.mask, noisy.mask)
    m = flat.mask
    # flat fill varies only with the fit; noisy fill has about the local SD (4) on top of it
    sd_flat = float(np.std(flat.image[m]))
    sd_noisy = float(np.std(noisy.image[m] - flat.image[m]))
    assert sd_flat < 3.0
    assert 2.5 < sd_noisy < 5.5
    again = erase_xrays(img, add_noise=True, seed=1)
    assert np.array_equal(again.image, noisy.image)


def test_edge_exclusion_and_extra_mask() -> None:
    rng = np.random.default_rng(12)
    img = rng.poisson(DOSE, (100, 100)).astype(np.float32)
    img[1, 50] += 90.0
    img[50, 50] += 90.0
    assert erase_xrays(img).mask[1, 50]
    res = erase_xrays(img, edge_exclusion_px=3)
    assert not res.mask[1, 50] and res.mask[50, 50]
    extra = np.zeros(img.shape, dtype=bool)
    extra[20, 20] = extra[20, 21] = True
    forced = erase_xrays(img, extra_mask=extra)
    assert forced.mask[20, 20] and forced.mask[20, 21] and forced.mask[50, 50]
    assert sorted(p.kind for p in forced.patches) == ["bright", "bright", "forced"]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="2D"):
        erase_xrays(np.zeros((2, 8, 8)))
    bad = np.zeros((32, 32), dtype=np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        erase_xrays(bad)
    with pytest.raises(ValueError, match="fit_order"):
        erase_xrays(np.zeros((32, 32)), fit_order=3)
    with pytest.raises(ValueError, match="extra_mask"):
        erase_xrays(np.zeros((32, 32)), extra_mask=np.zeros((8, 8), dtype=bool))
    with pytest.raises(ValueError, match="at least 2"):
        find_hot_pixels(np.zeros((1, 16, 16)))
    # a constant image has nothing to erase
    assert erase_xrays(np.full((64, 64), 7.0)).count == 0


def test_stack_with_hot_pixels() -> None:
    rng = np.random.default_rng(21)
    n, shape = 8, (192, 192)
    stack = rng.poisson(DOSE, (n, *shape)).astype(np.float32)
    hot = [(30, 40), (100, 150), (170, 20)]
    for y, x in hot:
        stack[:, y, x] += 30.0  # ~8.7 SD: below the peak criterion, weak hot pixels
    truth_hits = np.zeros(stack.shape, dtype=bool)
    for i in range(n):
        for _ in range(i % 4):
            y, x = rng.integers(3, 189, 2)
            stack[i, y, x] += 100.0
            truth_hits[i, y, x] = True
    hot_mask = find_hot_pixels(stack)
    assert set(map(tuple, np.argwhere(hot_mask).tolist())) == set(hot)
    cleaned, counts, masks = erase_xrays_stack(stack, hot_pixels=True)
    assert cleaned.shape == stack.shape and cleaned.dtype == np.float32 and masks.shape == stack.shape
    for y, x in hot:
        assert masks[:, y, x].all()
    assert masks[truth_hits].all()
    assert np.array_equal(counts, [i % 4 + len(hot) for i in range(n)])
    # without the hot-pixel search, a weak hot pixel (near the criteria) is found in some views only
    plain, counts_plain, masks_plain = erase_xrays_stack(stack)
    hot_2d = np.zeros(shape, dtype=bool)
    hot_2d[tuple(np.array(hot).T)] = True
    assert masks_plain[truth_hits].all()
    assert not (masks_plain & ~truth_hits & ~hot_2d[None]).any()
    assert (counts_plain >= [i % 4 for i in range(n)]).all()


def test_tiny_simulated_dataset(tiny_dataset: Path) -> None:
    """Gain-corrected frame sums of the tiny preset against the simulator's X-ray and hot-pixel truth."""
    import pandas as pd

    from tomoguide.compute.io.movies import read_gain, read_movie

    data, truth_dir = tiny_dataset / "data", tiny_dataset / "truth"
    gain = read_gain(data / "gain.mrc", flip_x=True)
    hot = pd.read_csv(truth_dir / "hot_pixels.csv")
    n_true = n_found = n_false = n_pixels = 0
    for ts_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        hits = pd.read_csv(truth_dir / ts_dir.name / f"{ts_dir.name}_xray_hits.csv")
        movies = sorted(ts_dir.glob("*.mrc"))
        assert movies and set(hits["movie"]) <= {m.name for m in movies}
        sums = np.stack([read_movie(m).sum(axis=0).astype(np.float32) * gain for m in movies])
        cleaned, counts, masks = erase_xrays_stack(sums)
        for movie, mask in zip(movies, masks, strict=True):
            h = hits[hits["movie"] == movie.name]
            truth = np.zeros(mask.shape, dtype=bool)
            truth[h["y"].to_numpy(), h["x"].to_numpy()] = True
            truth[hot["y"].to_numpy(), hot["x"].to_numpy()] = True
            n_true += int(truth.sum())
            n_found += int((mask & truth).sum())
            n_false += int((mask & ~truth).sum())
            n_pixels += mask.size
        assert (counts >= len(hot)).all()
        assert np.array_equal(cleaned[~masks], sums[~masks])
    assert n_true > 10
    assert n_found >= 0.99 * n_true, (n_found, n_true)
    assert n_false <= 1e-4 * n_pixels, n_false


def test_small_images_and_integer_dtypes() -> None:
    rng = np.random.default_rng(13)
    for shape in ((5, 7), (3, 100), (16, 16), (101, 99)):
        img = rng.poisson(DOSE, shape).astype(np.uint16)
        img[shape[0] // 2, shape[1] // 2] += 100
        res = erase_xrays(img, dark=True)
        assert res.image.dtype == np.float32
        assert res.count == 1 and res.mask[shape[0] // 2, shape[1] // 2] and res.n_pixels == 1
    assert erase_xrays(np.ones((1, 1), dtype=np.uint8)).count == 0
