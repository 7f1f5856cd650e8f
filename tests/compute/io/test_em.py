"""TOM / PyTom ``.em`` maps (:mod:`tomoguide.compute.io.em`).

No permissively licensed real ``.em`` file was found (PyTom's and the TOM toolbox's are GPL). The files here
are built byte by byte in the test from the layout in TOM's ``tom_emread.m`` (512-byte header: machine code,
data type code, nx ny nz int32 at offset 4, comment, 40 int32 parameters, user data; x fastest), independently
of the reader's own writer, and the writer is checked against the same bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.io import em
from tomoguide.compute.io.errors import FormatError, FormatWarning


def _raw_em(path: Path, data_xyz_fortran: np.ndarray, *, machine: int, code: int, endian: str,
            params: dict[int, int] | None = None, comment: bytes = b"", extra: bytes = b"") -> Path:
    """An .em file as TOM writes it: ``data_xyz_fortran`` indexed [x, y, z], written x fastest."""
    nx, ny, nz = data_xyz_fortran.shape
    head = bytearray(512)
    head[0], head[3] = machine, code
    struct.pack_into(endian + "3i", head, 4, nx, ny, nz)
    head[16:16 + len(comment)] = comment
    for k, v in (params or {}).items():
        struct.pack_into(endian + "i", head, 96 + 4 * k, v)
    head[256:264] = b"tomoguid"
    body = data_xyz_fortran.astype(data_xyz_fortran.dtype.newbyteorder(endian)).tobytes(order="F")
    path.write_bytes(bytes(head) + body + extra)
    return path


@pytest.mark.parametrize(("machine", "endian"), [(6, "<"), (0, ">"), (3, ">"), (5, ">")])
@pytest.mark.parametrize(("code", "dtype"), [(1, "i1"), (2, "i2"), (4, "i4"), (5, "f4"), (9, "f8"), (8, "c8")])
def test_read_em_layout_and_axis_order(tmp_path: Path, machine: int, endian: str, code: int, dtype: str) -> None:
    rng = np.random.default_rng(code + machine)
    vol = (rng.normal(size=(5, 4, 3)) * 40).astype(dtype)  # [x, y, z]
    if np.iscomplexobj(vol):
        vol = (vol + 1j * rng.normal(size=vol.shape)).astype(dtype)
    p = _raw_em(tmp_path / "v.em", vol, machine=machine, code=code, endian=endian,
                params={6: 2345, 18: -60000}, comment=b"apoferritin test")
    f = em.read_em(p)
    assert f.data.shape == (3, 4, 5) and f.shape_xyz == (5, 4, 3)
    # data[z, y, x] is voxel (x, y, z)
    np.testing.assert_array_equal(f.data, np.transpose(vol, (2, 1, 0)))
    assert f.data[2, 1, 4] == vol[4, 1, 2]
    assert f.byte_order == ("little" if endian == "<" else "big") and f.data.dtype.isnative
    assert f.pixel_size_A == 2.345 and f.params[18] == -60000 and f.comment == "apoferritin test"
    assert f.flavour == f"TOM .em, {np.dtype(dtype).name}, {f.byte_order}-endian"


def test_write_em_matches_tom_bytes_and_round_trips(tmp_path: Path) -> None:
    vol = np.arange(60, dtype=np.float32).reshape(3, 4, 5)  # [z, y, x]
    ours = em.write_em(tmp_path / "ours.em", vol, pixel_size_A=1.5, comment="c")
    ref = _raw_em(tmp_path / "ref.em", np.transpose(vol, (2, 1, 0)), machine=6, code=5, endian="<",
                  params={6: 1500}, comment=b"c")
    a, b = ours.read_bytes(), ref.read_bytes()
    assert a[:256] == b[:256] and a[512:] == b[512:]  # header fields and data identical (user data differs)
    back = em.read_em(ours)
    np.testing.assert_array_equal(back.data, vol)
    big = em.read_em(em.write_em(tmp_path / "big.em", vol.astype(np.int16), byte_order="big"))
    assert big.machine_code == 5 and big.byte_order == "big"
    np.testing.assert_array_equal(big.data, vol.astype(np.int16))
    two_d = em.read_em(em.write_em(tmp_path / "img.em", vol[0]))
    assert two_d.data.shape == (1, 4, 5)
    with pytest.raises(ValueError, match="dtype uint16"):
        em.write_em(tmp_path / "u.em", vol.astype(np.uint16))
    facts = em.describe(ours)
    assert facts["flavour"] == "TOM .em, float32, little-endian" and facts["shape_xyz"] == [5, 4, 3]
    assert facts["max"] == 59.0 and facts["pixel_size_A"] == 1.5


@pytest.mark.parametrize(
    ("machine", "code", "match"),
    [(6, 7, "data type: code 7 is not supported"), (6, 3, "data type: code 3"),
     (1, 5, r"machine code: 1 \(VAX\)"), (4, 5, r"machine code: 4 \(Sun\)"), (9, 5, "machine code: 9 is not")],
)
def test_read_em_refuses_unknown_codes_naming_them(tmp_path: Path, machine: int, code: int, match: str) -> None:
    p = _raw_em(tmp_path / "x.em", np.zeros((2, 2, 1), np.float32), machine=machine, code=5, endian="<")
    raw = bytearray(p.read_bytes())
    raw[3] = code
    p.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=match) as err:
        em.read_em(p)
    assert str(err.value).startswith(str(p))


def test_read_em_truncated_and_extra(tmp_path: Path) -> None:
    vol = np.ones((4, 4, 2), np.float32)
    p = _raw_em(tmp_path / "cut.em", vol, machine=6, code=5, endian="<")
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(FormatError, match=r"cut\.em: data: 118 bytes after the header.*need 128"):
        em.read_em(p)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(FormatError, match="header: 100 bytes"):
        em.read_em(p)
    q = _raw_em(tmp_path / "extra.em", vol, machine=6, code=5, endian="<", extra=b"\0" * 8)
    with pytest.raises(FormatError, match="8 bytes after"):
        em.read_em(q)
    with pytest.warns(FormatWarning, match="8 bytes after"):
        assert em.read_em(q, strict=False).data.shape == (2, 4, 4)
    z = _raw_em(tmp_path / "zero.em", vol, machine=6, code=5, endian="<")
    raw = bytearray(z.read_bytes())
    struct.pack_into("<i", raw, 12, 0)
    z.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="dimensions: nx ny nz = 4 4 0"):
        em.read_em(z)
