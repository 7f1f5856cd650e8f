"""Reference-free initial model (tomoguide.compute.initial_model) on synthetic pseudo-subtomograms.

Particles are made as in test_refine.py (a known map rotated and shifted in real space by scipy.ndimage, a
CTF-like weight with a missing wedge, noise ∝ the weight); the model starts from random orientations and must
find the map: for an asymmetric (chiral) map up to a global rotation and shift (registered here by the refine
scoring), never mirrored; for an O-symmetric map directly in the symmetry axes' frame.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
import scipy.ndimage

from tomoguide.compute import fsc as F
from tomoguide.compute import refine as RF
from tomoguide.compute.euler import euler_to_matrix
from tomoguide.compute.initial_model import InitialModelResult, initial_model
from tomoguide.compute.symmetry import symmetry_matrices

VOXEL = 5.0


def _blob_map(box: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((box,) * 3)
    for cx, cy, cz in centres:
        vol += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return vol.astype(np.float32)


def _chiral_map(box: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 9)
    centres = np.stack([6 * np.cos(t), 6 * np.sin(t), 1.2 * (t - np.pi) * 2], axis=1)
    return _blob_map(box, np.vstack([centres, [[0, 0, 0], [3, -2, 4]]]), 1.6)


def _o_map(box: int = 24) -> np.ndarray:
    seed = np.array([[6.0, 2.0, 1.0], [3.0, 7.0, -2.0]])
    return _blob_map(box, np.concatenate([seed @ s.T for s in symmetry_matrices("O")]), 1.4)


def _rotate_shift(vol: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    b = vol.shape[0]
    c = np.arange(b) - b // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    src = (np.stack([x, y, z], -1).reshape(-1, 3) - t) @ r
    coords = np.stack([src[:, 2], src[:, 1], src[:, 0]]) + b // 2
    return scipy.ndimage.map_coordinates(vol, coords, order=3, mode="constant").reshape(vol.shape)


def _cft(v: np.ndarray) -> np.ndarray:
    return scipy.fft.fftshift(scipy.fft.fftn(scipy.fft.ifftshift(v)))


def _particles(ref: np.ndarray, m: int, rng: np.random.Generator, noise: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = ref.shape[0]
    rots = euler_to_matrix(np.column_stack([rng.uniform(-180, 180, m), np.degrees(np.arccos(rng.uniform(-1, 1, m))),
                                            rng.uniform(-180, 180, m)]))
    shifts = rng.uniform(-1.5, 1.5, (m, 3))
    k = np.arange(b) - b // 2
    qz, qy, qx = np.meshgrid(k, k, k, indexing="ij")
    q2 = (qx**2 + qy**2 + qz**2) / b**2
    wedge = (np.abs(qz) <= np.tan(np.radians(60.0)) * np.abs(qx)).astype(np.float64)
    data = np.empty((m, b, b, b), np.float32)
    weights = np.empty((m, b, b, b), np.float32)
    sig = float(ref.std())
    for i in range(m):
        w = 20.0 * wedge * np.sin(np.pi * q2 * rng.uniform(30, 50) + 0.3) ** 2
        f = _cft(_rotate_shift(ref, rots[i], shifts[i]))
        n = _cft(rng.normal(0, noise * sig, ref.shape)) * np.sqrt(w)
        data[i] = scipy.fft.fftshift(scipy.fft.ifftn(scipy.fft.ifftshift(w * f + n)).real)
        weights[i] = w
    return data, weights, rots


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def _registered_cc(model: np.ndarray, truth: np.ndarray, resolution_A: float) -> float:
    """cc of the model, rotated and shifted onto the truth (refine scoring, C1 global search), with the truth."""
    r, t, _ = RF.register_rotation(model, truth, voxel_A=VOXEL, resolution_A=resolution_A, symmetry="C1",
                                   step_deg=12.0)
    return _cc(_rotate_shift(model, r, t), truth)


def test_initial_model_of_asymmetric_map_from_random_start_has_the_right_hand() -> None:
    rng = np.random.default_rng(2)
    ref = _chiral_map()
    data, weights, _ = _particles(ref, 100, rng, noise=1.0)
    res = initial_model(data, weights, VOXEL, symmetry="C1", n_minibatches=20, mask_diameter_A=110.0,
                        final_resolution_A=22.0, n_starts=1, seed=0)
    assert isinstance(res, InitialModelResult)
    assert res.map.shape == (24,) * 3 and res.map.dtype == np.float32
    assert len(res.history) == 20 and res.poses.rotations.shape == (100, 3, 3)
    # resolution limits improve over the mini-batches, batches grow
    assert res.history[-1]["resolution_A"] < res.history[0]["resolution_A"]
    assert res.history[-1]["n_particles"] > res.history[0]["n_particles"]
    truth = F.lowpass(ref, res.resolution_A, VOXEL)
    cc = _registered_cc(res.map, truth, res.resolution_A)
    cc_mirror = _registered_cc(res.map[::-1].copy(), truth, res.resolution_A)
    assert cc > 0.8, cc
    assert cc > cc_mirror + 0.1, (cc, cc_mirror)


def test_initial_model_with_symmetry_is_in_the_symmetry_frame() -> None:
    rng = np.random.default_rng(6)
    ref = _o_map()
    data, weights, rots = _particles(ref, 40, rng, noise=2.0)
    calls: list[float] = []
    res = initial_model(data, weights, VOXEL, symmetry="O", n_minibatches=8, mask_diameter_A=110.0,
                        progress=lambda f, msg: calls.append(f))
    truth = F.lowpass(ref, res.resolution_A, VOXEL)
    # O is its own normaliser in SO(3): no rotation to register, only the centre
    assert _cc(res.map, truth) > 0.85
    # the map is O-symmetric
    dg = RF._centred_fft(res.map.astype(np.float64))
    rot = RF._centred_ifft_real(RF.symmetrise_grids(dg, np.zeros(dg.shape), symmetry_matrices("O")[[5]])[0])
    assert _cc(rot, res.map) > 0.98
    # the poses of the particles agree with the truth up to the symmetry
    err = RF.symmetry_angle_error_deg(res.poses.rotations, rots, "O")
    assert np.median(err) < 8.0, err
    assert calls and calls[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in calls)
