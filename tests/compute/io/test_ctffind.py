"""CTFFIND text outputs: the real 7- and 8-column files and a CTFFIND5-style header."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.io import ctffind
from tomoguide.compute.io.errors import FormatError, FormatWarning


def _shared_data() -> Path:
    here = Path(__file__).resolve()
    repo = next((p for p in here.parents if (p / "pyproject.toml").is_file()), here.parents[3])
    return repo.parent / "shared" / "data" if (repo.parent / "shared" / "data").is_dir() else repo / "tests" / "data"


DATA = _shared_data()
CTF_DIR = DATA / "ctf" / "pypi__cryoet-alignment-0.2.0"
needs_data = pytest.mark.skipif(not CTF_DIR.is_dir(), reason=f"shared test data not found at {CTF_DIR}")


@needs_data
def test_ctffind4_seven_columns() -> None:
    path = CTF_DIR / "test_CTF.txt"
    df = ctffind.read_ctffind_txt(path)
    ref = np.loadtxt(path, comments="#")
    assert list(df.columns) == list(ctffind.BASE_COLUMNS)
    assert df.shape == ref.shape == (3, 7)
    assert np.allclose(df.to_numpy(dtype=float), ref)
    assert df["micrograph_number"].tolist() == [1, 2, 3]
    # CTFFIND sorts defocus 1 >= defocus 2
    assert (df["defocus_1_A"] >= df["defocus_2_A"]).all()
    info = ctffind.describe(path)
    mean = (ref[:, 1] + ref[:, 2]) / 2
    assert info["n_images"] == 3
    assert info["defocus_range_A"] == pytest.approx([mean.min(), mean.max()])
    assert info["fit_resolution_range_A"] == pytest.approx([ref[:, 6].min(), ref[:, 6].max()])
    assert info["phase_shift"] is False


@needs_data
def test_ctffind_eight_columns_named_from_header() -> None:
    path = CTF_DIR / "test_8col_CTF.txt"
    df = ctffind.read_ctffind_txt(path)
    ref = np.loadtxt(path, comments="#")
    assert df.shape == ref.shape and df.shape[1] == 8
    assert df.columns[-1] == "df_hand"  # "#8 - dfHand" in the header
    assert np.allclose(df.to_numpy(dtype=float), ref)
    assert (df["df_hand"] == -1).all()
    assert df["micrograph_number"].tolist() == list(range(1, len(ref) + 1))
    assert ctffind.describe(path)["n_images"] == len(ref)


CTFFIND5_TEXT = """\
# Output from CTFFind version 5.0.2, run on 2024-03-01 10:00:00
# Input file: /data/TS_01.mrc ; Number of micrographs: 3
# Pixel size: 1.350 Angstroms ; acceleration voltage: 300.0 keV ; spherical aberration: 2.70 mm ; amplitude contrast: 0.07
# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms ; min. def.: 5000.0 um; max. def. 50000.0 um
# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit successfully; #8 - Estimated sample thickness (in Angstroms)
1.000000 39224.277344 39029.843750 -15.476660 0.000000 0.036367 7.166976 1510.0
2.000000 39289.640625 39136.585938 -88.186760 0.000000 0.038592 7.790191 1525.5
3.000000 39372.078125 39005.648438 32.468166 0.000000 0.036495 6.825691 1498.2
"""


def test_ctffind5_header_and_thickness(tmp_path: Path) -> None:
    path = tmp_path / "diagnostic_output.txt"
    path.write_text(CTFFIND5_TEXT)
    df = ctffind.read_ctffind_txt(path)
    assert df.columns[-1] == "sample_thickness_A"
    assert df["sample_thickness_A"].tolist() == [1510.0, 1525.5, 1498.2]
    assert df["defocus_1_A"].iloc[0] == pytest.approx(39224.277344)
    assert df.attrs["ctffind_version"] == "5.0.2"
    assert df.attrs["input_file"] == "/data/TS_01.mrc"
    assert df.attrs["pixel_size_A"] == 1.35 and df.attrs["voltage_kV"] == 300.0
    assert df.attrs["cs_mm"] == 2.7 and df.attrs["amplitude_contrast"] == 0.07
    assert df.attrs["box_size_px"] == 512 and df.attrs["max_resolution_A"] == 5.0
    assert df.attrs["min_defocus_A"] == 5000.0 and df.attrs["max_defocus_A"] == 50000.0
    info = ctffind.describe(path)
    assert info["sample_thickness_range_A"] == [1498.2, 1525.5]
    assert info["header"]["pixel_size_A"] == 1.35


def test_errors_name_the_line(tmp_path: Path) -> None:
    lines = CTFFIND5_TEXT.splitlines()
    bad = tmp_path / "bad.txt"
    # line 7 loses a column, line 8 has a word
    bad.write_text("\n".join(lines[:6] + [" ".join(lines[6].split()[:6]), lines[7].replace("1498.2", "abc")]) + "\n")
    with pytest.raises(FormatError, match=r"bad\.txt: line 7: expected 8 columns"):
        ctffind.read_ctffind_txt(bad)
    with pytest.warns(FormatWarning) as rec:
        df = ctffind.read_ctffind_txt(bad, strict=False)
    assert len(df) == 1 and any("line 8" in str(w.message) for w in rec)
    neg = tmp_path / "neg.txt"
    neg.write_text("1 -100.0 200.0 0 0 0.1 8.0\n")
    with pytest.raises(FormatError, match="line 1: defocus must be positive"):
        ctffind.read_ctffind_txt(neg)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a header\n")
    with pytest.raises(FormatError, match="no data rows"):
        ctffind.read_ctffind_txt(empty)
