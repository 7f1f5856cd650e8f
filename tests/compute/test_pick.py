"""Automatic picking: templates, local-NCC template matching, peak picking, thresholds, matching to truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage

from tomoguide.compute import pick
from tomoguide.compute.euler import euler_to_matrix, rotation_angle_deg
from tomoguide.compute.reconstruct import backproject, simple_geometry
from tomoguide.compute.symmetry import symmetry_matrices


def _plant(shape: tuple[int, int, int], template: np.ndarray, xyz: np.ndarray, scale: float) -> np.ndarray:
    """Volume with ``scale * template`` added at integer voxel positions ``xyz`` (x, y, z; template centre b//2)."""
    b = template.shape[0]
    big = np.zeros(tuple(n + 2 * b for n in shape), np.float32)  # room for particles cut by the faces
    for x, y, z in xyz.astype(int) + b - b // 2:
        big[z:z + b, y:y + b, x:x + b] += scale * template
    return big[b:-b, b:-b, b:-b].copy()


def _spread_positions(rng: np.random.Generator, n: int, shape_zyx: tuple[int, int, int], margin: int,
                      min_dist: float) -> np.ndarray:
    out: list[np.ndarray] = []
    hi = np.array(shape_zyx[::-1]) - margin
    while len(out) < n:
        p = rng.integers(margin, hi)
        if all(np.linalg.norm(p - q) >= min_dist for q in out):
            out.append(p)
    return np.array(out, dtype=np.float64)


# ----------------------------------------------------------------------------------------------- templates
def test_shell_template_volume_and_centre() -> None:
    voxel, ro, ri, box = 4.0, 30.0, 18.0, 20
    t = pick.shell_template(ro, ri, voxel, box)
    expected = 4 / 3 * np.pi * (ro**3 - ri**3) / voxel**3
    assert t.shape == (box,) * 3 and t.dtype == np.float32
    assert abs(t.sum() - expected) / expected < 0.03
    g = np.arange(box)
    com = [(t.sum(axis=tuple(a for a in range(3) if a != ax)) * g).sum() / t.sum() for ax in range(3)]
    np.testing.assert_allclose(com, box // 2, atol=1e-6)
    assert t[box // 2, box // 2, box // 2] == 0.0  # hollow
    solid = pick.shell_template(ro, 0.0, voxel, box)
    assert abs(solid.sum() - 4 / 3 * np.pi * ro**3 / voxel**3) / solid.sum() < 0.03


def test_reference_template_rescales_about_the_centre() -> None:
    """A Gaussian blob 9 px (2 Å px) off the map centre n//2 lands 3 px (6 Å px) off the template centre box//2."""
    n, box = 48, 20
    g = np.arange(n) - n // 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    off = np.array([9.0, -6.0, 3.0])  # x, y, z in 2 Å px
    blob = np.exp(-((xx - off[0]) ** 2 + (yy - off[1]) ** 2 + (zz - off[2]) ** 2) / (2 * 4.0**2))
    t = pick.reference_template(blob, 2.0, 6.0, box)
    assert t.shape == (box,) * 3
    w = np.clip(t, 0, None)
    gb = np.arange(box)
    com_zyx = [(w.sum(axis=tuple(a for a in range(3) if a != ax)) * gb).sum() / w.sum() for ax in range(3)]
    np.testing.assert_allclose(np.array(com_zyx[::-1]) - box // 2, off / 3.0, atol=0.05)
    # density per volume is kept: the integral scales with the voxel volume
    assert abs(t.sum() * 27 - blob.sum()) / blob.sum() < 0.02


def test_missing_wedge_mask_matches_a_back_projection() -> None:
    """A plain back-projection of one view at tilt +40° (a delta at the centre) puts its Fourier energy on the
    plane that missing_wedge_mask((35, 45)) keeps, not on the mirrored one (-45, -35): the sign convention."""
    n = 32
    img = np.zeros((1, n, n), np.float32)
    img[0, n // 2, n // 2] = 1.0
    geom = simple_geometry([40.0], (n, n))
    vol = backproject(img, geom, (n, n, n), radial_weighting=False, subtract_mean=False)
    power = np.abs(scipy.fft.rfftn(vol)) ** 2
    kept = pick.missing_wedge_mask((n, n, n), (35.0, 45.0))
    mirrored = pick.missing_wedge_mask((n, n, n), (-45.0, -35.0))
    assert kept.shape == power.shape
    assert power[kept].sum() > 0.8 * power.sum()
    assert power[mirrored & ~kept].sum() < 0.05 * power.sum()
    full = pick.missing_wedge_mask((n, n, n), (-90.0, 90.0))
    assert full.all()


# ----------------------------------------------------------------------------------------------- rotations
def test_angle_sampling_covers_the_asymmetric_unit() -> None:
    step = 30.0
    ang = pick.angle_sampling(step, "O")
    np.testing.assert_allclose(ang[0], 0.0, atol=1e-9)
    mats = euler_to_matrix(ang)
    sym = symmetry_matrices("O")
    full = (mats[:, None] @ sym[None]).reshape(-1, 3, 3)
    # separated: no two kept rotations closer than the step modulo O
    for i in range(len(mats)):
        d = rotation_angle_deg(mats[i][None], np.delete(mats, i, axis=0)[:, None] @ sym[None])
        assert d.min() >= step - 1e-6
    # covering: random rotations are within ~ the step of the sampling (mod O)
    rng = np.random.default_rng(1)
    q = rng.normal(size=(200, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    rand = np.stack([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]).transpose(2, 0, 1)
    nearest = rotation_angle_deg(rand[:, None], full[None]).min(axis=1)
    assert nearest.max() < step
    # an asymmetric unit is 24 times smaller than SO(3)
    assert len(pick.angle_sampling(step, "C1")) > 10 * len(ang)


# ----------------------------------------------------------------------------------------------- matching
def test_template_match_recovers_planted_shells() -> None:
    rng = np.random.default_rng(7)
    shape = (40, 64, 64)
    voxel = 12.0
    tmpl = pick.shell_template(62.0, 40.0, voxel, 16)
    xyz = _spread_positions(rng, 12, shape, margin=3, min_dist=11)
    clean = _plant(shape, tmpl, xyz, scale=-1.0)  # dark particles
    tomo = clean + rng.normal(0.0, 0.6, shape).astype(np.float32) + 3.0
    res = pick.template_match(tomo, tmpl, mask_radius_px=7, voxel_A=voxel)
    assert res.score.shape == shape and res.score.dtype == np.float32
    assert np.all(res.score <= 1.0 + 1e-4) and np.all(res.score >= -1.0 - 1e-4)
    assert np.all(res.angle_index == 0) and res.angles_deg.shape == (1, 3)
    th = pick.suggest_threshold(res.score, method="mad", k=7.5)
    found, scores = pick.pick_peaks(res.score, min_distance_px=8, threshold=th)
    m = pick.match_to_truth(found, xyz, max_distance=1.0)
    assert m["recall"] == 1.0 and m["false_fraction"] == 0.0
    assert m["rms_distance"] < 0.5
    # bright particles with particles_dark=True give negative scores: the sign convention
    res_b = pick.template_match(-tomo, tmpl, mask_radius_px=7, voxel_A=voxel)
    zyx = xyz[:, ::-1].astype(int)
    assert np.all(res_b.score[tuple(zyx.T)] < -0.3)
    assert np.all(res.score[tuple(zyx.T)] > 0.3)
    # noise-free, the score of a perfect match is 1 (NCC normalisation)
    # (isolated particles away from the faces, so that the mask sees nothing else)
    lone = np.array([[12.0, 12.0, 12.0], [40.0, 30.0, 20.0], [20.0, 50.0, 28.0]])
    exact = pick.template_match(_plant(shape, tmpl, lone, scale=-2.0) + 1.0, tmpl, mask_radius_px=7)
    zyx = tuple(lone[:, ::-1].astype(int).T)
    np.testing.assert_allclose(exact.score[zyx], 1.0, atol=1e-3)
    assert np.all(exact.score < 1.0 + 1e-3)


def test_template_match_finds_orientations() -> None:
    """An asymmetric template planted in three orientations of the search list: the best angle index at each
    particle is its orientation, and a band-pass / missing wedge still finds the positions."""
    b = 14
    g = np.arange(b) - b // 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    tmpl = np.zeros((b, b, b), np.float32)
    for (x, y, z), s in [((3, 0, 0), 1.6), ((0, 2, 0), 1.2), ((0, 0, -2), 1.0), ((-2, -2, 1), 0.9)]:
        tmpl += np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * s**2)).astype(np.float32)
    angles = np.array([[0, 0, 0], [90, 0, 0], [0, 90, 0], [30, 60, 120], [-45, 120, 10], [170, 30, -80]],
                      dtype=np.float64)
    planted = [1, 3, 5]
    xyz = np.array([[12, 12, 12], [32, 20, 14], [20, 34, 16]], dtype=np.float64)
    shape = (28, 46, 46)
    clean = np.zeros(shape, np.float32)
    for (x, y, z), k in zip(xyz.astype(int), planted):
        rot = pick._rotate_template(tmpl, euler_to_matrix(angles[k]))
        clean[z - b // 2:z - b // 2 + b, y - b // 2:y - b // 2 + b, x - b // 2:x - b // 2 + b] -= rot
    rng = np.random.default_rng(3)
    tomo = clean + rng.normal(0, 0.05, shape).astype(np.float32)
    res = pick.template_match(tomo, tmpl, angles_deg=angles, mask_radius_px=6)
    zyx = tuple(xyz[:, ::-1].astype(int).T)
    assert list(res.angle_index[zyx]) == planted
    assert np.all(res.score[zyx] > 0.9)
    res_w = pick.template_match(tomo, tmpl, angles_deg=angles, mask_radius_px=6, tilt_range_deg=(-60, 60),
                                lowpass_A=3.0, voxel_A=1.0)
    found, _ = pick.pick_peaks(res_w.score, min_distance_px=8, max_peaks=3)
    assert pick.match_to_truth(found, xyz, max_distance=1.0)["recall"] == 1.0


# ----------------------------------------------------------------------------------------------- peaks
def test_pick_peaks_min_distance_threshold_border() -> None:
    s = np.zeros((20, 30, 30), np.float32)
    s[10, 10, 10] = 1.0          # (x, y, z) = (10, 10, 10)
    s[10, 10, 14] = 0.9          # 4 px from the first: suppressed at min distance 6
    s[10, 10, 20] = 0.8          # 10 px away: kept
    s[10, 20, 20] = 0.3          # below the threshold 0.5
    s[1, 15, 15] = 0.95          # 1 px from the z face
    xyz, sc = pick.pick_peaks(s, min_distance_px=6, threshold=0.5, exclude_border_px=2)
    np.testing.assert_array_equal(xyz, [[10, 10, 10], [20, 10, 10]])
    np.testing.assert_allclose(sc, [1.0, 0.8])
    xyz, _ = pick.pick_peaks(s, min_distance_px=3, threshold=0.5, exclude_border_px=2)
    assert len(xyz) == 3  # at 3 px the second peak is far enough
    xyz, sc = pick.pick_peaks(s, min_distance_px=6)
    np.testing.assert_allclose(sc[:3], [1.0, 0.95, 0.8])
    xyz, sc = pick.pick_peaks(s, min_distance_px=6, max_peaks=2)
    assert len(sc) == 2
    # every pair of picks from a noise volume respects the minimum distance
    rng = np.random.default_rng(0)
    noise = scipy.ndimage.gaussian_filter(rng.normal(size=(24, 40, 40)), 1.0)
    xyz, sc = pick.pick_peaks(noise, min_distance_px=5.5)
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1) + np.eye(len(xyz)) * 1e9
    assert d.min() >= 5.5 and np.all(np.diff(sc) <= 0) and len(xyz) > 20


def test_thresholds_and_histogram() -> None:
    rng = np.random.default_rng(5)
    noise = rng.normal(0.2, 0.05, 100_000)
    th = pick.suggest_threshold(noise, method="mad", k=3.0)
    assert abs(th - (0.2 + 3 * 0.05)) < 0.005
    bimodal = np.concatenate([rng.normal(0.2, 0.03, 2000), rng.normal(0.6, 0.03, 200)])
    th = pick.suggest_threshold(bimodal, method="otsu")
    assert 0.3 < th < 0.5
    counts, edges = pick.score_histogram(bimodal, bins=50)
    assert counts.shape == (50,) and edges.shape == (51,) and counts.sum() == bimodal.size
    with pytest.raises(ValueError):
        pick.suggest_threshold(noise, method="nope")


def test_match_and_register() -> None:
    rng = np.random.default_rng(11)
    true = rng.uniform(0, 1000, (60, 3))
    shift = np.array([25.0, -40.0, 12.0])
    picked = true[:50] - shift + rng.normal(0, 3.0, (50, 3))  # 50 found, jittered
    picked = np.concatenate([picked, rng.uniform(0, 1000, (5, 3))])  # 5 false picks
    perm = rng.permutation(len(picked))
    picked = picked[perm]
    t = pick.register_translation(picked, true, max_shift=80, tolerance=20)
    np.testing.assert_allclose(t, shift, atol=1.5)
    m = pick.match_to_truth(picked + t, true, max_distance=20)
    assert m["n_matched"] == 50 and m["recall"] == pytest.approx(50 / 60)
    assert m["false_fraction"] == pytest.approx(5 / 55)
    for i, j in m["pairs"]:
        assert perm[i] == j  # pick i came from true particle j
    # one-to-one: two picks at one true particle count once
    m2 = pick.match_to_truth(np.array([[0, 0, 0], [1, 0, 0.0]]), np.array([[0.5, 0, 0.0]]), max_distance=2)
    assert m2["n_matched"] == 1 and m2["false_fraction"] == 0.5 and m2["recall"] == 1.0
    empty = pick.match_to_truth(np.zeros((0, 3)), true, max_distance=5)
    assert empty["recall"] == 0.0 and empty["n_picked"] == 0


# ----------------------------------------------------------------------------------------------- tiny preset
def test_tiny_preset_tomogram(tmp_path: Path) -> None:
    """The tiny preset run through reconstruct (≈ 10 s): the shell template finds the true apoferritin
    particles after registering the tomogram's arbitrary origin (a shift of a few voxels)."""
    import mrcfile
    import starfile

    from tomoguide.cli import run_steps
    from tomoguide.demo import prepare_demo
    from tomoguide.project import Project
    from tomoguide.steps.records import SeriesSet

    project = prepare_demo(tmp_path / "tiny", preset="tiny")
    run_steps(project, until="reconstruct", quiet=True)
    sset, base = SeriesSet.load(Project.open(project, readonly=True).output_path("reconstruct", "tomograms"))
    truth = starfile.read(tmp_path / "tiny" / "truth" / "particles.star")["particles"]
    for s in sset.series:
        tomo = mrcfile.read(s.path("tomogram", base))
        voxel = s.geometry.pixel_size_binned_A
        box = int(np.ceil(190.0 / voxel))
        res = pick.template_match(tomo, pick.shell_template(62.0, 40.0, voxel, box), voxel_A=voxel,
                                  mask_radius_px=84.0 / voxel)
        th = pick.suggest_threshold(res.score, method="mad", k=7.5)
        xyz, _ = pick.pick_peaks(res.score, min_distance_px=96.0 / voxel, threshold=th, exclude_border_px=1)
        centre = (np.array(tomo.shape[::-1]) - 1) / 2.0
        picked_A = (xyz - centre) * voxel
        sub = truth[truth["rlnTomoName"] == s.name]
        true_A = sub[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy()
        t = pick.register_translation(picked_A, true_A, max_shift=6 * voxel, tolerance=30.0)
        assert np.all(np.abs(t) < 4 * voxel)
        m = pick.match_to_truth(picked_A + t, true_A, max_distance=30.0)
        assert m["recall"] >= 15 / 16 and m["false_fraction"] <= 1 / 16, m
