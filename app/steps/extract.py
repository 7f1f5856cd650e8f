"""Steps 13 and 16, ``extract`` and ``extract_fine``: RELION-style pseudo-subtomograms of every particle.

For each particle and each non-excluded view of its (unflipped, motion-corrected) tilt series, the particle's
projected position is cropped from the view binned to the chosen binning (``box_px``, big enough for the CTF's
delocalisation), multiplied by its CTF at the particle's own defocus (height-aware: the defocus gradient of the
tilted specimen) and by the exposure filter of the view's dose, and cut to ``crop_px``
(:func:`tomoguide.compute.sta.extract_subtilts`). The 2D sub-tilts are either kept ("2D") or inserted as central
slices into the particle's 3D Fourier transform with their ``CTF² · dose²`` weights ("3D"; the weights show the
missing wedge). Output ``particles`` (:class:`~tomoguide.steps.average_records.ParticleStack`): the MRC files,
``particles.star`` (RELION 5), ``gallery.mrc``.

``extract`` takes the picks (``pick``); ``extract_fine`` takes the refined particles of ``refine`` (poses and
offsets; the offsets are applied to the coordinates, RELION's re-centring) at a finer binning.
With ``source = "RELION 5 particles"`` (entry point (c) of the workflow) ``extract`` computes nothing from tilt
series: it reads RELION 5 / WarpTools 2D-stack particles (an optimisation set, or a particles STAR with its tomograms
STAR; :func:`tomoguide.compute.io.relion_particles.read_relion_particles`) and writes them in exactly the format above:
each particle's sub-tilts (CTF-premultiplied; multiplied here when the STAR says they are not) and ``CTF² · dose²``
weights as its uncropped sub-tilts (all tilts of its series; the tilts ``rlnTomoVisibleFrames`` leaves out have weight
0), its 3D pseudo-subtomogram and weight volume, and ``particles.star`` with the given poses in tomoguide's convention
(:mod:`tomoguide.compute.relion_reconstruct`: ``R = A_sub · E``, origin ``A_sub · origin``, centred coordinates), the
half sets of ``rlnRandomSubset`` when the file has them. It then needs no earlier step
(:meth:`Extract.inputs_for`), and the refinement starts from the given poses.

Conventions: positions in Å from the tomogram centre (``rlnCenteredCoordinate*Angst``); RELION's origin offsets
``rlnOriginX/Y/ZAngst`` are *subtracted* from the coordinates (particle centre = coordinate − origin); orientations
RELION ZYZ (``x_tomogram = R x_reference + t`` with ``t = −origin``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tomoguide.steps.average_records import ParticleStack
from tomoguide.steps.base import Issue, Needs, Progress, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.records import SeriesSet, resolve_in

XYZ = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
ORIGIN = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


# Sizes chosen from the data when the fields are left empty. The tutorial's values are for its data (about
# 1.35 Å pixels): bin 6 gives about 8 Å voxels, where apoferritin's channels still define its orientation (at
# 12 Å it is a featureless shell), and bin 2 gives 2.7 Å. The physical targets below reproduce them on the
# tutorial's data and carry over to any pixel size.
COARSE_VOXEL_A = 8.1  # the first extraction: bin 6 × 1.35 Å
FINE_VOXEL_A = 2.7  # the finer extraction: the binning nearest this (the tutorial's bin 2 on its 1.35 Å data)
COARSE_CROP_A = 288.0  # final box of the first extraction: apoferritin (130 Å) with a wide margin
FINE_CROP_A = 256.0  # final box of the finer extraction ...
FINE_CROP_MIN_A = 192.0  # ... or this where memory is short: apoferritin's 150 Å mask with a margin
PARTICLE_DIAMETER_A = 150.0  # the apoferritin mask diameter; the box before the crop holds it plus the CTF's spread


SOURCES = ("tilt series", "RELION 5 particles")
RELION_SOURCE = "RELION 5 particles"
_TILT_SERIES_ONLY = [("source", "=", "tilt series")]


class ExtractParams(StepParams):
    source: Literal["tilt series", "RELION 5 particles"] = param(
        "tilt series", title="Particles from", choices=list(SOURCES), widget="choice",
        help="'tilt series': cut every picked particle from this project's tilt series (the normal way). 'RELION 5 "
             "particles': start here with particles extracted elsewhere (RELION 5 or WarpTools 2D stacks, e.g. "
             "WarpTools ts_export_particles --2d) with their poses: no earlier step is needed, and the refinement "
             "starts from the given poses with local searches.")
    particles_star: str = param(
        "", title="RELION 5 particles file", widget="file", empty_means="none chosen",
        enabled_if=[("source", "=", RELION_SOURCE)],
        help="The optimisation set (…_optimisation_set.star: names the particles and tomograms STAR files), or the "
             "particles STAR itself (then choose the tomograms STAR below). The particles must be 2D stacks "
             "(data_general: rlnTomoSubTomosAre2DStacks 1) with rlnTomoVisibleFrames; the tomograms STAR gives each "
             "tilt's projection (rlnTomoProjX/Y/Z/W or rlnTomoXTilt/YTilt/ZRot), defocus and exposure.")
    tomograms_star: str = param(
        "", title="RELION 5 tomograms file", widget="file", empty_means="from the optimisation set",
        enabled_if=[("source", "=", RELION_SOURCE)],
        help="The tomograms STAR (…_tomograms.star), only when the file above is a particles STAR.")
    binning: float | None = param(
        None, title="Binning", enabled_if=_TILT_SERIES_ONLY, unit="×", hard=(1.0, 32.0), suggest=(1.0, 12.0),
        empty_means="≈ 8 Å voxels",
        tutorial=6.0,
        tutorial_note="For the tutorial's 1.35 Å pixels (8.1 Å voxels); empty chooses the binning closest to "
                      "8 Å voxels for your pixel size (bin 4 of 2 Å data).",
        help="Binning of the tilt images the particles are cut from, relative to the full-size series. Voxel size "
             "= binning × pixel size. Empty: the binning whose voxels are closest to 8.1 Å (the tutorial's bin 6 "
             "of its 1.35 Å data; bin 4 of 2 Å data), where apoferritin's orientation is still defined.")
    box_px: int | None = param(
        None, title="Box size", enabled_if=_TILT_SERIES_ONLY, unit="px", hard=(8, 1024), suggest=(16, 256),
        empty_means="from the defocus",
        tutorial=128,
        tutorial_note="At the tutorial's bin 6 of its data; empty: the particle plus the CTF's spread at your "
                      "voxel size and defocus.",
        help="Size of the square cut from each tilt image before the CTF is applied. It must hold the particle "
             "plus the CTF's delocalisation (signal spread by defocus), so larger than the final box "
             "(tutorial: 128, cropped to 64). Empty: 150 Å plus twice the delocalisation at the voxel size's "
             "Nyquist frequency and the series' largest defocus, and at least 4/3 of the cropped box.")
    crop_px: int | None = param(
        None, title="Cropped box size", enabled_if=_TILT_SERIES_ONLY, unit="px", hard=(8, 1024), suggest=(16, 256),
        empty_means="≈ 288 Å",
        tutorial=64,
        tutorial_note="64 × 8.1 Å ≈ 520 Å, for the tutorial's HIV capsid lattice; empty: ≈ 288 Å, apoferritin "
                      "(130 Å) with a margin.",
        help="Final box after the CTF has been applied: the particle (apoferritin: 130 Å across) with a margin. "
             "The averaging steps work in this box. Empty: about 288 Å (an even number of voxels).")
    dimensionality: Literal["3D", "2D"] = param(
        "3D", title="Output", choices=["3D", "2D"], widget="choice",
        help="'3D': each particle's sub-tilts inserted into a 3D pseudo-subtomogram with its CTF² weight volume "
             "(what the initial model and refinement use). '2D': keep the stack of sub-tilts (RELION 5's 2D "
             "option; converted to 3D when a later step reads them).")
    dose_weighting: bool = param(
        True, title="Dose weighting", enabled_if=_TILT_SERIES_ONLY,
        help="Weight every sub-tilt by the exposure filter of its accumulated dose: later tilts (more radiation "
             "damage) contribute less at high resolution.")
    ctf_premultiply: bool = param(
        True, title="Multiply by the CTF", enabled_if=_TILT_SERIES_ONLY,
        help="Multiply every sub-tilt by its CTF at the particle's own defocus (RELION's way; the average divides "
             "by the summed CTF² afterwards). Off only to look at raw crops.")
    seed: int = param(0, title="Random seed (half sets)", unit="1", hard=(0, 2**31 - 1), advanced=True,
                      help="Seed of the random split of the particles into two half sets (gold standard).")


class ExtractFineParams(ExtractParams):
    source: Literal["tilt series"] = param("tilt series", title="Particles from", widget="hidden",
                                           help="The finer extraction always cuts from this project's tilt series.")
    particles_star: str = param("", title="RELION 5 particles file", widget="hidden",
                                help="Not used by the finer extraction (it cuts from the tilt series).")
    tomograms_star: str = param("", title="RELION 5 tomograms file", widget="hidden",
                                help="Not used by the finer extraction (it cuts from the tilt series).")
    refine_acquisition: bool = param(
        False, title="Refine the tilt series from the particles",
        help="Before cutting the particles again, measure each tilt image's misalignment and defocus error from the "
             "refined particles: every particle's sub-tilt is compared with the projection of the refinement's "
             "half map at its pose (CTF and dose included), summed over the particles of the view (RELION 5's "
             "tilt-series alignment and CTF refinement). Views whose particles give a clear signal get their "
             "shift and in-plane rotation (and, when the signal allows, their defocus) corrected; the corrected "
             "alignment and CTF are used for this extraction and exported. Worth it when the alignment is off by a "
             "pixel or more (the small demo with views moved by 1-3 px: 10.2 Å -> 6.3 Å at 2 Å voxels), or was "
             "made without per-view rotations (7.9 Å -> 5.9 Å); after the default alignment (rotations solved) "
             "it changes little and takes minutes, so it is off by default. The defocus of a view needs maps far "
             "sharper than 6 Å and many particles per view to be measured; below that it is kept.")
    binning: float | None = param(
        None, title="Binning", unit="×", hard=(1.0, 32.0), suggest=(1.0, 12.0), empty_means="≈ 2.7 Å voxels",
        help="Binning of the finer extraction (tutorial: 2, i.e. 2.7 Å voxels on its 1.35 Å data). Must be finer "
             "than the first extraction's. Empty: the binning whose voxels are nearest 2.7 Å (bin 1 from 2 Å "
             "pixels up: the refinement at full sampling), coarser where the refinement of this many particles "
             "would not fit in half this computer's memory (the log says so).")
    box_px: int | None = param(
        None, title="Box size", unit="px", hard=(8, 1024), suggest=(16, 256), empty_means="4/3 of the crop",
        tutorial=256,
        tutorial_note="At the tutorial's bin 2 of its 1.35 Å data; empty: 4/3 of the cropped box.",
        help="Size of the square cut from each tilt image before the CTF is applied (tutorial: 256 at bin 2 of "
             "its data). A larger box keeps more of the CTF's delocalised signal (about 100 Å each side at 4 µm "
             "defocus and 8 Å) but the extraction's time and memory grow with its square. Empty: 4/3 of the "
             "cropped box.")
    crop_px: int | None = param(
        None, title="Cropped box size", unit="px", hard=(8, 1024), suggest=(16, 256), empty_means="≈ 256 Å",
        tutorial=128, tutorial_note="128 × 2.7 Å ≈ 350 Å in the tutorial; empty: ≈ 256 Å, apoferritin with a margin.",
        help="Final box after the CTF has been applied (tutorial: 128): the particle with a margin. Empty: about "
             "256 Å (an even number of voxels), or 192 Å where the refinement would not fit in half this "
             "computer's memory.")


def _even_at_least(n: float, lo: int = 8) -> int:
    """The smallest even number ``>= n`` (and ``>= lo``) whose only prime factors are 2, 3 and 5 (fast FFTs)."""
    m = max(lo, int(math.ceil(n / 2.0 - 1e-6)) * 2)
    while True:
        k = m
        for f in (2, 3, 5):
            while k % f == 0:
                k //= f
        if k == 1:
            return m
        m += 2


def refine_memory_bytes(n_particles: int, n_views: int, box_px: int, crop_px: int) -> int:
    """About the memory (bytes) a refinement of ``n_particles`` extracted at ``box_px`` (before the crop) and
    ``crop_px`` takes: the pseudo-subtomograms' data, weights and transforms (``24 crop³`` each, as
    :meth:`tomoguide.steps.refine.Refine.estimate` counts them) and the kept sub-tilts of ``n_views`` views
    (:func:`reconstructor_bytes`: ``10.4 box²`` each)."""
    return int(n_particles * (24 * crop_px**3 + n_views * box_px**2 * (4 + 0.4 * 16)))


def memory_budget_bytes() -> int | None:
    """Half this machine's physical memory: what the automatic sizes of the finer extraction let its refinement
    take (a fixed share of the installed memory, not of what is free now, so the same machine always chooses the
    same sizes); None where unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (AttributeError, ValueError, OSError):
        return None


def extraction_sizes(params: ExtractParams, *, pixel_size_A: float, max_defocus_A: float, voltage_kV: float,
                     fine: bool, coarse_binning: float | None = None, n_particles: int | None = None,
                     n_views: int | None = None, memory_bytes: int | None = None) -> tuple[float, int, int]:
    """``(binning, box_px, crop_px)``: the typed values, and for empty fields the ones chosen from the data.

    ``pixel_size_A``: the full-size series' pixel size; ``max_defocus_A``: the largest mean defocus of the
    series' views (Å, underfocus positive); ``coarse_binning``: the first extraction's binning (finer step only).
    The first extraction: binning ``round(8.1 Å / pixel)``, crop ≈ 288 Å, and a box holding
    :data:`PARTICLE_DIAMETER_A` plus, on each side, the CTF's delocalisation ``λ Δf k`` at the voxel size's
    Nyquist frequency ``k = 1 / (2 voxel)`` (Å), at least 4/3 of the crop. A typed box smaller than the
    automatic crop is not cropped.
    The finer extraction refines at full sampling where the data and the memory allow (issue 19): the binning
    nearest :data:`FINE_VOXEL_A` (the tutorial's bin 2 on its 1.35 Å data; bin 1 from 2 Å pixels up), never
    coarser than the first; crop ≈ 256 Å (:data:`FINE_CROP_A`), box 4/3 of the crop (the tutorial's is 2×,
    256 / 128: the extraction's time and the kept sub-tilts' memory grow with the box's square; 4/3 × 96 at 2 Å
    voxels gave 5.9 Å on the small demo).
    With ``n_particles``, ``n_views`` and ``memory_bytes`` the refinement's memory
    (:func:`refine_memory_bytes`) must fit: else the crop shrinks to :data:`FINE_CROP_MIN_A` (the particle with
    a margin), then the binning grows by 1 until it fits (or reaches the first extraction's).
    """
    from tomoguide.compute.ctf import electron_wavelength_A

    def crop_for(voxel: float, crop_A: float) -> int:
        crop = int(params.crop_px) if params.crop_px is not None else _even_at_least(crop_A / voxel)
        if params.crop_px is None and params.box_px is not None and crop > int(params.box_px):
            crop = int(params.box_px) - int(params.box_px) % 2  # a typed box smaller than the automatic crop
        return crop

    if not fine:
        binning = float(params.binning) if params.binning is not None else float(
            max(1, round(COARSE_VOXEL_A / pixel_size_A)))
        voxel = pixel_size_A * binning
        crop = crop_for(voxel, COARSE_CROP_A)
        if params.box_px is not None:
            return binning, int(params.box_px), crop
        deloc_A = electron_wavelength_A(voltage_kV) * max(max_defocus_A, 0.0) / (2.0 * voxel)
        return binning, _even_at_least(max((PARTICLE_DIAMETER_A + 2.0 * deloc_A) / voxel, crop * 4.0 / 3.0)), crop
    if params.binning is not None:
        candidates = [float(params.binning)]
    else:
        first = float(max(1, round(FINE_VOXEL_A / pixel_size_A)))
        last = first if coarse_binning is None else float(coarse_binning)
        first = min(first, last)
        candidates = [first + i for i in range(int(round(last - first)) + 1)]
    choice = None
    for binning in candidates:
        voxel = pixel_size_A * binning
        for crop_A in (FINE_CROP_A, FINE_CROP_MIN_A):
            crop = crop_for(voxel, crop_A)
            box = int(params.box_px) if params.box_px is not None else _even_at_least(crop * 4.0 / 3.0)
            choice = (binning, box, crop)
            if n_particles is None or memory_bytes is None or refine_memory_bytes(
                    n_particles, n_views or 61, box, crop) <= memory_bytes:
                return choice
    assert choice is not None
    return choice


def registry_title(step_id: str) -> str:
    from tomoguide.steps import registry

    return registry.get(step_id).title


def _centred_positions(df: pd.DataFrame) -> np.ndarray:
    """Particle centres (m, 3) in Å from the tomogram centre: coordinates minus RELION's origin offsets."""
    pos = df[list(XYZ)].to_numpy(np.float64)
    if all(c in df.columns for c in ORIGIN):
        pos = pos - df[list(ORIGIN)].to_numpy(np.float64)
    return pos


def _gallery(data: np.ndarray) -> np.ndarray:
    """(m, B, B) thumbnails: each pseudo-subtomogram averaged over its central quarter-box slab along z."""
    b = data.shape[-1]
    q = max(1, b // 4)
    return data[:, b // 2 - q:b // 2 + q].mean(axis=1).astype(np.float32)


def load_particles(folder: Path, rows: np.ndarray | None = None) -> tuple[ParticleStack, Any, np.ndarray, np.ndarray]:
    """Read an extraction's output: ``(record, star, data (m, B, B, B), weights (m, B, B, B))``.

    ``star`` a :class:`~tomoguide.compute.io.star.ParticlesStar` (``.particles`` table, ``.optics``; always every
    particle).

    ``data`` real-space pseudo-subtomograms (float32, centre B // 2), ``weights`` centred Fourier CTF² weights.
    A 2D extraction's sub-tilts are inserted into 3D here (same result as a 3D extraction). ``rows``: only these
    particles (0-based rows of the table, in this order; a batch of the refinement's expectation step).
    """
    from tomoguide.compute import sta
    from tomoguide.compute.backend import map_threads
    from tomoguide.compute.float16 import to_float32
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.compute.io.star import read_particles_star

    rec, base = ParticleStack.load(folder)
    ps = read_particles_star(rec.path("star", base))
    df = ps.particles if rows is None else ps.particles.iloc[np.asarray(rows, np.int64)]
    m, b = len(df), rec.box_px
    data = np.empty((m, b, b, b), np.float32)
    weights = np.empty((m, b, b, b), np.float32)
    mats = {k: np.asarray(v, np.float64) for k, v in rec.info.get("view_matrices", {}).items()}

    def read(item: tuple[int, Any]) -> None:
        i, row = item
        d_path = resolve_in(base, str(row.rlnImageName), "rlnImageName")
        w_path = resolve_in(base, str(row.rlnCtfImage), "rlnCtfImage")
        d, _ = read_mrc(d_path)
        w, _ = read_mrc(w_path)
        if rec.dimensionality == 2:
            vm = mats[str(row.rlnTomoName)][np.asarray(rec.info["views_used"][str(row.rlnTomoName)])]
            d3, w3 = sta.backproject_subtomogram(np.asarray(d, np.float32), np.asarray(w, np.float32), vm)
            data[i], weights[i] = d3, w3
        else:  # float16 files decoded straight into the rows (a table: numpy's conversion loops per value)
            for path, arr in ((d_path, d), (w_path, w)):
                if arr.shape != (b, b, b):
                    raise ValueError(f"{path}: {arr.shape} voxels, but {base / 'particles.json'} says box_px {b}")
            to_float32(d, data[i])
            to_float32(w, weights[i])

    items = list(enumerate(df.itertuples(index=False)))
    if rec.dimensionality == 2:  # the insertion runs numba's parallel kernels: not from several threads
        for item in items:
            read(item)
    else:  # the files on the thread budget's threads, each particle into its own rows (reads free the GIL)
        map_threads(read, items)
    return rec, ps, data, weights


def reconstructor_bytes(rec: ParticleStack) -> int:
    """Memory (bytes) that :func:`load_reconstructor` takes for the particles of ``rec``: per particle and view
    the float16 sub-tilt and weight read (``4 E²``) and the Reconstructor's kept half-plane samples (complex64
    data, float32 weight and index: about ``0.4 E² · 16``), E = ``info["box_before_crop_px"]``; 0 when the
    extraction kept no uncropped sub-tilts."""
    if not rec.info.get("uncropped_subtilts"):
        return 0
    e = int(rec.info.get("box_before_crop_px") or rec.box_px)
    views = rec.info.get("views_used") or {}
    per_view = max((len(v) for v in views.values()), default=61)
    return int(rec.n_particles * per_view * e * e * (4 + 0.4 * 16))


def load_reconstructor(folder: Path) -> Any:
    """The sub-tilts of an extraction before the crop, ready for the reconstructions of the averaging steps: a
    :class:`tomoguide.compute.sta.Reconstructor` (particles in the order of ``particles.star``, box the record's
    ``box_px``), or None when the extraction kept none (made by an earlier version: the steps then reconstruct
    from the 3D pseudo-subtomograms).

    Files (record ``info["uncropped_subtilts"]``, one pair per particle): ``…_subtilts_uncropped.mrc`` (k, E, E)
    float16, the CTF-premultiplied, dose-weighted sub-tilts at the box before the crop (E = ``box_before_crop_px``,
    centre ``E // 2``), and ``…_subtilt_weights_uncropped.mrc`` (k, E, E) float16, their ``CTF² · dose²`` on the
    un-shifted 2D FFT grid; views ``info["views_used"][tomo]``, matrices ``info["view_matrices"][tomo]``.
    """
    from tomoguide.compute import sta
    from tomoguide.compute.backend import map_threads
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.compute.io.star import read_particles_star

    rec, base = ParticleStack.load(folder)
    names = rec.info.get("uncropped_subtilts")
    if not names:
        return None
    df = read_particles_star(rec.path("star", base)).particles
    if len(names) != len(df):
        raise ValueError(f"{base / 'particles.json'}: info.uncropped_subtilts names {len(names)} particles, "
                         f"particles.star {len(df)}")
    mats = {k: np.asarray(v, np.float64) for k, v in rec.info.get("view_matrices", {}).items()}

    def read(item: tuple[Any, str]) -> Any:
        (img_name, w_name), tomo = item
        d, _ = read_mrc(resolve_in(base, str(img_name), "info.uncropped_subtilts"))
        w, _ = read_mrc(resolve_in(base, str(w_name), "info.uncropped_subtilts"))
        views = np.asarray(rec.info["views_used"][tomo], np.int64)
        return sta.Subtilts(images=np.asarray(d)[None], weights=np.asarray(w)[None],
                            view_matrices=mats[tomo][views], views=views, pixel_size_A=rec.voxel_A,
                            defocus_A=np.zeros((1, views.size)), crop_px=rec.box_px)

    # the files on the thread budget's threads (the reads free the GIL), in the order of particles.star
    sets = map_threads(read, list(zip(names, df["rlnTomoName"].astype(str), strict=True)))
    return sta.Reconstructor(sets)


# ---- entry point (c): RELION 5 / WarpTools particles -----------------------------------------------------------------


def relion_paths(params: ExtractParams) -> tuple[Path | None, Path | None]:
    """The chosen particles file and tomograms file (``~`` expanded, relative to the working folder; None when
    empty)."""
    def path(v: str) -> Path | None:
        return Path(str(v).strip()).expanduser() if v and str(v).strip() else None
    return path(params.particles_star), path(params.tomograms_star)


def _read_relion(params: ExtractParams, *, load_images: bool) -> Any:
    """:class:`~tomoguide.compute.io.relion_particles.RelionParticles` (2D stacks) or
    :class:`~tomoguide.compute.io.relion_particles.RelionSubtomograms` (3D pseudo-subtomograms)."""
    from tomoguide.compute.io.relion_particles import (particles_are_2d, read_relion_particles,
                                                       read_relion_subtomograms)

    part, tomo = relion_paths(params)
    if part is None:
        raise ValueError("choose the RELION 5 particles file (optimisation set or particles STAR)")
    if not particles_are_2d(part):
        return read_relion_subtomograms(part, tomo, load_images=load_images)
    return read_relion_particles(part, tomo, load_images=load_images)


def relion_issues(params: ExtractParams) -> list[Issue]:
    """Errors naming the file and field for RELION 5 particles that cannot be read (metadata only)."""
    from tomoguide.compute.io.errors import FormatError

    part, tomo = relion_paths(params)
    if part is None:
        return [Issue("error", "choose the RELION 5 particles file (optimisation set or particles STAR)",
                      "particles_star")]
    for value, fld in ((part, "particles_star"), (tomo, "tomograms_star")):
        if value is not None and not value.is_file():
            return [Issue("error", f"{value}: no such file", fld)]
    try:
        _read_relion(params, load_images=False)
    except FormatError as exc:
        fld = "tomograms_star" if tomo is not None and str(tomo) in str(exc) else "particles_star"
        return [Issue("error", str(exc), fld)]
    except (FileNotFoundError, ValueError) as exc:
        return [Issue("error", str(exc), "particles_star")]
    return []


def relion_needs(params: ExtractParams) -> Needs:
    """Disk and memory of the import: per particle its 3D data and weights (float32/float16) and its sub-tilts with
    weights (float16); in memory all particles' sub-tilts (float32, images and weights, ×3 work copies)."""
    try:
        p = _read_relion(params, load_images=False)
        n, b = p.n_particles, p.box
        frames = max(g.visible.shape[1] for g in p.tomograms) if hasattr(p, "tomograms") else 0
    except Exception:  # noqa: BLE001 - an estimate for a file that check() reports
        n, b, frames = 1000, 64, 41
    per = b**3 * 6 + frames * b * b * 4
    return Needs(disk_bytes=n * per, memory_bytes=n * frames * b * b * 4 * 2 * 3 + 500_000_000)


def run_relion_import(params: ExtractParams, ctx: RunContext) -> Any:
    """The RELION 5 source of :class:`Extract` (a run generator; module docstring): the same outputs as an
    extraction from this project's tilt series."""
    from tomoguide.compute import relion_reconstruct as RR
    from tomoguide.compute.euler import matrix_to_euler
    from tomoguide.compute.io.mrc import write_mrc
    from tomoguide.compute.io.star import read_star, write_particles_star

    part, _ = relion_paths(params)
    yield Progress(0.0, f"reading {part}")
    p = _read_relion(params, load_images=True)
    for note in p.notes:
        ctx.log(note)
    if not hasattr(p, "tomograms"):
        return (yield from _write_relion_3d(p, params, ctx))
    ctx.log(f"{p.n_particles} particles of {len(p.tomograms)} tomograms from {p.particles_path} "
            f"({p.box} px of {p.pixel_size_A:g} Å, CTF-premultiplied: {'yes' if p.ctf_premultiplied else 'no, done here'})")
    subtilts = RR.relion_subtilts(p)
    rots, t_a = RR.relion_poses_A(p)
    coords = RR.relion_centred_coordinates_A(p)
    rows = np.concatenate([g.rows for g in p.tomograms])
    table = read_star(p.particles_path)["particles"]
    m = p.n_particles
    if "rlnRandomSubset" in table.columns:
        halves = pd.to_numeric(table["rlnRandomSubset"], errors="coerce").to_numpy()[rows]
        if not np.all(np.isin(halves, (1, 2))):
            raise ValueError(f"{p.particles_path}: data_particles/rlnRandomSubset: values other than 1 and 2")
        halves = halves.astype(np.int64)
        ctx.log("half sets from rlnRandomSubset")
    else:
        halves = np.ones(m, np.int64)
        halves[np.random.default_rng(params.seed).permutation(m)[m // 2:]] = 2
    three_d = params.dimensionality == "3D"
    b, voxel = p.box, float(p.pixel_size_A)
    ctx.mkdir("subtomos")
    gallery = np.zeros((m, b, b), np.float32)
    names: dict[str, list[Any]] = {"image": [], "ctf": [], "particle": [], "tomo": [], "full": []}
    view_mats: dict[str, Any] = {}
    views_used: dict[str, list[int]] = {}
    i = 0
    for g, st in zip(p.tomograms, subtilts, strict=True):
        view_mats[g.name] = np.asarray(st.view_matrices, np.float64).tolist()
        views_used[g.name] = [int(v) for v in st.views]
        for j in range(st.images.shape[0]):
            ctx.check_cancel()
            pname = f"{g.name}_{i + 1:06d}"
            d3, w3 = sta_backproject(st.images[j], st.weights[j], st.view_matrices)
            gallery[i] = _gallery(d3[None])[0]
            img = f"subtomos/{pname}_{'data' if three_d else 'subtilts'}.mrc"
            wgt = f"subtomos/{pname}_weights.mrc"
            write_mrc(ctx.out_path(img), d3 if three_d else st.images[j], voxel, is_stack=not three_d)
            write_mrc(ctx.out_path(wgt), (w3 if three_d else st.weights[j]).astype(np.float16), voxel,
                      is_stack=not three_d)
            full = (f"subtomos/{pname}_subtilts_uncropped.mrc", f"subtomos/{pname}_subtilt_weights_uncropped.mrc")
            write_mrc(ctx.out_path(full[0]), st.images[j].astype(np.float16), voxel, is_stack=True)
            write_mrc(ctx.out_path(full[1]), st.weights[j].astype(np.float16), voxel, is_stack=True)
            names["image"].append(img)
            names["ctf"].append(wgt)
            names["particle"].append(f"{g.name}/{i + 1}")
            names["tomo"].append(g.name)
            names["full"].append(list(full))
            i += 1
            if i % 16 == 0 or i == m:
                yield Progress(i / m, f"{i}/{m} particles converted")
    ang = matrix_to_euler(rots)
    out = pd.DataFrame({"rlnTomoName": names["tomo"], "rlnTomoParticleName": names["particle"],
                        XYZ[0]: coords[:, 0], XYZ[1]: coords[:, 1], XYZ[2]: coords[:, 2],
                        ANGLES[0]: ang[:, 0], ANGLES[1]: ang[:, 1], ANGLES[2]: ang[:, 2],
                        ORIGIN[0]: -t_a[:, 0], ORIGIN[1]: -t_a[:, 1], ORIGIN[2]: -t_a[:, 2],
                        "rlnRandomSubset": halves, "rlnImageName": names["image"], "rlnCtfImage": names["ctf"]})
    ts_px = float(p.tomograms[0].tilt_series_pixel_A)
    optics = {"rlnTomoTiltSeriesPixelSize": ts_px, "rlnImagePixelSize": voxel, "rlnImageSize": b,
              "rlnImageDimensionality": 3 if three_d else 2, "rlnVoltage": p.voltage_kV,
              "rlnSphericalAberration": p.cs_mm, "rlnAmplitudeContrast": p.amplitude_contrast}
    write_particles_star(ctx.out_path("particles.star"), out, optics)
    write_mrc(ctx.out_path("gallery.mrc"), gallery, voxel, is_stack=True)
    rec = ParticleStack(voxel_A=voxel, box_px=b, binning=round(voxel / ts_px, 5), n_particles=m,
                        tomo_names=[g.name for g in p.tomograms], dimensionality=3 if three_d else 2,
                        info={"view_matrices": view_mats, "views_used": views_used, "box_before_crop_px": b,
                              "uncropped_subtilts": names["full"], "source": RELION_SOURCE,
                              "particles_file": str(p.particles_path), "tomograms_file": str(p.tomograms_path),
                              "poses_given": True, "reader_notes": list(p.notes)})
    path = rec.save(ctx.run_dir)
    metrics = {"source": RELION_SOURCE, "n_particles": m, "voxel_A": voxel, "box_px": b,
               "n_tomograms": len(p.tomograms), "half_sets": [int((halves == k).sum()) for k in (1, 2)],
               "ctf_premultiplied_in_file": bool(p.ctf_premultiplied)}
    return StepResult(outputs={"particles": path.parent}, metrics=metrics,
                      summary=f"{m} particles imported from RELION 5, {b}³ voxels of {voxel:.3g} Å, poses kept")


def _write_relion_3d(p: Any, params: ExtractParams, ctx: RunContext) -> Any:
    """3D pseudo-subtomograms (:class:`~tomoguide.compute.io.relion_particles.RelionSubtomograms`) in the extraction's
    format: the data and centred weights as they are, in RELION's subtomogram frame (``x_tomogram = A_sub x``), so
    the poses written are ``E(rot, tilt, psi)`` and ``t = −origin`` in that frame (no sub-tilts: the averaging steps
    use the 3D data)."""
    from tomoguide.compute.io.mrc import write_mrc
    from tomoguide.compute.io.star import write_particles_star

    m, b, voxel = p.n_particles, p.box, float(p.pixel_size_A)
    if p.half_sets is not None:
        halves = p.half_sets
        ctx.log("half sets from rlnRandomSubset")
    else:
        halves = np.ones(m, np.int64)
        halves[np.random.default_rng(params.seed).permutation(m)[m // 2:]] = 2
    if np.any(p.subtomo_angles_deg != 0):
        ctx.log("rlnTomoSubtomogram* angles: the poses are relative to each particle's subtomogram frame")
    ctx.mkdir("subtomos")
    imgs, wgts, pnames = [], [], []
    for i in range(m):
        ctx.check_cancel()
        pname = f"{p.tomo_names[i]}_{i + 1:06d}"
        imgs.append(f"subtomos/{pname}_data.mrc")
        wgts.append(f"subtomos/{pname}_weights.mrc")
        pnames.append(f"{p.tomo_names[i]}/{i + 1}")
        write_mrc(ctx.out_path(imgs[-1]), p.data[i], voxel)
        write_mrc(ctx.out_path(wgts[-1]), p.weights[i].astype(np.float16), voxel)
        if (i + 1) % 16 == 0 or i + 1 == m:
            yield Progress((i + 1) / m, f"{i + 1}/{m} particles converted")
    coords = p.coordinates_A
    out = pd.DataFrame({"rlnTomoName": p.tomo_names, "rlnTomoParticleName": pnames,
                        XYZ[0]: coords[:, 0], XYZ[1]: coords[:, 1], XYZ[2]: coords[:, 2],
                        ANGLES[0]: p.angles_deg[:, 0], ANGLES[1]: p.angles_deg[:, 1], ANGLES[2]: p.angles_deg[:, 2],
                        ORIGIN[0]: p.origins_A[:, 0], ORIGIN[1]: p.origins_A[:, 1], ORIGIN[2]: p.origins_A[:, 2],
                        "rlnRandomSubset": halves, "rlnImageName": imgs, "rlnCtfImage": wgts})
    optics = {"rlnTomoTiltSeriesPixelSize": p.tilt_series_pixel_A, "rlnImagePixelSize": voxel, "rlnImageSize": b,
              "rlnImageDimensionality": 3, "rlnVoltage": p.voltage_kV, "rlnSphericalAberration": p.cs_mm,
              "rlnAmplitudeContrast": p.amplitude_contrast}
    write_particles_star(ctx.out_path("particles.star"), out, optics)
    write_mrc(ctx.out_path("gallery.mrc"), _gallery(p.data), voxel, is_stack=True)
    names = list(dict.fromkeys(p.tomo_names))
    rec = ParticleStack(voxel_A=voxel, box_px=b, binning=round(voxel / p.tilt_series_pixel_A, 5), n_particles=m,
                        tomo_names=names, dimensionality=3,
                        info={"source": RELION_SOURCE, "particles_file": str(p.particles_path), "poses_given": True,
                              "frame": "RELION subtomogram frame (x_tomogram = A_sub x)", "reader_notes": p.notes})
    path = rec.save(ctx.run_dir)
    return StepResult(outputs={"particles": path.parent},
                      metrics={"source": RELION_SOURCE, "n_particles": m, "voxel_A": voxel, "box_px": b,
                               "n_tomograms": len(names), "half_sets": [int((halves == k).sum()) for k in (1, 2)],
                               "dimensionality_in_file": 3},
                      summary=f"{m} 3D pseudo-subtomograms imported from RELION, {b}³ voxels of {voxel:.3g} Å, "
                              "poses kept")


def sta_backproject(images: np.ndarray, weights: np.ndarray, view_matrices: np.ndarray) -> tuple[Any, Any]:
    """:func:`tomoguide.compute.sta.backproject_subtomogram` (the 3D pseudo-subtomogram of one particle)."""
    from tomoguide.compute import sta

    return sta.backproject_subtomogram(images, weights, view_matrices)


def extract_unit(stack_path: Any, name: str, g0: Any, binning: float, ctf_star: Any, positions_A: np.ndarray,
                 outs: list[tuple[str, str, str, str]], *, box_px: int, crop_px: int, dose_weighting: bool,
                 three_d: bool) -> dict[str, Any]:
    """One tilt series' particles (a unit of :mod:`tomoguide.cluster`): reads the stack at ``stack_path``
    (geometry ``g0``), bins it to ``binning``, extracts the (m, 3) ``positions_A`` (tomogram frame, Å from the
    centre) as sub-tilts of ``box_px`` cropped to ``crop_px`` (CTF-premultiplied with the per-view CTF STAR
    ``ctf_star``, None: no CTF) and writes particle ``j``'s image, weights, uncropped sub-tilts and weights to the
    four paths ``outs[j]`` (each through a temporary file renamed into place; 3D subtomograms when ``three_d``).
    Returns ``gallery`` ((m, crop, crop) central sections), ``voxel_A``, ``view_matrices`` and ``views_used``."""
    from tomoguide.cluster import atomic_output
    from tomoguide.compute import sta
    from tomoguide.compute.float16 import to_float16
    from tomoguide.compute.io.mrc import read_mrc, write_mrc
    from tomoguide.compute.io.star import read_ctf_star
    from tomoguide.compute.rescale import fourier_bin

    stack, _ = read_mrc(stack_path)
    factor = binning / g0.binning
    if factor < 1 - 1e-6:
        raise ValueError(f"{name}: the series is already binned by {g0.binning:g}; cannot extract at "
                         f"binning {binning:g}")
    st = np.asarray(stack, np.float32)
    if abs(factor - 1) > 1e-6:
        st = fourier_bin(st, factor)
    g = g0.at_binning(binning)
    if tuple(g.image_shape_px) != st.shape[1:]:
        g = g.model_validate({**g.model_dump(), "image_shape_px": list(st.shape[1:])})
    voxel = float(g.pixel_size_binned_A)
    ctf = sta.ViewCTF.from_star(read_ctf_star(ctf_star)) if ctf_star is not None else None
    m = len(outs)
    gallery = np.zeros((m, crop_px, crop_px), np.float32)
    views_used: list[int] = []
    chunk = 16
    padded = sta.padded_views(st, g, box_px)  # normalised once for all the chunks
    for a in range(0, m, chunk):
        sub = sta.extract_subtilts(st, g, positions_A[a:a + chunk], box_px=box_px, crop_px=crop_px,
                                   ctf=ctf, dose_weighting=dose_weighting, keep_uncropped=True, padded=padded)
        full = sub.uncropped if sub.uncropped is not None else sub
        views_used = [int(v) for v in sub.views]
        for j in range(sub.images.shape[0]):
            d3, w3 = sta.backproject_subtomogram(sub.images[j], sub.weights[j], sub.view_matrices)
            gallery[a + j] = _gallery(d3[None])[0]
            files = (d3 if three_d else sub.images[j], to_float16(w3 if three_d else sub.weights[j]),
                     to_float16(full.images[j]), to_float16(full.weights[j]))
            for k, (path, data) in enumerate(zip(outs[a + j], files, strict=True)):
                with atomic_output(path) as tmp:
                    write_mrc(tmp, data, voxel, is_stack=k >= 2 or not three_d)
    return {"gallery": gallery, "voxel_A": voxel, "view_matrices": g.projection_matrices()[:, :, :3].tolist(),
            "views_used": views_used}


class Extract(Step):
    id = "extract"
    title = "Extract pseudo-subtomograms"
    summary = "Cut every particle from every tilt image, multiply by its CTF, and build its pseudo-subtomogram."
    help = (
        "<p><b>What it does.</b> For every particle, the small square around its projected position is cut from "
        "each tilt image (not from the tomogram: the tilt images are sharper), multiplied by the CTF at the "
        "particle's own height in the specimen and weighted by the dose the view had received. These sub-tilts "
        "are then assembled in Fourier space into a 3D <i>pseudo-subtomogram</i>, together with a weight volume "
        "that records how much signal every 3D frequency got (zero in the missing wedge).</p>"
        "<p><b>Why.</b> Averaging needs each particle's data together with its CTF and missing wedge, so that the "
        "average can divide by the summed weights and fill the wedge from particles in other orientations.</p>"
        "<p><b>A good result.</b> The gallery shows ring-like particles (apoferritin's shell) at the centre of "
        "every box; the weight volume's XZ slice shows the double cone of the missing wedge.</p>"
        "<p><b>What to check.</b> Empty or off-centre boxes (wrong picks or a wrong binning), particles cut by the "
        "box (increase the cropped box).</p>"
    )
    Params = ExtractParams
    inputs: tuple[str, ...] = ("exclude", "pick")
    particles_from: tuple[str, str] = ("pick", "particles")

    @classmethod
    def inputs_for(cls, params: StepParams, params_of: Any = None) -> tuple[str, ...]:
        """No earlier step when the particles come from RELION 5 files; else :attr:`inputs`."""
        if getattr(params, "source", "tilt series") == RELION_SOURCE:
            return ()
        return cls.inputs

    @classmethod
    def origin_for(cls, params: StepParams, params_of: Any = None) -> str | None:
        return "imported" if getattr(params, "source", "tilt series") == RELION_SOURCE else None

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, ExtractParams)
        if params.source == RELION_SOURCE:
            return relion_issues(params)
        issues = []
        if params.crop_px is not None and params.box_px is not None and params.crop_px > params.box_px:
            issues.append(Issue("error", f"the cropped box ({params.crop_px} px) must not be larger than the box "
                                f"({params.box_px} px)", "crop_px"))
            issues.append(Issue("error", f"the box ({params.box_px} px) must not be smaller than the cropped box "
                                f"({params.crop_px} px)", "box_px"))
        for name in ("crop_px", "box_px"):
            value = getattr(params, name)
            if value is not None and value % 2:
                issues.append(Issue("error", "box sizes must be even", name))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        assert isinstance(params, ExtractParams)
        if params.source == RELION_SOURCE:
            return relion_needs(params)
        try:
            n = len(self._particles(ctx))
        except (KeyError, OSError):
            n = 1000
        try:
            _, box, crop = self.sizes(params, ctx)
        except (KeyError, OSError, ValueError):
            crop = params.crop_px or 64
            box = params.box_px or crop
        try:  # the most views any series keeps
            sset, _ = SeriesSet.load(ctx.output("exclude", "series"))
            views = max(len(s.geometry.included_views()) for s in sset.series)
        except (KeyError, OSError, ValueError):
            views = 61
        # disk: the 3D data and weights (float16) and the uncropped sub-tilts with their weights (float16);
        # memory: one series' stack and tomogram-sized work arrays (the 2 GB margin) and one chunk of 16
        # particles' sub-tilts (complex work arrays, ~6 copies) and 3D volumes (float32, ~4 copies)
        per = crop**3 * 4 + views * box**2 * 4
        chunk = 16 * (views * box**2 * 4 * 6 + crop**3 * 4 * 4)
        return Needs(disk_bytes=n * per, memory_bytes=chunk + 2_000_000_000)

    def _coarse_binning(self, ctx: RunContext, pixel_size_A: float) -> float | None:
        """The binning of the extraction the particles come from (``None`` for the first extraction)."""
        return None

    def _acquisition(self, params: ExtractParams, ctx: RunContext, sset: SeriesSet, base: Path, df: pd.DataFrame,
                     binning: float, box_px: int, crop_px: int) -> Any:
        """The tilt series to extract from: ``(series set, its folder, extra outputs, metrics)`` (a generator;
        the first extraction takes the ``exclude`` step's as they are)."""
        return sset, base, {}, {}
        yield  # a generator

    def sizes(self, params: ExtractParams, ctx: RunContext) -> tuple[float, int, int]:
        """``(binning, box_px, crop_px)`` for this run: typed values, the others from the data
        (:func:`extraction_sizes`: the pixel size and the largest defocus of the non-excluded views)."""
        sset, base = SeriesSet.load(ctx.output("exclude", "series"))
        return self._sizes(params, ctx, sset, base)[0]

    def _sizes(self, params: ExtractParams, ctx: RunContext, sset: SeriesSet, base: Path,
               n_particles: int | None = None) -> tuple[tuple[float, int, int], tuple[int, int, int | None] | None]:
        """:meth:`sizes` and, for the finer extraction, what its memory rule used: ``(particles, views, budget
        bytes)`` (None for the first extraction). ``n_particles``: the particles' count when already read."""
        from tomoguide.compute.io.star import read_ctf_star

        g = sset.series[0].geometry
        max_defocus = 0.0
        if params.box_px is None:
            for s in sset.series:
                try:
                    ctf = read_ctf_star(s.path("ctf_star", base))
                except KeyError:
                    continue
                mean = 0.5 * (ctf["rlnDefocusU"].to_numpy(float) + ctf["rlnDefocusV"].to_numpy(float))
                mean = mean[np.isfinite(mean)]
                if mean.size:
                    max_defocus = max(max_defocus, float(np.percentile(mean, 90)))
        coarse = self._coarse_binning(ctx, g.pixel_size_A)
        memory = None
        if coarse is not None:
            # the finer extraction sizes itself so that its refinement fits in this machine's memory
            memory = (len(self._particles(ctx)) if n_particles is None else int(n_particles),
                      max((int(s.geometry.included_views().size) for s in sset.series), default=61),
                      memory_budget_bytes())
        found = extraction_sizes(params, pixel_size_A=g.pixel_size_A, max_defocus_A=max_defocus,
                                 voltage_kV=g.optics.voltage_kV, fine=coarse is not None, coarse_binning=coarse,
                                 n_particles=None if memory is None else memory[0],
                                 n_views=None if memory is None else memory[1],
                                 memory_bytes=None if memory is None else memory[2])
        return found, memory

    def _particles(self, ctx: RunContext) -> pd.DataFrame:
        from tomoguide.compute.io.star import read_particles_star

        step, name = self.particles_from
        return read_particles_star(ctx.output(step, name)).particles

    def _prepare(self, df: pd.DataFrame, params: ExtractParams) -> pd.DataFrame:
        """The particles to extract, with ``rlnRandomSubset`` (1/2) assigned at random when absent."""
        out = df.reset_index(drop=True).copy()
        if "rlnRandomSubset" not in out.columns:
            rng = np.random.default_rng(params.seed)
            subset = np.ones(len(out), np.int64)
            subset[rng.permutation(len(out))[len(out) // 2:]] = 2
            out["rlnRandomSubset"] = subset
        for c in ORIGIN:
            if c not in out.columns:
                out[c] = 0.0
        # orientations from picking (surface normals, template matching) become RELION's priors on tilt and psi
        if all(c in out.columns for c in ANGLES) and "rlnAngleTiltPrior" not in out.columns:
            out["rlnAngleTiltPrior"] = out["rlnAngleTilt"]
            out["rlnAnglePsiPrior"] = out["rlnAnglePsi"]
        return out

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.cluster import Unit
        from tomoguide.compute.io.mrc import write_mrc
        from tomoguide.compute.io.star import write_particles_star

        assert isinstance(params, ExtractParams)
        if params.source == RELION_SOURCE:
            return (yield from run_relion_import(params, ctx))
        sset, base = SeriesSet.load(ctx.output("exclude", "series"))
        picked = self._particles(ctx)
        (binning, box_px, crop_px), memory = self._sizes(params, ctx, sset, base, n_particles=len(picked))
        px = sset.series[0].geometry.pixel_size_A
        fine = memory is not None
        why_bin = "typed" if params.binning is not None else "from the pixel size and the memory" if fine else \
            "from the pixel size"
        why_box = "typed" if params.box_px is not None else "4/3 of the crop" if fine else "from the defocus"
        ctx.log(f"binning {binning:g} ({why_bin}), box {box_px} px ({why_box}), cropped box {crop_px} px "
                f"({'typed' if params.crop_px is not None else 'from the voxel size'})")
        if memory is not None and params.binning is None:
            n_particles, n_views, budget = memory
            need = refine_memory_bytes(n_particles, n_views, box_px, crop_px)
            limited = budget is not None and (binning > max(1, round(FINE_VOXEL_A / px))
                                              or crop_px * binning * px < FINE_CROP_A - 1e-6)
            ctx.log(f"the refinement at these sizes takes about {need / 1e9:.1f} GB"
                    + (f"; finer voxels or a larger crop would not fit in the {budget / 1e9:.1f} GB (half this "
                       "computer's memory) the automatic sizes allow" if limited else ""))
        if crop_px > box_px:
            raise ValueError(f"the cropped box ({crop_px} px) must not be larger than the box ({box_px} px)")
        df = self._prepare(picked, params)
        if len(df) == 0:
            step, _ = self.particles_from
            raise ValueError(f"there are no particles to extract: the step “{registry_title(step)}” gave none "
                             "(lower its threshold, or pick by hand, then run it again)")
        known = set(sset.names())
        unknown = sorted(set(df["rlnTomoName"].astype(str)) - known)
        if unknown:
            raise ValueError(f"particles of unknown tilt series {', '.join(unknown)} (series: {', '.join(known)})")
        sset, base, acq_outputs, acq_metrics = yield from self._acquisition(params, ctx, sset, base, df, binning,
                                                                            box_px, crop_px)
        ctx.mkdir("subtomos")
        m_total = len(df)
        b = crop_px
        gallery = np.zeros((m_total, b, b), np.float32)
        image_names = [""] * m_total
        ctf_names = [""] * m_total
        particle_names = [""] * m_total
        full_names: list[tuple[str, str]] = [("", "")] * m_total
        view_mats: dict[str, list[Any]] = {}
        views_used: dict[str, list[int]] = {}
        metrics: dict[str, Any] = {"series": {}}
        voxel = None
        three_d = params.dimensionality == "3D"
        tomo_of = df["rlnTomoName"].astype(str).to_numpy()
        units = []
        for s in sset.series:  # one unit per tilt series (tomoguide.cluster): the stack by path, files out
            rows = np.flatnonzero(tomo_of == s.name)
            if rows.size == 0:
                continue
            if binning / s.geometry.binning < 1 - 1e-6:
                raise ValueError(f"{s.name}: the series is already binned by {s.geometry.binning:g}; cannot extract "
                                 f"at binning {binning:g}")
            outs = []
            for i in rows:
                pname = f"{s.name}_{i + 1:06d}"
                particle_names[i] = f"{s.name}/{i + 1}"
                image_names[i] = f"subtomos/{pname}_{'data' if three_d else 'subtilts'}.mrc"
                ctf_names[i] = f"subtomos/{pname}_weights.mrc"
                # the sub-tilts before the crop, for the reconstructions (load_reconstructor)
                full_names[i] = (f"subtomos/{pname}_subtilts_uncropped.mrc",
                                 f"subtomos/{pname}_subtilt_weights_uncropped.mrc")
                outs.append(tuple(str(ctx.out_path(n)) for n in (image_names[i], ctf_names[i], *full_names[i])))
            ctf_star = s.path("ctf_star", base) if params.ctf_premultiply else None
            units.append(Unit(s.name, (s.path("stack", base), s.name, s.geometry, binning, ctf_star,
                                       _centred_positions(df.iloc[rows]), outs),
                              dict(box_px=box_px, crop_px=crop_px, dose_weighting=params.dose_weighting,
                                   three_d=three_d)))
        extracted = yield from ctx.map_units(extract_unit, units, what="particle extraction")
        for unit in units:
            name = unit.name
            rows = np.flatnonzero(tomo_of == name)
            res = extracted[name]
            gallery[rows] = res["gallery"]
            voxel = res["voxel_A"]
            view_mats[name] = res["view_matrices"]
            views_used[name] = res["views_used"]
            metrics["series"][name] = {"n_particles": int(rows.size), "views_used": len(views_used[name])}
        if voxel is None:
            raise ValueError("no particle belongs to any of the tilt series")
        out = df.copy()
        out["rlnTomoParticleName"] = particle_names
        out["rlnImageName"] = image_names
        out["rlnCtfImage"] = ctf_names
        if params.dimensionality == "2D":
            # RELION 5 needs it for 2D stacks: the stack holds one image per view the series keeps, which are the
            # rows of the per-tilt STAR the RELION 5 export writes (views not excluded), so every frame is visible
            out["rlnTomoVisibleFrames"] = ["[" + ",".join("1" * len(views_used[str(t)])) + "]"
                                           for t in out["rlnTomoName"]]
        g_any = sset.series[0].geometry
        optics = {"rlnTomoTiltSeriesPixelSize": g_any.pixel_size_A, "rlnImagePixelSize": voxel,
                  "rlnImageSize": b, "rlnImageDimensionality": 3 if params.dimensionality == "3D" else 2,
                  "rlnVoltage": g_any.optics.voltage_kV, "rlnSphericalAberration": g_any.optics.cs_mm,
                  "rlnAmplitudeContrast": g_any.optics.amplitude_contrast}
        write_particles_star(ctx.out_path("particles.star"), out, optics)
        write_mrc(ctx.out_path("gallery.mrc"), gallery, voxel, is_stack=True)
        rec = ParticleStack(voxel_A=voxel, box_px=b, binning=binning, n_particles=m_total,
                            tomo_names=[n for n in sset.names() if n in views_used],
                            dimensionality=3 if params.dimensionality == "3D" else 2,
                            info={"view_matrices": view_mats, "views_used": views_used,
                                  "box_before_crop_px": box_px,
                                  "uncropped_subtilts": [list(n) for n in full_names]})
        path = rec.save(ctx.run_dir)
        metrics.update({"n_particles": m_total, "voxel_A": voxel, "box_px": b,
                        "half_sets": [int((out["rlnRandomSubset"] == k).sum()) for k in (1, 2)]})
        if acq_metrics:
            metrics["acquisition"] = acq_metrics
        return StepResult(outputs={"particles": path.parent, **acq_outputs}, metrics=metrics,
                          summary=f"{m_total} particles, {b}³ voxels of {voxel:.3g} Å")


class ExtractFine(Extract):
    id = "extract_fine"
    title = "Re-extract at a finer binning"
    summary = "Extract the refined particles again from less binned tilt images, keeping their poses."
    help = (
        "<p><b>What it does.</b> The same extraction as before, at a finer binning (smaller voxels), from the "
        "refined particles: their positions are corrected by the refined offsets (re-centred) and their "
        "orientations and half sets are kept.</p>"
        "<p><b>Why.</b> The resolution of an average cannot go beyond twice its voxel size (Nyquist). Once the "
        "orientations are known from the fast, binned data, finer voxels let the refinement go further.</p>"
        "<p><b>A good result.</b> The gallery shows sharper, centred particles.</p>"
        "<p><b>What to check.</b> Particles off-centre (the earlier refinement did not converge).</p>"
    )
    Params = ExtractFineParams
    inputs = ("exclude", "refine")
    particles_from = ("refine", "average")

    @classmethod
    def applies(cls, params: StepParams, params_of: Any = None) -> bool:
        """Not when the particles came from RELION 5 files (``extract.source``): there are no tilt series to
        re-extract from, and the project ends at the refinement."""
        first = params_of("extract") if params_of is not None else None
        return getattr(first, "source", "tilt series") != RELION_SOURCE

    def _particles(self, ctx: RunContext) -> pd.DataFrame:
        from tomoguide.compute.io.star import read_particles_star
        from tomoguide.steps.average_records import AverageRecord

        rec, base = AverageRecord.load(ctx.output("refine", "average"))
        return read_particles_star(rec.path("particles", base)).particles

    def _coarse_binning(self, ctx: RunContext, pixel_size_A: float) -> float | None:
        from tomoguide.steps.average_records import AverageRecord

        rec, _ = AverageRecord.load(ctx.output("refine", "average"))
        return float(round(rec.voxel_A / pixel_size_A, 3))

    def _acquisition(self, params: ExtractParams, ctx: RunContext, sset: SeriesSet, base: Path, df: pd.DataFrame,
                     binning: float, box_px: int, crop_px: int) -> Any:
        """With ``refine_acquisition``: the series' per-view shifts and defocus refined from the particles against
        the refinement's half maps (:mod:`tomoguide.steps.acquisition_refine`); the corrected set is the output
        ``series`` and what the particles are cut from."""
        assert isinstance(params, ExtractFineParams)
        if not params.refine_acquisition:
            return sset, base, {}, {}
        from tomoguide.steps.acquisition_refine import run_refinement

        new, folder, metrics = yield from run_refinement(ctx, sset, base, df, binning, box_px, crop_px)
        return new, folder, {"series": folder}, metrics

    def _prepare(self, df: pd.DataFrame, params: ExtractParams) -> pd.DataFrame:
        """Re-centre: coordinates minus the refined origin offsets, offsets set to 0; poses and halves kept."""
        out = df.reset_index(drop=True).copy()
        pos = _centred_positions(out)
        for k, c in enumerate(XYZ):
            out[c] = pos[:, k]
        for c in ORIGIN:
            out[c] = 0.0
        keep = [c for c in out.columns if c not in ("rlnImageName", "rlnCtfImage", "rlnTomoParticleName")]
        return super()._prepare(out[keep], params)
