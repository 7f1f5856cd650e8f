"""Reference-free initial model (tomoguide.compute.initial_model) on synthetic pseudo-subtomograms.

Particles are made as in test_refine.py (a known map rotated and shifted in real space by scipy.ndimage, a
CTF-like weight with a missing wedge, noise ∝ the weight); the model starts from random orientations and must
find the map: for an asymmetric (chiral) map up to a global rotation and shift (registered here by the refine
scoring), never mirrored; for an O-symmetric map directly in the symmetry axes' frame.
"""

from __future__ import annotations


import numpy as np

from tomoguide.compute import fsc as F
from tomoguide.compute import refine as RF
from tomoguide.compute.initial_model import InitialModelResult, initial_model
from tomoguide.compute.symmetry import symmetry_matrices

from synthetic_particles import cc as _cc
from synthetic_particles import chiral_map as _chiral_map
from synthetic_particles import make_particles
from synthetic_particles import o_map as _o_map
from synthetic_particles import rotate_shift as _rotate_shift

VOXEL = 5.0


def _particles(ref: np.ndarray, m: int, rng: np.random.Generator, noise: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data, weights, rots, _ = make_particles(ref, m, rng, noise=noise, max_shift=1.5)
    return data, weights, rots


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


def test_starts_run_apart_then_chosen_give_the_same_model() -> None:
    """The random starts are a cluster's units: each run alone (initial_model_start, on one CPU thread as the step's
    units run) and the best of them chosen (best_start) gives initial_model's map and poses bit for bit; the starts
    differ (they are independent runs) and the chosen one has the highest mean score."""
    from tomoguide.compute.backend import cpu_threads
    from tomoguide.compute.initial_model import best_start, initial_model_start

    rng = np.random.default_rng(6)
    data, weights, _ = _particles(_o_map(), 30, rng, noise=2.0)
    kw = dict(symmetry="O", n_minibatches=4, mask_diameter_A=110.0, seed=3)
    threaded = initial_model(data, weights, VOXEL, n_starts=3, **kw)
    with cpu_threads(1):
        whole = initial_model(data, weights, VOXEL, n_starts=3, **kw)
        starts = [initial_model_start(data, weights, VOXEL, start=k, **kw) for k in range(3)]
    # threads sum the scattered samples in another order: the same map to float32 rounding
    np.testing.assert_allclose(threaded.map, whole.map, rtol=0, atol=1e-5 * float(np.abs(whole.map).max()))
    chosen = best_start(starts, VOXEL)
    np.testing.assert_array_equal(chosen.map, whole.map)
    np.testing.assert_array_equal(chosen.poses.rotations, whole.poses.rotations)
    np.testing.assert_array_equal(chosen.poses.shifts_A, whole.poses.shifts_A)
    assert chosen.history == [] or [h["resolution_A"] for h in chosen.history] == \
        [h["resolution_A"] for h in whole.history]
    assert not np.array_equal(starts[0].rotations, starts[1].rotations)
    best = max(range(3), key=lambda k: (starts[k].mean_score, -k))
    np.testing.assert_array_equal(starts[best].map, whole.map)
