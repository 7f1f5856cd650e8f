"""MRC reader/writer: real files from EMDB, FEI and SerialEM, round trips, corrupt and truncated files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from mrcfile.dtypes import get_ext_header_dtype

from tomoguide.compute.io import mrc
from tomoguide.compute.io.errors import FormatError, FormatWarning

HAADF = "tilt_series/pypi__etspy-1.3.0/HAADF_bin2.mrc"
SERI = "tilt_series/pypi__etspy-1.3.0/test_000.mrc"


def _read_column(path: Path) -> np.ndarray:
    return np.array([float(line) for line in path.read_text().split() if line.strip()])


# --- real files -------------------------------------------------------------------------------------


def test_emd3197_cubic_map(shared_data: Path) -> None:
    data, info = mrc.read_mrc(shared_data / "maps/pypi__mrcfile-1.5.4/EMD-3197.map")
    assert data.shape == info.shape == (20, 20, 20)
    assert info.dtype == "float32" and data.dtype == np.float32
    assert info.voxel_size_A == pytest.approx((11.4, 11.4, 11.4), abs=1e-5)
    assert info.ispg == 1 and info.is_volume
    assert info.tilt_angles_deg is None and info.exttyp is None
    # the header statistics written by EMDB agree with the data block we read
    assert float(data.min()) == pytest.approx(info.header_stats["dmin"], rel=1e-5)
    assert float(data.max()) == pytest.approx(info.header_stats["dmax"], rel=1e-5)
    assert float(data.mean()) == pytest.approx(info.header_stats["dmean"], rel=1e-4, abs=1e-6)


def test_emd3001_anisotropic_p21(shared_data: Path) -> None:
    path = shared_data / "maps/pypi__mrcfile-1.5.4/EMD-3001.map"
    info = mrc.read_header(path)
    # 25 sections of 43 x 73 (numpy z, y, x), voxel (x, y, z) = 0.448 / 0.3925 / 0.459 Å
    assert info.shape == (25, 43, 73)
    assert info.voxel_size_A == pytest.approx((0.448, 0.3925, 0.459), abs=1.5e-3)
    assert info.voxel_size_A[0] != info.voxel_size_A[1]
    assert info.ispg == 4 and info.nsymbt == 160 and info.is_volume
    data, info2 = mrc.read_mrc(path)
    assert data.shape == (25, 43, 73)
    assert info2.data_offset == 1024 + 160
    assert info2.file_size == 1024 + 160 + data.nbytes
    assert float(data.max()) == pytest.approx(info.header_stats["dmax"], rel=1e-5)


def test_haadf_fei_tilt_angles_agree_with_rawtlt(shared_data: Path) -> None:
    path = shared_data / HAADF
    info = mrc.read_header(path)
    rawtlt = _read_column(shared_data / "imod/pypi__etspy-1.3.0/HAADF.rawtlt")
    assert info.n_sections == 77 == len(rawtlt)
    assert info.tilt_angles_deg is not None
    np.testing.assert_allclose(info.tilt_angles_deg, rawtlt, atol=1e-3)
    assert info.tilt_angles_deg[0] == -76.0
    np.testing.assert_allclose(np.diff(info.tilt_angles_deg), 2.0, atol=1e-3)
    assert info.tilt_angles_source == "FEI (2003 layout)"
    # old-style FEI file: no map identifier, which is accepted, and it is a stack, not a volume
    assert not info.map_id_ok and not info.is_volume
    data, _ = mrc.read_mrc(path)
    assert data.shape == (77, 128, 128) and data.dtype == np.int16
    d = mrc.describe(path)
    assert d["tilt_range_deg"] == [-76.0, 76.0] and d["tilt_step_deg"] == 2.0 and d["n_tilt_angles"] == 77
    assert d["problems"] == []
    json.dumps(d)


def test_serialem_seri_header(shared_data: Path) -> None:
    data, info = mrc.read_mrc(shared_data / SERI)
    assert info.exttyp == "SERI" and info.nsymbt == 5120
    assert data.shape == (2, 1024, 1024) and data.dtype == np.int16
    assert info.voxel_size_A == pytest.approx((7.88, 7.88, 7.88), abs=1e-4)
    # SERI stores tilt x 100: both sections were taken at ~0 deg (mdoc: -0.000488)
    assert info.tilt_angles_deg == [0.0, 0.0] and info.tilt_angles_source == "SERI"
    assert float(data.min()) == info.header_stats["dmin"] and float(data.max()) == info.header_stats["dmax"]
    assert any("Tilt axis angle = -90.0" in lab for lab in info.labels)


def test_imod_st_is_a_stack(shared_data: Path) -> None:
    data, info = mrc.read_mrc(shared_data / "imod/teamtomo__etomofiles/test_data/TS_001/TS_001.st")
    n_tilts = len(_read_column(shared_data / "imod/teamtomo__etomofiles/test_data/TS_001/TS_001.rawtlt"))
    assert data.shape == (n_tilts, 1, 1) == (40, 1, 1)
    assert not info.is_volume  # .st is a tilt series whatever ispg says
    assert info.voxel_size_A == (0.0, 0.0, 0.0)


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "stored", "mode"),
    [
        (np.float64, np.float32, 2),
        (np.float32, np.float32, 2),
        (np.float16, np.float16, 12),
        (np.int16, np.int16, 1),
        (np.uint16, np.uint16, 6),
        (np.int8, np.int8, 0),
        (np.uint8, np.uint16, 6),
    ],
)
def test_write_read_round_trip(tmp_path: Path, dtype: type, stored: type, mode: int) -> None:
    rng = np.random.default_rng(3)
    data = (rng.random((5, 6, 7)) * 100).astype(dtype)
    path = tmp_path / "vol.mrc"
    mrc.write_mrc(path, data, (1.5, 2.0, 2.5))
    back, info = mrc.read_mrc(path)
    assert back.dtype == stored and info.mode == mode
    np.testing.assert_array_equal(back, data.astype(stored))
    assert info.voxel_size_A == pytest.approx((1.5, 2.0, 2.5))
    assert info.is_volume and info.ispg == 1
    ref = data.astype(stored).astype(np.float64)
    assert info.header_stats["dmin"] == pytest.approx(ref.min())
    assert info.header_stats["dmax"] == pytest.approx(ref.max())
    assert info.header_stats["dmean"] == pytest.approx(ref.mean(), rel=1e-5)
    assert info.header_stats["rms"] == pytest.approx(ref.std(), rel=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["vol.mrc"]  # no temporary file left behind
    if mode != 12:  # mrcfile's validator takes the float16 data's RMS in float16: it overflows (inf) for values ~100
        with open(os.devnull, "w") as sink:
            assert mrcfile.validate(str(path), print_file=sink)


def test_float16_header_stats_over_several_slabs(tmp_path: Path) -> None:
    """float16 data's header statistics (one pass over the bits, 10 M samples): the same figures as the float64
    reductions of the stored values, and as mrcfile's own (to float32 rounding); with a NaN, mrcfile's warning."""
    rng = np.random.default_rng(8)
    data = (rng.normal(0.3, 2.0, (40, 512, 512))).astype(np.float16)  # 10 M samples: three slabs
    path = tmp_path / "sub.mrcs"
    mrc.write_mrc(path, data, 2.0, is_stack=True)
    _, info = mrc.read_mrc(path)
    ref = data.astype(np.float64)
    assert info.header_stats["dmin"] == ref.min() and info.header_stats["dmax"] == ref.max()
    assert info.header_stats["dmean"] == pytest.approx(ref.mean(), rel=1e-6)
    assert info.header_stats["rms"] == pytest.approx(ref.std(), rel=1e-6)
    with mrcfile.new(str(tmp_path / "theirs.mrcs")) as m:
        m.set_data(data)
        theirs = {k: float(m.header[k]) for k in ("dmin", "dmax", "dmean", "rms")}
    for k, v in theirs.items():
        assert info.header_stats[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    bad = data[:2].copy()
    bad[1, 3, 4] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        mrc.write_mrc(tmp_path / "nan.mrcs", bad, 2.0, is_stack=True)
    _, info = mrc.read_mrc(tmp_path / "nan.mrcs")
    ok = bad.astype(np.float64)[~np.isnan(bad)]
    assert info.header_stats["dmin"] == ok.min() and info.header_stats["dmax"] == ok.max()
    assert info.header_stats["rms"] == pytest.approx(ok.std(), rel=1e-6)


def test_write_stack_and_single_image(tmp_path: Path) -> None:
    stack = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    mrc.write_mrc(tmp_path / "ts.mrc", stack, 2.7, is_stack=True)
    back, info = mrc.read_mrc(tmp_path / "ts.mrc")
    assert info.ispg == 0 and not info.is_volume
    np.testing.assert_array_equal(back, stack)
    img = stack[0]
    mrc.write_mrc(tmp_path / "img.mrc", img, 2.7)
    back2, info2 = mrc.read_mrc(tmp_path / "img.mrc")
    assert back2.shape == (4, 5) and info2.n_sections == 1
    np.testing.assert_array_equal(back2, img)
    with pytest.raises(FileExistsError):
        mrc.write_mrc(tmp_path / "img.mrc", img, 2.7, overwrite=False)
    with pytest.raises(ValueError, match="int64"):
        mrc.write_mrc(tmp_path / "bad.mrc", np.zeros((2, 2), np.int64), 1.0)
    assert not (tmp_path / "bad.mrc").exists()


def test_mmap_and_big_endian(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=">f4").reshape(2, 3, 4)
    with mrcfile.new(tmp_path / "be.mrc") as m:
        m.set_data(data)
    back, info = mrc.read_mrc(tmp_path / "be.mrc")
    assert info.byte_order == ">" and back.dtype.isnative
    np.testing.assert_array_equal(back, data)
    mm, _ = mrc.read_mrc(tmp_path / "be.mrc", mmap=True)
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(np.asarray(mm), data)


def test_fei1_extended_header_tilts(tmp_path: Path) -> None:
    tilts = np.array([-30.0, -15.0, 0.0, 15.0, 30.0])
    dt = get_ext_header_dtype(b"FEI1", "<")
    ext = np.zeros(len(tilts), dtype=dt)
    ext["Metadata size"] = dt.itemsize
    ext["Alpha tilt"] = tilts
    path = tmp_path / "fei1.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((5, 8, 8), np.float32))
        m.set_extended_header(ext)
        m.header.exttyp = b"FEI1"
    info = mrc.read_header(path)
    assert info.exttyp == "FEI1" and info.tilt_angles_source == "FEI1"
    np.testing.assert_allclose(info.tilt_angles_deg, tilts)


# --- broken files -----------------------------------------------------------------------------------


def test_truncated_file(tmp_path: Path) -> None:
    data = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    path = tmp_path / "cut.mrc"
    mrc.write_mrc(path, data, 1.0)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 8 * 8 * 4 - 10)  # lose the last section and 10 bytes of the third
    with pytest.raises(FormatError) as err:
        mrc.read_mrc(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: data: ") and "truncated" in msg
    assert err.value.field == "data"
    with pytest.warns(FormatWarning, match="2 complete sections"):
        part, info = mrc.read_mrc(path, strict=False)
    assert part.shape == (2, 8, 8) and info.truncated
    np.testing.assert_array_equal(part, data[:2])
    assert mrc.describe(path)["problems"]


def test_corrupt_map_id_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "x.mrc"
    mrc.write_mrc(path, np.zeros((2, 4, 4), np.float32), 1.0)
    raw = bytearray(path.read_bytes())
    bad_map = bytearray(raw)
    bad_map[208:212] = b"JUNK"
    (tmp_path / "map.mrc").write_bytes(bytes(bad_map))
    with pytest.raises(FormatError, match=r"map\.mrc: map: .*JUNK"):
        mrc.read_header(tmp_path / "map.mrc")
    with pytest.warns(FormatWarning, match="map identifier"):
        data, _ = mrc.read_mrc(tmp_path / "map.mrc", strict=False)
    assert data.shape == (2, 4, 4)
    bad_mode = bytearray(raw)
    bad_mode[12:16] = np.array([99], "<i4").tobytes()
    (tmp_path / "mode.mrc").write_bytes(bytes(bad_mode))
    for strict in (True, False):
        with pytest.raises(FormatError, match=r"mode\.mrc: mode: unknown MRC mode 99"):
            mrc.read_mrc(tmp_path / "mode.mrc", strict=strict)
    (tmp_path / "short.mrc").write_bytes(bytes(raw[:100]))
    with pytest.raises(FormatError, match="header"):
        mrc.read_header(tmp_path / "short.mrc")
    with pytest.raises(FormatError, match="no such file"):
        mrc.read_header(tmp_path / "absent.mrc")
