"""Warp / WarpTools tilt-series XML reader.

Real sample: ``warp/pypi__cryoet-alignment-0.2.0/00254.xml`` — a WarpTools tilt-series XML of EMPIAR-10499
(relay series, 41 tilts), from the PyPI sdist cryoet-alignment 0.2.0 (``tests/data/warp/00254.xml``), MIT
licence (Copyright (c) 2024 Utz Ermel), bundled unchanged in tests/data (SOURCES.md). Its UTF-16 copy
``warp/derived/00254_utf16.xml`` is the same document re-encoded as Warp writes on Windows (UTF-16 LE with
BOM, ``encoding="utf-16"``, CRLF after elements). Variants with a fitted CTF, inverted angles, decimal
commas and damage are made from it in the tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.io import warp
from tomoguide.compute.io.errors import FormatError

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "data" / "warp" / "pypi__cryoet-alignment-0.2.0" / "00254.xml"
BUNDLED = REPO / "tests" / "data" / "warp" / "pypi__cryoet-alignment-0.2.0" / "00254.xml"
SAMPLE = SHARED if SHARED.is_file() else BUNDLED
UTF16 = REPO / "tests" / "data" / "warp" / "derived" / "00254_utf16.xml"
needs_sample = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"Warp sample {SAMPLE} not present")


def _text() -> str:
    return SAMPLE.read_bytes().decode("utf-8-sig")


def _variant(tmp_path: Path, text: str, name: str = "v.xml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@needs_sample
def test_real_sample_values_agree_with_its_movie_names() -> None:
    ts = warp.read_warp_tilt_series_xml(SAMPLE)
    assert ts.encoding == "UTF-8 (BOM)" and ts.n_tilts == 41 and not ts.angles_inverted
    assert ts.tilt_deg[0] == -60.01 and ts.tilt_deg[-1] == 59.98 and ts.use_tilt.all()
    # the movie names carry the acquisition index and nominal tilt: TS_01_041_-60.0.tif
    names = [re.match(r".*TS_01_(\d+)_(-?[\d.]+)\.tif$", m) for m in ts.movie_paths]
    assert all(names)
    index = np.array([int(m.group(1)) for m in names])  # type: ignore[union-attr]
    nominal = np.array([float(m.group(2)) for m in names])  # type: ignore[union-attr]
    np.testing.assert_allclose(ts.tilt_deg, nominal, atol=0.021)
    # dose before each tilt: 3 e/A^2 per exposure in acquisition order, the 0° view (index 2) first
    np.testing.assert_allclose(ts.dose_prior_e_per_A2, (index - 2) * 3.0)
    np.testing.assert_allclose(ts.axis_angle_deg, -4.2999735)
    assert ts.axis_offset_A[0].tolist() == [271.82022, 1.5337157]
    assert ts.axis_offset_A[-1].tolist() == [-281.4533, -26.020374]
    assert ts.defocus_um is None and ts.ctf["Defocus"] == 1.0 and ts.pixel_size_A == 1.0
    assert ts.grids["GridCTF"].shape_whd == (1, 1, 1)
    facts = warp.describe(SAMPLE)
    assert facts["flavour"] == "Warp tilt-series XML (UTF-8)" and facts["dose_per_tilt_e_per_A2"] == 3.0


@needs_sample
@pytest.mark.skipif(not UTF16.is_file(), reason=f"{UTF16} not present")
def test_utf16_copy_reads_the_same() -> None:
    assert UTF16.read_bytes()[:2] == b"\xff\xfe"
    a = warp.read_warp_tilt_series_xml(SAMPLE)
    b = warp.read_warp_tilt_series_xml(UTF16)
    assert b.encoding == "UTF-16 LE (BOM)"
    for name in ("tilt_deg", "dose_prior_e_per_A2", "use_tilt", "axis_angle_deg", "axis_offset_A"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.movie_paths == b.movie_paths and a.ctf == b.ctf
    assert warp.describe(UTF16)["flavour"] == "Warp tilt-series XML (UTF-16)"
    assert warp.sniff_warp_xml(UTF16) == "TiltSeries"


@needs_sample
def test_fitted_ctf_grids_give_relion_defocus(tmp_path: Path) -> None:
    n = 41
    defocus = np.round(np.linspace(3.5, 4.3, n), 4)
    delta = np.round(np.linspace(0.02, 0.1, n), 4)
    angle = np.round(np.linspace(-80, 80, n), 2)
    phase = np.full(n, 0.25)

    def grid(name: str, values: np.ndarray) -> str:
        nodes = "".join(f'<Node X="0" Y="0" Z="{z}" Value="{v}" />' for z, v in enumerate(values))
        return f'<{name} Width="1" Height="1" Depth="{n}" MarginX="0" MarginY="0" MarginZ="0">{nodes}</{name}>'

    text = _text()
    for name, values in (("GridCTF", defocus), ("GridCTFDefocusDelta", delta), ("GridCTFDefocusAngle", angle),
                         ("GridCTFPhase", phase)):
        text = re.sub(rf"<{name} .*?</{name}>", grid(name, values), text, flags=re.S)
    ts = warp.read_warp_tilt_series_xml(_variant(tmp_path, text))
    np.testing.assert_allclose(ts.defocus_um, defocus)
    # Warp's own RELION export: U = (defocus + delta/2) * 1e4, V = (defocus - delta/2) * 1e4
    np.testing.assert_allclose(ts.defocus_u_A, (defocus + delta / 2) * 1e4)
    np.testing.assert_allclose(ts.defocus_v_A, (defocus - delta / 2) * 1e4)
    np.testing.assert_allclose(ts.defocus_u_A - ts.defocus_v_A, delta * 1e4)
    np.testing.assert_allclose(ts.defocus_angle_deg, angle)
    np.testing.assert_allclose(ts.phase_shift_deg, 45.0)
    assert warp.describe(ts.path)["defocus_range_um"] == [3.5, 4.3]
    # only the defocus grid per tilt: delta and angle from the CTF params (0 here)
    text2 = re.sub(r"<GridCTF .*?</GridCTF>", grid("GridCTF", defocus), _text(), flags=re.S)
    ts2 = warp.read_warp_tilt_series_xml(_variant(tmp_path, text2, "w2.xml"))
    np.testing.assert_allclose(ts2.defocus_u_A, defocus * 1e4)
    np.testing.assert_allclose(ts2.defocus_v_A, defocus * 1e4)


@needs_sample
def test_inverted_angles_and_decimal_commas(tmp_path: Path) -> None:
    text = _text().replace('AreAnglesInverted="False"', 'AreAnglesInverted="True"')
    text = text.replace("-4.2999735", "-4,2999735")
    ts = warp.read_warp_tilt_series_xml(_variant(tmp_path, text))
    assert ts.angles_inverted and ts.decimal_commas
    np.testing.assert_array_equal(ts.tilt_corrected_deg, -ts.tilt_deg)
    assert ts.tilt_deg[0] == -60.01 and ts.tilt_corrected_deg[0] == 60.01
    np.testing.assert_allclose(ts.axis_angle_deg, -4.2999735)


@needs_sample
@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t[: len(t) // 2], r"line \d+: not well-formed XML"),
        (lambda t: t.replace("<Dose>117\n", "<Dose>"), "Dose: 40 values for 41 tilt angles"),
        (lambda t: t.replace("<UseTilt>True", "<UseTilt>Yes"), "UseTilt: not True/False: 'Yes'"),
        (lambda t: t.replace("-57\n", "minus57\n", 1), "Angles: not a number: 'minus57'"),
        (lambda t: re.sub(r"<Angles>.*?</Angles>", "<Angles></Angles>", t, flags=re.S), "Angles: missing or empty"),
        (lambda t: t.replace("<TiltSeries ", "<Movie ").replace("</TiltSeries>", "</Movie>"),
         r"root: a Warp micrograph/movie XML .*\(not supported\)"),
        (lambda t: t.replace('AreAnglesInverted="False"', 'AreAnglesInverted="maybe"'), "AreAnglesInverted"),
        (lambda t: t.replace('<Node X="0" Y="0" Z="0" Value="0" />\n\t</GridCTF>',
                             '<Node X="0" Y="0" Z="3" Value="0" />\n\t</GridCTF>'), "GridCTF/Node: node"),
    ],
)
def test_refusals_name_file_and_field(tmp_path: Path, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    p = _variant(tmp_path, edit(_text()))
    with pytest.raises(FormatError, match=match) as err:
        warp.read_warp_tilt_series_xml(p)
    assert str(err.value).startswith(str(p))


def test_not_xml_and_binary(tmp_path: Path) -> None:
    p = tmp_path / "x.xml"
    p.write_bytes(b"\x00\x01\x02\xff\xfe\x00")
    with pytest.raises(FormatError, match=r"x\.xml"):
        warp.read_warp_tilt_series_xml(p)
    assert warp.sniff_warp_xml(p) is None
    q = tmp_path / "other.xml"
    q.write_text('<?xml version="1.0"?>\n<!-- c --><Project a="1"/>')
    assert warp.sniff_warp_xml(q) == "Project"
    with pytest.raises(FormatError, match=r"root element <Project>"):
        warp.read_warp_tilt_series_xml(q)
