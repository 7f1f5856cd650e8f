"""Reference-free initial model from 3D pseudo-subtomograms, in the spirit of RELION's VDAM (mini-batches).

Data: as :mod:`tomoguide.compute.refine` (``data`` (m, B, B, B) float32 real space, ``weights`` (m, B, B, B)
float32 centred Fourier CTF² weights; poses ``x_tomogram = R x_reference + t``).

Scheme
    * Start: the average of all particles in random orientations (symmetrised: a featureless blob of the
      particles' size and radial profile), low-passed to the first resolution limit and masked.
    * ``n_minibatches`` mini-batches of growing size (from ``max(20, m/10)`` to ``m/2`` particles, drawn at
      random without replacement within a pass). For each batch: a global search of its particles against
      the current model (:func:`tomoguide.compute.refine.search_poses` on the symmetry-reduced SO(3) grid,
      ``angular_step_deg`` for the first half of the batches, half of it after; translations by FFT within
      ``offset_range_px``) at a resolution limit that improves from ``initial_resolution_A`` to
      ``final_resolution_A`` over the first 70 % of the batches; the batch's symmetrised Fourier sums
      ``ΣD``, ``ΣW`` (:func:`tomoguide.compute.refine.reconstruct_grids`); then the preconditioned gradient
      step of the (Gaussian) log-posterior in Fourier space
      ``F ← F + η_b (ΣD - ΣW F - λ F) / (ΣW + λ)``, ``λ = 0.1 · mean(ΣW) / regularisation`` (a larger
      ``regularisation`` trusts the data more, like RELION's T), with a step ``η_b`` decaying from 0.9 to
      0.3; the model is then low-passed to the batch's resolution limit and masked (soft sphere of
      ``mask_diameter_A``). Symmetry is imposed by the symmetrised sums.
    * Finally all particles are aligned once more to the model (finer step), and the map is their
      symmetrised reconstruction low-passed to ``final_resolution_A``.
    * ``n_starts`` such runs from different random starts; the one with the highest mean log-likelihood
      score of that final alignment is returned (hard assignments can lock a single run into a wrong,
      globally rotated optimum: on the small preset one start in two to four did).

The pseudo-subtomograms are 3D, so the hand of the model is that of the data (no mirror ambiguity, tested).
With a symmetry of order > 1 the model's symmetry axes are those of
:func:`tomoguide.compute.symmetry.symmetry_matrices`; with C1 its orientation is arbitrary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tomoguide.compute import fsc as F
from tomoguide.compute import refine as RF
from tomoguide.compute import sta as ST
from tomoguide.compute.sta import fourier_to_map

#: the mini-batches' low-pass: a raised-cosine edge of this many shells after the current resolution
LOWPASS_EDGE_SHELLS = 2.0

__all__ = ["InitialModelResult", "StartResult", "best_start", "initial_model", "initial_model_start"]


@dataclass
class InitialModelResult:
    """``map`` (B, B, B) float32 the model (centre ``B // 2``, low-passed to ``resolution_A``); ``poses`` of
    all particles against it (:class:`tomoguide.compute.refine.Poses`, shifts in Å); ``history`` one dict
    per mini-batch (``batch``, ``n_particles``, ``resolution_A``, ``angular_step_deg``, ``step``,
    ``time_s``); ``resolution_A`` the final low-pass."""

    map: np.ndarray
    poses: RF.Poses
    history: list[dict[str, Any]] = field(default_factory=list)
    resolution_A: float = 0.0


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def initial_model(
    data: np.ndarray,
    weights: np.ndarray,
    voxel_A: float,
    *,
    symmetry: str = "O",
    n_minibatches: int = 40,
    regularisation: float = 4.0,
    mask_diameter_A: float = 150.0,
    angular_step_deg: float = 15.0,
    initial_resolution_A: float | None = None,
    final_resolution_A: float | None = None,
    offset_range_px: float = 3.0,
    n_starts: int = 3,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
    prior_axes: np.ndarray | None = None,
    prior_sigma_deg: float = 10.0,
    subtilts: Any = None,
) -> InitialModelResult:
    """Reference-free initial model (module docstring).

    ``data`` (m, B, B, B) float32, ``weights`` (m, B, B, B) float32 centred, ``voxel_A`` Å; ``symmetry``
    point group; ``n_minibatches`` number of gradient steps; ``regularisation`` RELION's T (≥ 0.1);
    ``mask_diameter_A`` soft spherical mask; ``angular_step_deg`` coarsest global sampling (halved for the
    second half of the batches and the final alignment); resolution limits default to
    ``max(mask_diameter_A / 2.5, 4 voxels)`` → ``max(mask_diameter_A / 6, 2.2 voxels)``; translations within
    ``offset_range_px`` voxels of the extraction centre; ``n_starts`` independent runs from different random
    starts (seeds ``seed``, ``seed + 1``, …), of which the one whose final alignment has the highest mean
    log-likelihood score is returned (a single start can settle in a wrong, rotated local optimum).
    ``prior_axes`` (m, 3) / ``prior_sigma_deg``: RELION's prior on the tilt (each particle's expected direction
    of the reference z axis, e.g. a membrane normal from surface picking; see
    :func:`tomoguide.compute.refine.tilt_log_prior`). ``subtilts`` (the particles' :class:`sta.Subtilts`, a list
    of them in the particles' order, or a :class:`sta.Reconstructor`): the reconstructions (the start, every
    mini-batch's sums, the final map) are made from the 2D sub-tilts on a 2× oversampled grid with the gridding
    correction, the model updated on that grid, the final map corrected for the gridding bias; without them from
    the 3D data on the box's grid. ``progress(fraction, message)`` may raise to cancel.
    """
    t_start = time.perf_counter()
    report = _reporter(progress)
    setup = _prepare(data, weights, voxel_A, symmetry=symmetry, n_minibatches=n_minibatches,
                     regularisation=regularisation, mask_diameter_A=mask_diameter_A,
                     angular_step_deg=angular_step_deg, initial_resolution_A=initial_resolution_A,
                     final_resolution_A=final_resolution_A, subtilts=subtilts, report=report)
    n_s = max(1, int(n_starts))
    starts = []
    for k in range(n_s):
        def sub(frac: float, msg: str, k: int = k) -> None:
            report((k + frac) / n_s, msg if n_s == 1 else f"start {k + 1}/{n_s}: {msg}")

        starts.append(_one_start(setup, offset_range_px, np.random.default_rng(seed + k), sub,
                                 {"prior_axes": prior_axes, "prior_sigma_deg": prior_sigma_deg}))
    report(1.0, f"initial model done in {time.perf_counter() - t_start:.0f} s")
    return best_start(starts, voxel_A)


@dataclass
class StartResult:
    """One random start of :func:`initial_model` (:func:`initial_model_start`): ``map`` (B, B, B) float32,
    ``history`` per mini-batch, ``rotations`` (m, 3, 3), ``shifts_px`` (m, 3) voxels, ``scores`` (m,) of the final
    alignment and their mean ``mean_score``, ``resolution_A`` the final low-pass."""

    map: np.ndarray
    history: list[dict[str, Any]]
    rotations: np.ndarray
    shifts_px: np.ndarray
    mean_score: float
    scores: np.ndarray
    resolution_A: float


def best_start(starts: list[StartResult], voxel_A: float) -> InitialModelResult:
    """The start whose final alignment has the highest mean score (the first of equals), as the result of
    :func:`initial_model`; ``starts`` in the order of their seeds."""
    if not starts:
        raise ValueError("initial model: no start to choose from")
    best = starts[0]
    for out in starts[1:]:
        if out.mean_score > best.mean_score:
            best = out
    poses = RF.Poses(best.rotations, best.shifts_px * voxel_A, best.scores)
    return InitialModelResult(map=best.map, poses=poses, history=best.history, resolution_A=best.resolution_A)


def initial_model_start(data: np.ndarray, weights: np.ndarray, voxel_A: float, *, start: int, seed: int = 0,
                        symmetry: str = "O", n_minibatches: int = 40, regularisation: float = 4.0,
                        mask_diameter_A: float = 150.0, angular_step_deg: float = 15.0,
                        initial_resolution_A: float | None = None, final_resolution_A: float | None = None,
                        offset_range_px: float = 3.0, prior_axes: np.ndarray | None = None,
                        prior_sigma_deg: float = 10.0, subtilts: Any = None,
                        progress: Callable[[float, str], None] | None = None) -> StartResult:
    """Start number ``start`` (0-based, seed ``seed + start``) of :func:`initial_model` alone, with the same
    arguments: the unit of work a cluster runs for each start. :func:`best_start` of the starts in order gives
    :func:`initial_model`'s result (tested)."""
    report = _reporter(progress)
    setup = _prepare(data, weights, voxel_A, symmetry=symmetry, n_minibatches=n_minibatches,
                     regularisation=regularisation, mask_diameter_A=mask_diameter_A,
                     angular_step_deg=angular_step_deg, initial_resolution_A=initial_resolution_A,
                     final_resolution_A=final_resolution_A, subtilts=subtilts, report=report)
    return _one_start(setup, offset_range_px, np.random.default_rng(seed + int(start)), report,
                      {"prior_axes": prior_axes, "prior_sigma_deg": prior_sigma_deg})


def _reporter(progress: Callable[[float, str], None] | None) -> Callable[[float, str], None]:
    """``progress`` with the fraction clamped to [0, 1] (a no-op without ``progress``)."""

    def report(frac: float, msg: str) -> None:
        if progress is not None:
            progress(float(min(max(frac, 0.0), 1.0)), msg)

    return report


@dataclass
class _Setup:
    """What every start shares: the particles' transforms and grids, the mask, the orientation grids, the
    resolution schedule's ends (Å), the number of mini-batches and the regularisation."""

    dft: np.ndarray
    w: np.ndarray
    grids_of: _Grids
    voxel_A: float
    symmetry: str
    n_b: int
    reg: float
    mask: np.ndarray
    grids: dict[float, np.ndarray]
    angular_step_deg: float
    res0: float
    res1: float


def _prepare(data: np.ndarray, weights: np.ndarray, voxel_A: float, *, symmetry: str, n_minibatches: int,
             regularisation: float, mask_diameter_A: float, angular_step_deg: float,
             initial_resolution_A: float | None, final_resolution_A: float | None, subtilts: Any,
             report: Callable[[float, str], None]) -> _Setup:
    d = np.asarray(data, np.float32)
    b = d.shape[-1]
    w = np.ascontiguousarray(weights, dtype=np.float32)
    if w.shape != d.shape:
        raise ValueError(f"weights {w.shape} must have the data's shape {d.shape}")
    nyq = 2.0 * voxel_A
    res0 = initial_resolution_A or max(mask_diameter_A / 2.5, 4.0 * voxel_A)
    res1 = final_resolution_A or max(mask_diameter_A / 6.0, 2.2 * voxel_A)
    res1 = max(res1, nyq * 1.05)
    res0 = max(res0, res1)
    report(0.0, "initial model: Fourier transforms")
    dft = RF.centred_fft_stack(d)
    grids_of = _Grids(dft, w, subtilts, symmetry)
    mask = RF._mask(b, voxel_A, mask_diameter_A)
    grids = {st: RF.asymmetric_unit_grid(st, symmetry) for st in (angular_step_deg, angular_step_deg / 2.0)}
    return _Setup(dft=dft, w=w, grids_of=grids_of, voxel_A=float(voxel_A), symmetry=symmetry,
                  n_b=max(1, int(n_minibatches)), reg=max(float(regularisation), 0.1), mask=mask, grids=grids,
                  angular_step_deg=float(angular_step_deg), res0=float(res0), res1=float(res1))


class _Grids:
    """Summed Fourier grids of particles in the reference frame, on the grid where the model is updated: the
    sub-tilts' 2× oversampled grid (:class:`sta.Reconstructor`) when given, else the box's grid (gathered from the
    3D data). ``to_ft`` / ``to_map`` convert the model between real space (box) and that grid, with the
    gridding kernel's transform where the grid is oversampled (so that ``D / W`` and the model agree)."""

    def __init__(self, dft: np.ndarray, w: np.ndarray, subtilts: Any, symmetry: str) -> None:
        self.dft, self.w, self.symmetry = dft, w, symmetry
        m, b = dft.shape[0], dft.shape[-1]
        self.box = b
        self.rec: ST.Reconstructor | None = None
        if subtilts is not None:
            self.rec = subtilts if isinstance(subtilts, ST.Reconstructor) else ST.Reconstructor(subtilts)
            if self.rec.n_particles != m or self.rec.box != b:
                raise ValueError(f"the sub-tilts hold {self.rec.n_particles} particles of box {self.rec.box}, the "
                                 f"pseudo-subtomograms {m} of box {b}")
        self.size = self.rec.grid_size if self.rec is not None else b
        self.kernel = ST.kernel_transform(self.size, b) if self.size > b else None
        k1 = np.arange(self.size) - self.size // 2
        self.inside = (k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + k1[None, None, :] ** 2) < (self.size // 2 - 1) ** 2

    def __call__(self, rot: np.ndarray, shifts_px: np.ndarray, select: np.ndarray | None,
                 max_shell: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The grids of the particles ``select``; with ``max_shell`` (box shells) those from the sub-tilts are
        exact only up to there (:meth:`sta.Reconstructor.grids`: the samples beyond are left out)."""
        if self.rec is not None:
            return self.rec.grids(rot, shifts_px, select, symmetry=self.symmetry, max_shell=max_shell)
        return RF.reconstruct_grids(self.dft, self.w, rot, shifts_px, select, symmetry=self.symmetry)

    def mean_weight(self, select: np.ndarray | None, wg: np.ndarray) -> float:
        """The mean of the full weight grid of ``select`` inside the sphere (the regularisation's scale), also
        when ``wg`` was made up to a shell only (from the sub-tilts' weight sums)."""
        if self.rec is not None:
            return self.rec.total_weight(select, symmetry=self.symmetry) / float(np.count_nonzero(self.inside))
        return float(wg[self.inside].mean())

    def to_ft(self, model: np.ndarray) -> np.ndarray:
        v = np.asarray(model, np.float64)
        if self.kernel is not None:
            v = ST._pad_centre(v * self.kernel, self.size)
        return RF._centred_fft(v)

    def to_map(self, model_ft: np.ndarray) -> np.ndarray:
        v = RF._centred_ifft_real(model_ft)
        if self.kernel is not None:
            v = ST._crop_centre(v, self.box) / self.kernel
        return v

    def final_map(self, rot: np.ndarray, shifts_px: np.ndarray, regularisation: float) -> np.ndarray:
        """The (box³) map of all particles (symmetrised), corrected for the gridding bias when the sub-tilts
        allow it (:meth:`sta.Reconstructor.reconstruct`)."""
        if self.rec is not None:
            return self.rec.reconstruct(rot, shifts_px, None, symmetry=self.symmetry, regularisation=regularisation)
        dg, wg = self(rot, shifts_px, None)
        return fourier_to_map(dg, wg, self.box, regularisation=regularisation)


def _one_start(setup: _Setup, offset_range_px: float, rng: np.random.Generator,
               report: Callable[[float, str], None], prior: dict[str, Any] | None = None) -> StartResult:
    """One run from a random start."""
    dft, w, grids_of, voxel_A, n_b, reg = setup.dft, setup.w, setup.grids_of, setup.voxel_A, setup.n_b, setup.reg
    mask, grids, angular_step_deg, res0, res1 = setup.mask, setup.grids, setup.angular_step_deg, setup.res0, setup.res1
    m, b = dft.shape[0], dft.shape[-1]
    ident = np.repeat(np.eye(3)[None], m, axis=0)
    zeros = np.zeros((m, 3))

    # start: random orientations, symmetrised
    dg, wg = grids_of(_random_rotations(m, rng), zeros, None)
    model = fourier_to_map(dg, wg, b, regularisation=0.1)
    model = F.lowpass(model, res0, voxel_A) * mask
    model_ft = grids_of.to_ft(model)

    bs0 = min(m, max(20, m // 10))
    bs1 = min(m, max(bs0, m // 2))
    order = rng.permutation(m)
    pos = 0
    history: list[dict[str, Any]] = []
    for it in range(n_b):
        t0 = time.perf_counter()
        frac = it / max(n_b - 1, 1)
        size = int(round(bs0 + (bs1 - bs0) * frac))
        if pos + size > m:
            order = rng.permutation(m)
            pos = 0
        batch = np.sort(order[pos:pos + size])
        pos += size
        f_res = min(1.0, frac / 0.7)
        res = 1.0 / (1.0 / res0 + f_res * (1.0 / res1 - 1.0 / res0))
        step = angular_step_deg if it < n_b // 2 else angular_step_deg / 2.0
        r_max = b * voxel_A / res
        ref_ft = RF.prepare_reference(model, None)
        report(it / (n_b + 1), f"initial model: mini-batch {it + 1}/{n_b}, {size} particles, {res:.0f} Å")
        r_b, t_b, _ = RF.search_poses(dft, w, ref_ft, batch, ident, zeros, grids[step], r_max, n_shifts=1,
                                      **(prior or {}))
        rot = ident.copy()
        rot[batch] = r_b
        t_b = RF.refine_shifts(dft, ref_ft, batch, rot, zeros, zeros, r_max, offset_range_px)
        sh = zeros.copy()
        sh[batch] = t_b
        # the grids only as far as the model keeps (low-passed to res below: its shells and the cosine edge's
        # two, plus two for the crop's and the mask's spread)
        dg, wg = grids_of(rot, sh, batch, max_shell=b * voxel_A / res + LOWPASS_EDGE_SHELLS + 2.0)
        inside = grids_of.inside
        lam = 0.1 * grids_of.mean_weight(batch, wg) / reg + 1e-12
        eta = 0.9 - 0.6 * frac
        model_ft = model_ft + eta * (dg - wg * model_ft - lam * model_ft) / (wg + lam)
        model_ft = np.where(inside, model_ft, 0)
        model = grids_of.to_map(model_ft)
        model = F.lowpass(model, res, voxel_A, edge_shells=LOWPASS_EDGE_SHELLS) * mask
        model_ft = grids_of.to_ft(model)
        history.append({"batch": it + 1, "n_particles": int(size), "resolution_A": float(res),
                        "angular_step_deg": float(step), "step": float(eta), "time_s": time.perf_counter() - t0})

    # final alignment of every particle and the model from all of them
    report(n_b / (n_b + 1), "initial model: aligning all particles")
    step = angular_step_deg / 2.0
    r_max = b * voxel_A / res1
    ref_ft = RF.prepare_reference(model, None)
    r_all, _, s_all = RF.search_poses(dft, w, ref_ft, np.arange(m), ident, zeros, grids[step], r_max, n_shifts=1,
                                      **(prior or {}))
    t_all = RF.refine_shifts(dft, ref_ft, np.arange(m), r_all, zeros, zeros, r_max, offset_range_px)
    final = F.lowpass(grids_of.final_map(r_all, t_all, 0.1 / reg), res1, voxel_A) * mask
    return StartResult(map=final.astype(np.float32), history=history, rotations=r_all, shifts_px=t_all,
                       mean_score=float(np.mean(s_all)), scores=s_all, resolution_A=float(res1))
