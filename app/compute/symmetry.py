"""Point-group symmetry operators (rotation matrices) in RELION's orientation conventions.

Conventions
-----------
* Matrices act on column vectors of Cartesian coordinates ``(x, y, z)`` in Å (or voxels) about the
  symmetry centre: ``x' = R @ x``. All are proper rotations (determinant +1), float64, shape (n, 3, 3).
* The first matrix is always the identity.
* ``Cn``: the n-fold axis along z (rotations by 360°·k/n about z).
* ``Dn``: as Cn plus 2-fold axes perpendicular to z, one of them along x.
* ``T``: 2-fold axes along x, y and z, 3-fold axes along the body diagonals (±1, ±1, ±1).
* ``O``: 4-fold axes along x, y and z (the 24 signed permutation matrices with determinant +1),
  3-folds along the body diagonals, 2-folds along the face diagonals.
* ``I``: RELION's default ``I`` (= ``I2``, Crowther's "222" setting of Heymann, Chagoyen & Belnap 2005,
  J. Struct. Biol. 151:196): 2-fold axes along x, y and z, 3-folds along (±1, ±1, ±1) and the
  5-fold axes along (0, ±1, ±φ) and their cyclic permutations (one 5-fold in the yz plane, 31.7° from z;
  φ = golden ratio). ``I1`` would put that 5-fold in the xz plane instead.

Group names are case-insensitive: ``"c1"``, ``"C7"``, ``"d7"``, ``"O"``, ``"i"``.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

__all__ = ["symmetry_matrices", "group_order", "rotation_about"]

_PHI = (1.0 + np.sqrt(5.0)) / 2.0


def rotation_about(axis: np.ndarray | tuple[float, float, float], angle_deg: float) -> np.ndarray:
    """Right-handed rotation matrix (3, 3) by ``angle_deg`` degrees about ``axis`` (any length)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(angle_deg)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + np.sin(t) * k + (1.0 - np.cos(t)) * (k @ k)


def _cyclic(n: int) -> np.ndarray:
    return np.stack([rotation_about((0, 0, 1), 360.0 * k / n) for k in range(n)])


def _close(generators: list[np.ndarray], max_order: int = 120) -> np.ndarray:
    """All products of the generators (the group they generate), identity first."""
    group: list[np.ndarray] = [np.eye(3)]
    keys = {tuple(np.round(np.eye(3), 6).ravel())}
    frontier = [np.eye(3)]
    while frontier:
        new: list[np.ndarray] = []
        for g in frontier:
            for h in generators:
                m = h @ g
                key = tuple(np.round(m, 6).ravel() + 0.0)
                if key not in keys:
                    keys.add(key)
                    group.append(m)
                    new.append(m)
        frontier = new
        if len(group) > max_order:  # pragma: no cover - guards against bad generators
            raise RuntimeError("symmetry generators do not close into a finite point group")
    return np.stack(group)


def _parse(group: str) -> tuple[str, int]:
    g = group.strip().upper()
    m = re.fullmatch(r"([CD])(\d+)", g)
    if m:
        n = int(m.group(2))
        if n < 1:
            raise ValueError(f"symmetry group {group!r}: n must be >= 1")
        return m.group(1), n
    if g in ("T", "O", "I", "I2"):
        return g[0], 0
    raise ValueError(f"unknown symmetry group {group!r}: expected C<n>, D<n>, T, O or I")


def symmetry_matrices(group: str) -> np.ndarray:
    """Rotation matrices of a point group, float64 (n, 3, 3), identity first.

    ``group``: ``"C<n>"``, ``"D<n>"``, ``"T"``, ``"O"`` or ``"I"`` (case-insensitive; ``"I2"`` is
    accepted as a synonym of ``"I"``). Orientations: see the module docstring.
    """
    kind, n = _parse(group)
    if kind == "C":
        return _cyclic(n)
    if kind == "D":
        c = _cyclic(n)
        flip = rotation_about((1, 0, 0), 180.0)
        return np.concatenate([c, flip[None] @ c])
    if kind == "O":
        mats = []
        for perm in itertools.permutations(range(3)):
            p = np.eye(3)[list(perm)]
            for signs in itertools.product((1.0, -1.0), repeat=3):
                m = np.diag(signs) @ p
                if np.linalg.det(m) > 0:
                    mats.append(m)
        mats.sort(key=lambda m: -np.trace(m))  # identity first
        return np.stack(mats)
    if kind == "T":
        gens = [rotation_about((0, 0, 1), 180.0), rotation_about((1, 0, 0), 180.0),
                rotation_about((1, 1, 1), 120.0)]
        return _close(gens)
    # icosahedral, RELION I2 orientation
    gens = [rotation_about((0, 0, 1), 180.0), rotation_about((1, 0, 0), 180.0),
            rotation_about((0.0, 1.0, _PHI), 72.0)]
    return _close(gens)


def group_order(group: str) -> int:
    """Number of rotations in the group: Cn → n, Dn → 2n, T → 12, O → 24, I → 60."""
    kind, n = _parse(group)
    return {"C": n, "D": 2 * n, "T": 12, "O": 24, "I": 60}[kind]
