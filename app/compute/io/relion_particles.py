"""RELION 5 tomography particles stored as 2D stacks (pseudo-subtomograms of ``relion_tomo_subtomo --stack2d`` or
WarpTools ``ts_export_particles --2d``): the sub-tilt images, per-view geometry and CTF parameters as arrays.

Inputs (RELION 5 labels):

* an **optimisation set** (``rlnTomoParticlesFile``, ``rlnTomoTomogramsFile``) or the two files directly;
* the **particles STAR**: block ``general`` with ``rlnTomoSubTomosAre2DStacks`` = 1 (3D pseudo-subtomograms are
  not handled here), block ``optics`` (``rlnOpticsGroup``, ``rlnImagePixelSize``, ``rlnImageSize``,
  ``rlnCtfDataAreCtfPremultiplied``, ``rlnTomoTiltSeriesPixelSize``; voltage, Cs, amplitude contrast here or in
  the tomograms STAR), block ``particles``: ``rlnTomoName``, ``rlnImageName`` (one MRC stack per particle),
  ``rlnTomoVisibleFrames`` (``[0,1,1,...]``, one flag per tilt of the series), ``rlnAngleRot/Tilt/Psi``
  (degrees; 0 when absent, e.g. picks not yet aligned), optional ``rlnTomoSubtomogramRot/Tilt/Psi`` (degrees,
  identity when absent) and
  ``rlnOriginX/Y/ZAngst`` (0 when absent), coordinates ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram
  centre) or ``rlnCoordinateX/Y/Z`` (RELION 4 style: tilt-series pixels from the tomogram corner, as RELION 5
  reads them);
* the **tomograms STAR**: block ``global`` (``rlnTomoName``, ``rlnTomoFrameCount``, ``rlnTomoSizeX/Y/Z``,
  ``rlnTomoHand``, ``rlnTomoTiltSeriesPixelSize``) and, per tomogram, a per-tilt table (a block named after the
  tomogram in the same file, WarpTools / RELION 4 style, or the file named by ``rlnTomoTiltSeriesStarFile``,
  RELION 5 style) with ``rlnDefocusU/V``, ``rlnDefocusAngle``, ``rlnMicrographPreExposure``, optional
  ``rlnCtfScalefactor`` (1), ``rlnPhaseShift`` (0) and the projection: the matrix rows ``rlnTomoProjX/Y/Z/W``
  (4 numbers each: tomogram voxel -> tilt-image pixel) or RELION 5's ``rlnTomoXTilt`` (0 when absent),
  ``rlnTomoYTilt``, ``rlnTomoZRot`` (degrees), from which RELION builds ``Rz(ZRot) Ry(YTilt) Rx(XTilt)``
  (right-handed rotations; ``Tomogram::setProjectionMatrix``).

The per-view 3x3 matrices are the linear part of each tilt's projection (tomogram ``(x, y, z)`` ->
``(u, v, depth)`` of the tilt image; the 2D stack's columns are ``u``, rows ``v``), as
:mod:`tomoguide.compute.sta` uses them. A stack holds either one image per tilt of the series (WarpTools: the
invisible tilts are blank) or one per visible tilt (RELION's own extraction writes only those); any other count
is an error. Paths in the STAR files are tried relative to the folder of the file that names them, then to the
current folder (RELION's project folder).

Every problem raises :class:`~tomoguide.compute.io.errors.FormatError` naming the file and the block/column (or
the row) at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import FormatError
from .mrc import read_mrc
from .star import read_star

__all__ = ["RelionTomogramParticles", "RelionParticles", "RelionSubtomograms", "read_relion_particles",
           "read_relion_subtomograms", "relion_weights_to_centred", "particles_are_2d", "resolve_optimisation_set"]

_NUM_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass
class RelionTomogramParticles:
    """The particles of one tomogram (tilt series) with its per-tilt geometry and CTF, ``F`` tilts, ``m`` particles.

    ``images`` (m, F, B, B) float32: one image per tilt (0 where the tilt is not visible), rows ``v``, columns
    ``u``, particle centre at pixel ``B // 2``. ``visible`` (m, F) bool (``rlnTomoVisibleFrames``).
    ``view_matrices`` (F, 3, 3): tomogram ``(x, y, z)`` -> ``(u, v, depth)`` of each tilt (linear part of the
    projection). ``defocus_u_A``, ``defocus_v_A`` (F,) Å at the tomogram centre, ``defocus_angle_deg`` (F,),
    ``phase_shift_deg`` (F,), ``ctf_scale`` (F,) (``rlnCtfScalefactor``), ``pre_exposure_e_A2`` (F,)
    (``rlnMicrographPreExposure``). ``angles_deg`` (m, 3) ``rlnAngleRot/Tilt/Psi``; ``subtomo_angles_deg``
    (m, 3) ``rlnTomoSubtomogramRot/Tilt/Psi`` (0: identity); ``origins_A`` (m, 3) ``rlnOriginX/Y/ZAngst``.
    ``positions_px`` (m, 3): particle coordinates in tilt-series pixels from the tomogram centre (RELION's
    ``getPosition`` before the origin shift, minus ``centre = size / 2``), used for the depth of the CTF.
    ``handedness`` ``rlnTomoHand``; ``defocus_slope`` ``rlnTomoDefocusSlope`` (1 when absent);
    ``tilt_series_pixel_A`` ``rlnTomoTiltSeriesPixelSize``. ``rows`` (m,) the particles' rows in the particles
    STAR (0-based). ``centre_px`` (3,) the tomogram centre ``size / 2`` in tilt-series pixels.
    """

    name: str
    images: np.ndarray
    visible: np.ndarray
    view_matrices: np.ndarray
    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    defocus_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray
    ctf_scale: np.ndarray
    pre_exposure_e_A2: np.ndarray
    angles_deg: np.ndarray
    subtomo_angles_deg: np.ndarray
    origins_A: np.ndarray
    positions_px: np.ndarray
    handedness: float
    defocus_slope: float
    tilt_series_pixel_A: float
    rows: np.ndarray
    centre_px: np.ndarray | None = None

    @property
    def n_particles(self) -> int:
        return int(self.images.shape[0])


@dataclass
class RelionParticles:
    """All particles of a RELION 5 2D-stack particle set, grouped by tomogram (in the order of first appearance).

    ``pixel_size_A``: the stacks' pixel size (``rlnImagePixelSize``); ``box``: their size; ``voltage_kV``,
    ``cs_mm``, ``amplitude_contrast``; ``ctf_premultiplied``: ``rlnCtfDataAreCtfPremultiplied`` (the images are
    already multiplied by their CTF).
    """

    particles_path: Path
    tomograms_path: Path
    tomograms: list[RelionTomogramParticles]
    pixel_size_A: float
    box: int
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float
    ctf_premultiplied: bool
    notes: list[str] = field(default_factory=list)

    @property
    def n_particles(self) -> int:
        return sum(t.n_particles for t in self.tomograms)


def _resolve(name: str, base: Path, source: Path, fld: str) -> Path:
    p = Path(str(name))
    for cand in ([p] if p.is_absolute() else [base / p, Path.cwd() / p]):
        if cand.is_file():
            return cand
    raise FormatError(source, fld, f"{name}: no such file (looked in {base} and the current folder)")


def resolve_optimisation_set(path: str | PathLike[str]) -> tuple[Path, Path]:
    """``(particles STAR, tomograms STAR)`` named by a RELION 5 optimisation set."""
    p = Path(path)
    blocks = read_star(p)
    vals: dict[str, object] = {}
    for b in blocks.values():
        if isinstance(b, dict):
            vals.update(b)
        elif isinstance(b, pd.DataFrame) and len(b):
            vals.update(b.iloc[0].to_dict())
    out = []
    for col in ("rlnTomoParticlesFile", "rlnTomoTomogramsFile"):
        if col not in vals:
            raise FormatError(p, col, "missing: an optimisation set names the particles and the tomograms STAR files")
        out.append(_resolve(str(vals[col]), p.parent, p, col))
    return out[0], out[1]


def _vector(text: object, path: Path, fld: str, n: int | None = None) -> np.ndarray:
    """``[a,b,c]`` (a RELION vector value) -> float64 array; ``n``: required length."""
    vals = _NUM_RE.findall(str(text))
    if not vals or (n is not None and len(vals) != n):
        want = f"{n} numbers" if n is not None else "numbers"
        raise FormatError(path, fld, f"{text!r}: expected a vector of {want} like [1,0,0,0]")
    return np.asarray([float(v) for v in vals])


def _col(df: pd.DataFrame, col: str, path: Path, block: str) -> pd.Series:
    if col not in df.columns:
        raise FormatError(path, f"data_{block}/{col}", "missing required column")
    return df[col]


def _numbers(df: pd.DataFrame, col: str, path: Path, block: str, default: float | None = None) -> np.ndarray:
    if col not in df.columns and default is not None:
        return np.full(len(df), float(default))
    v = pd.to_numeric(_col(df, col, path, block), errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FormatError(path, f"data_{block} row {i + 1} {col}", f"{df[col].iloc[i]!r}: not a number")
    return v


def _rotation(axis: int, deg: np.ndarray) -> np.ndarray:
    """Right-handed rotations (n, 3, 3) about x (0), y (1) or z (2) by ``deg`` (the GL formula RELION uses)."""
    a = np.radians(np.asarray(deg, dtype=float))
    c, s = np.cos(a), np.sin(a)
    out = np.zeros(a.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    out[..., axis, axis] = 1.0
    out[..., i, i] = c
    out[..., j, j] = c
    out[..., i, j] = -s
    out[..., j, i] = s
    return out


def _view_matrices(tilt: pd.DataFrame, path: Path, block: str) -> np.ndarray:
    """(F, 3, 3) linear part of each tilt's projection."""
    rows = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ")
    if all(c in tilt.columns for c in rows):
        out = np.empty((len(tilt), 3, 3))
        for f in range(len(tilt)):
            for r, c in enumerate(rows):
                out[f, r] = _vector(tilt[c].iloc[f], path, f"data_{block} row {f + 1} {c}", 4)[:3]
        return out
    if "rlnTomoYTilt" in tilt.columns and "rlnTomoZRot" in tilt.columns:
        xt = _numbers(tilt, "rlnTomoXTilt", path, block, default=0.0)
        yt = _numbers(tilt, "rlnTomoYTilt", path, block)
        zr = _numbers(tilt, "rlnTomoZRot", path, block)
        return _rotation(2, zr) @ _rotation(1, yt) @ _rotation(0, xt)
    raise FormatError(path, f"data_{block}/rlnTomoProjX",
                      "missing projection: need rlnTomoProjX/Y/Z/W (matrix rows) or rlnTomoYTilt and rlnTomoZRot")


def _tilt_table(tomo_row: pd.Series, blocks: dict, tomo_path: Path, name: str) -> tuple[pd.DataFrame, Path, str]:
    block = blocks.get(name)
    if isinstance(block, pd.DataFrame):
        return block, tomo_path, name
    if "rlnTomoTiltSeriesStarFile" in tomo_row.index and pd.notna(tomo_row["rlnTomoTiltSeriesStarFile"]):
        ts_path = _resolve(str(tomo_row["rlnTomoTiltSeriesStarFile"]), tomo_path.parent, tomo_path,
                           f"data_global {name} rlnTomoTiltSeriesStarFile")
        ts_blocks = read_star(ts_path)
        tb = ts_blocks.get(name)
        if not isinstance(tb, pd.DataFrame):
            tables = [(k, v) for k, v in ts_blocks.items() if isinstance(v, pd.DataFrame)]
            if len(tables) != 1:
                raise FormatError(ts_path, f"data_{name}", "missing block: the per-tilt table of this tomogram")
            name_b, tb = tables[0]
            return tb, ts_path, name_b
        return tb, ts_path, name
    raise FormatError(tomo_path, f"data_{name}",
                      "missing per-tilt table: neither a block of this name nor rlnTomoTiltSeriesStarFile")


def _tomogram_sizes(glob: pd.DataFrame, tomo_path: Path) -> dict[str, np.ndarray]:
    """Per tomogram name its ``rlnTomoSizeX/Y/Z`` (tilt-series px; ``FormatError`` naming a missing column)."""
    cols = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")
    for c in ("rlnTomoName", *cols):
        _col(glob, c, tomo_path, "global")
    xyz = np.stack([_numbers(glob, c, tomo_path, "global") for c in cols], 1)
    return {str(n): xyz[i] for i, n in enumerate(glob["rlnTomoName"])}


def pixel_coordinates_centred_px(xyz: np.ndarray, names: list[str], sizes: dict[str, np.ndarray],
                                 binning: float, mode: str, *, part_path: Path, tomo_path: Path
                                 ) -> tuple[np.ndarray, str]:
    """``rlnCoordinateX/Y/Z`` (m, 3) as positions in tilt-series px from each tomogram's centre, and the reading
    used. ``mode`` ``"relion"``: tilt-series pixels from the tomogram corner (RELION 5,
    ``ParticleSet::getParticleCoordDecenteredPixel``); ``"binned"``: pixels of ``binning`` × the tilt-series pixel
    (WarpTools 2.0); ``"auto"``: ``"binned"`` when ``binning`` > 1.5 and every particle lies inside the tomograms
    shrunk by it (RELION's own coordinates span the whole tomogram), else ``"relion"``. Shared by the 2D-stack
    and the 3D readers."""
    unknown = sorted({n for n in names if n not in sizes})
    if unknown:
        raise FormatError(tomo_path, "data_global/rlnTomoName",
                          f"{', '.join(unknown)}: tomogram of particles in {part_path.name} is not listed")
    size = np.stack([sizes[n] for n in names]) if names else np.zeros((0, 3))
    if mode == "auto":
        inside = bool(np.all(xyz * binning <= size * 1.01))
        mode = "binned" if binning > 1.5 and inside else "relion"
    factor = binning if mode == "binned" else 1.0
    return xyz * factor - size / 2.0, mode


def _pixel_coordinates_note(mode: str, binning: float) -> str:
    if mode == "binned":
        return (f"coordinates rlnCoordinateX/Y/Z read as binned pixels (× rlnTomoSubtomogramBinning {binning:g}): "
                "every particle lies inside the tomograms shrunk by that binning, as WarpTools writes them "
                "(RELION 5 would read tilt-series pixels; this only changes the CTF depths)")
    return "coordinates rlnCoordinateX/Y/Z read as tilt-series pixels from the tomogram corner (RELION 5)"


def read_relion_particles(
    path: str | PathLike[str], tomograms: str | PathLike[str] | None = None, *, load_images: bool = True,
    pixel_coordinates: str = "auto",
) -> RelionParticles:
    """Read a RELION 5 2D-stack particle set.

    ``path``: an optimisation set (then ``tomograms`` is None) or the particles STAR (then ``tomograms`` is the
    tomograms STAR). ``load_images`` False leaves ``images`` as zeros of the right shape (checks the metadata
    only). ``pixel_coordinates`` (only for ``rlnCoordinateX/Y/Z``; they give the CTF's depth): ``"relion"`` reads
    them as RELION 5 does (``ParticleSet::getParticleCoordDecenteredPixel``: tilt-series pixels from the tomogram
    corner); ``"binned"`` as pixels of ``rlnTomoSubtomogramBinning`` × the tilt-series pixel, what WarpTools 2.0
    writes (``TiltSeries.ReconstructParticleSeries``: ``position / BinnedPixelSizeMean``; newer WarpTools write a
    "virtual tomogram" at that pixel size, so both readings agree); ``"auto"`` (default): ``"binned"`` when the
    binning is above 1.5 and every particle lies inside the tomograms shrunk by it (RELION's own coordinates span
    the whole tomogram, in particular its depth), else ``"relion"``; a note says which. Raises
    :class:`FormatError` (file and block/column named) for anything missing or unsupported and
    ``FileNotFoundError`` for a missing STAR file.
    """
    if pixel_coordinates not in ("auto", "relion", "binned"):
        raise ValueError(f"pixel_coordinates must be 'auto', 'relion' or 'binned', got {pixel_coordinates!r}")
    p = Path(path)
    if tomograms is None:
        blocks0 = read_star(p)
        if "particles" in blocks0:
            raise FormatError(p, "rlnTomoTomogramsFile",
                              "this is a particles STAR: give the tomograms STAR too, or the optimisation set")
        part_path, tomo_path = resolve_optimisation_set(p)
    else:
        part_path, tomo_path = p, Path(tomograms)
    pblocks = read_star(part_path)
    general = pblocks.get("general")
    if isinstance(general, pd.DataFrame):
        general = general.iloc[0].to_dict() if len(general) else {}
    stacks2d = (general or {}).get("rlnTomoSubTomosAre2DStacks")
    if stacks2d is None:
        raise FormatError(part_path, "data_general/rlnTomoSubTomosAre2DStacks",
                          "missing: only RELION 5 2D-stack particles (rlnTomoSubTomosAre2DStacks 1) are supported")
    if int(float(stacks2d)) != 1:
        raise FormatError(part_path, "data_general/rlnTomoSubTomosAre2DStacks",
                          f"{stacks2d}: 3D pseudo-subtomograms are not supported, only 2D stacks (1)")
    optics = pblocks.get("optics")
    if not isinstance(optics, pd.DataFrame) or optics.empty:
        raise FormatError(part_path, "data_optics", "missing block: the optics groups")
    parts = pblocks.get("particles")
    if not isinstance(parts, pd.DataFrame):
        raise FormatError(part_path, "data_particles", "missing block: the particles table")
    if parts.empty:
        raise FormatError(part_path, "data_particles", "no particles")
    for col in ("rlnTomoName", "rlnImageName", "rlnTomoVisibleFrames", "rlnOpticsGroup"):
        _col(parts, col, part_path, "particles")
    for col in ("rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize", "rlnCtfDataAreCtfPremultiplied"):
        _col(optics, col, part_path, "optics")

    tblocks = read_star(tomo_path)
    glob = tblocks.get("global")
    if not isinstance(glob, pd.DataFrame):
        raise FormatError(tomo_path, "data_global", "missing block: one row per tomogram")
    for col in ("rlnTomoName", "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ", "rlnTomoTiltSeriesPixelSize"):
        _col(glob, col, tomo_path, "global")
    glob = glob.reset_index(drop=True)
    glob_names = [str(n) for n in glob["rlnTomoName"]]

    # optics (one set of values for all groups: the stacks are reconstructed together)
    px = _numbers(optics, "rlnImagePixelSize", part_path, "optics")
    box = _numbers(optics, "rlnImageSize", part_path, "optics")
    prem = _numbers(optics, "rlnCtfDataAreCtfPremultiplied", part_path, "optics")
    if np.ptp(px) > 1e-6 * px[0] or np.ptp(box) > 0 or np.ptp(prem) > 0:
        raise FormatError(part_path, "data_optics/rlnImagePixelSize",
                          "optics groups differ in pixel size, image size or CTF premultiplication: not supported")

    def optic_value(col: str) -> float:
        if col in optics.columns:
            v = _numbers(optics, col, part_path, "optics")
            return float(v[0])
        if col in glob.columns:
            return float(_numbers(glob, col, tomo_path, "global")[0])
        raise FormatError(part_path, f"data_optics/{col}", "missing (not in the tomograms STAR's data_global either)")

    voltage, cs, q0 = optic_value("rlnVoltage"), optic_value("rlnSphericalAberration"), optic_value("rlnAmplitudeContrast")
    b = int(box[0])

    ang_cols = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
    ang = np.stack([_numbers(parts, c, part_path, "particles", default=0.0) for c in ang_cols], 1)
    no_angles = not any(c in parts.columns for c in ang_cols)
    sub_cols = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
    sub = np.stack([_numbers(parts, c, part_path, "particles", default=0.0) for c in sub_cols], 1)
    if any(c in parts.columns for c in sub_cols) and not all(c in parts.columns for c in sub_cols):
        missing = next(c for c in sub_cols if c not in parts.columns)
        raise FormatError(part_path, f"data_particles/{missing}", "missing: the subtomogram angles come in threes")
    org = np.stack([_numbers(parts, c, part_path, "particles", default=0.0)
                    for c in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")], 1)
    cen = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
    pix = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
    if all(c in parts.columns for c in cen):
        coords, centred = np.stack([_numbers(parts, c, part_path, "particles") for c in cen], 1), True
    elif all(c in parts.columns for c in pix):
        coords, centred = np.stack([_numbers(parts, c, part_path, "particles") for c in pix], 1), False
    else:
        raise FormatError(part_path, f"data_particles/{cen[0]}",
                          "missing coordinates: need rlnCenteredCoordinateX/Y/ZAngst or rlnCoordinateX/Y/Z")

    binning = _numbers(optics, "rlnTomoSubtomogramBinning", part_path, "optics", default=1.0)
    if np.ptp(binning) > 1e-6:
        raise FormatError(part_path, "data_optics/rlnTomoSubtomogramBinning",
                          f"optics groups with different binnings ({', '.join(f'{x:g}' for x in binning)}): "
                          "not supported, import one group at a time")
    names = [str(n) for n in parts["rlnTomoName"]]
    tomo_sizes = _tomogram_sizes(glob, tomo_path)
    if not centred:
        coords, pixel_coordinates = pixel_coordinates_centred_px(
            coords, names, tomo_sizes, float(binning[0]), pixel_coordinates, part_path=part_path,
            tomo_path=tomo_path)
    order: list[str] = []
    for n in names:
        if n not in order:
            order.append(n)
    groups: list[RelionTomogramParticles] = []
    notes: list[str] = []
    for tname in order:
        if tname not in glob_names:
            raise FormatError(tomo_path, "data_global/rlnTomoName",
                              f"{tname}: tomogram of particles in {part_path.name} is not listed")
        trow = glob.iloc[glob_names.index(tname)]
        tilt, tilt_path, tilt_block = _tilt_table(trow, tblocks, tomo_path, tname)
        n_frames = len(tilt)
        if "rlnTomoFrameCount" in trow.index and int(trow["rlnTomoFrameCount"]) != n_frames:
            raise FormatError(tomo_path, f"data_global {tname} rlnTomoFrameCount",
                              f"{int(trow['rlnTomoFrameCount'])} but data_{tilt_block} has {n_frames} rows")
        mats = _view_matrices(tilt, tilt_path, tilt_block)
        du = _numbers(tilt, "rlnDefocusU", tilt_path, tilt_block)
        dv = _numbers(tilt, "rlnDefocusV", tilt_path, tilt_block)
        da = _numbers(tilt, "rlnDefocusAngle", tilt_path, tilt_block)
        dose = _numbers(tilt, "rlnMicrographPreExposure", tilt_path, tilt_block)
        scale = _numbers(tilt, "rlnCtfScalefactor", tilt_path, tilt_block, default=1.0)
        phase = _numbers(tilt, "rlnPhaseShift", tilt_path, tilt_block, default=0.0)
        ts_px = float(trow["rlnTomoTiltSeriesPixelSize"])
        size = tomo_sizes[tname]
        hand = float(trow["rlnTomoHand"]) if "rlnTomoHand" in trow.index else 1.0
        slope = float(trow["rlnTomoDefocusSlope"]) if "rlnTomoDefocusSlope" in trow.index else 1.0

        idx = np.array([i for i, n in enumerate(names) if n == tname])
        m = idx.size
        images = np.zeros((m, n_frames, b, b), np.float32)
        visible = np.zeros((m, n_frames), bool)
        for j, i in enumerate(idx):
            fld = f"data_particles row {i + 1} rlnTomoVisibleFrames"
            vis = _vector(parts["rlnTomoVisibleFrames"].iloc[i], part_path, fld)
            if vis.size != n_frames:
                raise FormatError(part_path, fld, f"{vis.size} flags but tomogram {tname} has {n_frames} tilts")
            visible[j] = vis > 0
            if not load_images:
                continue
            img_name = str(parts["rlnImageName"].iloc[i])
            if "@" in img_name:
                raise FormatError(part_path, f"data_particles row {i + 1} rlnImageName",
                                  f"{img_name}: expected one stack per particle (no N@stack)")
            ip = _resolve(img_name, part_path.parent, part_path, f"data_particles row {i + 1} rlnImageName")
            data, _ = read_mrc(ip)
            data = np.asarray(data, np.float32)
            if data.ndim == 2:
                data = data[None]
            if data.shape[-2:] != (b, b):
                raise FormatError(ip, "header", f"images are {data.shape[-2:]} px, rlnImageSize says {b}")
            if data.shape[0] == n_frames:
                images[j] = data
            elif data.shape[0] == int(visible[j].sum()):
                images[j, visible[j]] = data
            else:
                raise FormatError(ip, "nz", f"{data.shape[0]} images: expected {n_frames} (one per tilt) or "
                                            f"{int(visible[j].sum())} (one per visible tilt, rlnTomoVisibleFrames)")
            images[j, ~visible[j]] = 0.0
        pos = coords[idx] / ts_px if centred else coords[idx]
        groups.append(RelionTomogramParticles(
            name=tname, images=images, visible=visible, view_matrices=mats, defocus_u_A=du, defocus_v_A=dv,
            defocus_angle_deg=da, phase_shift_deg=phase, ctf_scale=scale, pre_exposure_e_A2=dose,
            angles_deg=ang[idx], subtomo_angles_deg=sub[idx], origins_A=org[idx], positions_px=pos,
            handedness=hand, defocus_slope=slope, tilt_series_pixel_A=ts_px, rows=idx, centre_px=size / 2.0))
    if no_angles:
        notes.append("no rlnAngleRot/Tilt/Psi: the particles are taken as unrotated (angles 0), as RELION does")
    if not centred:
        notes.append(_pixel_coordinates_note(pixel_coordinates, float(binning[0])))
    return RelionParticles(particles_path=part_path, tomograms_path=tomo_path, tomograms=groups,
                           pixel_size_A=float(px[0]), box=b, voltage_kV=voltage, cs_mm=cs, amplitude_contrast=q0,
                           ctf_premultiplied=bool(int(prem[0])), notes=notes)


# ---- 3D pseudo-subtomograms (rlnTomoSubTomosAre2DStacks 0) ------------------------------------------------------------


@dataclass
class RelionSubtomograms:
    """RELION 4/5 3D pseudo-subtomograms (``relion_tomo_subtomo`` without ``--stack2d``), ``m`` particles of box B.

    ``data`` (m, B, B, B) float32 real space (CTF-premultiplied, centre ``B // 2``), ``weights`` (m, B, B, B) float32
    the CTF² weights on the centred Fourier grid (tomoguide's layout, :func:`relion_weights_to_centred`), both in
    the particle's *subtomogram frame*: RELION builds it rotated by ``A_sub`` (``rlnTomoSubtomogramRot/Tilt/Psi``),
    so ``x_tomogram = A_sub x_frame`` and in that frame the particle has the orientation ``E(rot, tilt, psi)`` and its
    centre at ``−origin``. ``tomo_names`` (m,), ``angles_deg`` (m, 3), ``subtomo_angles_deg`` (m, 3),
    ``origins_A`` (m, 3), ``coordinates_A`` (m, 3) Å from the tomogram centre (None when the file gives pixel
    coordinates and no tomograms STAR), ``half_sets`` (m,) 1/2 or None, ``pixel_size_A``, ``box``, optics.
    """

    particles_path: Path
    tomo_names: list[str]
    data: np.ndarray
    weights: np.ndarray
    angles_deg: np.ndarray
    subtomo_angles_deg: np.ndarray
    origins_A: np.ndarray
    coordinates_A: np.ndarray
    half_sets: np.ndarray | None
    pixel_size_A: float
    box: int
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float
    tilt_series_pixel_A: float
    notes: list[str] = field(default_factory=list)

    @property
    def n_particles(self) -> int:
        return len(self.tomo_names)


def particles_are_2d(path: str | PathLike[str]) -> bool:
    """Whether the particles of an optimisation set or particles STAR are 2D stacks (``rlnTomoSubTomosAre2DStacks``
    1) rather than 3D pseudo-subtomograms (0 or absent, RELION 4)."""
    p = Path(path)
    blocks = read_star(p)
    if not {"particles", "general", "optics"} & set(blocks):  # an optimisation set
        p, _ = resolve_optimisation_set(p)
        blocks = read_star(p)
    general = blocks.get("general")
    if isinstance(general, pd.DataFrame):
        general = general.iloc[0].to_dict() if len(general) else {}
    value = (general or {}).get("rlnTomoSubTomosAre2DStacks", 0)
    return int(float(value)) == 1


def relion_weights_to_centred(w: np.ndarray, box: int, path: Path) -> np.ndarray:
    """A RELION weight volume as tomoguide's centred (B, B, B) Fourier weights: RELION's combined CTF² and
    multiplicity file (numpy shape (2B, B, B/2+1): FFTW half layout, the first B slabs CTF²), the CTF² alone in
    FFTW half layout (B, B, B/2+1), or a centred full volume (B, B, B, RELION's ``--ctf`` output, tomoguide's
    export) as it is. The half layout is completed by Hermitian symmetry ``W(−k) = W(k)``."""
    b, h = int(box), int(box) // 2 + 1
    w = np.asarray(w, np.float32)
    if w.shape == (b, b, b):
        return w
    if w.shape == (2 * b, b, h):
        w = w[:b]
    if w.shape != (b, b, h):
        raise FormatError(path, "header", f"weights of shape {w.shape}: expected ({b}, {b}, {b}), ({b}, {b}, {h}) "
                                          f"or RELION's combined ({2 * b}, {b}, {h})")
    full = np.empty((b, b, b), np.float32)
    full[:, :, :h] = w
    kx = np.arange(h, b)  # negative x frequencies: W(kz, ky, -|kx|) = W(-kz, -ky, |kx|)
    src = (b - kx) % b
    full[:, :, kx] = w[(-np.arange(b)) % b][:, (-np.arange(b)) % b][:, :, src]
    return np.fft.fftshift(full)


def read_relion_subtomograms(path: str | PathLike[str], tomograms: str | PathLike[str] | None = None, *,
                             load_images: bool = True) -> RelionSubtomograms:
    """Read RELION 3D pseudo-subtomograms: ``path`` an optimisation set or a particles STAR (``tomograms`` only
    needed for ``rlnCoordinateX/Y/Z``, to centre them). Needs ``rlnImageName`` (the 3D data), ``rlnCtfImage`` (the
    weights), ``rlnTomoName``; the data must be CTF-premultiplied (RELION's 3D pseudo-subtomograms always are).
    Raises :class:`FormatError` naming the file and field."""
    p = Path(path)
    tomo_path: Path | None = Path(tomograms) if tomograms is not None else None
    blocks = read_star(p)
    if not {"particles", "general", "optics"} & set(blocks):  # an optimisation set
        p, tomo_path = resolve_optimisation_set(p)
        blocks = read_star(p)
    optics, parts = blocks.get("optics"), blocks.get("particles")
    if not isinstance(optics, pd.DataFrame) or optics.empty:
        raise FormatError(p, "data_optics", "missing block: the optics groups")
    if not isinstance(parts, pd.DataFrame) or parts.empty:
        raise FormatError(p, "data_particles", "missing block or no particles")
    for col in ("rlnTomoName", "rlnImageName", "rlnCtfImage"):
        _col(parts, col, p, "particles")
    px = float(_numbers(optics, "rlnImagePixelSize", p, "optics")[0])
    b = int(_numbers(optics, "rlnImageSize", p, "optics")[0])
    prem = _numbers(optics, "rlnCtfDataAreCtfPremultiplied", p, "optics", default=1.0)
    if not np.all(prem > 0):
        raise FormatError(p, "data_optics/rlnCtfDataAreCtfPremultiplied",
                          "0: 3D pseudo-subtomograms must be CTF-premultiplied (RELION always writes them so)")

    def optic(col: str, default: float) -> float:
        return float(_numbers(optics, col, p, "optics", default=default)[0])

    ts_px = optic("rlnTomoTiltSeriesPixelSize", px)
    ang = np.stack([_numbers(parts, c, p, "particles", default=0.0)
                    for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")], 1)
    sub = np.stack([_numbers(parts, c, p, "particles", default=0.0)
                    for c in ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")], 1)
    org = np.stack([_numbers(parts, c, p, "particles", default=0.0)
                    for c in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")], 1)
    notes: list[str] = []
    cen = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
    coords: np.ndarray | None = None
    if all(c in parts.columns for c in cen):
        coords = np.stack([_numbers(parts, c, p, "particles") for c in cen], 1)
    elif all(c in parts.columns for c in ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")):
        if tomo_path is None:
            raise FormatError(p, "rlnCoordinateX/Y/Z", "pixel coordinates from the tomogram corner need the "
                                                        "tomograms STAR (rlnTomoSizeX/Y/Z) to be placed: give it")
        glob = read_star(tomo_path).get("global")
        if not isinstance(glob, pd.DataFrame):
            raise FormatError(tomo_path, "data_global", "missing block: one row per tomogram")
        xyz = np.stack([_numbers(parts, c, p, "particles") for c in ("rlnCoordinateX", "rlnCoordinateY",
                                                                       "rlnCoordinateZ")], 1)
        binning = _numbers(optics, "rlnTomoSubtomogramBinning", p, "optics", default=1.0)
        if np.ptp(binning) > 1e-6:
            raise FormatError(p, "data_optics/rlnTomoSubtomogramBinning",
                              "optics groups with different binnings: not supported, import one group at a time")
        centred_px, mode = pixel_coordinates_centred_px(
            xyz, [str(n) for n in parts["rlnTomoName"]], _tomogram_sizes(glob, tomo_path), float(binning[0]),
            "auto", part_path=p, tomo_path=tomo_path)
        coords = centred_px * ts_px
        notes.append(_pixel_coordinates_note(mode, float(binning[0])))
    else:
        raise FormatError(p, f"data_particles/{cen[0]}",
                          "missing coordinates: need rlnCenteredCoordinateX/Y/ZAngst or rlnCoordinateX/Y/Z")
    halves = None
    if "rlnRandomSubset" in parts.columns:
        halves = _numbers(parts, "rlnRandomSubset", p, "particles").astype(np.int64)
        if not np.all(np.isin(halves, (1, 2))):
            raise FormatError(p, "data_particles/rlnRandomSubset", "values other than 1 and 2")
    m = len(parts)
    data = np.zeros((m, b, b, b), np.float32)
    weights = np.zeros((m, b, b, b), np.float32)
    if load_images:
        for i in range(m):
            for col, out in (("rlnImageName", data), ("rlnCtfImage", weights)):
                fp = _resolve(str(parts[col].iloc[i]), p.parent, p, f"data_particles row {i + 1} {col}")
                arr, _ = read_mrc(fp)
                arr = np.asarray(arr, np.float32)
                if col == "rlnImageName":
                    if arr.shape != (b, b, b):
                        raise FormatError(fp, "header", f"volume of shape {arr.shape}, rlnImageSize says {b}³")
                    out[i] = arr
                else:
                    out[i] = relion_weights_to_centred(arr, b, fp)
    return RelionSubtomograms(
        particles_path=p, tomo_names=[str(n) for n in parts["rlnTomoName"]], data=data, weights=weights,
        angles_deg=ang, subtomo_angles_deg=sub, origins_A=org, coordinates_A=coords, half_sets=halves,
        pixel_size_A=px, box=b, voltage_kV=optic("rlnVoltage", 300.0), cs_mm=optic("rlnSphericalAberration", 2.7),
        amplitude_contrast=optic("rlnAmplitudeContrast", 0.1), tilt_series_pixel_A=ts_px, notes=notes)
