"""IMOD companion files: tlt/rawtlt/xtilt/xf text tables, view lists, .com/.edf, binary models."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.io import imod
from tomoguide.compute.io.errors import FormatError, FormatWarning


def _shared_data() -> Path:
    """../shared/data next to the repository, else the bundled subset tests/data (a fresh clone; tests/data/SOURCES.md)."""
    repo = Path(__file__).resolve().parents[3]
    return repo.parent / "shared" / "data" if (repo.parent / "shared" / "data").is_dir() else repo / "tests" / "data"


DATA = _shared_data()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data folder {DATA} does not exist")


def _files(*patterns: str) -> list[Path]:
    if not DATA.is_dir():
        return []
    out: list[Path] = []
    for sub in ("imod", "alignment"):
        for pat in patterns:
            out.extend(sorted((DATA / sub).rglob(pat)))
    return out


ANGLE_FILES = _files("*.tlt", "*.rawtlt", "*.xtilt")
XF_FILES = _files("*.xf")
MOD_DIR = DATA / "imod" / "teamtomo__imodmodel" / "tests" / "test_data"
TS001 = DATA / "imod" / "teamtomo__etomofiles" / "test_data" / "TS_001"
CRYOET = DATA / "imod" / "pypi__cryoet-alignment-0.2.0"


def _nonblank(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------- angles


@needs_data
def test_found_the_real_files() -> None:
    assert len(ANGLE_FILES) >= 9 and len(XF_FILES) >= 6


@needs_data
@pytest.mark.parametrize("path", ANGLE_FILES, ids=lambda p: p.name)
def test_read_every_angle_file(path: Path) -> None:
    lines = _nonblank(path)
    ang = imod.read_xtilt(path) if path.suffix == ".xtilt" else imod.read_tlt(path)
    assert ang.shape == (len(lines),) and ang.dtype == np.float64
    np.testing.assert_array_equal(ang, [float(s) for s in lines])
    if path.suffix != ".xtilt":
        assert np.all(np.diff(ang) > 0), "IMOD stacks are in ascending angle order"
        assert np.all(np.abs(ang) <= 90)


@needs_data
def test_haadf_rawtlt_is_minus76_to_76_step_2() -> None:
    ang = imod.read_tlt(DATA / "imod" / "pypi__etspy-1.3.0" / "HAADF.rawtlt")
    np.testing.assert_allclose(ang, np.arange(-76, 77, 2.0))


@needs_data
@pytest.mark.parametrize(
    "path", [TS001 / "TS_001.tlt", TS001 / "TS_001.xtilt", DATA / "imod" / "pypi__etspy-1.3.0" / "HAADF.rawtlt"],
    ids=lambda p: p.name,
)
def test_write_tlt_reproduces_imod_text(path: Path, tmp_path: Path) -> None:
    out = tmp_path / path.name
    imod.write_tlt(out, imod.read_tlt(path))
    assert out.read_text() == path.read_text().replace("\r\n", "\n")


def test_tlt_round_trip_and_write_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ang = np.sort(rng.uniform(-60, 60, 41)).round(2)
    imod.write_tlt(tmp_path / "a.tlt", ang)
    np.testing.assert_array_equal(imod.read_tlt(tmp_path / "a.tlt"), ang)
    imod.write_xtilt(tmp_path / "a.xtilt", np.zeros(3))
    np.testing.assert_array_equal(imod.read_xtilt(tmp_path / "a.xtilt"), np.zeros(3))
    with pytest.raises(ValueError, match="one-dimensional"):
        imod.write_tlt(tmp_path / "b.tlt", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        imod.write_tlt(tmp_path / "b.tlt", [0.0, np.nan])


def test_bad_tlt_strict_and_permissive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tlt"
    bad.write_text("-3.0\n0.0\nzero\n3.0 4.0\n6.0\n")
    with pytest.raises(FormatError) as err:
        imod.read_tlt(bad)
    assert str(err.value).startswith(f"{bad}: line 3: ")
    with pytest.warns(FormatWarning) as rec:
        ang = imod.read_tlt(bad, strict=False)
    assert len(rec) == 2 and "line 4" in str(rec[1].message)
    np.testing.assert_array_equal(ang, [-3.0, 0.0, 6.0])
    empty = tmp_path / "empty.tlt"
    empty.write_text("\n\n")
    with pytest.raises(FormatError, match="no tilt angle values"):
        imod.read_tlt(empty, strict=False)
    binary = tmp_path / "bin.tlt"
    binary.write_bytes(b"\x00\xff\xfe")
    with pytest.raises(FormatError, match="not a text"):
        imod.read_tlt(binary)


# ---------------------------------------------------------------------------------------------- xf


@needs_data
@pytest.mark.parametrize("path", XF_FILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_read_every_xf(path: Path, tmp_path: Path) -> None:
    lines = _nonblank(path)
    xf = imod.read_xf(path)
    assert xf.shape == (len(lines), 6)
    np.testing.assert_array_equal(xf, [[float(v) for v in ln.split()] for ln in lines])
    a = xf[:, :4].reshape(-1, 2, 2)
    # real alignments are rotations with at most a small magnification change
    np.testing.assert_allclose(np.linalg.det(a), 1.0, atol=0.01)
    np.testing.assert_allclose(a @ a.transpose(0, 2, 1), np.eye(2) * np.linalg.det(a)[:, None, None], atol=0.01)
    # round trip through IMOD's fixed format keeps 7 decimals of the matrix and 3 of the shifts
    imod.write_xf(tmp_path / "x.xf", xf)
    back = imod.read_xf(tmp_path / "x.xf")
    np.testing.assert_allclose(back[:, :4], xf[:, :4], atol=5.1e-8)
    np.testing.assert_allclose(back[:, 4:], xf[:, 4:], atol=5.1e-4)


@needs_data
@pytest.mark.parametrize(
    "path",
    [TS001 / "TS_001.xf", CRYOET / "test.xf", CRYOET / "imod_1__tilt_1.xf",
     DATA / "imod" / "teamtomo__yet-another-imod-wrapper" / "tests" / "test_data" / "xf_file.xf"],
    ids=lambda p: p.name,
)
def test_write_xf_reproduces_imod_text(path: Path, tmp_path: Path) -> None:
    imod.write_xf(tmp_path / "x.xf", imod.read_xf(path))
    assert (tmp_path / "x.xf").read_text() == path.read_text()


def test_write_xf_accepts_matrices_and_rejects_bad_shapes(tmp_path: Path) -> None:
    m = np.array([[[0.0, -1.0, 5.0], [1.0, 0.0, -2.0]]])
    imod.write_xf(tmp_path / "m.xf", m)
    np.testing.assert_array_equal(imod.read_xf(tmp_path / "m.xf"), [[0.0, -1.0, 1.0, 0.0, 5.0, -2.0]])
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        imod.write_xf(tmp_path / "m.xf", np.zeros((3, 5)))


def test_bad_xf_names_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xf"
    bad.write_text("1 0 0 1 0 0\n1 0 0 1 0\n")
    with pytest.raises(FormatError, match=r"bad\.xf: line 2: expected 6"):
        imod.read_xf(bad)
    with pytest.warns(FormatWarning):
        assert imod.read_xf(bad, strict=False).shape == (1, 6)


# ---------------------------------------------------------------------------------------------- view lists


@pytest.mark.parametrize(
    ("text", "views"),
    [("1-3,7", [1, 2, 3, 7]), ("40", [40]), ("", []), (" 2 , 5-6 ", [2, 5, 6]), ("1,1,2", [1, 2]),
     ("3 4 10-12", [3, 4, 10, 11, 12])],
)
def test_parse_view_list(text: str, views: list[int]) -> None:
    assert imod.parse_view_list(text) == views


@pytest.mark.parametrize("text", ["1-", "a", "3-1", "0", "1;2", "-2"])
def test_parse_view_list_errors_name_the_text(text: str) -> None:
    with pytest.raises(ValueError) as err:
        imod.parse_view_list(text)
    assert repr(text) in str(err.value)


def test_format_view_list_compacts_runs_and_round_trips() -> None:
    assert imod.format_view_list([7, 1, 2, 3]) == "1-3,7"
    assert imod.format_view_list([]) == ""
    assert imod.format_view_list([5]) == "5"
    rng = np.random.default_rng(1)
    for _ in range(50):
        views = sorted(set(rng.integers(1, 60, rng.integers(1, 30)).tolist()))
        text = imod.format_view_list(views)
        assert imod.parse_view_list(text) == views
        # compact: no two items that could have been merged
        assert text.count(",") + 1 == 1 + sum(1 for a, b in zip(views, views[1:]) if b != a + 1)
    with pytest.raises(ValueError):
        imod.format_view_list([0, 1])


# ---------------------------------------------------------------------------------------------- .com .edf


@needs_data
def test_read_tilt_com_files() -> None:
    t = imod.read_tilt_com(CRYOET / "tilt.com")
    assert t["$program"] == "tilt"
    assert t["THICKNESS"] == 900 and t["IMAGEBINNED"] == 2
    assert t["XAXISTILT"] == 0.0 and t["FULLIMAGE"] == [2032, 2032]
    assert t["RADIAL"] == [0.35, 0.035] and t["PERPENDICULAR"] is True
    assert t["TILTFILE"] == "mba2012-02-01-1.tlt" and t["ActionIfGPUFails"] == [1, 2]
    t1 = imod.read_tilt_com(CRYOET / "imod_1__tilt.com")
    assert t1["THICKNESS"] == 2000 and t1["IMAGEBINNED"] == 4 and t1["SUBSETSTART"] == [-2, 0]
    assert t1["XTILTFILE"] == "mka2018-10-01-1.xtilt"


@needs_data
def test_read_newst_com_files() -> None:
    n = imod.read_newst_com(CRYOET / "imod_1__newst.com")
    assert n["$program"] == "newstack"
    assert n["BinByFactor"] == 4 and n["SizeToOutputInXandY"] == [928, 958]
    assert n["TransformFile"] == "mka2018-10-01-1.xf" and n["AdjustOrigin"] is True
    assert "#DistortionField" not in n and "DistortionField" not in n  # commented out
    assert imod.read_newst_com(CRYOET / "newst.com")["BinByFactor"] == 2


def test_com_excludelist_and_errors(tmp_path: Path) -> None:
    com = tmp_path / "tilt.com"
    com.write_text("$tilt -StandardInput\nEXCLUDELIST 1-3,7\nEXCLUDELIST2 40\nTHICKNESS 300\n$if (-e x) x\n")
    d = imod.read_tilt_com(com)
    assert d["EXCLUDELIST"] == [1, 2, 3, 7] and d["EXCLUDELIST2"] == [40] and d["THICKNESS"] == 300
    bad = tmp_path / "bad.com"
    bad.write_text("$tilt -StandardInput\nEXCLUDELIST 1-x\n= 3\nTHICKNESS 10\n")
    with pytest.raises(FormatError, match=r"bad\.com: EXCLUDELIST: view list '1-x'"):
        imod.read_tilt_com(bad)
    with pytest.warns(FormatWarning) as rec:
        d = imod.read_tilt_com(bad, strict=False)
    assert len(rec) == 2 and "line 3" in str(rec[1].message) and d["THICKNESS"] == 10


@needs_data
def test_read_edf_agrees_with_the_alignment_files() -> None:
    e = imod.read_edf(TS001 / "TS_001.edf")
    assert e["Setup.DatasetName"] == "TS_001" and e["Setup.PixelSize"] == 0.6192
    assert e["Setup.AxisA.ExcludeProjections"] == 40 and e["ProcessTrack.Setup"] == "Complete"
    # the etomo tilt-axis angle and angle offset agree with tiltalign's outputs of the same data set
    info = imod.describe(TS001 / "TS_001.xf")
    assert abs(info["tilt_axis_deg"] - e["Setup.ImageRotationA"]) < 0.5
    offset = imod.read_tlt(TS001 / "TS_001.tlt") - imod.read_tlt(TS001 / "TS_001.rawtlt")
    assert abs(np.median(offset) - e["batchruntomo.a.align.AngleOffset"]) < 0.2


def test_bad_edf(tmp_path: Path) -> None:
    p = tmp_path / "x.edf"
    p.write_text("#comment\nA=1\nno equals here\nB=x,y\n")
    with pytest.raises(FormatError, match=r"x\.edf: line 3"):
        imod.read_edf(p)
    with pytest.warns(FormatWarning):
        assert imod.read_edf(p, strict=False) == {"A": 1, "B": "x,y"}


# ---------------------------------------------------------------------------------------------- .mod


@needs_data
def test_mod_files_match_imodmodel_facts() -> None:
    """Object/contour counts as asserted by teamtomo/imodmodel's own tests for the same files."""
    two = imod.read_mod_points(MOD_DIR / "two_contour_example.mod")
    assert two.n_objects == 1 and two.contours_per_object == [2]
    multi = imod.read_mod_points(MOD_DIR / "multiple_objects_example.mod")
    assert multi.n_objects == 3 and multi.contours_per_object[1] >= 1 and multi.contours_per_object[2] >= 1
    sizes = imod.read_mod_points(MOD_DIR / "point_sizes_example.mod")
    s0 = sizes.point_sizes[sizes.object_id == 0]
    s1 = sizes.point_sizes[sizes.object_id == 1]
    assert s0.size > 0 and np.all(np.isfinite(s0)) and s1.size > 0 and np.all(np.isnan(s1))
    assert imod.read_mod_points(MOD_DIR / "slicer_angle_example.mod").n_objects == 1


@needs_data
@pytest.mark.parametrize("path", sorted(MOD_DIR.glob("*.mod")) if MOD_DIR.is_dir() else [], ids=lambda p: p.name)
def test_read_every_mod(path: Path) -> None:
    m = imod.read_mod_points(path)
    n = m.xyz.shape[0]
    assert n > 0 and m.xyz.shape == (n, 3) and m.object_id.shape == (n,) and m.contour_id.shape == (n,)
    assert m.n_contours == sum(m.contours_per_object)
    # every point lies inside the image the model was drawn on
    shape = np.array(m.image_shape_xyz, dtype=float)
    assert np.all(m.xyz >= -1) and np.all(m.xyz <= shape + 1)
    assert m.units == "nm" and m.pixel_size > 0
    # ids are consistent with the per-object contour counts
    for obj, count in enumerate(m.contours_per_object):
        ids = np.unique(m.contour_id[m.object_id == obj])
        assert set(ids.tolist()) <= set(range(count))


def _write_model(path: Path, objects: list[list[np.ndarray]], *, end: bool = True) -> None:
    """Minimal IMODV1.2 writer for tests (header, OBJT, CONT, an unknown sized chunk, IEOF)."""
    head = struct.pack(
        ">128s4iI4i3f3f5ifii3f", b"test", 100, 200, 30, len(objects), 0, 0, 0, 0, 255,
        0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 2.5, -9, 0, 0, 0, 0,
    )
    out = [b"IMODV1.2", head]
    for conts in objects:
        out += [b"OBJT", struct.pack(">64s16IiIii3fi8Bii", b"obj", *([0] * 16), len(conts), 0, 0, 0,
                                     1, 0, 0, 0, *([0] * 8), 0, 0)]
        out += [b"IMAT", struct.pack(">i", 16), bytes(16)]
        for pts in conts:
            out += [b"CONT", struct.pack(">iIii", len(pts), 0, 0, 0), pts.astype(">f4").tobytes()]
    out += [b"MINX", struct.pack(">i", 72), bytes(72)]
    if end:
        out.append(b"IEOF")
    path.write_bytes(b"".join(out))


def test_mod_synthetic_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    objects = [[rng.uniform(0, 30, (4, 3)), rng.uniform(0, 30, (2, 3))], [], [rng.uniform(0, 30, (5, 3))]]
    p = tmp_path / "m.mod"
    _write_model(p, objects)
    m = imod.read_mod_points(p)
    expect = np.concatenate([c for conts in objects for c in conts]).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(m.xyz, expect)
    np.testing.assert_array_equal(m.object_id, [0] * 6 + [2] * 5)
    np.testing.assert_array_equal(m.contour_id, [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0])
    assert m.contours_per_object == [2, 0, 1] and m.image_shape_xyz == (100, 200, 30)
    assert m.pixel_size == 2.5 and m.units == "nm"
    assert imod.describe(p)["n_points"] == 11


def test_mod_errors(tmp_path: Path) -> None:
    p = tmp_path / "t.mod"
    _write_model(p, [[np.zeros((3, 3))]], end=False)
    with pytest.raises(FormatError, match="IEOF"):
        imod.read_mod_points(p)
    with pytest.warns(FormatWarning):
        assert imod.read_mod_points(p, strict=False).xyz.shape == (3, 3)
    p.write_bytes(p.read_bytes()[:-100])  # cut inside the contour
    with pytest.raises(FormatError, match="t.mod"):
        imod.read_mod_points(p)
    (tmp_path / "x.mod").write_bytes(b"NOPE" + bytes(300))
    with pytest.raises(FormatError, match="not an IMOD binary model"):
        imod.read_mod_points(tmp_path / "x.mod")


# ---------------------------------------------------------------------------------------------- describe


@needs_data
@pytest.mark.parametrize(
    "path", ANGLE_FILES + XF_FILES + _files("*.mod", "*.com", "*.edf"), ids=lambda p: p.name
)
def test_describe_every_file(path: Path) -> None:
    info = imod.describe(path)
    assert info["kind"] == path.suffix[1:]
    if info["kind"] in ("tlt", "rawtlt", "xtilt", "xf"):
        assert info["n_views"] == len(_nonblank(path))
    if info["kind"] == "xf":
        assert abs(info["mean_magnification"] - 1) < 0.01
        assert info["tilt_axis_deg"] == pytest.approx(-info["mean_rotation_deg"])


@needs_data
def test_describe_values() -> None:
    info = imod.describe(DATA / "imod" / "pypi__etspy-1.3.0" / "HAADF.rawtlt")
    assert (info["n_views"], info["min_deg"], info["max_deg"], info["step_deg"]) == (77, -76.0, 76.0, 2.0)
    # EMPIAR-10164 TS_01: SerialEM's tilt axis 85.3 degrees; IMOD's xf rotates by about -85.3
    xf = imod.describe(DATA / "imod" / "teamtomo__yet-another-imod-wrapper" / "tests" / "test_data" / "xf_file.xf")
    assert abs(xf["tilt_axis_deg"] - 85.3) < 0.5
    with pytest.raises(FormatError, match="unknown IMOD file type"):
        imod.describe(DATA / "imod" / "pypi__etspy-1.3.0" / "HAADF.txt")


def test_no_warnings_on_clean_read(tmp_path: Path) -> None:
    p = tmp_path / "ok.tlt"
    p.write_text(" -3.00\n  0.00\n  3.00\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(imod.read_tlt(p), [-3, 0, 3])
