"""AreTomo .aln reader and its conversion to IMOD transforms, against real files and their references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.io import aretomo, imod
from tomoguide.compute.io.errors import FormatError, FormatWarning


def _shared_data() -> Path:
    """../shared/data next to the repository, else the bundled subset tests/data (a fresh clone; tests/data/SOURCES.md)."""
    repo = Path(__file__).resolve().parents[3]
    return repo.parent / "shared" / "data" if (repo.parent / "shared" / "data").is_dir() else repo / "tests" / "data"


DATA = _shared_data()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data folder {DATA} does not exist")
ALN = DATA / "alignment"
ALNFILE = ALN / "pypi__alnfile-0.1.1"
CRYOET = ALN / "pypi__cryoet-alignment-0.2.0"
LIL = ALN / "teamtomo__lil-aretomo" / "tests" / "test_data"
ALL_ALN = sorted(ALN.rglob("*.aln")) if ALN.is_dir() else []
TRIMMED = {"test.aln", "test_thickness.aln"}  # cryoet-alignment fixtures cut down from a 90-view file


def _global_lines(path: Path) -> list[list[float]]:
    """Data lines between '# SEC' and '# Local Alignment', split independently of the reader."""
    out, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("# SEC"):
            inside = True
        elif line.startswith("# Local"):
            inside = False
        elif inside and line.strip() and not line.startswith("#"):
            out.append([float(v) for v in line.split()])
    return out


def _local_lines(path: Path) -> list[list[float]]:
    text = path.read_text()
    if "# Local Alignment" not in text:
        return []
    body = text.split("# Local Alignment", 1)[1].splitlines()[1:]
    return [[float(v) for v in ln.split()] for ln in body if ln.strip()]


@needs_data
def test_found_the_real_files() -> None:
    assert len(ALL_ALN) >= 6


@needs_data
@pytest.mark.parametrize("path", ALL_ALN, ids=lambda p: p.name)
def test_read_every_aln(path: Path) -> None:
    rows = np.array(_global_lines(path))
    if path.name in TRIMMED:
        # 4 views + 4 dark frames cannot fill RawSize nz = 90: strict refuses, permissive warns and reads
        with pytest.raises(FormatError) as err:
            aretomo.read_aln(path)
        assert str(err.value).startswith(f"{path}: RawSize: nz = 90")
        with pytest.warns(FormatWarning):
            aln = aretomo.read_aln(path, strict=False)
    else:
        aln = aretomo.read_aln(path)
    g = aln.global_rows
    assert aln.n_views == len(rows) == len(g.tilt_deg)
    for i, name in enumerate(("rot_deg", "gmag", "tx_px", "ty_px", "smean", "sfit", "scale", "base", "tilt_deg")):
        np.testing.assert_array_equal(getattr(g, name), rows[:, i + 1])
    np.testing.assert_array_equal(g.sec, rows[:, 0])
    np.testing.assert_array_equal(g.section, np.arange(aln.n_views))
    assert aln.sec_base == int(rows[0, 0])
    assert np.all(np.diff(g.tilt_deg) > 0)


@needs_data
def test_global_no_local() -> None:
    aln = aretomo.read_aln(ALNFILE / "global_no_local.aln")
    assert aln.header_style == "1.3+" and aln.raw_size == (4096, 4096, 61)
    assert aln.sec_base == 1 and aln.global_rows.sec[0] == 1 and aln.global_rows.section[0] == 0
    assert aln.alpha_offset_deg == -7.0 and aln.beta_offset_deg == 0.0 and aln.thickness_px == 2050
    assert aln.num_patches == 0 and aln.local is None and len(aln.dark_frames) == 0
    np.testing.assert_array_equal(aln.raw_section_index, np.arange(61))


@needs_data
def test_aln_to_imod_reproduces_alnfile_reference() -> None:
    aln = aretomo.read_aln(ALNFILE / "global_no_local.aln")
    xf, tlt = aretomo.aln_to_imod(aln)
    ref_xf = imod.read_xf(ALNFILE / "global_no_local.xf")
    ref_tlt = imod.read_tlt(ALNFILE / "global_no_local.tlt")
    assert xf.shape == ref_xf.shape == (61, 6)
    np.testing.assert_allclose(xf[:, :4], ref_xf[:, :4], atol=5.1e-8)  # the reference has 7 decimals
    np.testing.assert_allclose(xf[:, 4:], ref_xf[:, 4:], atol=5.1e-5)  # and 4 for the shifts
    np.testing.assert_array_equal(tlt, ref_tlt)


@needs_data
@pytest.mark.parametrize("name", ["global_no_local.aln", "global_and_local.aln"])
def test_aln_to_imod_geometry(name: str) -> None:
    """A = R(ROT), D = -A T: the raw point T goes to the aligned centre, and a raw point on the tilt axis
    (angle -ROT from +Y, counter-clockwise) through T goes onto the aligned +Y axis."""
    aln = aretomo.read_aln(ALNFILE / name)
    xf, _ = aretomo.aln_to_imod(aln)
    a = xf[:, :4].reshape(-1, 2, 2)
    d = xf[:, 4:]
    g = aln.global_rows
    t = np.stack([g.tx_px, g.ty_px], 1)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", a, t) + d, 0, atol=1e-9)
    theta = np.radians(-g.rot_deg)
    r = 700.0
    on_axis = t + r * np.stack([-np.sin(theta), np.cos(theta)], 1)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", a, on_axis) + d, np.tile([0.0, r], (len(g), 1)), atol=1e-9)


@needs_data
def test_global_and_local() -> None:
    path = ALNFILE / "global_and_local.aln"
    aln = aretomo.read_aln(path)
    assert aln.raw_size == (4096, 4096, 51) and aln.num_patches == 16 and aln.thickness_px == 1910
    assert len(aln.dark_frames) == 14 and aln.n_views == 37 and aln.sec_base == 0
    np.testing.assert_array_equal(aln.dark_frames.frame, np.arange(14))
    np.testing.assert_array_equal(aln.raw_section_index, np.arange(14, 51))
    # the dark frames' tilts and the kept views' tilts less AlphaOffset form one series in 2-degree steps
    nominal = np.concatenate([aln.dark_frames.tilt_deg, aln.global_rows.tilt_deg - aln.alpha_offset_deg])
    np.testing.assert_allclose(np.diff(nominal), 2.0, atol=0.03)
    loc = aln.local
    assert loc is not None and loc.x_px.shape == (16, 37) and loc.n_patches == 16
    lines = _local_lines(path)
    assert len(lines) == 16 * 37
    for sec, patch, x, y, dx, dy, flag in lines:
        v, p = int(sec), int(patch)
        assert (loc.x_px[p, v], loc.y_px[p, v], loc.dx_px[p, v], loc.dy_px[p, v], loc.flag[p, v]) == (
            x, y, dx, dy, flag)
    assert set(np.unique(loc.flag).tolist()) <= {0.0, 1.0}


@needs_data
def test_versions_1_2_and_1_3() -> None:
    old = aretomo.read_aln(LIL / "example_v1_2_0.aln")
    new = aretomo.read_aln(LIL / "example_v1_3_0.aln")
    assert old.header_style == "1.2" and old.raw_size is None and old.num_patches == 0
    assert new.header_style == "1.3+" and new.raw_size == (5760, 4092, 41)
    assert old.sec_base == new.sec_base == 0 and old.n_views == new.n_views == 41
    np.testing.assert_array_equal(old.global_rows.tilt_deg, new.global_rows.tilt_deg)
    # the same series aligned twice: rotations within 0.1 degree, shifts within 3 % (+ 5 px)
    np.testing.assert_allclose(old.global_rows.rot_deg, new.global_rows.rot_deg, atol=0.1)
    np.testing.assert_allclose(old.global_rows.tx_px, new.global_rows.tx_px, rtol=0.03, atol=5)
    np.testing.assert_allclose(old.global_rows.ty_px, new.global_rows.ty_px, rtol=0.03, atol=5)


@needs_data
def test_trimmed_fixture_with_thickness_and_incomplete_local_block() -> None:
    with pytest.warns(FormatWarning) as rec:
        aln = aretomo.read_aln(CRYOET / "test_thickness.aln", strict=False)
    messages = " ".join(str(w.message) for w in rec)
    assert "RawSize" in messages and "Local Alignment" in messages
    assert aln.thickness_px == 1240 and aln.local is None and aln.sec_base == 1
    np.testing.assert_array_equal(aln.dark_frames.tilt_deg, [-66.0, -64.5, 66.0, 67.5])


def test_synthetic_errors(tmp_path: Path) -> None:
    p = tmp_path / "x.aln"
    p.write_text("hello\n")
    with pytest.raises(FormatError, match="not an AreTomo alignment file"):
        aretomo.read_aln(p)
    head = "# AreTomo Alignment / Priims bprmMn\n# RawSize = 100 100 3\n# NumPatches = 0\n# SEC ROT\n"
    p.write_text(head + "0 1 1 0 0 1 1 1 0 -3\n1 1 1 0 0 1 1 1 0\n2 1 1 0 0 1 1 1 0 3\n")
    with pytest.raises(FormatError, match=r"x\.aln: line 6: expected 10 columns"):
        aretomo.read_aln(p)
    p.write_text(head + "0 1 1 0 0 1 1 1 0 -3\n2 1 1 0 0 1 1 1 0 0\n3 1 1 0 0 1 1 1 0 3\n")
    with pytest.raises(FormatError, match="SEC: section numbers do not run consecutively"):
        aretomo.read_aln(p)
    p.write_text(head)
    with pytest.raises(FormatError, match="no global alignment rows"):
        aretomo.read_aln(p, strict=False)


def test_synthetic_local_block_one_based_and_gmag(tmp_path: Path) -> None:
    """1-based SEC with a 1-based local block; magnification enters the IMOD matrix."""
    lines = ["# AreTomo Alignment / Priims bprmMn", "# RawSize = 64 64 2", "# NumPatches = 2",
             "# AlphaOffset = 0.00", "# BetaOffset = 0.00", "# SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT",
             "1 30.0 1.02 3.0 -4.0 1 1 1 0 -10.0", "2 30.0 0.98 1.0 2.0 1 1 1 0 10.0", "# Local Alignment"]
    for sec in (1, 2):
        for patch in (0, 1):
            lines.append(f"{sec} {patch} {10 * patch} {-10 * patch} {sec + patch} {sec - patch} 1.0")
    p = tmp_path / "s.aln"
    p.write_text("\n".join(lines) + "\n")
    aln = aretomo.read_aln(p)
    assert aln.sec_base == 1 and aln.local is not None
    np.testing.assert_array_equal(aln.local.dx_px, [[1, 2], [2, 3]])
    np.testing.assert_array_equal(aln.local.x_px, [[0, 0], [10, 10]])
    xf, tlt = aretomo.aln_to_imod(aln)
    np.testing.assert_allclose(np.linalg.det(xf[:, :4].reshape(-1, 2, 2)), [1.02**2, 0.98**2])
    np.testing.assert_array_equal(tlt, [-10.0, 10.0])
    info = aretomo.describe(p)
    assert info["n_views"] == 2 and info["has_local"] and info["tilt_axis_deg"] == pytest.approx(-30.0)


@needs_data
@pytest.mark.parametrize("path", ALL_ALN, ids=lambda p: p.name)
def test_describe_every_aln(path: Path) -> None:
    strict = path.name not in TRIMMED
    if strict:
        info = aretomo.describe(path)
    else:
        with pytest.warns(FormatWarning):
            info = aretomo.describe(path, strict=False)
    rows = np.array(_global_lines(path))
    assert info["kind"] == "aln" and info["n_views"] == len(rows)
    assert info["min_tilt_deg"] == rows[:, 9].min() and info["max_tilt_deg"] == rows[:, 9].max()
    assert info["tilt_axis_deg"] == pytest.approx(-np.mean(rows[:, 1]), abs=0.05)
