"""Movies (TIFF, MRC) and gain references: round trips, real files, flips with a known pattern, errors, and the
row order of TIFF files (read flipped in Y into the MRC frame, as IMOD, SerialEM, RELION and Warp read them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tomoguide.compute.io import movies, mrc
from tomoguide.compute.io.errors import FormatError, FormatWarning


def _frames(dtype: type, n: int = 4, ny: int = 12, nx: int = 20) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.poisson(3.0, size=(n, ny, nx)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("compression", ["zlib", None])
def test_tiff_round_trip(tmp_path: Path, dtype: type, compression: str | None) -> None:
    frames = _frames(dtype)
    path = tmp_path / "m.tif"
    movies.write_movie_tiff(path, frames, compression=compression)
    assert movies.read_movie_header(path) == (4, 12, 20, np.dtype(dtype).name)
    back = movies.read_movie(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, frames)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 4  # one page per frame
        assert tif.pages[0].compression.name == ("ADOBE_DEFLATE" if compression else "NONE")
    d = movies.describe(path)
    json.dumps(d)
    assert (d["n_frames"], d["ny"], d["nx"], d["format"]) == (4, 12, 20, "TIFF")
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_single_frame_tiff(tmp_path: Path) -> None:
    movies.write_movie_tiff(tmp_path / "one.tiff", _frames(np.uint16)[0])
    assert movies.read_movie(tmp_path / "one.tiff").shape == (1, 12, 20)


def test_mrc_movie_round_trip(tmp_path: Path) -> None:
    frames = _frames(np.int16, n=5)
    path = tmp_path / "m.mrcs"
    movies.write_movie_mrc(path, frames, pixel_size_A=0.675)
    assert movies.read_movie_header(path) == (5, 12, 20, "int16")
    np.testing.assert_array_equal(movies.read_movie(path), frames)
    info = mrc.read_header(path)
    assert info.ispg == 0 and not info.is_volume and info.voxel_size_A[0] == pytest.approx(0.675)
    assert movies.describe(path)["pixel_size_A"] == pytest.approx(0.675)
    # uint8 counts are stored losslessly as uint16 (MRC mode 6)
    small = _frames(np.uint8)
    movies.write_movie_mrc(tmp_path / "u8.mrc", small, 1.0)
    back = movies.read_movie(tmp_path / "u8.mrc")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, small)


def test_real_files_as_movies(shared_data: Path) -> None:
    seri = shared_data / "tilt_series/pypi__etspy-1.3.0/test_000.mrc"
    assert movies.read_movie_header(seri) == (2, 1024, 1024, "int16")
    stack = movies.read_movie(seri)
    assert stack.shape == (2, 1024, 1024)
    assert int(stack.min()) == 2310 and int(stack.max()) == 10435  # as in the mdoc's MinMaxMean
    tomo = shared_data / "tomograms/hanjinliu__cylindra/tests/13pf_MT.tif"
    assert movies.read_movie_header(tomo) == (36, 206, 94, "uint8")
    data = movies.read_movie(tomo)
    assert data.shape == (36, 206, 94) and data.dtype == np.uint8
    with tifffile.TiffFile(tomo) as tif:  # ImageJ's own record of the number of images
        assert tif.imagej_metadata["images"] == data.shape[0]
    assert 0 < float(data.std())
    # a TIFF written by another program (ImageJ) is read with its rows reversed: its top row, stored first,
    # is the last row of the array (IMOD's frame), as IMOD's tiffReadSection puts TIFF row r at y = ny - 1 - r
    np.testing.assert_array_equal(data, tifffile.imread(tomo)[:, ::-1, :])
    np.testing.assert_array_equal(movies.read_movie_sum(tomo), tifffile.imread(tomo).sum(0)[::-1].astype(float))


# --- row order of TIFF files ----------------------------------------------------------------------------


def test_tiff_rows_go_where_imod_puts_them(tmp_path: Path) -> None:
    """IMOD (libiimod/iitif.c, tiffReadSection: strip ``si`` with ``rowsperstrip`` rows fills
    ``y = ysize - 1 - (row + rowsperstrip * si)``) reads TIFF row r (r = 0 stored first, the top row of a TIFF) into
    MRC row ``ny - 1 - r``; so does tomoguide, whatever the strip layout. The file is written by tifffile, not by
    tomoguide's writer."""
    ny, nx = 11, 6
    stored = np.arange(ny * nx, dtype=np.uint16).reshape(ny, nx)
    for rows_per_strip in (1, 3, ny):
        path = tmp_path / f"strips{rows_per_strip}.tif"
        tifffile.imwrite(path, np.stack([stored, stored + 100]), photometric="minisblack", rowsperstrip=rows_per_strip)
        frames = movies.read_movie(path)
        assert frames.shape == (2, ny, nx) and frames.flags.c_contiguous
        r = np.arange(ny)
        np.testing.assert_array_equal(frames[0][ny - 1 - r], stored[r])
        np.testing.assert_array_equal(frames[1][ny - 1 - r], stored[r] + 100)
        np.testing.assert_array_equal(movies.read_movie_sum(path)[ny - 1 - r], 2.0 * stored[r] + 100.0)
        assert movies.read_movie_header(path) == (2, ny, nx, "uint16")  # sizes are not changed by the flip


def test_same_frames_saved_as_mrc_and_as_tiff_read_the_same(tmp_path: Path) -> None:
    """SerialEM saves frames as MRC flipped in Y and as TIFF unflipped (SerialEMCCD TemplatePlugIn.cpp:
    ``rotateFlipImage(..., invertAfter = !bWriteTiff)`` then ``tiffWriteSection(..., inverted = 1)``), so that IMOD
    shows both alike: the MRC file holds the image bottom row first, the TIFF top row first. Emulated here with
    mrcfile and tifffile directly; tomoguide must read both into the same array (and its own writers agree)."""
    import mrcfile

    frames = _frames(np.uint16, n=3, ny=9, nx=14)
    frames[:, 0, :3] = 500  # a marker at the bottom-left of the image (MRC origin)
    with mrcfile.new(tmp_path / "f.mrc") as m:
        m.set_data(frames)  # rows as given: row 0 is y = 0, the bottom
    tifffile.imwrite(tmp_path / "f.tif", frames[:, ::-1, :], photometric="minisblack")  # top row first
    a, b = movies.read_movie(tmp_path / "f.mrc"), movies.read_movie(tmp_path / "f.tif")
    np.testing.assert_array_equal(a, frames)
    np.testing.assert_array_equal(b, frames)
    np.testing.assert_array_equal(movies.read_movie_sum(tmp_path / "f.tif"), frames.sum(0).astype(float))
    movies.write_movie_tiff(tmp_path / "w.tif", frames, compression=None)  # tomoguide's writer stores it alike
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "w.tif"), tifffile.imread(tmp_path / "f.tif"))
    np.testing.assert_array_equal(movies.tiff_rows(movies.tiff_rows(frames)), frames)  # its own inverse
    # a TIFF gain stored the same way as the movies keeps its relation to them (here: the identity)
    tifffile.imwrite(tmp_path / "g.tif", (1.0 + frames[0][::-1]).astype(np.float32))
    np.testing.assert_array_equal(movies.read_gain(tmp_path / "g.tif"), 1.0 + frames[0])
    movies.write_gain_tiff(tmp_path / "w.tiff", 1.0 + frames[0])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "w.tiff"), tifffile.imread(tmp_path / "g.tif"))
    np.testing.assert_array_equal(movies.read_gain(tmp_path / "w.tiff"), 1.0 + frames[0])


# --- gain ---------------------------------------------------------------------------------------------


def _gain_pattern(ny: int = 3, nx: int = 5) -> np.ndarray:
    """Every pixel distinct and not symmetric: g[y, x] = 1 + 10 y + x."""
    y, x = np.mgrid[0:ny, 0:nx]
    return (1.0 + 10.0 * y + x).astype(np.float32)


@pytest.mark.parametrize("fmt", ["mrc", "tif"])
def test_gain_flips_and_transpose(tmp_path: Path, fmt: str) -> None:
    g = _gain_pattern()
    ny, nx = g.shape
    path = tmp_path / f"gain.{fmt}"
    if fmt == "mrc":
        mrc.write_mrc(path, g, 1.0)
    else:
        tifffile.imwrite(path, g[::-1])  # a TIFF stores the top row first: read back in the MRC frame as g
    np.testing.assert_array_equal(movies.read_gain(path), g)
    fx = movies.read_gain(path, flip_x=True)
    y, x = np.mgrid[0:ny, 0:nx]
    np.testing.assert_array_equal(fx[y, nx - 1 - x], g[y, x])  # flip X mirrors columns
    fy = movies.read_gain(path, flip_y=True)
    np.testing.assert_array_equal(fy[ny - 1 - y, x], g[y, x])
    assert fx[0, 0] == g[0, nx - 1] and fy[0, 0] == g[ny - 1, 0]
    t = movies.read_gain(path, transpose=True)
    assert t.shape == (nx, ny)
    np.testing.assert_array_equal(t[x, y], g[y, x])
    # transpose first, then flip X: out[a, b] = g.T[a, ny-1-b] = g[ny-1-b, a]
    tfx = movies.read_gain(path, transpose=True, flip_x=True)
    a, b = np.mgrid[0:nx, 0:ny]
    np.testing.assert_array_equal(tfx[a, b], g[ny - 1 - b, a])
    # ... and then flip Y: out[a, b] = g[ny-1-b, nx-1-a]
    all3 = movies.read_gain(path, transpose=True, flip_x=True, flip_y=True)
    np.testing.assert_array_equal(all3[a, b], g[ny - 1 - b, nx - 1 - a])
    assert all3.dtype == np.float32 and all3.flags.c_contiguous


def test_gain_bad_pixels(tmp_path: Path) -> None:
    g = _gain_pattern()
    g[1, 2] = 0.0
    g[2, 4] = np.nan
    path = tmp_path / "gain.tif"
    tifffile.imwrite(path, g[::-1])  # stored top row first: read back as g
    with pytest.raises(FormatError) as err:
        movies.read_gain(path)
    assert str(err.value) == f"{path}: gain: 2 of 15 pixels are zero, negative or not finite"
    with pytest.warns(FormatWarning, match="2 of 15 pixels"):
        fixed = movies.read_gain(path, strict=False)
    good = g[np.isfinite(g) & (g > 0)]
    assert fixed[1, 2] == fixed[2, 4] == np.median(good)
    assert np.all(fixed > 0)


def test_check_gain_shape() -> None:
    g = np.ones((3, 5), np.float32)
    movies.check_gain_shape(g, (3, 5), "gain.mrc")
    movies.check_gain_shape(g, (40, 3, 5), "gain.mrc")
    with pytest.raises(FormatError, match=r"gain\.mrc: shape: gain is 3 x 5 .* frames are 5 x 3; the transposed gain would match"):
        movies.check_gain_shape(g, (5, 3), "gain.mrc")
    with pytest.raises(FormatError, match="super-resolution"):
        movies.check_gain_shape(g, (6, 10), "gain.mrc")
    with pytest.raises(FormatError, match=r"gain is 3 x 5 \(ny x nx\) but the frames are 4 x 4$"):
        movies.check_gain_shape(g, (4, 4), "gain.mrc")


# --- errors -------------------------------------------------------------------------------------------


def test_unreadable_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a tiff file at all")
    with pytest.raises(FormatError, match=r"junk\.tif: TIFF: damaged or not a TIFF"):
        movies.read_movie(junk)
    with pytest.raises(FormatError, match=r"junk\.tif"):
        movies.read_movie_header(junk)
    with pytest.raises(FormatError, match=r"absent\.tif: no such file"):
        movies.read_movie(tmp_path / "absent.tif")
    dm4 = tmp_path / "SuperRef.dm4"
    dm4.write_bytes(b"\0" * 64)
    with pytest.raises(FormatError, match="dm2mrc"):
        movies.read_gain(dm4)
    short = tmp_path / "short.mrc"
    short.write_bytes(b"\0" * 10)
    with pytest.raises(FormatError, match=r"short\.mrc: header"):
        movies.read_movie(short)


def test_lzw_without_codec_names_the_package(tmp_path: Path) -> None:
    """SerialEM writes LZW TIFFs; without imagecodecs the error must say what to install."""
    pytest.importorskip("tifffile")
    try:
        import imagecodecs  # noqa: F401

        pytest.skip("imagecodecs is installed: LZW is readable here")
    except ImportError:
        pass
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, _frames(np.uint16), photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        offsets = [page.tags["Compression"].valueoffset for page in tif.pages]
    raw = bytearray(path.read_bytes())
    for off in offsets:  # mark every page as LZW (5): the header is still readable, the pixels are not
        raw[off : off + 2] = (5).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    assert movies.read_movie_header(path) == (4, 12, 20, "uint16")
    with pytest.raises(FormatError, match=r"lzw\.tif: compression: .*imagecodecs.*pip install imagecodecs"):
        movies.read_movie(path)
