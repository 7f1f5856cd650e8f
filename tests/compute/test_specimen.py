"""The simulated specimen: the bundled 7A4M chain, the 24-mer, rendering of potentials, particle placement."""

from __future__ import annotations

import importlib.resources
import time

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from tomoguide.compute import formfactors as ff
from tomoguide.compute import specimen as sp
from tomoguide.compute.symmetry import symmetry_matrices

CENTRE = np.array(sp.BOX_CENTRE_A)


def _pdb_records(altloc_ok: tuple[str, ...] = (" ", "A")) -> list[str]:
    text = (importlib.resources.files("tomoguide.resources") / "models" / "7A4M_chainA.pdb").read_text()
    return [ln for ln in text.splitlines() if ln.startswith(("ATOM  ", "HETATM")) and ln[16] in altloc_ok]


def _exact_projection(xy: np.ndarray, elements: list[str], b_A2: float, shape: tuple[int, int], p: float):
    """Direct (slow) band-limited sum over DFT frequencies below Nyquist: the reference rendering."""
    ny, nx = shape
    fy = np.fft.fftfreq(ny)
    fx = np.fft.fftfreq(nx)
    ky, kx = np.meshgrid(fy, fx, indexing="ij")
    band = (np.abs(kx) < 0.5) & (np.abs(ky) < 0.5)
    total = np.zeros(shape, complex)
    for (x0, y0), el in zip(xy, elements):
        t = ff.projected_potential_ft(el, (kx**2 + ky**2) / p**2, b_A2) * band
        total += t * np.exp(-2j * np.pi * (kx * x0 + ky * y0))
    return np.real(np.fft.ifft2(total)) / p**2


# ------------------------------------------------------------------------------------------------ the model
def test_load_chain_reads_altloc_A_and_all_elements() -> None:
    chain = sp.load_chain()
    records = _pdb_records()
    assert len(chain) == len(records)
    assert len(chain) < len(_pdb_records((" ", "A", "B")))  # altloc B dropped
    assert set(chain.names) == {"C", "N", "O", "S", "H", "Fe", "Zn"}
    first = records[0]
    np.testing.assert_allclose(chain.xyz_A[0], [float(first[30:38]), float(first[38:46]), float(first[46:54])])
    assert chain.b_A2[0] == float(first[60:66])
    assert np.count_nonzero(chain.symbols == "Fe") == 1
    assert chain.xyz_A.dtype == np.float64 and chain.xyz_A.shape == (len(chain), 3)


def test_apoferritin_24mer_is_a_hollow_shell_without_clashes() -> None:
    chain = sp.load_chain()
    atoms = sp.apoferritin_atoms()
    r = np.linalg.norm(atoms.xyz_A, axis=1)
    assert r.min() > 37.0 and r.max() < 68.0
    # 24 copies, minus repeats of atoms on a symmetry axis (computed here from the stabiliser of each atom)
    mats = symmetry_matrices("O")
    rel = chain.xyz_A - CENTRE
    images = np.einsum("kij,aj->kai", mats, rel)  # (24, n, 3)
    stabiliser = (np.linalg.norm(images - rel[None], axis=2) < 0.01).sum(axis=0)
    assert len(atoms) == int(np.sum(24 // stabiliser))
    assert 24 * len(chain) - len(atoms) > 0  # the Fe on the 4-fold axis (occupancy 1/4) appears once per site
    # no clash between copies: CA atoms of different copies are > 3 Å apart
    ca = np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in _pdb_records()
                   if ln[12:16] == " CA "]) - CENTRE
    copies = np.einsum("kij,aj->kai", mats, ca)
    owner = np.repeat(np.arange(24), len(ca))
    pairs = cKDTree(copies.reshape(-1, 3)).query_pairs(3.0, output_type="ndarray")
    assert len(pairs) == 0 or np.all(owner[pairs[:, 0]] == owner[pairs[:, 1]])
    # the set of atoms is invariant under O
    tree = cKDTree(atoms.xyz_A)
    for m in mats[[1, 5, 17]]:
        d, idx = tree.query(atoms.xyz_A @ m.T)
        assert d.max() < 0.02
        assert np.all(atoms.element[idx] == atoms.element)


# ------------------------------------------------------------------------------------------------ rendering
@pytest.mark.parametrize("element,b_A2,p", [("C", 20.0, 1.0), ("O", 0.0, 1.5), ("Fe", 40.0, 2.0)])
def test_single_atom_integrates_to_its_forward_scattering(element: str, b_A2: float, p: float) -> None:
    img = sp.render_projection(np.array([[40.3, 37.8]]), np.array([element]), b_A2, (80, 84), p)
    assert img.dtype == np.float32 and img.shape == (80, 84)
    expected = ff.POTENTIAL_CONSTANT_V_A2 * ff.scattering_factor(element, 0.0)  # V·Å³
    assert img.sum() * p * p == pytest.approx(expected, rel=2e-3)
    assert np.unravel_index(np.argmax(img), img.shape) == (38, 40)


@pytest.mark.parametrize("order,oversample,tol", [(3, 2, 0.015), (1, 2, 0.08), (3, 1, 0.25)])
def test_rendering_matches_direct_band_limited_sum(order: int, oversample: int, tol: float) -> None:
    """Against the exact band-limited image computed by a direct sum over frequencies: the cubic kernel with 2×
    oversampling (the default) is within ~1 % of the peak; cheaper settings are worse, as documented."""
    rng = np.random.default_rng(3)
    xy = rng.uniform(10, 54, size=(12, 2))
    elements = list(rng.choice(["C", "N", "O", "S", "H"], size=12))
    for p, b in [(1.0, 15.0), (2.0, 30.0)]:
        img = sp.render_projection(xy, np.array(elements), b, (64, 64), p, order=order, oversample=oversample)
        ref = _exact_projection(xy, elements, b, (64, 64), p)
        err = np.abs(img - ref).max() / ref.max()
        assert err < tol, (p, b, err)
    if (order, oversample) == (3, 2):
        assert err > 1e-5  # a real comparison, not a copy of the same code path


def test_per_atom_b_factors_match_separate_renderings() -> None:
    rng = np.random.default_rng(4)
    xy = rng.uniform(8, 40, size=(30, 2))
    b = rng.uniform(10, 120, size=30)
    together = sp.render_projection(xy, np.full(30, "N"), b, (48, 48), 1.2)
    separate = sum(sp.render_projection(xy[i:i + 1], np.array(["N"]), b[i], (48, 48), 1.2) for i in range(30))
    # the B ladder interpolates in width: < 2 % of the peak
    assert np.abs(together - separate).max() < 0.02 * separate.max()


def test_atoms_outside_do_not_wrap_around() -> None:
    shape, p = (64, 64), 1.0
    edge = sp.render_projection(np.array([[-0.4, 32.0]]), np.array(["C"]), 20.0, shape, p)
    assert edge[32, 0] > 10.0  # the atom's core is just left of column 0
    # nothing appears on the far side beyond the band limit's ringing (Gibbs, < 0.5 % of the peak)
    assert np.abs(edge[:, 40:]).max() < 5e-3 * edge.max()
    # agrees with a direct band-limited sum on a large (non-wrapping) grid, cropped
    big = _exact_projection(np.array([[-0.4 + 96, 32.0 + 96]]), ["C"], 20.0, (256, 256), p)[96:160, 96:160]
    assert np.abs(edge - big).max() < 0.015 * big.max()
    far = sp.render_projection(np.array([[-50.0, 32.0], [32.0, 500.0]]), np.array(["C", "C"]), 20.0, shape, p)
    assert np.abs(far).max() < 1e-6


def test_volume_summed_over_z_equals_projection() -> None:
    """Central-section theorem: Σ_z V · p = v_z. Both are the same band-limited rendering; the only difference is
    the band limit's (Gibbs) ringing along z that falls outside the volume, which shrinks as the box grows."""
    atoms = sp.apoferritin_atoms()
    p, n = 2.0, 72
    errors = []
    for nz in (72, 160):
        xyz = atoms.xyz_A / p + np.array([n // 2, n // 2, nz // 2])
        vol = sp.render_volume(xyz, atoms.element, atoms.b_A2, (nz, n, n), p, names=atoms.names)
        proj = sp.render_projection(xyz[:, :2], atoms.element, atoms.b_A2, (n, n), p, names=atoms.names)
        assert vol.shape == (nz, n, n) and vol.dtype == np.float32
        errors.append(np.abs(vol.sum(axis=0) * p - proj).max() / proj.max())
    assert errors[0] < 2e-3
    assert errors[1] < 4e-4 and errors[1] < errors[0] / 2.5
    # total scattering of the 24-mer is conserved
    fe0 = np.array([ff.scattering_factor(nm, 0.0) for nm in atoms.names])[atoms.element]
    assert proj.sum() * p * p == pytest.approx(ff.POTENTIAL_CONSTANT_V_A2 * fe0.sum(), rel=1e-3)


def test_element_codes_and_symbols_give_the_same_image() -> None:
    chain = sp.load_chain()
    xy = (chain.xyz_A[:, :2] - CENTRE[:2]) / 3.0 + 24
    a = sp.render_projection(xy, chain.element, chain.b_A2, (48, 48), 3.0, names=chain.names)
    b = sp.render_projection(xy, chain.symbols, chain.b_A2, (48, 48), 3.0)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * a.max())
    with pytest.raises(ValueError):
        sp.render_projection(xy, chain.element, chain.b_A2, (48, 48), 3.0)  # codes without names


@pytest.fixture(scope="module")
def apo_map() -> np.ndarray:
    return sp.apoferritin_map(4.0, 48)


def test_apoferritin_map_is_a_shell(apo_map: np.ndarray) -> None:
    n, p = 48, 4.0
    z, y, x = np.indices(apo_map.shape)
    r = np.sqrt((x - n // 2) ** 2 + (y - n // 2) ** 2 + (z - n // 2) ** 2) * p
    shell = apo_map[(r > 40) & (r < 60)].mean()
    centre = apo_map[r < 25].mean()
    outside = apo_map[(r > 75) & (r < 90)].mean()
    assert shell > 0.5  # protein: ~1-2 V above vacuum on average at 4 Å/px
    assert abs(centre) < 0.05 * shell and abs(outside) < 0.05 * shell
    # mean inner potential of the shell between 45 and 55 Å: protein-like (neutral atoms, ~1.35 g/cm³ + H)
    assert 1.0 < apo_map[(r > 45) & (r < 55)].mean() < 8.0


def test_apoferritin_map_has_O_symmetry(apo_map: np.ndarray) -> None:
    n = apo_map.shape[0]
    c = np.full(3, n // 2, float)
    rev = np.eye(3)[::-1]  # (x, y, z) <-> array axes (z, y, x)
    for m in symmetry_matrices("O")[1:]:
        # rotated map V'(x) = V(Rᵀ x); affine_transform samples input at M @ out + offset (array index order)
        mat = rev @ m.T @ rev
        rotated = ndimage.affine_transform(apo_map, mat, offset=c - mat @ c, order=1)
        inner = (slice(1, n - 1),) * 3
        assert np.abs(rotated[inner] - apo_map[inner]).max() < 1e-3 * apo_map.max()
    # and it is not trivially symmetric under a non-member rotation (45° about z)
    m45 = np.array([[np.cos(np.pi / 4), -np.sin(np.pi / 4), 0], [np.sin(np.pi / 4), np.cos(np.pi / 4), 0], [0, 0, 1]])
    mat = rev @ m45.T @ rev
    rotated = ndimage.affine_transform(apo_map, mat, offset=c - mat @ c, order=1)
    assert np.abs(rotated - apo_map).max() > 0.1 * apo_map.max()


# ------------------------------------------------------------------------------------------------ placement
@pytest.mark.parametrize("tilt", [(0.0, 0.0), (12.0, -5.0)])
def test_place_particles_in_slab_without_overlap(tilt: tuple[float, float]) -> None:
    rng = np.random.default_rng(11)
    field, thick, radius, gap = (3000.0, 2500.0), 700.0, 65.0, 5.0
    t0 = time.perf_counter()
    pos, rot = sp.place_particles(400, field_xy_A=field, slab_thickness_A=thick, slab_tilt_deg=tilt,
                                  radius_A=radius, min_gap_A=gap, rng=rng)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0  # typically ~0.1 s
    assert pos.shape == (400, 3) and rot.shape == (400, 3, 3)
    d, _ = cKDTree(pos).query(pos, k=2)
    assert d[:, 1].min() >= 2 * radius + gap - 1e-9
    # inside the slab: distance along its normal, and in-plane coordinates, leave room for the radius
    slab = sp.slab_rotation(tilt)
    uvw = pos @ slab  # coordinates in the slab's own axes
    assert np.all(np.abs(uvw[:, 2]) <= thick / 2 - radius + 1e-9)
    assert np.all(np.abs(uvw[:, 0]) <= field[0] / 2 - radius + 1e-9)
    assert np.all(np.abs(uvw[:, 1]) <= field[1] / 2 - radius + 1e-9)
    # proper rotations, uniformly distributed: E[R] = 0, E[R_ij²] = 1/3
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)
    assert np.abs(rot.mean(axis=0)).max() < 0.15
    np.testing.assert_allclose((rot**2).mean(axis=0), 1 / 3, atol=0.08)
    # the positions fill the slab (not all in one corner)
    assert np.ptp(uvw[:, 0]) > 0.8 * (field[0] - 2 * radius)


def test_slab_rotation_convention() -> None:
    z = np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(sp.slab_rotation((90.0, 0.0)) @ z, [0, -1, 0], atol=1e-12)  # about x
    np.testing.assert_allclose(sp.slab_rotation((0.0, 90.0)) @ z, [1, 0, 0], atol=1e-12)  # about y
    # first about x, then about y
    rx = sp.slab_rotation((30.0, 0.0))
    ry = sp.slab_rotation((0.0, 20.0))
    np.testing.assert_allclose(sp.slab_rotation((30.0, 20.0)), ry @ rx, atol=1e-12)


def test_place_particles_reports_how_many_fitted() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"only \d+ of 500"):
        sp.place_particles(500, field_xy_A=(1000.0, 1000.0), slab_thickness_A=300.0, rng=rng)
    pos, _ = sp.place_particles(3, field_xy_A=(1000.0, 1000.0), slab_thickness_A=300.0, rng=rng)
    assert len(pos) == 3
    a, _ = sp.place_particles(5, field_xy_A=(2000.0, 2000.0), slab_thickness_A=300.0, rng=np.random.default_rng(7))
    b, _ = sp.place_particles(5, field_xy_A=(2000.0, 2000.0), slab_thickness_A=300.0, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)  # deterministic for a seed


def test_distractors_avoid_particles_and_differ_from_apoferritin() -> None:
    rng = np.random.default_rng(5)
    pos, _ = sp.place_particles(30, field_xy_A=(2000.0, 2000.0), slab_thickness_A=500.0, rng=rng)
    d = sp.distractors(3, 2, field_xy_A=(2000.0, 2000.0), slab_thickness_A=500.0, occupied_A=pos, rng=rng)
    assert d.kinds == ("globular", "globular", "globular", "contamination", "contamination")
    gap = np.linalg.norm(d.centres_A[:, None] - pos[None], axis=2) - d.radii_A[:, None] - 65.0
    assert gap.min() >= 5.0 - 1e-9
    # atoms lie inside their object's sphere; globular ones are solid (atoms near the centre) unlike apoferritin
    owner = cKDTree(d.centres_A).query(d.atoms.xyz_A)[1]
    dist = np.linalg.norm(d.atoms.xyz_A - d.centres_A[owner], axis=1)
    assert np.all(dist <= d.radii_A[owner] + 1e-6)
    glob = owner == 0
    assert np.mean(dist[glob] < 0.5 * d.radii_A[0]) > 0.05
    assert not (0.8 * 65 < d.radii_A[0] < 1.2 * 65)
    assert set(d.atoms.names) <= {"C", "N", "O"}


def test_specimen_atoms_places_the_reference() -> None:
    rng = np.random.default_rng(2)
    pos, rot = sp.place_particles(3, field_xy_A=(1500.0, 1500.0), slab_thickness_A=400.0, rng=rng)
    extra = sp.Atoms.from_symbols([[1.0, 2.0, 3.0]], ["Au"], 10.0)
    spec = sp.specimen_atoms(pos, rot, extra)
    ref = sp.apoferritin_atoms()
    assert len(spec) == 3 * len(ref) + 1
    n = len(ref)
    np.testing.assert_allclose(spec.xyz_A[n:2 * n], ref.xyz_A @ rot[1].T + pos[1], atol=1e-9)
    assert spec.symbols[-1] == "Au" and spec.b_A2[-1] == 10.0
    np.testing.assert_array_equal(spec.symbols[:n], ref.symbols)
    # each particle's centre of scattering sits at its position
    np.testing.assert_allclose(spec.xyz_A[2 * n:3 * n].mean(axis=0), pos[2], atol=1.0)
