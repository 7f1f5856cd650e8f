"""Surface-model picking (as the tutorial does with Dynamo): an ellipsoid fitted to points clicked on an object's
contour (a vesicle, a membrane), and particles sampled on its surface with orientations normal to it.

Conventions:

* Points are ``(n, 3)`` float64 ``(x, y, z)`` in Å, in any fixed Cartesian frame (the picking step uses
  tomogram-centred Å, RELION 5's ``rlnCenteredCoordinate*Angst``). Distances and spacings are in Å.
* An :class:`Ellipsoid` is ``{c + R · diag(axes) · u : |u| = 1}``: ``centre`` ``(3,)`` Å, ``axes`` ``(3,)`` the
  semi-axes in Å (ascending), ``rotation`` ``(3, 3)`` a proper rotation whose *columns* are the directions of
  the semi-axes. A sphere is the ellipsoid with three equal axes and ``rotation`` = identity.
* Normals are unit vectors pointing *outwards* (away from the centre).
* Orientations are RELION Euler angles ``(rot, tilt, psi)`` in degrees with the matrix
  ``A = euler_to_matrix(rot, tilt, psi)`` (:mod:`tomoguide.compute.euler`) mapping particle (reference)
  coordinates to the tomogram, ``x_tomogram = A · x_reference + t``, as :mod:`tomoguide.compute.sta` uses it.
  A particle's z axis is then ``A · (0, 0, 1) = (−cos psi · sin tilt, sin psi · sin tilt, cos tilt)``: tilt and
  psi give the normal, and ``rot`` (applied first, about the particle's own z axis) is the free spin about the
  normal (RELION's helical convention: tilt/psi the axis, rot the twist). :func:`normals_to_euler` sets
  ``A · z = normal`` and ``rot`` = the spin (random or 0).

Fitting: a general quadric ``x·M·x + 2 g·x = 1`` by linear least squares on centred, scaled points (9 unknowns),
converted to centre/axes/rotation when it is an ellipsoid, then refined by non-linear least squares of the radial
distance ``|p − c| · (1 − 1/|q|)``, ``q = diag(axes)⁻¹ Rᵀ (p − c)`` (exact for a sphere). A sphere
(``|p|² = 2 c·p + k``, then the same refinement) is the fallback when there are fewer than
:data:`MIN_ELLIPSOID_POINTS` points, when they do not determine a quadric (e.g. two slices only), or when the
quadric is not a sensible ellipsoid; model "auto" also prefers it unless it clearly does not fit. Points on one
plane only (one slice clicked) give the sphere whose great circle is their circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tomoguide.compute.euler import euler_to_matrix

#: a general ellipsoid has 9 parameters; fewer points than this are fitted by a sphere
MIN_ELLIPSOID_POINTS = 12
#: minimum number of points of a sphere fit (3 for a circle in one plane)
MIN_SPHERE_POINTS = 3
#: an ellipsoid whose longest axis exceeds this multiple of the points' extent is refused (sphere instead)
MAX_AXIS_OVER_EXTENT = 4.0

#: points whose thickness (smallest singular value) is below this fraction of their width lie "on one plane"
PLANAR_RATIO = 0.05
#: "auto" keeps the general ellipsoid only when its residual per degree of freedom (RMS) is below this fraction
#: of the sphere's (an F test at about 1 % for 20 points: a sphere's noise rarely passes)
AUTO_RMS_RATIO = 0.6

ModelKind = Literal["auto", "ellipsoid", "sphere"]


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid ``{centre + rotation · diag(axes) · u : |u| = 1}`` (units Å; conventions in the module).

    ``kind`` says which model produced it ("ellipsoid" or "sphere"); ``rms_A`` is the RMS radial distance of
    the fitted points to the surface (Å; 0 when not from a fit).
    """

    centre: NDArray[np.float64]
    axes: NDArray[np.float64]
    rotation: NDArray[np.float64]
    kind: str = "ellipsoid"
    rms_A: float = 0.0
    n_points: int = field(default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "centre", np.asarray(self.centre, dtype=np.float64).reshape(3))
        object.__setattr__(self, "axes", np.asarray(self.axes, dtype=np.float64).reshape(3))
        object.__setattr__(self, "rotation", np.asarray(self.rotation, dtype=np.float64).reshape(3, 3))
        if not np.all(self.axes > 0):
            raise ValueError(f"ellipsoid axes must be positive, got {self.axes}")

    def local(self, points: ArrayLike) -> NDArray[np.float64]:
        """``(n, 3)`` points mapped to the unit sphere's frame: ``q = diag(axes)⁻¹ Rᵀ (p − c)`` (|q| = 1 on the
        surface, < 1 inside)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return ((p - self.centre) @ self.rotation) / self.axes

    def surface_point(self, u: ArrayLike) -> NDArray[np.float64]:
        """Points of the surface ``c + R (axes · u)`` for unit vectors ``u`` ``(n, 3)``."""
        uu = np.asarray(u, dtype=np.float64).reshape(-1, 3)
        return (uu * self.axes) @ self.rotation.T + self.centre

    def radial_distance(self, points: ArrayLike) -> NDArray[np.float64]:
        """Signed distance (Å, positive outside) from each point to the surface along the ray from the centre."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        q = np.linalg.norm(self.local(p), axis=1)
        r = np.linalg.norm(p - self.centre, axis=1)
        return r * (1.0 - 1.0 / np.maximum(q, 1e-12))

    def area_A2(self) -> float:
        """Surface area (Å²), Knud Thomsen's approximation (relative error < 1.1 %; exact for a sphere)."""
        a, b, c = self.axes
        p = 1.6075
        return float(4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3.0) ** (1.0 / p))

    def section(self, value_A: float, n: int = 128, axis: int = 2) -> NDArray[np.float64]:
        """The closed curve where the plane ``p[axis] = value_A`` (axis 0, 1, 2 = x, y, z; default a z slice) cuts
        the surface: ``(n, 3)`` points (empty when the plane misses the ellipsoid). For drawing the model on a
        tomogram slice."""
        # p = c + R D u with p[axis] = value: w · u = value − c[axis], w = (R D)[axis]; a circle of the unit sphere
        w = self.rotation[axis] * self.axes
        wn = float(np.linalg.norm(w))
        d = (value_A - self.centre[axis]) / wn
        if abs(d) >= 1.0:
            return np.zeros((0, 3))
        e3 = w / wn
        e1 = np.cross(e3, [1.0, 0.0, 0.0] if abs(e3[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(e3, e1)
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        rho = np.sqrt(1.0 - d * d)
        u = d * e3 + rho * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2)
        pts = self.surface_point(u)
        pts[:, axis] = value_A  # exact up to rounding
        return pts


def sphere(centre: ArrayLike, radius_A: float) -> Ellipsoid:
    """The sphere of ``radius_A`` (Å) about ``centre`` as an :class:`Ellipsoid`."""
    return Ellipsoid(np.asarray(centre, float), np.full(3, float(radius_A)), np.eye(3), kind="sphere")


# ---------------------------------------------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------------------------------------------


def fit_ellipsoid(points: ArrayLike, model: ModelKind = "auto", *, refine: bool = True) -> Ellipsoid:
    """Least-squares ellipsoid (or sphere) through contour points.

    ``points``: ``(n, 3)`` (x, y, z) Å. ``model``: "ellipsoid" (general: centre, three axes, rotation; needs
    :data:`MIN_ELLIPSOID_POINTS` points that determine it, else falls back to a sphere), "sphere", or "auto"
    (the general ellipsoid when its residual per degree of freedom is below :data:`AUTO_RMS_RATIO` × the
    sphere's, i.e. when a sphere clearly does not fit; otherwise the sphere, far better determined by a few
    slices). Raises ValueError with fewer than :data:`MIN_SPHERE_POINTS` points or when they are (nearly)
    collinear. The result's ``kind`` says which model was used, ``rms_A`` the
    RMS radial residual.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(p)):
        raise ValueError("contour points must be finite")
    if len(p) < MIN_SPHERE_POINTS:
        raise ValueError(f"at least {MIN_SPHERE_POINTS} contour points are needed, got {len(p)}")
    mean = p.mean(axis=0)
    scale = float(np.sqrt(np.mean(np.sum((p - mean) ** 2, axis=1))))
    if scale <= 0:
        raise ValueError("the contour points all coincide")
    x = (p - mean) / scale
    sv = np.linalg.svd(x, compute_uv=False)
    if sv[1] < 1e-6 * sv[0]:
        raise ValueError("the contour points lie on a line; click around the object's outline")
    planar = sv[2] < PLANAR_RATIO * sv[0]  # one slice clicked (or a slab much thinner than wide)
    spherical = _circle_sphere(x) if planar else _algebraic_sphere(x)
    if refine and not planar:
        spherical = _refine(x, spherical, sphere_only=True)
    result = spherical
    if model != "sphere" and not planar and len(p) >= MIN_ELLIPSOID_POINTS:
        general = _algebraic_ellipsoid(x)
        if general is not None:
            extent = float(np.ptp(x, axis=0).max())
            if general.axes.max() > MAX_AXIS_OVER_EXTENT * extent:
                general = None
        if general is not None and refine:
            general = _refine(x, general, sphere_only=False)
        if general is not None:
            if model == "ellipsoid":
                result = general
            else:  # auto: the general model only when a sphere clearly does not fit (residuals per degree of
                # freedom: 9 parameters against 4, so that an ellipsoid fitting the noise is not preferred)
                n = len(x)
                sigma_e = float(np.sqrt(np.sum(general.radial_distance(x) ** 2) / (n - 9)))
                sigma_s = float(np.sqrt(np.sum(spherical.radial_distance(x) ** 2) / (n - 4)))
                if sigma_e < AUTO_RMS_RATIO * sigma_s:
                    result = general
    # back to the caller's frame and units
    out_kind = "sphere" if result.kind == "sphere" else "ellipsoid"
    order = np.argsort(result.axes)
    rot = result.rotation[:, order]
    if np.linalg.det(rot) < 0:
        rot[:, 0] = -rot[:, 0]
    fitted = Ellipsoid(result.centre * scale + mean, result.axes[order] * scale, rot, kind=out_kind)
    rms = float(np.sqrt(np.mean(fitted.radial_distance(p) ** 2)))
    return Ellipsoid(fitted.centre, fitted.axes, fitted.rotation, kind=out_kind, rms_A=rms, n_points=len(p))


def _algebraic_ellipsoid(x: NDArray[np.float64]) -> Ellipsoid | None:
    """``A x² + B y² + C z² + 2D xy + 2E xz + 2F yz + 2G x + 2H y + 2I z = 1`` by least squares; None unless it is
    an ellipsoid (positive-definite quadratic part after normalisation)."""
    X, Y, Z = x.T
    design = np.column_stack([X * X, Y * Y, Z * Z, 2 * X * Y, 2 * X * Z, 2 * Y * Z, 2 * X, 2 * Y, 2 * Z])
    sv = np.linalg.svd(design, compute_uv=False)
    if sv[-1] < 1e-8 * sv[0]:
        return None  # under-determined (e.g. points on two planes only)
    v, *_ = np.linalg.lstsq(design, np.ones(len(x)), rcond=None)
    a, b, c, d, e, f, g, h, i = v
    m = np.array([[a, d, e], [d, b, f], [e, f, c]])
    gv = np.array([g, h, i])
    try:
        centre = -np.linalg.solve(m, gv)
    except np.linalg.LinAlgError:
        return None
    # (p - c)ᵀ M (p - c) = 1 + cᵀ M c
    k = 1.0 + float(centre @ m @ centre)
    if k <= 0:
        return None
    evals, evecs = np.linalg.eigh(m / k)
    if np.any(evals <= 0):
        return None
    axes = 1.0 / np.sqrt(evals)
    if np.linalg.det(evecs) < 0:
        evecs[:, 0] = -evecs[:, 0]
    return Ellipsoid(centre, axes, evecs, kind="ellipsoid")


def _algebraic_sphere(x: NDArray[np.float64]) -> Ellipsoid:
    """``|p|² = 2 c·p + k`` by least squares."""
    design = np.column_stack([2 * x, np.ones(len(x))])
    sol, *_ = np.linalg.lstsq(design, np.sum(x * x, axis=1), rcond=None)
    c, k = sol[:3], sol[3]
    r2 = k + float(c @ c)
    if r2 <= 0:
        raise ValueError("no sphere fits the contour points")
    return sphere(c, float(np.sqrt(r2)))


def _circle_sphere(x: NDArray[np.float64]) -> Ellipsoid:
    """Points on one plane: the circle through them (least squares), as the sphere having it as a great circle."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean)
    e1, e2 = vt[0], vt[1]
    uv = np.column_stack([(x - mean) @ e1, (x - mean) @ e2])
    design = np.column_stack([2 * uv, np.ones(len(uv))])
    sol, *_ = np.linalg.lstsq(design, np.sum(uv * uv, axis=1), rcond=None)
    c2, k = sol[:2], sol[2]
    r2 = k + float(c2 @ c2)
    if r2 <= 0:
        raise ValueError("no circle fits the contour points")
    return sphere(mean + c2[0] * e1 + c2[1] * e2, float(np.sqrt(r2)))


def _rotvec_to_matrix(w: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rodrigues' formula: the rotation by ``|w|`` radians about ``w``."""
    theta = float(np.linalg.norm(w))
    if theta < 1e-12:
        return np.eye(3)
    k = w / theta
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(theta) * kx + (1.0 - np.cos(theta)) * (kx @ kx)


def _refine(x: NDArray[np.float64], start: Ellipsoid, *, sphere_only: bool) -> Ellipsoid:
    """Non-linear least squares of the radial distances (centre, log axes, rotation vector relative to start)."""
    from scipy.optimize import least_squares

    r0 = start.rotation

    def unpack(v: NDArray[np.float64]) -> Ellipsoid:
        if sphere_only:
            return sphere(v[:3], float(np.exp(v[3])))
        return Ellipsoid(v[:3], np.exp(v[3:6]), _rotvec_to_matrix(v[6:9]) @ r0)

    def residual(v: NDArray[np.float64]) -> NDArray[np.float64]:
        return unpack(v).radial_distance(x)

    if sphere_only:
        v0 = np.concatenate([start.centre, [np.log(start.axes.mean())]])
    else:
        v0 = np.concatenate([start.centre, np.log(start.axes), np.zeros(3)])
    sol = least_squares(residual, v0, method="lm" if len(x) > len(v0) else "trf", x_scale=1.0)
    out = unpack(sol.x)
    # keep the refinement only when it helps (it always should; guards against a diverged solution)
    if np.sum(out.radial_distance(x) ** 2) <= np.sum(start.radial_distance(x) ** 2) + 1e-12:
        return Ellipsoid(out.centre, out.axes, out.rotation, kind=start.kind)
    return start


# ---------------------------------------------------------------------------------------------------------------
# normals, sampling, orientations
# ---------------------------------------------------------------------------------------------------------------


def ellipsoid_normals(ellipsoid: Ellipsoid, points: ArrayLike) -> NDArray[np.float64]:
    """Outward unit normals ``(n, 3)`` of the ellipsoid's level surface through each point ``(n, 3)`` Å (on the
    surface: the surface normal): the gradient of ``|q|²``, ``R · diag(axes)⁻¹ · q``."""
    q = ellipsoid.local(points)
    n = (q / ellipsoid.axes) @ ellipsoid.rotation.T
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("the normal is undefined at the ellipsoid's centre")
    return n / norm


def sample_surface(ellipsoid: Ellipsoid, spacing_A: float, *, seed: int = 0, oversampling: float = 6.0,
                   z_range_A: tuple[float, float] | None = None,
                   box_A: tuple[ArrayLike, ArrayLike] | None = None,
                   max_candidates: int = 400_000) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Points spread evenly on the surface, about ``spacing_A`` apart, with their outward normals.

    Dense candidates uniform in area (``oversampling²`` per ``spacing_A²``; rejection sampling of the mapped unit
    sphere) are thinned greedily in a random order (``seed``): a candidate is kept when no kept point lies
    closer than ``spacing_A`` (straight-line distance). Hence every two samples are at least ``spacing_A``
    apart and every surface candidate lies within ``spacing_A`` of a sample (nearest-neighbour distances
    typically 1.0-1.3 × ``spacing_A``). ``z_range_A`` ``(z_min, z_max)`` restricts the samples to that z range,
    ``box_A`` ``(lo (3,), hi (3,))`` to that box (e.g. the tomogram): the candidates outside are dropped before
    the thinning, so that the region kept is covered at the same spacing even when it is a band thinner than
    the spacing (a few clicked slices give a ring of particles).

    Returns ``(points (n, 3), normals (n, 3))`` float64, Å and unit vectors.
    """
    if not spacing_A > 0:
        raise ValueError(f"spacing_A must be positive, got {spacing_A}")
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    n_target = int(np.clip(ellipsoid.area_A2() / spacing_A**2 * oversampling**2, 64, max_candidates))
    a = ellipsoid.axes
    # area element of u -> diag(a) u on the unit sphere: a1 a2 a3 |u / a|; accept proportionally
    j_max = 1.0 / float(a.min())
    chunks: list[NDArray[np.float64]] = []
    have = 0
    while have < n_target:
        u = rng.normal(size=(max(2 * (n_target - have), 64), 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        j = np.linalg.norm(u / a, axis=1)
        keep = rng.random(len(u)) * j_max < j
        chunks.append(u[keep])
        have += int(keep.sum())
    u = np.concatenate(chunks)[:n_target]
    cand = ellipsoid.surface_point(u)
    inside = np.ones(len(cand), dtype=bool)
    if z_range_A is not None:
        z0, z1 = sorted(float(v) for v in z_range_A)
        inside &= (cand[:, 2] >= z0) & (cand[:, 2] <= z1)
    if box_A is not None:
        lo, hi = (np.asarray(v, dtype=np.float64).reshape(3) for v in box_A)
        inside &= np.all((cand >= lo) & (cand <= hi), axis=1)
    cand = cand[inside]
    if len(cand) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    tree = cKDTree(cand)
    removed = np.zeros(len(cand), dtype=bool)
    kept: list[int] = []
    for i in rng.permutation(len(cand)):
        if removed[i]:
            continue
        kept.append(int(i))
        removed[tree.query_ball_point(cand[i], r=spacing_A * (1.0 - 1e-9))] = True
    pts = cand[np.sort(np.asarray(kept, dtype=int))]
    return pts, ellipsoid_normals(ellipsoid, pts)


def normals_to_euler(normals: ArrayLike, spin_deg: ArrayLike | None = None) -> NDArray[np.float64]:
    """RELION Euler angles ``(n, 3)`` (rot, tilt, psi) in degrees whose matrix ``A`` has ``A · (0, 0, 1) = normal``.

    ``normals``: ``(n, 3)`` (normalised here). With ``A · z = (−cos psi sin tilt, sin psi sin tilt, cos tilt)``:
    ``tilt = arccos(n_z)`` in [0, 180], ``psi = atan2(n_y, −n_x)``; ``rot`` = ``spin_deg`` (scalar or ``(n,)``,
    default 0), the particle's free spin about the normal. At the poles (n = ±z) psi is 0 and only rot + psi
    matters.
    """
    n = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("normals must be non-zero vectors")
    n = n / norm
    tilt = np.degrees(np.arccos(np.clip(n[:, 2], -1.0, 1.0)))
    in_plane = np.hypot(n[:, 0], n[:, 1])
    psi = np.where(in_plane > 1e-12, np.degrees(np.arctan2(n[:, 1], -n[:, 0])), 0.0)
    rot = np.broadcast_to(np.asarray(0.0 if spin_deg is None else spin_deg, dtype=np.float64), tilt.shape)
    rot = (rot + 180.0) % 360.0 - 180.0
    return np.column_stack([rot, tilt, psi])


def particle_axes(angles_deg: ArrayLike) -> NDArray[np.float64]:
    """The particles' z axes in the tomogram, ``A · (0, 0, 1)`` ``(n, 3)``, of RELION angles ``(n, 3)`` degrees
    (the inverse of :func:`normals_to_euler` for the direction)."""
    return euler_to_matrix(np.asarray(angles_deg, dtype=np.float64).reshape(-1, 3))[:, :, 2]
