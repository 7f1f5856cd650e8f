"""Euler angles in RELION's convention and 3x3 rotation matrices, vectorised.

Convention (RELION ``Euler_angles2matrix`` in ``src/euler.cpp``, also the jaz ``Euler::anglesToMatrix3``):
angles ``(rot, tilt, psi)`` in degrees, ZYZ, and

    A = Rz(psi) @ Ry(tilt) @ Rz(rot)

where ``Rz(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]`` and
``Ry(b) = [[cos b, 0, -sin b], [0, 1, 0], [sin b, 0, cos b]]``, i.e. RELION's elementary matrices are the
*transposes* of the right-handed (counter-clockwise) rotation matrices of most textbooks. Written out::

    A[0] = ( cg*cb*ca - sg*sa,   cg*cb*sa + sg*ca,  -cg*sb)
    A[1] = (-sg*cb*ca - cg*sa,  -sg*cb*sa + cg*ca,   sg*sb)
    A[2] = (         sb*ca,               sb*sa,        cb)

with ``a = rot, b = tilt, g = psi``. RELION uses ``A`` to map reference (particle) coordinates to the
rotated frame of the data (``A @ r_reference`` rotates a map *into* the particle's orientation in
RELION's projection model, which is what ``Projector`` and the tomography code use). In the textbook
static-frame notation ``A = Rz_std(-psi) Ry_std(-tilt) Rz_std(-rot)`` (the same as
``transformations.euler_matrix(-rot, -tilt, -psi, 'szyz')`` used by Scipion's RELION converters).

``matrix_to_euler`` returns ``tilt`` in [0, 180] and ``rot``, ``psi`` in (-180, 180]; for ``tilt`` = 0 or
180 (gimbal lock) ``rot`` is set to 0 and the whole in-plane angle goes to ``psi``, as RELION does.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: below this |sin(tilt)| the angles are treated as degenerate (RELION uses 16 * FLT_EPSILON)
_GIMBAL_EPS = 16 * float(np.finfo(np.float32).eps)


def euler_to_matrix(
    rot: ArrayLike, tilt: ArrayLike | None = None, psi: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Rotation matrices from RELION Euler angles (degrees).

    Call as ``euler_to_matrix(rot, tilt, psi)`` with scalars or broadcastable arrays, or as
    ``euler_to_matrix(angles)`` with ``angles`` of shape ``(..., 3)`` = ``(rot, tilt, psi)``.

    Returns float64 of shape ``(..., 3, 3)`` (``(3, 3)`` for scalars), ``A = Rz(psi) Ry(tilt) Rz(rot)``
    in RELION's convention (module docstring).
    """
    if tilt is None and psi is None:
        ang = np.asarray(rot, dtype=np.float64)
        if ang.shape[-1:] != (3,):
            raise ValueError(f"angles must have shape (..., 3), got {ang.shape}")
        a, b, g = np.moveaxis(np.deg2rad(ang), -1, 0)
    elif tilt is None or psi is None:
        raise TypeError("give either one (..., 3) array or all three of rot, tilt, psi")
    else:
        a, b, g = np.broadcast_arrays(
            np.deg2rad(np.asarray(rot, dtype=np.float64)),
            np.deg2rad(np.asarray(tilt, dtype=np.float64)),
            np.deg2rad(np.asarray(psi, dtype=np.float64)),
        )
    ca, sa = np.cos(a), np.sin(a)
    cb, sb = np.cos(b), np.sin(b)
    cg, sg = np.cos(g), np.sin(g)
    cc, cs = cb * ca, cb * sa
    out = np.empty(a.shape + (3, 3), dtype=np.float64)
    out[..., 0, 0] = cg * cc - sg * sa
    out[..., 0, 1] = cg * cs + sg * ca
    out[..., 0, 2] = -cg * sb
    out[..., 1, 0] = -sg * cc - cg * sa
    out[..., 1, 1] = -sg * cs + cg * ca
    out[..., 1, 2] = sg * sb
    out[..., 2, 0] = sb * ca
    out[..., 2, 1] = sb * sa
    out[..., 2, 2] = cb
    return out


def matrix_to_euler(matrices: ArrayLike) -> NDArray[np.float64]:
    """RELION Euler angles (degrees) of rotation matrices.

    ``matrices``: shape ``(..., 3, 3)``, proper rotations (not checked beyond the shape).
    Returns float64 ``(..., 3)`` = ``(rot, tilt, psi)`` with ``tilt`` in [0, 180], ``rot`` and ``psi``
    in (-180, 180]; ``euler_to_matrix(matrix_to_euler(A))`` reproduces ``A``. At ``tilt`` = 0 or 180
    ``rot`` = 0 (RELION's choice).
    """
    m = np.asarray(matrices, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"matrices must have shape (..., 3, 3), got {m.shape}")
    abs_sb = np.hypot(m[..., 0, 2], m[..., 1, 2])
    regular = abs_sb > _GIMBAL_EPS
    # regular case, choosing sin(tilt) >= 0
    tilt = np.arctan2(abs_sb, m[..., 2, 2])
    psi = np.where(regular, np.arctan2(m[..., 1, 2], -m[..., 0, 2]), 0.0)
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    # degenerate: tilt = 0 -> A = Rz(rot + psi); tilt = 180 -> rot = 0, psi from the in-plane part
    up = m[..., 2, 2] > 0
    psi_deg = np.where(up, np.arctan2(-m[..., 1, 0], m[..., 0, 0]), np.arctan2(m[..., 1, 0], -m[..., 0, 0]))
    psi = np.where(regular, psi, psi_deg)
    tilt = np.where(regular, tilt, np.where(up, 0.0, np.pi))
    out = np.rad2deg(np.stack([rot, tilt, psi], axis=-1))
    # map -180 to +180 so that the range is (-180, 180]
    out[..., 0] = np.where(out[..., 0] <= -180.0, out[..., 0] + 360.0, out[..., 0])
    out[..., 2] = np.where(out[..., 2] <= -180.0, out[..., 2] + 360.0, out[..., 2])
    return out


def rotation_angle_deg(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """Angle (degrees) of the rotation ``a @ b.T`` between two sets of rotation matrices ``(..., 3, 3)``.

    0 means the same orientation; useful to compare orientations whose Euler angles differ only in
    representation (e.g. near gimbal lock).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    # ||a - b||_F = 2 sqrt(2) sin(theta / 2) for rotations: accurate for small angles, unlike arccos(trace)
    frob = np.sqrt(np.sum((a - b) ** 2, axis=(-2, -1)))
    return np.rad2deg(2.0 * np.arcsin(np.clip(frob / (2.0 * np.sqrt(2.0)), 0.0, 1.0)))
