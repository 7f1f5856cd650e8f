"""Particle coordinates: one ParticleTable from RELION 5 STAR, text and Scipion sqlite; RELION Euler angles."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from tomoguide.compute import euler
from tomoguide.compute.io import coords, star
from tomoguide.compute.io.coords import ParticleTable
from tomoguide.compute.io.errors import FormatError, FormatWarning

PIXEL_SIZE_A = 5.4
SHAPES = {"TS_01": (200, 180, 60), "TS_03": (201, 151, 75)}  # one odd-sized tomogram on purpose


def _relion_matrix_scipy(angles_deg: np.ndarray) -> np.ndarray:
    """RELION's A = Rz(psi) Ry(tilt) Rz(rot) with RELION's (transposed) elementary rotations, via scipy:
    the extrinsic z-y-z rotation by (-rot, -tilt, -psi)."""
    return Rotation.from_euler("zyz", -np.asarray(angles_deg), degrees=True).as_matrix()


@pytest.fixture
def particles() -> ParticleTable:
    rng = np.random.default_rng(20)
    n = 20
    names = np.array(["TS_01"] * 12 + ["TS_03"] * 8)
    shape = np.array([SHAPES[t] for t in names], dtype=float)
    xyz = rng.uniform(0, 1, (n, 3)) * (shape - 1)
    angles = np.c_[rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)]
    return ParticleTable(tomo_name=names, xyz_px=xyz, pixel_size_A=PIXEL_SIZE_A, angles_deg=angles,
                         score=rng.uniform(0, 1, n))


# ---- Euler angles -------------------------------------------------------------------------------------


def test_euler_matches_relion_formula_and_scipy() -> None:
    rng = np.random.default_rng(3)
    ang = np.c_[rng.uniform(-180, 180, 200), rng.uniform(0, 180, 200), rng.uniform(-180, 180, 200)]
    a = euler.euler_to_matrix(ang)
    assert a.shape == (200, 3, 3)
    assert np.allclose(a, _relion_matrix_scipy(ang), atol=1e-12)
    assert np.allclose(a @ np.swapaxes(a, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(a), 1.0)
    # scalar form and three-argument form agree
    r, t, p = ang[0]
    assert np.allclose(euler.euler_to_matrix(r, t, p), a[0])
    # A[2, 2] = cos(tilt); third row = (sin t cos rot, sin t sin rot, cos t)
    assert np.allclose(a[:, 2, 2], np.cos(np.deg2rad(ang[:, 1])))
    assert np.allclose(a[:, 2, 0], np.sin(np.deg2rad(ang[:, 1])) * np.cos(np.deg2rad(ang[:, 0])))


def test_euler_known_matrices() -> None:
    assert np.allclose(euler.euler_to_matrix(0, 0, 0), np.eye(3))
    # RELION's Rz(rot=90): rows (0, 1, 0), (-1, 0, 0)
    assert np.allclose(euler.euler_to_matrix(90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-15)
    # RELION's Ry(tilt=90): rows (0, 0, -1), (0, 1, 0), (1, 0, 0)
    assert np.allclose(euler.euler_to_matrix(0, 90, 0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-15)
    # psi acts last: Rz(psi) Ry(tilt)
    assert np.allclose(euler.euler_to_matrix(0, 90, 90), np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]]) @ [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-15)


def test_matrix_to_euler_round_trip_and_gimbal_lock() -> None:
    rng = np.random.default_rng(4)
    ang = np.c_[rng.uniform(-179, 179, 500), rng.uniform(0.5, 179.5, 500), rng.uniform(-179, 179, 500)]
    back = euler.matrix_to_euler(euler.euler_to_matrix(ang))
    assert np.allclose(back, ang, atol=1e-9)
    # random rotations (any representation) map back to the same matrix
    mats = Rotation.random(300, random_state=5).as_matrix()
    ang2 = euler.matrix_to_euler(mats)
    assert np.all((ang2[:, 1] >= 0) & (ang2[:, 1] <= 180))
    assert np.all((ang2[:, [0, 2]] > -180) & (ang2[:, [0, 2]] <= 180))
    assert np.allclose(euler.euler_to_matrix(ang2), mats, atol=1e-9)
    # tilt 0: only rot + psi is defined -> (0, 0, rot + psi); tilt 180: (0, 180, psi - rot)
    assert np.allclose(euler.matrix_to_euler(euler.euler_to_matrix(30, 0, 20)), [0, 0, 50], atol=1e-9)
    assert np.allclose(euler.matrix_to_euler(euler.euler_to_matrix(10, 180, 20)), [0, 180, 10], atol=1e-9)
    assert np.allclose(euler.rotation_angle_deg(euler.euler_to_matrix(0, 0, 0), euler.euler_to_matrix(0, 0, 37)), 37)


# ---- ParticleTable ------------------------------------------------------------------------------------


def test_centred_angstrom_convention(particles: ParticleTable) -> None:
    cen = particles.to_angstrom_centered(SHAPES)
    for i in (0, 19):
        shape = np.array(SHAPES[particles.tomo_name[i]], dtype=float)
        assert np.allclose(cen[i], (particles.xyz_px[i] - shape / 2) * PIXEL_SIZE_A)
    # RELION 5 centre = size / 2: voxel 100 of 200 and coordinate 100.5 of 201 are at 0 Å
    t = ParticleTable.from_points("TS_03", [[100.5, 75.5, 37.5]], PIXEL_SIZE_A)
    assert np.allclose(t.to_angstrom_centered(SHAPES), 0)
    t = ParticleTable.from_points("TS_01", [[100, 90, 30]], PIXEL_SIZE_A)
    assert np.allclose(t.to_angstrom_centered((200, 180, 60)), 0)
    with pytest.raises(KeyError, match="TS_01"):
        t.to_angstrom_centered({"other": (1, 1, 1)})


def test_select_len_and_equality(particles: ParticleTable) -> None:
    assert len(particles) == 20 and particles.tomograms == ["TS_01", "TS_03"]
    sub = particles.select(particles.tomo_name == "TS_03")
    assert len(sub) == 8 and set(sub.tomo_name) == {"TS_03"} and sub.angles_deg.shape == (8, 3)
    assert particles.isclose(coords.concat([particles.select(np.arange(12)), particles.select(np.arange(12, 20))]))
    moved = particles.select(np.arange(20))
    moved.xyz_px[3, 1] += 0.01
    assert not particles.isclose(moved) and "xyz_px" in particles.differences(moved)[0]
    # equivalent Euler triples are the same orientation
    a = ParticleTable.from_points("x", [[0, 0, 0]], 1.0)
    a.angles_deg = np.array([[30.0, 0.0, 20.0]])
    b = ParticleTable.from_points("x", [[0, 0, 0]], 1.0)
    b.angles_deg = np.array([[0.0, 0.0, 50.0]])
    assert a.isclose(b)
    assert np.allclose(particles.rescaled(2 * PIXEL_SIZE_A).xyz_px, particles.xyz_px / 2)


def test_from_points_for_imod_models() -> None:
    t = coords.from_points("TS_01", np.arange(12.0).reshape(4, 3), 10.8)
    assert len(t) == 4 and t.angles_deg is None and t.score is None
    assert t.pixel_size_A == 10.8 and (t.tomo_name == "TS_01").all()
    assert np.array_equal(t.xyz_px[2], [6.0, 7.0, 8.0])


# ---- the same 20 particles through every format ------------------------------------------------------


def test_relion5_star_round_trip(tmp_path: Path, particles: ParticleTable) -> None:
    p = coords.write_relion_particles(tmp_path / "particles.star", particles, SHAPES)
    df = star.read_particles_star(p).particles
    # the file holds RELION 5 centred Å coordinates computed with centre = size/2
    x0 = (particles.xyz_px[0, 0] - SHAPES["TS_01"][0] / 2) * PIXEL_SIZE_A
    assert df["rlnCenteredCoordinateXAngst"].iloc[0] == pytest.approx(x0, abs=1e-6)
    back = coords.read_relion_particles(p, SHAPES)
    assert back.isclose(particles, atol_px=1e-6, atol_deg=1e-4), back.differences(particles)


def test_text_round_trip(tmp_path: Path, particles: ParticleTable) -> None:
    tables = []
    for name in particles.tomograms:
        path = tmp_path / f"{name}.txt"
        coords.write_text_coords(path, particles.select(particles.tomo_name == name))
        tables.append(coords.read_text_coords(path, tomo_name=name))
    back = coords.concat(tables)
    assert back.pixel_size_A == PIXEL_SIZE_A  # from the header
    assert back.isclose(particles, atol_px=1e-6, atol_deg=1e-4), back.differences(particles)
    with pytest.raises(ValueError, match="one file per tomogram"):
        coords.write_text_coords(tmp_path / "all.txt", particles)


def test_scipion_sqlite_round_trip(tmp_path: Path, particles: ParticleTable) -> None:
    path = coords.write_scipion_sqlite(tmp_path / "coordinates.sqlite", particles, tomo_shapes=SHAPES)
    back = coords.read_scipion_sqlite(path, tomo_shapes=SHAPES)
    assert back.isclose(particles, atol_px=1e-9, atol_deg=1e-6), back.differences(particles)
    # the file layout: Classes maps attributes to generic columns; values relative to the centre
    con = sqlite3.connect(path)
    try:
        mapping = dict(con.execute("SELECT label_property, column_name FROM Classes"))
        props = dict(con.execute("SELECT key, value FROM Properties"))
        row = con.execute(
            f"SELECT {mapping['_x']}, {mapping['_tomoId']}, {mapping['_eulerMatrix._matrix']} FROM Objects WHERE id = 1"
        ).fetchone()
    finally:
        con.close()
    assert mapping["self"] == "c00" and props["self"] == "SetOfCoordinates3D"
    assert float(props["_samplingRate"]) == PIXEL_SIZE_A and props["_size"] == "20"
    assert row[0] == pytest.approx(particles.xyz_px[0, 0] - SHAPES["TS_01"][0] / 2)
    assert row[1] == "TS_01"
    # Scipion's matrix is the inverse of RELION's (scipion-em-reliontomo: inv(euler_matrix(-rot,-tilt,-psi,'szyz')))
    m = np.array(json.loads(row[2]))
    assert m.shape == (4, 4) and np.allclose(m[:3, 3], 0)
    assert np.allclose(m[:3, :3], np.linalg.inv(_relion_matrix_scipy(particles.angles_deg[0])))


def test_scipion_corner_origin_disabled_rows_and_pixel_size(tmp_path: Path, particles: ParticleTable) -> None:
    path = coords.write_scipion_sqlite(tmp_path / "c.sqlite", particles, origin="corner")
    con = sqlite3.connect(path)
    con.execute("UPDATE Objects SET enabled = 0 WHERE id = 5")
    con.commit()
    con.close()
    back = coords.read_scipion_sqlite(path, origin="corner")
    assert len(back) == 19
    assert back.isclose(particles.select(np.arange(20) != 4), atol_px=1e-9, atol_deg=1e-6)
    assert len(coords.read_scipion_sqlite(path, origin="corner", include_disabled=True)) == 20
    assert coords.read_scipion_sqlite(path, origin="corner", pixel_size_A=1.0).pixel_size_A == 1.0
    with pytest.raises(ValueError, match="tomo_shapes"):
        coords.read_scipion_sqlite(path)


def test_scipion_errors(tmp_path: Path, particles: ParticleTable) -> None:
    path = coords.write_scipion_sqlite(tmp_path / "c.sqlite", particles, origin="corner")
    con = sqlite3.connect(path)
    con.execute("UPDATE Classes SET label_property = '_xx' WHERE label_property = '_x'")
    con.commit()
    con.close()
    with pytest.raises(FormatError, match=r"Classes/_x: missing coordinate column"):
        coords.read_scipion_sqlite(path, origin="corner")
    path2 = coords.write_scipion_sqlite(tmp_path / "d.sqlite", particles, origin="corner")
    con = sqlite3.connect(path2)
    col = dict(con.execute("SELECT label_property, column_name FROM Classes"))["_eulerMatrix._matrix"]
    con.execute(f"UPDATE Objects SET {col} = 'garbage' WHERE id = 2")
    con.commit()
    con.close()
    with pytest.raises(FormatError, match="object id 2: unreadable matrix"):
        coords.read_scipion_sqlite(path2, origin="corner")
    with pytest.warns(FormatWarning):
        t = coords.read_scipion_sqlite(path2, origin="corner", strict=False)
    assert np.allclose(t.angles_deg[1], 0)
    notdb = tmp_path / "x.sqlite"
    notdb.write_text("not a database at all, just text that is long enough " * 20)
    with pytest.raises(FormatError, match="not an sqlite file"):
        coords.read_scipion_sqlite(notdb, origin="corner")
    con = sqlite3.connect(tmp_path / "other.sqlite")
    con.execute("CREATE TABLE Foo (a INTEGER)")
    con.close()
    with pytest.raises(FormatError, match="Objects: missing table"):
        coords.read_scipion_sqlite(tmp_path / "other.sqlite", origin="corner")


# ---- RELION details: origins, subtomogram orientation, RELION 4 pixels -------------------------------


def test_from_relion5_folds_origins_and_subtomogram_angles() -> None:
    rng = np.random.default_rng(9)
    n = 6
    cen = rng.uniform(-300, 300, (n, 3))
    sub = np.c_[rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)]
    part = np.c_[rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)]
    origin = rng.uniform(-20, 20, (n, 3))
    df = pd.DataFrame({"rlnTomoName": ["TS_01"] * n})
    for k, lab in enumerate(star.CENTERED_XYZ):
        df[lab] = cen[:, k]
    for k, lab in enumerate(star.SUBTOMO_ANGLES):
        df[lab] = sub[:, k]
    for k, lab in enumerate(star.ANGLES):
        df[lab] = part[:, k]
    for k, lab in enumerate(star.ORIGINS_A):
        df[lab] = origin[:, k]
    t = ParticleTable.from_relion5(df, SHAPES, PIXEL_SIZE_A)
    a_sub = _relion_matrix_scipy(sub)
    expected = cen / PIXEL_SIZE_A + np.array(SHAPES["TS_01"]) / 2 - np.einsum("nij,nj->ni", a_sub, origin) / PIXEL_SIZE_A
    assert np.allclose(t.xyz_px, expected)
    assert np.allclose(euler.euler_to_matrix(t.angles_deg), a_sub @ _relion_matrix_scipy(part), atol=1e-9)


def test_relion4_pixel_coordinates(tmp_path: Path) -> None:
    p = tmp_path / "r4.star"
    star.write_star(
        p,
        {
            "optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnTomoTiltSeriesPixelSize": [1.35]}),
            "particles": pd.DataFrame({"rlnTomoName": ["TS_01"] * 2, "rlnCoordinateX": [400.0, 800.0],
                                       "rlnCoordinateY": [40.0, 80.0], "rlnCoordinateZ": [4.0, 8.0]}),
        },
    )
    t = coords.read_relion_particles(p, None, pixel_size_A=5.4)  # bin 4
    assert np.allclose(t.xyz_px, [[100, 10, 1], [200, 20, 2]]) and t.angles_deg is None
    t1 = coords.read_relion_particles(p, None)  # default: the optics pixel size
    assert t1.pixel_size_A == 1.35 and np.allclose(t1.xyz_px[1], [800, 80, 8])


def test_relion_unknown_tomogram_is_a_format_error(tmp_path: Path, particles: ParticleTable) -> None:
    p = coords.write_relion_particles(tmp_path / "p.star", particles, SHAPES)
    with pytest.raises(FormatError, match="rlnTomoName.*TS_03"):
        coords.read_relion_particles(p, {"TS_01": SHAPES["TS_01"]})


# ---- text reader details ------------------------------------------------------------------------------


def test_text_reader_formats_and_errors(tmp_path: Path) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("x,y,z\n1,2,3\n4.5, 5.5, 6.5  # a comment\n\n# pixel_size_A: 2.5\n")
    t = coords.read_text_coords(csv, tomo_name="T")
    assert np.allclose(t.xyz_px, [[1, 2, 3], [4.5, 5.5, 6.5]]) and t.angles_deg is None
    assert t.pixel_size_A == 2.5
    assert coords.read_text_coords(csv, tomo_name="T", pixel_size_A=1.0).pixel_size_A == 1.0
    six = tmp_path / "b.txt"
    six.write_text("1 2 3 10 20 30\n4 5 6 40 50 60\n")
    t = coords.read_text_coords(six, tomo_name="T")
    assert np.allclose(t.angles_deg, [[10, 20, 30], [40, 50, 60]]) and t.pixel_size_A is None
    bad = tmp_path / "bad.txt"
    bad.write_text("# header\n1 2 3\n4 5\n7 8 9\n1 2 three\n")
    with pytest.raises(FormatError, match=r"bad\.txt: line 3: expected 3 \(x y z\)"):
        coords.read_text_coords(bad, tomo_name="T")
    with pytest.warns(FormatWarning) as rec:
        t = coords.read_text_coords(bad, tomo_name="T", strict=False)
    assert len(t) == 2 and any("line 5" in str(w.message) for w in rec)
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("1 2 3\n1 2 3 4 5 6\n")
    with pytest.raises(FormatError, match="line 2: expected 3 fields like the first row"):
        coords.read_text_coords(mixed, tomo_name="T")
