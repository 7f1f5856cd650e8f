"""The geometry record: conventions (tilt axis, tilt sign, shifts), binning, IMOD and RELION 5 round trips,
projection matrices, JSON, and real alignment files written by IMOD, AreTomo (via alnfile) and EMAN2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.spatial.transform import Rotation

from tomoguide.compute.io import aretomo, imod
from tomoguide.geometry import (
    RELION5_COLUMNS,
    Optics,
    TiltSeriesGeometry,
    rotation_2d,
    rotation_angle_deg,
    xf_matrices_to_rows,
    xf_rows_to_matrices,
)


def _shared_data() -> Path:
    """../shared/data next to the repository, else the bundled subset tests/data (a fresh clone; tests/data/SOURCES.md)."""
    repo = Path(__file__).resolve().parents[1]
    return repo.parent / "shared" / "data" if (repo.parent / "shared" / "data").is_dir() else repo / "tests" / "data"


DATA = _shared_data()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data folder {DATA} does not exist")
TS001 = DATA / "imod" / "teamtomo__etomofiles" / "test_data" / "TS_001"
EMAN = DATA / "alignment" / "pypi__emanjson2imodxf-0.0.3"
ALNFILE = DATA / "alignment" / "pypi__alnfile-0.1.1"
CRYOET = DATA / "imod" / "pypi__cryoet-alignment-0.2.0"


def _record(n: int = 41, *, axis: float = 85.3, shape: tuple[int, int] = (960, 928), seed: int = 0,
            **kw: object) -> TiltSeriesGeometry:
    rng = np.random.default_rng(seed)
    base = TiltSeriesGeometry(
        name="TS_01", pixel_size_A=1.35, binning=4.0, image_shape_px=shape,
        tilt_angles_deg=np.linspace(-60, 60, n), **kw,
    )
    return base.with_xf_from_axis_and_shifts(axis, rng.normal(0, 20, (n, 2)))


def _relion_projection(cols: dict[str, np.ndarray], pixel_A: float, shape: tuple[int, int]) -> np.ndarray:
    """RELION 5's Tomogram::setProjectionMatrix, written out independently: for points given relative to
    the tomogram centre, image = shift/pixel + (n // 2) + Rz(ZRot) Ry(YTilt) Rx(XTilt) p (right-handed,
    extrinsic x then y then z). Returns (n, 2, 4)."""
    ny, nx = shape
    out = []
    for xt, yt, zr, sx, sy in zip(*(cols[c] for c in RELION5_COLUMNS)):
        r = Rotation.from_euler("xyz", [xt, yt, zr], degrees=True).as_matrix()
        m = np.zeros((2, 4))
        m[:, :3] = r[:2]
        m[:, 3] = [sx / pixel_A + nx // 2, sy / pixel_A + ny // 2]
        out.append(m)
    return np.array(out)


# ---------------------------------------------------------------------------------------------- basics


def test_optics_defaults_and_bounds() -> None:
    o = Optics()
    assert (o.voltage_kV, o.cs_mm, o.amplitude_contrast) == (300.0, 2.7, 0.1)
    with pytest.raises(ValidationError):
        Optics(amplitude_contrast=1.5)
    with pytest.raises(ValidationError):
        Optics(voltage_kV=0)


def test_helpers() -> None:
    r = rotation_2d(90.0)
    np.testing.assert_allclose(r @ [1.0, 0.0], [0.0, 1.0], atol=1e-15)  # counter-clockwise
    np.testing.assert_allclose(rotation_angle_deg(rotation_2d([-95.4, 10.0, 179.0]) * 1.03), [-95.4, 10.0, 179.0])
    rows = np.arange(12.0).reshape(2, 6)
    m = xf_rows_to_matrices(rows)
    np.testing.assert_array_equal(m[0], [[0, 1, 4], [2, 3, 5]])
    np.testing.assert_array_equal(xf_matrices_to_rows(m), rows)


def test_validation_errors() -> None:
    good = dict(name="t", pixel_size_A=1.0, image_shape_px=(10, 10), tilt_angles_deg=[-3.0, 0.0, 3.0])
    g = TiltSeriesGeometry(**good)
    assert g.excluded == [False] * 3 and g.n_views == 3 and g.xf is None and g.binning == 1.0
    bad_cases = [
        dict(tilt_angles_deg=[3.0, 0.0, -3.0]),  # not ascending
        dict(tilt_angles_deg=[]),
        dict(dose_e_A2=[3.0, 3.0]),
        dict(prior_dose_e_A2=[0.0, -1.0, 2.0]),
        dict(acquisition_order=[0, 0, 1]),
        dict(excluded=[True]),
        dict(xf=np.zeros((2, 2, 3))),
        dict(xf=np.zeros((3, 3, 3))),
        dict(nominal_defocus_um=[1.0]),
        dict(pixel_size_A=0.0),
        dict(binning=-1.0),
        dict(image_shape_px=(0, 10)),
        dict(defocus_handedness=0),
        dict(unknown_field=1),
    ]
    for case in bad_cases:
        with pytest.raises(ValidationError):
            TiltSeriesGeometry(**{**good, **case})


def test_pixel_size_and_binning() -> None:
    g = _record()
    assert g.pixel_size_at(1) == 1.35 and g.pixel_size_at(10) == pytest.approx(13.5)
    assert g.pixel_size_binned_A == pytest.approx(5.4)
    with pytest.raises(ValueError):
        g.pixel_size_at(0)
    b = g.at_binning(8.0)
    assert b.binning == 8.0 and b.image_shape_px == (480, 464) and b.pixel_size_binned_A == pytest.approx(10.8)
    np.testing.assert_allclose(b.specimen_shifts_px(), g.specimen_shifts_px() / 2)
    np.testing.assert_allclose(b.xf_array()[:, :, :2], g.xf_array()[:, :, :2])
    back = b.at_binning(4.0)
    np.testing.assert_allclose(back.xf_array(), g.xf_array(), atol=1e-12)
    assert back.image_shape_px == g.image_shape_px
    # projecting the same physical point at two binnings gives the same physical image position
    p1 = np.array([[100.0, -40.0, 30.0], [0.0, 0.0, 0.0]])
    u1 = g.project(p1)[..., :2] - g.image_centre_px()
    u2 = b.project(p1 / 2)[..., :2] - b.image_centre_px()
    np.testing.assert_allclose(u2, u1 / 2, atol=1e-9)


# ---------------------------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("axis", [85.3, -95.404, 0.0, 12.66, 179.0])
def test_point_on_raw_tilt_axis_maps_to_aligned_y_axis(axis: float) -> None:
    n = 5
    rng = np.random.default_rng(3)
    shifts = rng.normal(0, 30, (n, 2))
    g = TiltSeriesGeometry(name="t", pixel_size_A=2.0, image_shape_px=(512, 512),
                           tilt_angles_deg=np.linspace(-40, 40, n)).with_xf_from_axis_and_shifts(axis, shifts)
    assert g.tilt_axis_deg == axis
    m = g.xf_array()
    np.testing.assert_allclose(m[:, :, :2], np.broadcast_to(rotation_2d(-axis), (n, 2, 2)))
    th = np.radians(axis)
    for r in (-150.0, 40.0):
        raw = shifts + r * np.array([-np.sin(th), np.cos(th)])  # from image +Y, counter-clockwise
        aligned = np.einsum("nij,nj->ni", m[:, :, :2], raw) + m[:, :, 2]
        np.testing.assert_allclose(aligned, np.tile([0.0, r], (n, 1)), atol=1e-9)
    np.testing.assert_allclose(g.specimen_shifts_px(), shifts, atol=1e-12)
    with pytest.raises(ValueError):
        g.with_xf_from_axis_and_shifts(axis, shifts[:2])


def test_unaligned_record_uses_axis_rotation() -> None:
    g = TiltSeriesGeometry(name="t", pixel_size_A=1.0, image_shape_px=(100, 80), tilt_axis_deg=85.0,
                           tilt_angles_deg=[-3.0, 0.0, 3.0])
    np.testing.assert_allclose(g.xf_array()[:, :, :2], np.broadcast_to(rotation_2d(-85.0), (3, 2, 2)))
    np.testing.assert_array_equal(g.xf_array()[:, :, 2], 0.0)


def test_point_on_axis_stays_put_in_every_raw_view() -> None:
    g = TiltSeriesGeometry(name="t", pixel_size_A=1.0, image_shape_px=(400, 300), tilt_axis_deg=85.3,
                           tilt_angles_deg=np.linspace(-60, 60, 21))
    uvd = g.project([[0.0, 50.0, 0.0], [0.0, 0.0, 0.0]])
    th = np.radians(85.3)
    expect = g.image_centre_px() + 50.0 * np.array([-np.sin(th), np.cos(th)])
    np.testing.assert_allclose(uvd[:, 0, :2], np.tile(expect, (21, 1)), atol=1e-9)
    np.testing.assert_allclose(uvd[:, 1, :2], np.tile([149.5, 199.5], (21, 1)), atol=1e-9)
    np.testing.assert_allclose(uvd[:, :, 2], 0.0, atol=1e-9)


def test_positive_tilt_moves_positive_z_towards_positive_x() -> None:
    g = TiltSeriesGeometry(name="t", pixel_size_A=1.0, image_shape_px=(200, 200), tilt_axis_deg=85.3,
                           tilt_angles_deg=[-30.0, 0.0, 30.0], tilt_offset_deg=2.0)
    a = g.aligned_projection_matrices()
    z = 40.0
    x_aligned = a[:, 0, 2] * z
    beta = np.radians([-28.0, 2.0, 32.0])  # true tilts
    np.testing.assert_allclose(x_aligned, z * np.sin(beta))
    assert x_aligned[0] < 0 < x_aligned[1] < x_aligned[2]
    # in the raw image that displacement is along the direction perpendicular to the axis, (cos th, sin th)
    th = np.radians(85.3)
    d = g.project([[0, 0, z]])[:, 0, :2] - g.image_centre_px()
    np.testing.assert_allclose(d, np.outer(z * np.sin(beta), [np.cos(th), np.sin(th)]), atol=1e-9)


def test_projection_matrices_equal_inverse_xf_of_aligned_projection() -> None:
    g = _record(x_tilt_deg=1.7)
    # an affine xf with magnification too
    m = g.xf_array()
    m[:, :, :2] *= np.linspace(0.98, 1.02, g.n_views)[:, None, None]
    g = g.model_copy(update={"xf": m.tolist()})
    rng = np.random.default_rng(4)
    p = rng.uniform(-200, 200, (7, 3))
    aligned = np.einsum("nij,mj->nmi", g.aligned_projection_matrices()[:, :, :3], p)
    raw = np.einsum("nij,nmj->nmi", np.linalg.inv(m[:, :, :2]), aligned[..., :2] - m[:, None, :, 2])
    raw = raw + g.image_centre_px()
    uvd = g.project(p)
    np.testing.assert_allclose(uvd[..., :2], raw, atol=1e-9)
    np.testing.assert_allclose(uvd[..., 2], aligned[..., 2], atol=1e-9)
    P = g.projection_matrices()
    assert P.shape == (g.n_views, 3, 4)


def test_defocus_handedness_and_z_flip() -> None:
    g = TiltSeriesGeometry(name="t", pixel_size_A=2.0, binning=2.0, image_shape_px=(64, 64),
                           tilt_angles_deg=[0.0, 60.0], defocus_handedness=1)
    off = g.defocus_offset_A([[0.0, 0.0, 10.0]])
    np.testing.assert_allclose(off[:, 0], [40.0, 20.0])  # depth 10 px * cos(tilt) * 4 A/px
    flipped = g.model_copy(update={"defocus_handedness": -1, "z_flip": True})
    np.testing.assert_allclose(flipped.defocus_offset_A([[0.0, 0.0, 10.0]]), -off)
    np.testing.assert_allclose(flipped.projection_matrices(volume_coordinates=True)[:, :, 2],
                               -g.projection_matrices()[:, :, 2])
    np.testing.assert_allclose(flipped.projection_matrices(), g.projection_matrices())


def test_default_defocus_handedness_is_imods_and_relions() -> None:
    """The record's default is -1 (RELION 5's rlnTomoHand default, "the same as the tutorial dataset: EMPIAR-10164"):
    it reproduces IMOD's ctfphaseflip, whose strip at aligned column x has the defocus ``Δf + (x - nx/2) tan β ·
    pixel`` ("the right side of an aligned image is both lower in the scope and at a higher underfocus")."""
    px_A, beta = 3.0, np.array([-50.0, -20.0, 0.0, 35.0, 60.0])
    g = TiltSeriesGeometry(name="t", pixel_size_A=px_A, image_shape_px=(200, 200), tilt_angles_deg=beta,
                           tilt_axis_deg=85.3)
    assert g.defocus_handedness == -1
    assert TiltSeriesGeometry.model_fields["defocus_handedness"].default == -1
    # specimen mid-plane points (z = 0) at x: aligned column offset x' = x cos β (from the centre)
    x = np.array([-60.0, -10.0, 25.0, 80.0])
    pts = np.stack([x, np.zeros_like(x), np.zeros_like(x)], 1)
    x_aligned = x[None, :] * np.cos(np.radians(beta))[:, None]
    imod = x_aligned * np.tan(np.radians(beta))[:, None] * px_A  # ctfphaseflip's strip offset (Å)
    np.testing.assert_allclose(g.defocus_offset_A(pts), imod, atol=1e-9)
    assert np.all(g.defocus_offset_A(pts)[beta > 0][:, x > 0] > 0)  # right side, positive tilt: more underfocus
    plus = g.model_copy(update={"defocus_handedness": 1})  # +1 (AreTomo3's) is still available: the mirror
    np.testing.assert_allclose(plus.defocus_offset_A(pts), -imod, atol=1e-9)


# ---------------------------------------------------------------------------------------------- JSON


def test_json_round_trip_with_every_field() -> None:
    n = 9
    g = _record(
        n, optics=Optics(voltage_kV=200, cs_mm=2.0, amplitude_contrast=0.07), tilt_offset_deg=-1.5,
        x_tilt_deg=0.3, acquisition_order=[8, 6, 4, 2, 0, 1, 3, 5, 7], prior_dose_e_A2=np.arange(n) * 3.0,
        dose_e_A2=np.full(n, 3.0), nominal_defocus_um=np.full(n, 4.0), excluded=[False] * 8 + [True],
        defocus_handedness=-1, z_flip=True,
    )
    text = g.model_dump_json()
    json.loads(text)  # plain JSON
    back = TiltSeriesGeometry.model_validate_json(text)
    assert back == g
    np.testing.assert_array_equal(back.xf_array(), g.xf_array())
    assert back.excluded_view_list() == [9] and back.included_views().tolist() == list(range(8))


# ---------------------------------------------------------------------------------------------- IMOD


def test_imod_round_trip_synthetic() -> None:
    g = _record(tilt_offset_deg=0.75)
    xf, tlt = g.to_imod()
    np.testing.assert_allclose(tlt, np.linspace(-60, 60, 41) + 0.75)
    g2 = TiltSeriesGeometry.from_imod(xf, tlt, name="TS_01", pixel_size_A=1.35, binning=4.0,
                                      image_shape_px=(960, 928), tilt_offset_deg=0.75)
    assert g2.tilt_axis_deg == pytest.approx(85.3)
    np.testing.assert_allclose(g2.tilt_angles_deg, g.tilt_angles_deg, atol=1e-12)
    xf2, tlt2 = g2.to_imod()
    np.testing.assert_array_equal(xf2, xf)
    np.testing.assert_allclose(tlt2, tlt, atol=1e-12)
    with pytest.raises(ValueError, match="xf rows"):
        TiltSeriesGeometry.from_imod(xf[:3], tlt, name="x", pixel_size_A=1.0, image_shape_px=(10, 10))


IMOD_PAIRS = [
    (TS001 / "TS_001.xf", TS001 / "TS_001.tlt"),
    (CRYOET / "imod_1__tilt_1.xf", CRYOET / "imod_1__tilt_1.tlt"),
    (ALNFILE / "global_no_local.xf", ALNFILE / "global_no_local.tlt"),
    (EMAN / "example.xf", EMAN / "example.tlt"),
]


@needs_data
@pytest.mark.parametrize("pair", IMOD_PAIRS, ids=lambda p: p[0].name)
def test_real_imod_files_round_trip(pair: tuple[Path, Path], tmp_path: Path) -> None:
    xf, tlt = imod.read_xf(pair[0]), imod.read_tlt(pair[1])
    g = TiltSeriesGeometry.from_imod(xf, tlt, name=pair[0].stem, pixel_size_A=1.0, image_shape_px=(2048, 2048))
    back = TiltSeriesGeometry.model_validate_json(g.model_dump_json())
    xf2, tlt2 = back.to_imod()
    np.testing.assert_array_equal(xf2, xf)
    np.testing.assert_array_equal(tlt2, tlt)
    # and through the files themselves
    imod.write_xf(tmp_path / "a.xf", xf2)
    imod.write_tlt(tmp_path / "a.tlt", tlt2)
    np.testing.assert_allclose(imod.read_xf(tmp_path / "a.xf"), xf, atol=5.1e-4)
    np.testing.assert_allclose(imod.read_tlt(tmp_path / "a.tlt"), tlt, atol=5.1e-3)
    # the record's tilt axis is the mean rotation of the transforms, negated
    per_view = -rotation_angle_deg(xf_rows_to_matrices(xf)[:, :, :2])
    assert abs(((g.tilt_axis_deg - per_view + 180) % 360 - 180)).max() < 1.0


@needs_data
def test_ts001_companion_files_into_the_record() -> None:
    """etomo's TS_001: .tlt (refined), .rawtlt (nominal), .xf, .xtilt and the .edf settings."""
    edf = imod.read_edf(TS001 / "TS_001.edf")
    xf, tlt = imod.read_xf(TS001 / "TS_001.xf"), imod.read_tlt(TS001 / "TS_001.tlt")
    raw, xtilt = imod.read_tlt(TS001 / "TS_001.rawtlt"), imod.read_xtilt(TS001 / "TS_001.xtilt")
    excluded = np.zeros(len(tlt), bool)
    excluded[np.array(imod.parse_view_list(str(edf["Setup.AxisA.ExcludeProjections"]))) - 1] = True
    g = TiltSeriesGeometry.from_imod(
        xf, tlt, name=edf["Setup.DatasetName"], pixel_size_A=edf["Setup.PixelSize"] * 10,  # nm -> A
        image_shape_px=(1024, 1024), binning=edf["Setup.Binning"],
        tilt_offset_deg=edf["batchruntomo.a.align.AngleOffset"], x_tilt_deg=float(np.mean(xtilt)),
        excluded=excluded,
    )
    assert g.name == "TS_001" and g.n_views == 40 and g.pixel_size_A == pytest.approx(6.192)
    assert abs(g.tilt_axis_deg - edf["Setup.ImageRotationA"]) < 0.5
    np.testing.assert_allclose(g.tilt_angles_deg, raw, atol=0.5)  # nominal = refined - offset ~ rawtlt
    assert g.excluded_view_list() == [40] and abs(g.x_tilt_deg) < 0.02
    xf2, tlt2 = g.to_imod()
    np.testing.assert_array_equal(xf2, xf)
    np.testing.assert_allclose(tlt2, tlt, atol=1e-12)


@needs_data
def test_aretomo_alignment_into_the_record_reproduces_reference() -> None:
    aln = aretomo.read_aln(ALNFILE / "global_no_local.aln")
    xf, tlt = aretomo.aln_to_imod(aln)
    g = TiltSeriesGeometry.from_imod(xf, tlt, name="aln", pixel_size_A=1.0,
                                     image_shape_px=aln.raw_size[1::-1], tilt_offset_deg=aln.alpha_offset_deg)
    assert g.image_shape_px == (4096, 4096)
    assert g.tilt_axis_deg == pytest.approx(-aln.global_rows.rot_deg[0])
    np.testing.assert_allclose(g.specimen_shifts_px(), np.stack([aln.global_rows.tx_px, aln.global_rows.ty_px], 1),
                               atol=1e-9)
    np.testing.assert_allclose(g.tilt_angles_deg, tlt + 7.0, atol=1e-12)  # nominal = TILT - AlphaOffset
    xf2, tlt2 = g.to_imod()
    np.testing.assert_allclose(xf2, imod.read_xf(ALNFILE / "global_no_local.xf"), atol=5.1e-5)
    np.testing.assert_allclose(tlt2, imod.read_tlt(ALNFILE / "global_no_local.tlt"), atol=1e-12)


@needs_data
def test_eman2_alignment_and_its_imod_conversion_agree() -> None:
    """emanjson2imodxf converted EMAN2's tlt_params [tx, ty, rot, tilt, xtilt] into example.xf/.tlt; the
    record read from the IMOD files has EMAN2's rotation as its per-view tilt axis and -(tx, ty) as
    specimen shifts."""
    params = np.array(json.loads((EMAN / "example.json").read_text())["tlt_params"])
    g = TiltSeriesGeometry.from_imod(imod.read_xf(EMAN / "example.xf"), imod.read_tlt(EMAN / "example.tlt"),
                                     name="eman", pixel_size_A=2.65, image_shape_px=(1024, 1024))
    per_view_axis = -rotation_angle_deg(g.xf_array()[:, :, :2])
    diff = (per_view_axis - params[:, 2] + 180) % 360 - 180
    assert np.abs(diff).max() < 1e-3
    np.testing.assert_allclose(g.specimen_shifts_px(), -params[:, :2], atol=2e-3)
    np.testing.assert_allclose(g.true_tilt_deg(), params[:, 3], atol=0.0051)
    xf2, tlt2 = g.to_imod()
    np.testing.assert_array_equal(xf2, imod.read_xf(EMAN / "example.xf"))


# ---------------------------------------------------------------------------------------------- RELION 5


@pytest.mark.parametrize("shape", [(960, 928), (959, 927)])
def test_relion5_columns_give_relion_projection_equal_to_ours(shape: tuple[int, int]) -> None:
    g = _record(shape=shape, tilt_offset_deg=1.2, x_tilt_deg=-2.5)
    cols = g.to_relion5()
    assert tuple(cols) == RELION5_COLUMNS and all(v.shape == (g.n_views,) for v in cols.values())
    np.testing.assert_allclose(cols["rlnTomoYTilt"], g.true_tilt_deg())
    np.testing.assert_allclose(cols["rlnTomoZRot"], 85.3)
    np.testing.assert_allclose(cols["rlnTomoXTilt"], -2.5)
    rel = _relion_projection(cols, g.pixel_size_binned_A, shape)
    ours = g.projection_matrices()[:, :2, :]
    np.testing.assert_allclose(rel, ours, atol=1e-9)


def test_relion5_round_trip() -> None:
    rng = np.random.default_rng(5)
    n = 31
    cols = {
        "rlnTomoXTilt": np.full(n, 0.4),
        "rlnTomoYTilt": rng.permutation(np.linspace(-45, 45, n) + rng.normal(0, 0.2, n)),
        "rlnTomoZRot": 84.0 + rng.normal(0, 0.3, n),
        "rlnTomoXShiftAngst": rng.normal(0, 50, n),
        "rlnTomoYShiftAngst": rng.normal(0, 50, n),
    }
    g = TiltSeriesGeometry.from_relion5(cols, name="TS", pixel_size_A=1.54, binning=2.0,
                                        image_shape_px=(2048, 2048), tilt_offset_deg=0.5)
    assert np.all(np.diff(g.tilt_angles_deg) > 0)
    assert g.tilt_axis_deg == pytest.approx(np.mean(cols["rlnTomoZRot"]), abs=1e-3)
    back = g.to_relion5()
    order = np.argsort(cols["rlnTomoYTilt"])
    for c in RELION5_COLUMNS:
        np.testing.assert_allclose(back[c], cols[c][order], atol=1e-9)
    # the record agrees with RELION's own projection of the original (unsorted) rows
    rel = _relion_projection(cols, 1.54 * 2.0, (2048, 2048))[order]
    np.testing.assert_allclose(g.projection_matrices()[:, :2], rel, atol=1e-9)
    # a pandas DataFrame works too, and IMOD -> record -> RELION -> record -> IMOD is exact for rotations
    import pandas as pd

    g2 = TiltSeriesGeometry.from_relion5(pd.DataFrame(back), name="TS", pixel_size_A=1.54, binning=2.0,
                                         image_shape_px=(2048, 2048), tilt_offset_deg=0.5)
    np.testing.assert_allclose(g2.to_imod()[0], g.to_imod()[0], atol=1e-9)


def test_relion5_errors() -> None:
    cols = {c: np.zeros(3) for c in RELION5_COLUMNS}
    cols["rlnTomoYTilt"] = np.array([-3.0, 0.0, 3.0])
    with pytest.raises(ValueError, match="missing: rlnTomoZRot"):
        TiltSeriesGeometry.from_relion5({k: v for k, v in cols.items() if k != "rlnTomoZRot"},
                                        name="x", pixel_size_A=1.0, image_shape_px=(10, 10))
    cols["rlnTomoXTilt"] = np.array([0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="rlnTomoXTilt varies"):
        TiltSeriesGeometry.from_relion5(cols, name="x", pixel_size_A=1.0, image_shape_px=(10, 10))
