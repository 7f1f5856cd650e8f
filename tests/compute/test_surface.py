"""Surface-model picking geometry against known ellipsoids: fits of noisy contour points, even sampling at the
requested spacing, outward normals perpendicular to the surface, and RELION angles whose z axis is the normal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from tomoguide.compute import surface as sf
from tomoguide.compute.euler import euler_to_matrix

ROT = Rotation.from_euler("zyx", [30.0, 20.0, 10.0], degrees=True).as_matrix()
TRUE = sf.Ellipsoid([10.0, -20.0, 5.0], [180.0, 250.0, 320.0], ROT)


def _contours(e: sf.Ellipsoid, zs: list[float], per_slice: int, noise_A: float, seed: int) -> np.ndarray:
    """Points clicked on the ellipsoid's outline in slices z = zs (a trainee's clicks), with Gaussian noise."""
    rng = np.random.default_rng(seed)
    pts = []
    for z in zs:
        ring = e.section(z, 720)
        pts.append(ring[rng.choice(len(ring), per_slice, replace=False)])
    p = np.concatenate(pts)
    p[:, :2] += rng.normal(scale=noise_A, size=(len(p), 2))  # clicks are in the slice: z exact
    return p


def _same_axes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (degrees) between corresponding columns of two axis frames, up to sign."""
    return np.degrees(np.arccos(np.clip(np.abs(np.sum(a * b, axis=0)), 0.0, 1.0)))


def test_noisy_general_ellipsoid_is_recovered() -> None:
    p = _contours(TRUE, [-200.0, -120.0, -40.0, 40.0, 120.0, 200.0], 14, 2.0, seed=3)
    for model in ("auto", "ellipsoid"):
        fit = sf.fit_ellipsoid(p, model)  # type: ignore[arg-type]
        assert fit.kind == "ellipsoid" and fit.n_points == len(p)
        np.testing.assert_allclose(fit.centre, TRUE.centre, atol=4.0)
        np.testing.assert_allclose(fit.axes, TRUE.axes, rtol=0.02)
        assert _same_axes(fit.rotation, TRUE.rotation).max() < 3.0
        assert np.linalg.det(fit.rotation) == pytest.approx(1.0)
        assert 1.0 < fit.rms_A < 2.5  # the click noise (2 Å in x and y, radial component ≈ 2 Å)
    # a sphere cannot fit it: its residual is far larger
    assert sf.fit_ellipsoid(p, "sphere").rms_A > 5 * sf.fit_ellipsoid(p).rms_A


def test_noise_free_points_anywhere_give_the_exact_ellipsoid() -> None:
    rng = np.random.default_rng(0)
    u = rng.normal(size=(40, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    fit = sf.fit_ellipsoid(TRUE.surface_point(u), "ellipsoid")
    np.testing.assert_allclose(fit.centre, TRUE.centre, atol=1e-5)
    np.testing.assert_allclose(fit.axes, TRUE.axes, rtol=1e-7)
    assert _same_axes(fit.rotation, TRUE.rotation).max() < 1e-3 and fit.rms_A < 1e-5


def test_sphere_and_its_fallbacks() -> None:
    ball = sf.sphere([100.0, 50.0, -30.0], 300.0)
    # a vesicle clicked on three slices near its equator: "auto" keeps the (better determined) sphere
    p = _contours(ball, [-90.0, -30.0, 30.0], 12, 3.0, seed=1)
    fit = sf.fit_ellipsoid(p)
    assert fit.kind == "sphere"
    np.testing.assert_allclose(fit.centre, ball.centre, atol=4.0)
    np.testing.assert_allclose(fit.axes, 300.0, rtol=0.01)
    # fewer points than a general ellipsoid needs: a sphere even when asked for an ellipsoid
    few = _contours(ball, [-90.0, 0.0, 60.0], 3, 0.0, seed=2)
    assert len(few) < sf.MIN_ELLIPSOID_POINTS
    fit = sf.fit_ellipsoid(few, "ellipsoid")
    assert fit.kind == "sphere"
    np.testing.assert_allclose(fit.centre, ball.centre, atol=1e-6)
    np.testing.assert_allclose(fit.axes, 300.0, rtol=1e-9)
    # one slice only: the sphere whose great circle is the clicked circle (centre in that slice)
    z = -30.0
    one = _contours(ball, [z], 10, 0.0, seed=4)
    r_circle = np.sqrt(300.0**2 - (z - ball.centre[2]) ** 2)
    fit = sf.fit_ellipsoid(one, "ellipsoid")
    assert fit.kind == "sphere"
    np.testing.assert_allclose(fit.centre, [100.0, 50.0, z], atol=1e-6)
    np.testing.assert_allclose(fit.axes, r_circle, rtol=1e-9)
    with pytest.raises(ValueError, match="at least"):
        sf.fit_ellipsoid(one[:2])
    with pytest.raises(ValueError, match="line"):
        sf.fit_ellipsoid(np.column_stack([np.arange(5.0), 2 * np.arange(5.0), np.zeros(5)]))


def test_section_lies_on_the_surface_and_in_the_plane() -> None:
    ring = TRUE.section(100.0, 64)
    assert ring.shape == (64, 3)
    np.testing.assert_allclose(ring[:, 2], 100.0)
    np.testing.assert_allclose(np.linalg.norm(TRUE.local(ring), axis=1), 1.0, atol=1e-9)
    top = TRUE.centre[2] + np.linalg.norm(TRUE.rotation[2] * TRUE.axes)  # highest point of the surface
    assert TRUE.section(top + 1.0).shape == (0, 3) and len(TRUE.section(top - 1.0)) > 0
    for axis in (0, 1):  # XZ and YZ sections too
        ring = TRUE.section(TRUE.centre[axis] + 50.0, 32, axis=axis)
        np.testing.assert_allclose(ring[:, axis], TRUE.centre[axis] + 50.0)
        np.testing.assert_allclose(np.linalg.norm(TRUE.local(ring), axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize("spacing_A", [40.0, 90.0])
def test_samples_are_on_the_surface_at_the_requested_spacing(spacing_A: float) -> None:
    pts, normals = sf.sample_surface(TRUE, spacing_A, seed=5)
    np.testing.assert_allclose(np.linalg.norm(TRUE.local(pts), axis=1), 1.0, atol=1e-9)
    nn = cKDTree(pts).query(pts, k=2)[0][:, 1]
    assert nn.min() >= spacing_A * (1 - 1e-6)  # never closer than asked
    assert spacing_A <= np.median(nn) <= 1.3 * spacing_A
    # the whole surface is covered: fresh uniform surface points are within about a spacing of a sample
    rng = np.random.default_rng(9)
    u = rng.normal(size=(4000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    gap = cKDTree(pts).query(TRUE.surface_point(u))[0]
    assert gap.max() < 1.15 * spacing_A
    # packing: discs of diameter spacing cover 40-90 % of the area (random sequential packing ≈ 55 %)
    cover = len(pts) * np.pi * (spacing_A / 2) ** 2 / TRUE.area_A2()
    assert 0.4 < cover < 0.9
    # the same seed gives the same samples
    again, _ = sf.sample_surface(TRUE, spacing_A, seed=5)
    np.testing.assert_array_equal(again, pts)


def test_area_of_a_sphere_and_sampling_restrictions() -> None:
    ball = sf.sphere([0.0, 0.0, 0.0], 200.0)
    assert ball.area_A2() == pytest.approx(4 * np.pi * 200.0**2)
    spacing = 50.0
    rng = np.random.default_rng(3)
    u = rng.normal(size=(20000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    fresh = ball.surface_point(u)
    # a band thinner than the spacing (a few clicked slices): a ring of samples, covered at the same spacing
    band, bn = sf.sample_surface(ball, spacing, seed=1, z_range_A=(20.0, -10.0))
    assert np.all((band[:, 2] >= -10.0) & (band[:, 2] <= 20.0))
    # a ring of length L filled at random with gaps ≥ spacing: ≈ 0.75 L / spacing (Rényi's parking constant)
    ring = 2 * np.pi * np.sqrt(200.0**2 - 20.0**2) / spacing
    assert 0.6 * ring <= len(band) <= 2 * np.pi * 200.0 / spacing
    nn = cKDTree(band).query(band, k=2)[0][:, 1]
    assert nn.min() >= spacing * (1 - 1e-6) and np.median(nn) <= 1.3 * spacing
    in_band = fresh[(fresh[:, 2] >= -10.0) & (fresh[:, 2] <= 20.0)]
    assert cKDTree(band).query(in_band)[0].max() < 1.15 * spacing
    np.testing.assert_allclose(bn, band / 200.0, atol=1e-12)  # a sphere's normal is the radius direction
    # a box: only inside it, and all of the surface inside it covered
    lo, hi = np.array([-300.0, -300.0, -300.0]), np.array([300.0, 0.0, 300.0])
    boxed, _ = sf.sample_surface(ball, spacing, seed=1, box_A=(lo, hi))
    assert np.all(boxed[:, 1] <= 0.0)
    assert cKDTree(boxed).query(fresh[fresh[:, 1] <= 0.0])[0].max() < 1.15 * spacing
    # a region that misses the surface: no samples
    none, nn0 = sf.sample_surface(ball, spacing, z_range_A=(250.0, 300.0))
    assert none.shape == (0, 3) and nn0.shape == (0, 3)
    with pytest.raises(ValueError):
        sf.sample_surface(ball, 0.0)


def test_normals_are_perpendicular_to_the_surface_and_outward() -> None:
    rng = np.random.default_rng(2)
    u = rng.normal(size=(300, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    p = TRUE.surface_point(u)
    n = sf.ellipsoid_normals(TRUE, p)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)
    # two tangent directions: curves on the surface through p (u rotated slightly in two directions)
    t1 = np.cross(u, rng.normal(size=u.shape))
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(u, t1)
    h = 1e-5
    for t in (t1, t2):
        up, um = u + h * t, u - h * t
        up /= np.linalg.norm(up, axis=1, keepdims=True)
        um /= np.linalg.norm(um, axis=1, keepdims=True)
        tangent = TRUE.surface_point(up) - TRUE.surface_point(um)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        assert np.abs(np.sum(tangent * n, axis=1)).max() < 1e-6
    # outward: a step along the normal leaves the ellipsoid, a step against it enters
    assert np.all(np.linalg.norm(TRUE.local(p + 1.0 * n), axis=1) > 1.0)
    assert np.all(np.linalg.norm(TRUE.local(p - 1.0 * n), axis=1) < 1.0)
    assert np.all(np.sum(n * (p - TRUE.centre), axis=1) > 0)


def test_euler_round_trip_puts_the_particle_z_axis_on_the_normal() -> None:
    rng = np.random.default_rng(4)
    n = rng.normal(size=(500, 3))
    n = np.concatenate([n, [[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -2.0, 0.0]]])
    unit = n / np.linalg.norm(n, axis=1, keepdims=True)
    spin = rng.uniform(-180.0, 180.0, len(n))
    for s in (None, spin):
        angles = sf.normals_to_euler(n, s)
        a = euler_to_matrix(angles)
        np.testing.assert_allclose(a @ np.array([0.0, 0.0, 1.0]), unit, atol=1e-12)  # A · z = normal
        np.testing.assert_allclose(sf.particle_axes(angles), unit, atol=1e-12)
        assert np.all((angles[:, 1] >= 0) & (angles[:, 1] <= 180))
    # rot is the spin about the normal: it leaves the axis in place and turns the particle's x axis by it
    angles = sf.normals_to_euler(unit, spin)
    np.testing.assert_allclose(angles[:, 0], spin, atol=1e-9)
    x0 = euler_to_matrix(sf.normals_to_euler(unit))[:, :, 0]
    x1 = euler_to_matrix(angles)[:, :, 0]
    turned = np.degrees(np.arctan2(np.sum(np.cross(x1, x0) * unit, axis=1), np.sum(x0 * x1, axis=1)))
    np.testing.assert_allclose((turned - spin + 180) % 360 - 180, 0.0, atol=1e-7)
    # written out from RELION's matrix: A · z = (−cos psi sin tilt, sin psi sin tilt, cos tilt)
    rot, tilt, psi = np.radians(angles.T)
    np.testing.assert_allclose(np.column_stack([-np.cos(psi) * np.sin(tilt), np.sin(psi) * np.sin(tilt),
                                                np.cos(tilt)]), unit, atol=1e-12)
