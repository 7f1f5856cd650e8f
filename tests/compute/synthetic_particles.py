"""Synthetic pseudo-subtomograms for the averaging tests (test_refine.py, test_initial_model.py): a known map
rotated and shifted in real space (scipy.ndimage), a CTF-like weight with a ±60° missing wedge, noise ∝ the
weight, in the conventions of :mod:`tomoguide.compute.sta` (real-space data, centred Fourier weights)."""

from __future__ import annotations


import math

import numpy as np
import scipy.fft
import scipy.ndimage

from tomoguide.compute.euler import euler_to_matrix
from tomoguide.compute.symmetry import symmetry_matrices


def blob_map(box: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((box,) * 3)
    for cx, cy, cz in centres:
        vol += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return vol.astype(np.float32)


def chiral_map(box: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 9)
    centres = np.stack([6 * np.cos(t), 6 * np.sin(t), 1.2 * (t - np.pi) * 2], axis=1)
    return blob_map(box, np.vstack([centres, [[0, 0, 0], [3, -2, 4]]]), 1.6)


def o_map(box: int = 24) -> np.ndarray:
    seed = np.array([[6.0, 2.0, 1.0], [3.0, 7.0, -2.0]])
    return blob_map(box, np.concatenate([seed @ s.T for s in symmetry_matrices("O")]), 1.4)


def rotate_shift(vol: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``v(x) = vol(Rᵀ (x - t))`` about the centre ``B // 2``, ``x = (x, y, z)`` in voxels."""
    b = vol.shape[0]
    c = np.arange(b) - b // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    src = (np.stack([x, y, z], -1).reshape(-1, 3) - t) @ r
    coords = np.stack([src[:, 2], src[:, 1], src[:, 0]]) + b // 2
    return scipy.ndimage.map_coordinates(vol, coords, order=3, mode="constant").reshape(vol.shape)


def cft(v: np.ndarray) -> np.ndarray:
    return scipy.fft.fftshift(scipy.fft.fftn(scipy.fft.ifftshift(v)))


def icft(f: np.ndarray) -> np.ndarray:
    return scipy.fft.fftshift(scipy.fft.ifftn(scipy.fft.ifftshift(f)).real)


def random_rotations(m: int, rng: np.random.Generator) -> np.ndarray:
    return euler_to_matrix(np.column_stack([rng.uniform(-180, 180, m), np.degrees(np.arccos(rng.uniform(-1, 1, m))),
                                            rng.uniform(-180, 180, m)]))


def make_particles(ref: np.ndarray, m: int, rng: np.random.Generator, *, noise: float, max_shift: float = 2.0,
                   rots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(data (m, B, B, B), weights (m, B, B, B) centred, true rotations (m, 3, 3), true shifts (m, 3) px)."""
    b = ref.shape[0]
    rots = random_rotations(m, rng) if rots is None else rots
    shifts = rng.uniform(-max_shift, max_shift, (m, 3))
    k = np.arange(b) - b // 2
    qz, qy, qx = np.meshgrid(k, k, k, indexing="ij")
    q2 = (qx**2 + qy**2 + qz**2) / b**2
    wedge = (np.abs(qz) <= np.tan(np.radians(60.0)) * np.abs(qx)).astype(np.float64)
    data = np.empty((m, b, b, b), np.float32)
    weights = np.empty((m, b, b, b), np.float32)
    sig = float(ref.std())
    for i in range(m):
        w = 20.0 * wedge * np.sin(np.pi * q2 * rng.uniform(30, 50) + 0.3) ** 2
        f = cft(rotate_shift(ref, rots[i], shifts[i]))
        n = cft(rng.normal(0, noise * sig, ref.shape)) * np.sqrt(w)
        data[i] = icft(w * f + n)
        weights[i] = w
    return data, weights, rots, shifts


def cc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))
