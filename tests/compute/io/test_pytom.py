"""PyTom / TOM fiducial marker files (:mod:`tomoguide.compute.io.pytom`).

No permissively licensed real marker file was found (PyTom is GPL-2). The text files are written here by
PyTom's documented layout (``DATATYPE_MARKERFILE`` / ``FMT_MARKERFILE = '%3d %8.3f %8.2f %8.2f'``, header
written by ``numpy.savetxt(comments='#')``, rows grouped by marker as ``txt2markerfile`` reshapes them) and
the EM marker files as TOM ``.em`` volumes ``(10, n_tilts, n_markers)`` built byte by byte (x fastest),
with -1 for markers not clicked; both must give the same positions.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.io import pytom
from tomoguide.compute.io.errors import FormatError

TILTS = np.arange(-60.0, 61.0, 20.0)  # 7 tilts


def _positions() -> np.ndarray:
    rng = np.random.default_rng(5)
    xy = np.round(rng.uniform(50, 950, (3, TILTS.size, 2)), 2)
    xy[1, 0] = np.nan  # marker 1 not clicked in the first tilt
    xy[2, 6] = np.nan
    return xy


def _text_file(path: Path, xy: np.ndarray) -> Path:
    lines = ["#MarkerIndex ", "#TiltAngle (degrees)", "#PositionX (px)", "#PositionY (px)"]
    for m in range(xy.shape[0]):
        for t, a in enumerate(TILTS):
            x, y = (-1.0, -1.0) if np.isnan(xy[m, t]).any() else xy[m, t]
            lines.append("%3d %8.3f %8.2f %8.2f" % (m, a, x, y))
    path.write_text("\n".join(lines) + "\n")
    return path


def _em_file(path: Path, xy: np.ndarray) -> Path:
    n_m, n_t = xy.shape[:2]
    cube = np.zeros((10, n_t, n_m), np.float32)  # [value, tilt, marker] = TOM's (x, y, z)
    cube[0] = TILTS[:, None]
    cube[1] = np.where(np.isnan(xy[:, :, 0]), -1, xy[:, :, 0]).T
    cube[2] = np.where(np.isnan(xy[:, :, 1]), -1, xy[:, :, 1]).T
    head = bytearray(512)
    head[0], head[3] = 6, 5
    struct.pack_into("<3i", head, 4, 10, n_t, n_m)
    path.write_bytes(bytes(head) + cube.tobytes(order="F"))
    return path


def test_text_and_em_marker_files_agree(tmp_path: Path) -> None:
    xy = _positions()
    t = pytom.read_pytom_markers(_text_file(tmp_path / "markers.txt", xy))
    e = pytom.read_pytom_markers(_em_file(tmp_path / "markerfile.em", xy))
    assert t.flavour == "PyTom marker text" and e.flavour == "TOM/PyTom marker .em (10 values)"
    for m in (t, e):
        assert (m.n_markers, m.n_tilts) == (3, 7)
        np.testing.assert_allclose(m.tilt_deg, TILTS)
        np.testing.assert_allclose(m.xy_px, xy, atol=0.005)
        assert np.isnan(m.xy_px[1, 0]).all() and np.isnan(m.xy_px[2, 6]).all()
        per = m.per_tilt()
        assert [len(p) for p in per] == [2, 3, 3, 3, 3, 3, 2]
    facts = pytom.describe(tmp_path / "markers.txt")
    assert facts["n_positions"] == 19 and facts["n_missing"] == 2


def test_write_pytom_markers_txt_round_trip(tmp_path: Path) -> None:
    xy = _positions()
    p = pytom.write_pytom_markers_txt(tmp_path / "w.txt", TILTS, xy)
    assert p.read_text() == _text_file(tmp_path / "ref.txt", xy).read_text()
    np.testing.assert_allclose(pytom.read_pytom_markers(p).xy_px, xy, atol=0.005)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda ls: [ln for ln in ls if not ln.startswith("#")], "header: no '# MarkerIndex"),
        (lambda ls: ls[:-1], "marker 2 has 6 rows, marker 0 has 7"),
        (lambda ls: ls[:5] + ["  0  -40.000   12.00"] + ls[6:], "line 6: expected 4 finite numbers"),
        (lambda ls: ls[:5] + ["  x  -40.000   12.00   13.00"] + ls[6:], "line 6: expected 4 numbers"),
        (lambda ls: [ln.replace("  2 ", "  4 ", 1) if ln.startswith("  2 ") else ln for ln in ls],
         "MarkerIndex: markers"),
        (lambda ls: ls + ["\x00"], "line"),
    ],
)
def test_text_refusals_name_file_and_field(tmp_path: Path, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    p = _text_file(tmp_path / "m.txt", _positions())
    p.write_text("\n".join(edit(p.read_text().splitlines())) + "\n")
    with pytest.raises(FormatError, match=match) as err:
        pytom.read_pytom_markers(p)
    assert str(err.value).startswith(str(p))


def test_em_refusals(tmp_path: Path) -> None:
    head = bytearray(512)
    head[0], head[3] = 6, 5
    struct.pack_into("<3i", head, 4, 2, 3, 1)
    p = tmp_path / "narrow_markerfile.em"
    p.write_bytes(bytes(head) + np.zeros(6, np.float32).tobytes())
    with pytest.raises(FormatError, match="2 values per tilt and marker"):
        pytom.read_pytom_markers(p)
    cube = np.zeros((10, 2, 1), np.float32)
    cube[0] = 120.0
    struct.pack_into("<3i", head, 4, 10, 2, 1)
    q = tmp_path / "steep_markerfile.em"
    q.write_bytes(bytes(head) + cube.tobytes(order="F"))
    with pytest.raises(FormatError, match="TiltAngle: tilt angle 120"):
        pytom.read_pytom_markers(q)
