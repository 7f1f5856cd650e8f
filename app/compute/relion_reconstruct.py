"""Reconstruction of RELION 5 2D-stack particles (``rlnTomoSubTomosAre2DStacks``) from their poses, with
tomoguide's own Fourier insertion (:class:`tomoguide.compute.sta.Reconstructor`).

Conventions, as RELION 5 uses them (``Experiment::read`` in ``src/exp_model.cpp``, ``ParticleSet`` and
``Tomogram`` in ``src/jaz/tomography``; the arrays come from :mod:`tomoguide.compute.io.relion_particles`):

* **Projection of one sub-tilt image**: RELION gives image ``f`` of a particle the matrix
  ``A_f = P_f · A_sub · E(rot, tilt, psi)`` (``P_f`` the 3x3 part of the tilt's projection matrix, ``A_sub`` the
  ``rlnTomoSubtomogram*`` Euler matrix, identity when absent, ``E`` the ``rlnAngle*`` one, both
  ``Euler_angles2matrix``; ``ml_optimiser.cpp``: ``A = mydata.getRotationMatrix(part_id, img_id) * A``) and
  projects the reference as in single-particle RELION (``BackProjector::backproject2Dto3D``: ``Ainv = A.inv()``,
  3D point ``Ainv · (x, y, 0)`` of the FFTW pixel in column ``x``, row ``y``): the image's 2D frequency
  ``k`` samples the reference at ``A_fᵀ (k, 0)`` (the reference rotated by ``A_f``, a point ``r`` of the
  reference lands at ``A_f r``). In tomoguide's terms (:mod:`tomoguide.compute.sta`: ``x_tomogram = R
  x_reference``, view matrix ``M_f`` = tomogram -> ``(u, v, depth)``, slice at ``(M_f R)ᵀ (k, 0)``) this is
  ``M_f = P_f`` and ``R = A_sub · E``: no transpose, no mirror and no flip of the image rows (RELION's image x
  is the MRC column, y the row, the centre at ``B // 2``, as the sub-tilts of :mod:`sta`).
* **Origin**: RELION's particle centre is ``coordinate − A_sub · origin / pixel`` (``ParticleSet::getPosition``),
  so the shift of ``x_tomogram = R x_reference + t`` is ``t = −A_sub · origin_A / pixel_A`` (in stack pixels).
* **CTF of image f** (``Tomogram::getCtf`` and ``CTF::getCTF``): defocus of the tilt plus
  ``handedness · slope · tilt-series pixel · depth``, with ``depth = (P_f (x − centre))_z`` the particle's depth
  in tilt-series pixels; times ``rlnCtfScalefactor`` and the exposure filter ``exp(−pre_exposure / 2 N_e(k))``
  (Grant & Grigorieff; the dose is the exposure before the tilt). The weight of a sample is the square of that.
  Images that are not CTF-premultiplied are multiplied by it first (as RELION does).
* Tilts flagged invisible in ``rlnTomoVisibleFrames`` have weight 0 and no data.

* **WarpTools' files** (``ExportParticlesTiltseries.cs``, ``TiltSeries.ReconstructParticleSeries.cs``) follow the same
  model: ``rlnTomoProjX/Y/Z`` are the rows of the tilt's matrix ``Euler(0, tilt, −axis) · Rx(level)`` (the one Warp
  maps tomogram positions with, ``GetPositionInAllTilts``), the particle's matrix in a tilt is
  ``tilt matrix · Euler(rot, tilt, psi)`` (``GetParticleRotationMatrixInAllTilts``, RELION's Euler matrix), the images
  are multiplied by the CTF at the particle's defocus and by ``exp(−dose / 2 N_e(k)) · rlnCtfScalefactor``
  (``RelionWeights``), which is what :func:`relion_ctf` squares for the weights; their ``rlnCoordinateX/Y/Z`` are in
  the exported (binned) pixels (see :func:`~tomoguide.compute.io.relion_particles.read_relion_particles`). The
  depth term: WarpTools premultiplies with ``defocus + depth`` and writes ``rlnTomoHand −1`` (RELION:
  ``defocus − depth``); we follow RELION's reading; at 12 Å voxels either sign gives the same FSC.

Checked (``tests/compute/test_relion_particles.py``, ``bench/relion_particles.py``): sub-tilts simulated with
RELION's projection model come back as the phantom, not its mirror, and 2D stacks written in RELION 5's layout
are read back into the same reconstruction. On the real WarpTools particles (``../shared/data/
relion5_warptools_particles``) the map shipped with them (``warptools_test_box-32_angpix-12_reconstruct.mrc``) is the
z-mirror of what these STAR files give under RELION's (and WarpTools') model — and it is not a reconstruction of
these 40 particles: its voxel of 12.0024 Å is 128 × 3.0006 Å / 32 (a 128-px map at 1.8 × 1.667 Å rescaled to 32 px;
these stacks are at 12.0000 Å, and RELION 5's ``relion_reconstruct`` refuses 2D stacks, ``reconstructor.cpp``:
"reconstruct does not yet work with 2D subtomogram stacks"), and it does not hold their noise: its FSC with either
20-particle half map is 0.75-1.0 × ``√FSC(half, half)`` in every shell, what an independent, nearly noise-free map
gives (a map made from these particles would keep FSC ≥ 0.7 with each half where the halves share no signal; it
shows 0.04-0.25 there). Its central slices are masked and sharp to the voxel: a sharpened map of many particles. Measured against its mirror
image: correlation 0.88 inside a 300 Å sphere (the gold-standard merged map of :func:`relion_half_maps`), FSC ≥ 0.5
to 34.9 Å (0.49 at 32 Å); the 40 particles' own noise caps both (``bench/results/relion_particles.json``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.fft

from tomoguide.compute.backend import fft_workers
from tomoguide.compute.ctf import electron_wavelength_A
from tomoguide.compute.dose import attenuation
from tomoguide.compute.euler import euler_to_matrix
from tomoguide.compute.sta import Reconstructor, Subtilts

__all__ = [
    "relion_rotations",
    "relion_shifts_px",
    "depth_defocus_offsets_A",
    "relion_ctf",
    "relion_subtilts",
    "relion_poses",
    "reconstruct_relion_particles",
    "relion_poses_A",
    "relion_centred_coordinates_A",
    "relion_half_maps",
    "relion_pseudo_subtomograms",
    "refine_relion_locally",
]


def relion_rotations(angles_deg: np.ndarray, subtomo_angles_deg: np.ndarray | None = None) -> np.ndarray:
    """``R = A_sub · E(rot, tilt, psi)`` (m, 3, 3): reference -> tomogram frame, as RELION combines them."""
    e = euler_to_matrix(np.asarray(angles_deg, np.float64).reshape(-1, 3))
    if subtomo_angles_deg is None:
        return e
    return euler_to_matrix(np.asarray(subtomo_angles_deg, np.float64).reshape(-1, 3)) @ e


def relion_shifts_px(origins_A: np.ndarray, subtomo_angles_deg: np.ndarray | None, pixel_size_A: float) -> np.ndarray:
    """``t = −A_sub · origin / pixel`` (m, 3): the shift of ``x_tomogram = R x_reference + t``, stack pixels."""
    o = np.asarray(origins_A, np.float64).reshape(-1, 3)
    if subtomo_angles_deg is not None:
        o = np.einsum("mij,mj->mi", euler_to_matrix(np.asarray(subtomo_angles_deg, np.float64).reshape(-1, 3)), o)
    return -o / float(pixel_size_A)


def depth_defocus_offsets_A(view_matrices: np.ndarray, positions_px: np.ndarray, handedness: float,
                            tilt_series_pixel_A: float, slope: float = 1.0) -> np.ndarray:
    """(m, F) defocus added to each tilt's central defocus for particles at ``positions_px`` (m, 3) (tilt-series
    pixels from the tomogram centre): ``handedness · slope · pixel · (M_f x)_z``."""
    depth = np.einsum("fj,mj->mf", np.asarray(view_matrices, np.float64)[:, 2, :], np.asarray(positions_px, np.float64))
    return float(handedness) * float(slope) * float(tilt_series_pixel_A) * depth


def relion_ctf(
    defocus_u_A: np.ndarray, defocus_v_A: np.ndarray, defocus_angle_deg: np.ndarray, phase_shift_deg: np.ndarray,
    scale: np.ndarray, pre_exposure_e_A2: np.ndarray | None, *, box: int, pixel_size_A: float, voltage_kV: float,
    cs_mm: float, amplitude_contrast: float,
) -> np.ndarray:
    """RELION's CTF of each image on the un-shifted FFT grid of a ``box``-pixel image: ``(..., box, box)`` float32
    for defocus arrays of shape ``(...)`` (Å, positive underfocus; angle of U from the image x axis), phase shift
    (degrees), ``scale`` (``rlnCtfScalefactor``) and the exposure before the image (None: no exposure filter).
    The sign is tomoguide's (:func:`tomoguide.compute.ctf.ctf_2d`: ``−(√(1−A²) sin χ + A cos χ)``), only its
    square matters to the weights."""
    du = np.asarray(defocus_u_A, np.float64)
    shape = du.shape
    f1 = scipy.fft.fftfreq(int(box)) / float(pixel_size_A)
    ky, kx = f1[:, None], f1[None, :]
    k2 = kx * kx + ky * ky
    theta = np.arctan2(ky, kx)
    lam = electron_wavelength_A(voltage_kV)
    mean = 0.5 * (du + np.asarray(defocus_v_A, np.float64))[..., None, None]
    half = 0.5 * (du - np.asarray(defocus_v_A, np.float64))[..., None, None]
    ang = np.radians(np.asarray(defocus_angle_deg, np.float64))[..., None, None]
    df = mean + half * np.cos(2.0 * (theta - ang))
    chi = (math.pi * lam) * df * k2 - 0.5 * math.pi * cs_mm * 1e7 * lam**3 * k2 * k2
    chi = chi + np.radians(np.asarray(phase_shift_deg, np.float64))[..., None, None]
    a = float(amplitude_contrast)
    c = -(math.sqrt(1.0 - a * a) * np.sin(chi) + a * np.cos(chi))
    c = c * np.asarray(scale, np.float64)[..., None, None]
    if pre_exposure_e_A2 is not None:
        kk = np.sqrt(k2)
        pre = np.broadcast_to(np.asarray(pre_exposure_e_A2, np.float64), shape)
        filt = np.empty(shape + (int(box), int(box)))
        for i in np.ndindex(shape):
            filt[i] = attenuation(kk, max(float(pre[i]), 0.0), 0.0, voltage_kV)
        c = c * filt
    return c.astype(np.float32).reshape(shape + (int(box), int(box)))


def relion_subtilts(particles: Any, *, dose_weighting: bool = True) -> list[Subtilts]:
    """One :class:`~tomoguide.compute.sta.Subtilts` per tomogram of a
    :class:`~tomoguide.compute.io.relion_particles.RelionParticles`: all tilts of the series as views (view
    matrices ``P_f``), images CTF-premultiplied (multiplied here when the STAR says they are not), weights
    ``(scale · CTF · exposure filter)²`` at each particle's defocus (0 for invisible tilts)."""
    out = []
    b, px = int(particles.box), float(particles.pixel_size_A)
    for g in particles.tomograms:
        off = depth_defocus_offsets_A(g.view_matrices, g.positions_px, g.handedness, g.tilt_series_pixel_A,
                                      g.defocus_slope)  # (m, F)
        du = g.defocus_u_A[None, :] + off
        dv = g.defocus_v_A[None, :] + off
        m, f = du.shape
        ctf = relion_ctf(du, dv, np.broadcast_to(g.defocus_angle_deg, (m, f)),
                         np.broadcast_to(g.phase_shift_deg, (m, f)), np.broadcast_to(g.ctf_scale, (m, f)),
                         np.broadcast_to(g.pre_exposure_e_A2, (m, f)) if dose_weighting else None,
                         box=b, pixel_size_A=px, voltage_kV=particles.voltage_kV, cs_mm=particles.cs_mm,
                         amplitude_contrast=particles.amplitude_contrast)
        ctf *= g.visible[:, :, None, None]
        images = np.asarray(g.images, np.float32) * g.visible[:, :, None, None]
        if not particles.ctf_premultiplied:
            ft = scipy.fft.fft2(scipy.fft.ifftshift(images, axes=(-2, -1)), workers=fft_workers()) * ctf
            images = scipy.fft.fftshift(scipy.fft.ifft2(ft, workers=fft_workers()).real, axes=(-2, -1)).astype(np.float32)
        out.append(Subtilts(images=images, weights=(ctf * ctf).astype(np.float32),
                            view_matrices=np.asarray(g.view_matrices, np.float64), views=np.arange(f),
                            pixel_size_A=px, defocus_A=0.5 * (du + dv)))
    return out


def relion_poses(particles: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(R (m, 3, 3), t (m, 3) px)`` of all particles in the order of :func:`relion_subtilts` (tomogram by
    tomogram): ``R = A_sub · E``, ``t = −A_sub · origin / pixel``."""
    rots = [relion_rotations(g.angles_deg, g.subtomo_angles_deg) for g in particles.tomograms]
    shifts = [relion_shifts_px(g.origins_A, g.subtomo_angles_deg, particles.pixel_size_A) for g in particles.tomograms]
    return np.concatenate(rots), np.concatenate(shifts)


def reconstruct_relion_particles(particles: Any, *, pad: int = 2, regularisation: float = 0.01,
                                 wiener_constant: Any = None, dose_weighting: bool = True,
                                 select: Any = None, return_grids: bool = False) -> Any:
    """CTF-corrected (B, B, B) float32 map (centre ``B // 2``, numpy order z, y, x, RELION's map axes) of RELION 5
    2D-stack particles from their STAR poses: :func:`relion_subtilts` and :func:`relion_poses` into
    :class:`~tomoguide.compute.sta.Reconstructor` (``pad``-fold oversampled insertion, gridding correction,
    ``τ = regularisation · mean weight`` unless ``wiener_constant``). ``select``: particle indices or a mask (in
    the order of :func:`relion_poses`), e.g. for half maps."""
    rec = Reconstructor(relion_subtilts(particles, dose_weighting=dose_weighting), pad=pad)
    rots, shifts = relion_poses(particles)
    return rec.reconstruct(rots, shifts, select, wiener_constant=wiener_constant, regularisation=regularisation,
                           return_grids=return_grids)


def relion_poses_A(particles: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(R (m, 3, 3), t (m, 3) Å)``: :func:`relion_poses` with the shifts in Å (tomogram frame), tomoguide's
    :class:`~tomoguide.compute.refine.Poses` convention (``x_tomogram = R x_reference + t``)."""
    rots, shifts = relion_poses(particles)
    return rots, shifts * float(particles.pixel_size_A)


def relion_centred_coordinates_A(particles: Any) -> np.ndarray:
    """(m, 3) Å: each particle's coordinate (before the origin shift) from its tomogram's centre, tomogram frame
    ``(x, y, z)`` (tomoguide's ``rlnCenteredCoordinateX/Y/ZAngst``), in the order of :func:`relion_poses`."""
    return np.concatenate([np.asarray(g.positions_px, np.float64) * float(g.tilt_series_pixel_A)
                           for g in particles.tomograms])


def relion_pseudo_subtomograms(subtilts: list[Subtilts]) -> tuple[np.ndarray, np.ndarray]:
    """``(data (m, B, B, B) float32, weights (m, B, B, B) float32)``: each particle's sub-tilts (all tilts of its
    series; invisible ones have weight 0) inserted into its 3D pseudo-subtomogram in the tomogram frame
    (:func:`tomoguide.compute.sta.backproject_subtomogram`), the format of tomoguide's extraction (real space,
    centre ``B // 2``; centred Fourier CTF² weights)."""
    from tomoguide.compute.sta import backproject_subtomogram

    m = sum(s.images.shape[0] for s in subtilts)
    b = subtilts[0].images.shape[-1]
    data = np.empty((m, b, b, b), np.float32)
    weights = np.empty((m, b, b, b), np.float32)
    i = 0
    for s in subtilts:
        for j in range(s.images.shape[0]):
            data[i], weights[i] = backproject_subtomogram(s.images[j], s.weights[j], s.view_matrices)
            i += 1
    return data, weights


def relion_half_maps(particles: Any, half_sets: np.ndarray | None = None, *, mask_diameter_A: float = 300.0,
                     symmetry: str = "C1", seed: int = 0, reconstructor: Reconstructor | None = None) -> Any:
    """Gold-standard half maps, FSC and merged map (FSC-weighted, low-passed at FSC 0.143) of RELION 5 2D-stack
    particles from their STAR poses: :func:`tomoguide.compute.refine.reconstruct_halves` on their sub-tilts, what
    tomoguide's own averaging steps make. ``half_sets`` (m,) 1/2 in the order of :func:`relion_poses` (None: a
    random split with ``seed``). Returns a :class:`~tomoguide.compute.refine.RefineResult`."""
    from tomoguide.compute.refine import Poses, reconstruct_halves

    rots, t_a = relion_poses_A(particles)
    rec = reconstructor if reconstructor is not None else Reconstructor(relion_subtilts(particles))
    return reconstruct_halves(None, None, Poses(rots, t_a, np.zeros(len(rots))), half_sets,
                              symmetry=symmetry, voxel_A=float(particles.pixel_size_A),
                              mask_diameter_A=mask_diameter_A, seed=seed, subtilts=rec)


def refine_relion_locally(particles: Any, half_sets: np.ndarray | None = None, *, mask_diameter_A: float = 300.0,
                          symmetry: str = "C1", angular_step_deg: float = 1.8, offset_range_px: float = 5.0,
                          offset_step_px: float = 1.0, initial_lowpass_A: float = 60.0, max_iterations: int = 12,
                          seed: int = 0) -> tuple[Any, Any]:
    """A local gold-standard refinement of RELION 5 2D-stack particles from their STAR poses: the reference is
    the merged map of :func:`relion_half_maps` (low-passed to ``initial_lowpass_A``), the search starts at the given
    poses with local searches at ``angular_step_deg`` (the refinement step's "local searches from") and offsets
    within ``offset_range_px`` (:func:`tomoguide.compute.refine.auto_refine`; the same half sets). Returns
    ``(before, after)``: the :class:`~tomoguide.compute.refine.RefineResult` of the given poses and of the
    refinement."""
    from tomoguide.compute.refine import Poses, auto_refine

    subtilts = relion_subtilts(particles)
    rec = Reconstructor(subtilts)
    before = relion_half_maps(particles, half_sets, mask_diameter_A=mask_diameter_A, symmetry=symmetry, seed=seed,
                              reconstructor=rec)
    data, weights = relion_pseudo_subtomograms(subtilts)
    rots, t_a = relion_poses_A(particles)
    after = auto_refine(data, weights, float(particles.pixel_size_A), before.merged, symmetry=symmetry,
                        mask_diameter_A=mask_diameter_A, initial_lowpass_A=initial_lowpass_A,
                        initial_angular_step_deg=angular_step_deg, local_searches_from_deg=angular_step_deg,
                        offset_range_px=offset_range_px, offset_step_px=offset_step_px,
                        initial_poses=Poses(rots, t_a, np.zeros(len(rots))), half_sets=before.half_sets,
                        max_iterations=max_iterations, seed=seed, subtilts=rec)
    return before, after
