"""Point groups: closure, order, proper rotations and the stated axis orientations."""

from __future__ import annotations

import numpy as np
import pytest

from tomoguide.compute.symmetry import group_order, rotation_about, symmetry_matrices

GROUPS = ["C1", "c4", "C7", "D2", "d7", "T", "O", "i"]


def _index(mats: np.ndarray, m: np.ndarray) -> int:
    d = np.abs(mats - m[None]).max(axis=(1, 2))
    return int(np.argmin(d)) if d.min() < 1e-9 else -1


@pytest.mark.parametrize("group", GROUPS)
def test_group_is_closed_proper_and_of_right_order(group: str) -> None:
    mats = symmetry_matrices(group)
    n = group_order(group)
    assert mats.shape == (n, 3, 3)
    np.testing.assert_allclose(mats[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(mats), 1.0, atol=1e-12)
    np.testing.assert_allclose(mats @ np.transpose(mats, (0, 2, 1)), np.broadcast_to(np.eye(3), mats.shape),
                               atol=1e-12)
    # all distinct, and every product (and inverse) is again in the group
    for a in mats:
        assert _index(mats, a.T) >= 0
        for b in mats:
            assert _index(mats, a @ b) >= 0
    dist = np.abs(mats[:, None] - mats[None]).max(axis=(2, 3)) + np.eye(n) * 9
    assert dist.min() > 1e-3


def test_orders() -> None:
    assert [group_order(g) for g in ("O", "T", "I", "D7", "C5", "c1")] == [24, 12, 60, 14, 5, 1]
    with pytest.raises(ValueError):
        symmetry_matrices("X3")


def test_O_maps_axes_onto_axes_and_contains_4fold_about_each_axis() -> None:
    mats = symmetry_matrices("O")
    axes = np.eye(3)
    for m in mats:
        img = m @ axes  # columns: images of x, y, z
        # every image is ± a coordinate axis
        assert np.allclose(np.sort(np.abs(img), axis=0), [[0, 0, 0], [0, 0, 0], [1, 1, 1]])
    for ax in np.eye(3):
        assert _index(mats, rotation_about(ax, 90.0)) >= 0
    # 3-fold along the body diagonal
    assert _index(mats, rotation_about((1, 1, 1), 120.0)) >= 0


def test_axis_orientations_of_C_D_T_I() -> None:
    c7 = symmetry_matrices("C7")
    assert all(np.allclose(m @ [0, 0, 1], [0, 0, 1]) for m in c7)
    d7 = symmetry_matrices("D7")
    assert _index(d7, rotation_about((1, 0, 0), 180.0)) >= 0
    t = symmetry_matrices("T")
    for ax in np.eye(3):
        assert _index(t, rotation_about(ax, 180.0)) >= 0
        assert _index(t, rotation_about(ax, 90.0)) < 0  # T has no 4-folds
    i = symmetry_matrices("I")
    phi = (1 + 5**0.5) / 2
    for ax in np.eye(3):
        assert _index(i, rotation_about(ax, 180.0)) >= 0
    assert _index(i, rotation_about((0, 1, phi), 72.0)) >= 0  # RELION I2: 5-fold in the yz plane
    assert _index(i, rotation_about((1, 1, 1), 120.0)) >= 0
    assert _index(i, rotation_about((1, 0, phi), 72.0)) < 0  # ... not in the xz plane (that is I1)
