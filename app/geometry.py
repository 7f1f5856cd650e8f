"""The one record of acquisition geometry that every tomoguide step reads and writes.

Geometry is most often lost between tools (tilt-axis angle, tilt-angle sign and offset, defocus
handedness, Z flip, pixel size at each binning). :class:`TiltSeriesGeometry` keeps all of it in one typed,
JSON-serialisable record (pydantic v2) and converts to and from IMOD (.xf/.tlt) and RELION 5 per-tilt
columns. Conventions, all stated once here:

Frames and units
    * **Raw image**: a view as recorded, pixel coordinates ``(x, y)`` with x along image columns and y along
      rows (0-based pixel index). Its centre is at ``((nx - 1) / 2, (ny - 1) / 2)``, IMOD's centre of
      rotation (IMOD's coordinate ``nx / 2`` with pixel centres at ``i + 0.5``). Transforms act on raw
      coordinates measured from that centre.
    * **Aligned image**: the raw image rotated and shifted so that the tilt axis is the image Y axis and
      the tomogram centre projects onto the image centre.
    * **Specimen (tomogram) frame**: ``(x, y, z)`` from the tomogram centre, the tilt axis along y,
      in pixels at the record's binning (or Å when multiplied by :meth:`TiltSeriesGeometry.pixel_size_at`).
      In a tomogram array of shape ``(nz, ny, nx)`` the centre is the voxel coordinate
      ``((nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2)`` (the same rule as the image centre; the simulator's truth
      volume and every reconstruction follow it; RELION's ``n / 2`` is converted where its files are written).
    * ``pixel_size_A`` is the pixel size of the *unbinned* images; ``binning`` is the record's binning
      relative to them (a float), so pixels of the record are ``pixel_size_A * binning`` Å. Shapes and
      shifts in the record are in pixels at the record's binning.

Angles
    * ``tilt_axis_deg``: in-plane angle of the tilt axis in the raw image, measured from the image +Y axis,
      counter-clockwise positive (SerialEM's "Tilt axis angle", e.g. 85.3° for EMPIAR-10164).
    * Each view's transform (IMOD ``.xf`` convention) maps raw to aligned coordinates:
      ``aligned = A raw + d`` with ``A = [[A11, A12], [A21, A22]]``; for a pure rotation
      ``A = R(-tilt_axis_deg)`` where ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` (counter-clockwise by a),
      so a point on the raw tilt axis, ``r (-sin θ, cos θ)``, goes to ``(0, r)`` on the aligned Y axis.
      The "specimen shift" ``s = -A⁻¹ d`` is where the aligned centre lies in the raw image (px from the
      raw centre); RELION 5's ``rlnTomoX/YShiftAngst`` are ``s`` in Å.
    * ``tilt_angles_deg``: nominal stage tilt per view; views are in angle order (ascending, as IMOD
      stacks are). True tilt = nominal + ``tilt_offset_deg`` (what IMOD's ``.tlt`` holds).
    * **Tilt sign**: a view with true tilt β projects the specimen point p as
      ``aligned_xy = [Ry(β) Rx(x_tilt_deg) p]_xy`` with the right-handed rotations
      ``Ry(β) = [[cos β, 0, sin β], [0, 1, 0], [-sin β, 0, cos β]]`` and
      ``Rx(α) = [[1, 0, 0], [0, cos α, -sin α], [0, sin α, cos α]]``: **+β moves a point at +z towards +x**
      in the aligned image (``x' = x cos β + z sin β``). This is RELION 5's projection model
      (``Tomogram::setProjectionMatrix``: image = S(shift) S(centre) Rz(ZRot) Ry(YTilt) Rx(XTilt) S(-centre),
      with the standard right-handed matrices, as its inverse ``getProjectionAnglesFromMatrix``
      (``YTilt = asin(-M[2,0])``, ``ZRot = atan2(M[1,0], M[0,0])``) confirms). teamtomo's IMOD -> RELION
      script does the same as :meth:`TiltSeriesGeometry.to_relion5`: YTilt = ``.tlt`` angle, ZRot = the
      rotation of ``A⁻¹``, shifts ``A⁻¹(-d)`` less half a pixel for the centre (see below).
    * ``x_tilt_deg``: tilt of the specimen about X before the tilt series, written to RELION's XTilt. IMOD's
      XAXISTILT (tilt.com) is meant to go here; its sign relative to RELION's XTilt has not been checked
      against IMOD's ``tilt`` program, so check a reconstruction before relying on a non-zero value.

Defocus and handedness
    * ``defocus_handedness`` (+1/-1; RELION's ``rlnTomoHand``): the defocus of a specimen point is the
      view's defocus plus ``defocus_handedness * depth_A``, with ``depth`` the third row of
      :meth:`TiltSeriesGeometry.projection_matrices` (positive defocus = underfocus, in Å). RELION 5's
      ``Tomogram::getCtf`` does exactly this (``Δf += rlnTomoHand · pixel · depth`` with the projection model
      above).
    * **Default −1**, the value of real SerialEM data read in IMOD's frame (MRC rows as stored, TIFF/EER rows
      flipped: :mod:`tomoguide.compute.io.movies`): at positive tilt the aligned image's +x side lies deeper
      and is more underfocused. IMOD's ``ctfphaseflip`` (strip defocus ``= Δf + (x − nx/2) · tan β · pixel``:
      "the right side of an aligned image is both lower in the scope and at a higher underfocus"), RELION 5
      (import default ``rlnTomoHand = −1``, "the same as the tutorial dataset: EMPIAR-10164", SerialEM MRC
      frames with mdoc axis 85.3°; ``relion_tomo_import``: "In our experiments, it has always been −1") and
      WarpTools' RELION export agree. +1 (AreTomo3's convention, ``CAreTomoMain.cpp``) stays available for a
      microscope or a reading of the images that is mirrored; the ctf_estimate step's tilt-direction check
      tests the record's value against the Thon rings of the tilted views.
    * ``z_flip``: the tomogram volume is stored with z reversed relative to the specimen frame above
      (``projection_matrices(volume_coordinates=True)`` then negates z before projecting).

RELION 5 image centre
    RELION centres images at ``n // 2`` (0-based) where this record (IMOD) uses ``(n - 1) / 2``; the
    RELION conversions add the difference (-0.5 px for even sizes) to the shifts so that both models send
    a specimen point to the same raw pixel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Optics",
    "TiltSeriesGeometry",
    "RELION5_COLUMNS",
    "rotation_2d",
    "xf_rows_to_matrices",
    "xf_matrices_to_rows",
    "rotation_angle_deg",
]

RELION5_COLUMNS = ("rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst")


# --------------------------------------------------------------------------------------------------------
# Small array helpers (numpy, float64)
# --------------------------------------------------------------------------------------------------------


def rotation_2d(angle_deg: Any) -> np.ndarray:
    """Counter-clockwise rotation matrices ``R(a) = [[cos a, -sin a], [sin a, cos a]]``: (..., 2, 2)."""
    a = np.radians(np.asarray(angle_deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _rx(a_deg: Any) -> np.ndarray:
    a = np.radians(np.asarray(a_deg, dtype=np.float64))
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _ry(a_deg: Any) -> np.ndarray:
    a = np.radians(np.asarray(a_deg, dtype=np.float64))
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rz(a_deg: Any) -> np.ndarray:
    a = np.radians(np.asarray(a_deg, dtype=np.float64))
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def xf_rows_to_matrices(rows: Any) -> np.ndarray:
    """IMOD rows (n, 6) ``A11 A12 A21 A22 DX DY`` -> (n, 2, 3) ``[[A11, A12, DX], [A21, A22, DY]]``."""
    r = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return np.stack([r[:, [0, 1, 4]], r[:, [2, 3, 5]]], axis=1)


def xf_matrices_to_rows(m: Any) -> np.ndarray:
    """(n, 2, 3) ``[[A11, A12, DX], [A21, A22, DY]]`` -> IMOD rows (n, 6) ``A11 A12 A21 A22 DX DY``."""
    a = np.asarray(m, dtype=np.float64).reshape(-1, 2, 3)
    return np.stack([a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1], a[:, 0, 2], a[:, 1, 2]], axis=1)


def rotation_angle_deg(a: Any) -> np.ndarray:
    """Rotation angle (degrees, counter-clockwise) of 2x2 matrices (..., 2, 2), ignoring scale/stretch:
    ``atan2(A21 - A12, A11 + A22)`` (exact for a scaled rotation)."""
    m = np.asarray(a, dtype=np.float64)
    return np.degrees(np.arctan2(m[..., 1, 0] - m[..., 0, 1], m[..., 0, 0] + m[..., 1, 1]))


def _circular_mean_deg(angles: np.ndarray) -> float:
    r = np.radians(angles)
    return float(np.degrees(np.arctan2(np.sin(r).mean(), np.cos(r).mean())))


# --------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------


class Optics(BaseModel):
    """Microscope optics: acceleration voltage (kV), spherical aberration (mm), amplitude contrast (0-1)."""

    model_config = ConfigDict(extra="forbid")

    voltage_kV: float = Field(300.0, gt=0, description="Acceleration voltage, kV")
    cs_mm: float = Field(2.7, ge=0, description="Spherical aberration, mm")
    amplitude_contrast: float = Field(0.1, ge=0, lt=1, description="Amplitude contrast fraction")


def _numbers(v: Any, what: str) -> np.ndarray:
    """``v`` as a float64 array; a value that is not numbers (a dict, text, nested lists of other lengths) is a
    ValueError (pydantic then names the field) instead of numpy's TypeError."""
    try:
        return np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"must be {what}") from None


class TiltSeriesGeometry(BaseModel):
    """Acquisition geometry of one tilt series; see the module docstring for every convention.

    Per-view lists (all of length ``n_views``, in view order = ascending nominal tilt):
    ``tilt_angles_deg`` (degrees), ``acquisition_order`` (0-based rank in time), ``prior_dose_e_A2``
    (cumulative e⁻/Å² before the view), ``dose_e_A2`` (e⁻/Å² of the view), ``nominal_defocus_um``
    (µm, positive = underfocus), ``xf`` ((n, 2, 3) IMOD transforms, px at the record's binning; ``None``
    until aligned: then :meth:`xf_array` gives the pure rotation by ``-tilt_axis_deg``), ``excluded``.
    The optional lists may be ``None`` (unknown).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    pixel_size_A: float = Field(gt=0, description="Pixel size of the unbinned images, Å")
    binning: float = Field(1.0, gt=0, description="Binning of this record relative to the unbinned images")
    image_shape_px: tuple[int, int] = Field(description="(ny, nx) of the images at the record's binning, px")
    optics: Optics = Field(default_factory=Optics)
    tilt_axis_deg: float = Field(0.0, description="Tilt-axis angle from image +Y, counter-clockwise, degrees")
    tilt_angles_deg: list[float] = Field(description="Nominal stage tilt per view, ascending, degrees")
    tilt_offset_deg: float = Field(0.0, description="Added to nominal tilts to give true tilts, degrees")
    x_tilt_deg: float = Field(0.0, description="Specimen tilt about X before the series (IMOD XAXISTILT), deg")
    acquisition_order: list[int] | None = None
    prior_dose_e_A2: list[float] | None = None
    dose_e_A2: list[float] | None = None
    nominal_defocus_um: list[float] | None = None
    xf: list[list[list[float]]] | None = None
    excluded: list[bool] = Field(default_factory=list)
    defocus_handedness: Literal[1, -1] = -1  # real SerialEM data (module docstring)
    z_flip: bool = False

    # ---- validation -----------------------------------------------------------------------------------

    @field_validator("xf", mode="before")
    @classmethod
    def _xf_from_array(cls, v: Any) -> Any:
        if v is None:
            return None
        arr = _numbers(v, "xf")
        if arr.ndim == 2 and arr.shape[1] == 6:
            arr = xf_rows_to_matrices(arr)
        if arr.ndim != 3 or arr.shape[1:] != (2, 3):
            raise ValueError(f"xf must have shape (n, 2, 3) or (n, 6), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("xf contains non-finite values")
        return arr.tolist()

    @field_validator("tilt_angles_deg", "prior_dose_e_A2", "dose_e_A2", "nominal_defocus_um", mode="before")
    @classmethod
    def _list_from_array(cls, v: Any) -> Any:
        if v is None:
            return None
        return _numbers(v, "a list of numbers").reshape(-1).tolist()

    @field_validator("acquisition_order", mode="before")
    @classmethod
    def _order_from_array(cls, v: Any) -> Any:
        if v is None:
            return None
        arr = _numbers(v, "a list of whole numbers").reshape(-1)
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError("must be a list of whole numbers")
        return [int(i) for i in arr]

    @field_validator("excluded", mode="before")
    @classmethod
    def _excluded_from_array(cls, v: Any) -> Any:
        if v is None:
            return []
        arr = np.asarray(v, dtype=object).reshape(-1)
        if not all(isinstance(b, (bool, np.bool_, int, np.integer)) and b in (0, 1) for b in arr):
            raise ValueError("must be a list of true/false values")
        return [bool(b) for b in arr]

    @model_validator(mode="after")
    def _check(self) -> TiltSeriesGeometry:
        n = len(self.tilt_angles_deg)
        if n == 0:
            raise ValueError("tilt_angles_deg is empty")
        if any(s <= 0 for s in self.image_shape_px):
            raise ValueError(f"image_shape_px must be positive, got {self.image_shape_px}")
        t = np.asarray(self.tilt_angles_deg)
        if not np.all(np.isfinite(t)):
            raise ValueError("tilt_angles_deg contains non-finite values")
        if np.any(np.diff(t) < 0):
            raise ValueError("tilt_angles_deg must be in ascending order (views are kept in angle order)")
        for field in ("acquisition_order", "prior_dose_e_A2", "dose_e_A2", "nominal_defocus_um", "xf"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"{field} has {len(value)} entries, tilt_angles_deg has {n}")
        if self.acquisition_order is not None and sorted(self.acquisition_order) != list(range(n)):
            raise ValueError("acquisition_order must be a permutation of 0..n_views-1")
        for field in ("prior_dose_e_A2", "dose_e_A2"):
            value = getattr(self, field)
            if value is not None and any(d < 0 or not np.isfinite(d) for d in value):
                raise ValueError(f"{field} must be finite and >= 0 e/A^2")
        if not self.excluded:
            self.excluded = [False] * n
        elif len(self.excluded) != n:
            raise ValueError(f"excluded has {len(self.excluded)} entries, tilt_angles_deg has {n}")
        return self

    # ---- basic properties ------------------------------------------------------------------------------

    @property
    def n_views(self) -> int:
        return len(self.tilt_angles_deg)

    def pixel_size_at(self, binning: float) -> float:
        """Pixel size in Å of images binned by ``binning`` relative to the unbinned ones."""
        if binning <= 0:
            raise ValueError(f"binning must be > 0, got {binning}")
        return self.pixel_size_A * binning

    @property
    def pixel_size_binned_A(self) -> float:
        """Pixel size in Å at the record's binning."""
        return self.pixel_size_at(self.binning)

    def true_tilt_deg(self) -> np.ndarray:
        """(n,) float64 true tilt angles in degrees: nominal + ``tilt_offset_deg``."""
        return np.asarray(self.tilt_angles_deg, dtype=np.float64) + self.tilt_offset_deg

    def xf_array(self) -> np.ndarray:
        """(n, 2, 3) float64 IMOD transforms (px at the record's binning); rotation-only if not aligned."""
        if self.xf is not None:
            return np.asarray(self.xf, dtype=np.float64)
        a = rotation_2d(-self.tilt_axis_deg)
        out = np.zeros((self.n_views, 2, 3))
        out[:, :, :2] = a
        return out

    def image_centre_px(self) -> np.ndarray:
        """(2,) raw-image centre ``((nx - 1) / 2, (ny - 1) / 2)`` as (x, y), 0-based px (IMOD's)."""
        ny, nx = self.image_shape_px
        return np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])

    def specimen_shifts_px(self) -> np.ndarray:
        """(n, 2) ``s = -A⁻¹ d``: where the aligned centre lies in each raw image, px from its centre."""
        m = self.xf_array()
        return -np.linalg.solve(m[:, :, :2], m[:, :, 2:])[..., 0]

    # ---- binning -------------------------------------------------------------------------------------

    def at_binning(self, new_binning: float) -> TiltSeriesGeometry:
        """The same geometry at another binning: shifts scaled by ``binning / new_binning``, image shape
        rounded to the nearest pixel (``round(n * binning / new_binning)``, at least 1)."""
        if new_binning <= 0:
            raise ValueError(f"binning must be > 0, got {new_binning}")
        f = self.binning / new_binning
        shape = tuple(max(1, int(round(s * f))) for s in self.image_shape_px)
        update: dict[str, Any] = {"binning": float(new_binning), "image_shape_px": shape}
        if self.xf is not None:
            m = self.xf_array()
            m[:, :, 2] *= f
            update["xf"] = m
        return self.model_validate({**self.model_dump(), **update})

    # ---- IMOD ----------------------------------------------------------------------------------------

    def to_imod(self) -> tuple[np.ndarray, np.ndarray]:
        """IMOD ``.xf`` rows (n, 6) (px at the record's binning) and ``.tlt`` true tilts (n,) in degrees."""
        return xf_matrices_to_rows(self.xf_array()), self.true_tilt_deg()

    @classmethod
    def from_imod(
        cls,
        xf_rows: Any,
        tlt: Any,
        *,
        name: str,
        pixel_size_A: float,
        image_shape_px: tuple[int, int],
        binning: float = 1.0,
        tilt_offset_deg: float = 0.0,
        **fields: Any,
    ) -> TiltSeriesGeometry:
        """Record from IMOD transforms (n, 6) and true tilts (n,) (``.tlt``, ascending) at ``binning``.

        ``tilt_axis_deg`` is the circular mean over views of ``-rotation angle`` of the xf matrices;
        nominal tilts are ``tlt - tilt_offset_deg``. Other fields (optics, doses, ...) pass through.
        """
        rows = np.asarray(xf_rows, dtype=np.float64).reshape(-1, 6)
        t = np.asarray(tlt, dtype=np.float64).reshape(-1)
        if rows.shape[0] != t.shape[0]:
            raise ValueError(f"{rows.shape[0]} xf rows but {t.shape[0]} tilt angles")
        m = xf_rows_to_matrices(rows)
        axis = -_circular_mean_deg(rotation_angle_deg(m[:, :, :2]))
        return cls(
            name=name, pixel_size_A=pixel_size_A, binning=binning, image_shape_px=image_shape_px,
            tilt_axis_deg=axis, tilt_angles_deg=t - tilt_offset_deg, tilt_offset_deg=tilt_offset_deg,
            xf=m, **fields,
        )

    def with_xf_from_axis_and_shifts(self, tilt_axis_deg: float, shifts_px: Any) -> TiltSeriesGeometry:
        """A copy whose transforms are the rotation by ``-tilt_axis_deg`` and the given specimen shifts.

        ``shifts_px`` (n, 2) are the specimen shifts ``s`` (x, y) in px at the record's binning: where the
        aligned centre lies in each raw image, from the raw centre. Then ``A = R(-tilt_axis_deg)`` and
        ``d = -A s``, i.e. ``aligned = R(-θ) (raw - s)``: a raw point ``s + r (-sin θ, cos θ)`` on the
        tilt axis maps to ``(0, r)`` on the aligned Y axis.
        """
        s = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
        if s.shape[0] != self.n_views:
            raise ValueError(f"{s.shape[0]} shifts for {self.n_views} views")
        a = rotation_2d(-tilt_axis_deg)
        m = np.zeros((self.n_views, 2, 3))
        m[:, :, :2] = a
        m[:, :, 2] = -(s @ a.T)
        return self.model_validate({**self.model_dump(), "tilt_axis_deg": float(tilt_axis_deg), "xf": m})

    # ---- RELION 5 ------------------------------------------------------------------------------------

    def _relion_centre_offset(self) -> np.ndarray:
        """RELION image centre (n // 2) minus ours ((n - 1) / 2), (x, y) px."""
        ny, nx = self.image_shape_px
        return np.array([nx // 2 - (nx - 1) / 2.0, ny // 2 - (ny - 1) / 2.0])

    def to_relion5(self) -> dict[str, np.ndarray]:
        """RELION 5 per-tilt columns (in the record's view order), each (n,) float64.

        ``rlnTomoXTilt`` = ``x_tilt_deg``; ``rlnTomoYTilt`` = true tilt; ``rlnTomoZRot`` = rotation angle of
        ``A⁻¹`` (the per-view tilt axis); ``rlnTomoX/YShiftAngst`` = (``s`` - RELION-minus-IMOD centre
        offset) x pixel size at the record's binning. Exact for rotation-only transforms; a magnification
        or stretch in ``xf`` cannot be expressed in these columns and is dropped.
        """
        m = self.xf_array()
        zrot = -rotation_angle_deg(m[:, :, :2])
        shift_A = (self.specimen_shifts_px() - self._relion_centre_offset()) * self.pixel_size_binned_A
        n = self.n_views
        return {
            "rlnTomoXTilt": np.full(n, self.x_tilt_deg),
            "rlnTomoYTilt": self.true_tilt_deg(),
            "rlnTomoZRot": zrot,
            "rlnTomoXShiftAngst": shift_A[:, 0].copy(),
            "rlnTomoYShiftAngst": shift_A[:, 1].copy(),
        }

    @classmethod
    def from_relion5(
        cls,
        columns: Mapping[str, Any],
        *,
        name: str,
        pixel_size_A: float,
        image_shape_px: tuple[int, int],
        binning: float = 1.0,
        tilt_offset_deg: float = 0.0,
        **fields: Any,
    ) -> TiltSeriesGeometry:
        """Record from RELION 5 per-tilt columns (a DataFrame or a mapping of the :data:`RELION5_COLUMNS`).

        ``pixel_size_A`` is the unbinned pixel size and ``binning`` the binning of the images the columns
        refer to (RELION's ``rlnTomoTiltSeriesPixelSize`` = ``pixel_size_A * binning``). Rows are sorted by
        ascending tilt (views in angle order); per-view ``fields`` must be given in that sorted order.
        ``rlnTomoXTilt`` must be the same for all views (it becomes ``x_tilt_deg``).
        """
        missing = [c for c in RELION5_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"RELION 5 columns missing: {', '.join(missing)}")
        col = {c: np.asarray(columns[c], dtype=np.float64).reshape(-1) for c in RELION5_COLUMNS}
        order = np.argsort(col["rlnTomoYTilt"], kind="stable")
        col = {c: v[order] for c, v in col.items()}
        xt = col["rlnTomoXTilt"]
        if np.ptp(xt) > 1e-6:
            raise ValueError(f"rlnTomoXTilt varies between views ({xt.min()} .. {xt.max()}); one value expected")
        shell = cls(
            name=name, pixel_size_A=pixel_size_A, binning=binning, image_shape_px=image_shape_px,
            tilt_angles_deg=col["rlnTomoYTilt"] - tilt_offset_deg,
        )
        s = np.stack([col["rlnTomoXShiftAngst"], col["rlnTomoYShiftAngst"]], 1) / shell.pixel_size_binned_A
        s = s + shell._relion_centre_offset()
        a = rotation_2d(-col["rlnTomoZRot"])  # (n, 2, 2): A = R(-ZRot)
        m = np.concatenate([a, -(a @ s[:, :, None])], axis=2)
        axis = _circular_mean_deg(col["rlnTomoZRot"])
        return cls(
            name=name, pixel_size_A=pixel_size_A, binning=binning, image_shape_px=image_shape_px,
            tilt_axis_deg=axis, tilt_angles_deg=col["rlnTomoYTilt"] - tilt_offset_deg,
            tilt_offset_deg=tilt_offset_deg, x_tilt_deg=float(xt[0]), xf=m, **fields,
        )

    # ---- projection ----------------------------------------------------------------------------------

    def aligned_projection_matrices(self) -> np.ndarray:
        """(n, 3, 4) matrices taking homogeneous specimen points ``(x, y, z, 1)`` (px at the record's
        binning, tomogram centre origin) to ``(x_aligned, y_aligned, depth)``, aligned-image coordinates
        from the image centre: ``Ry(true tilt) Rx(x_tilt_deg)``."""
        r = _ry(self.true_tilt_deg()) @ _rx(self.x_tilt_deg)
        out = np.zeros((self.n_views, 3, 4))
        out[:, :, :3] = r
        return out

    def projection_matrices(self, *, volume_coordinates: bool = False) -> np.ndarray:
        """(n, 3, 4) float64 matrices P taking a homogeneous specimen point ``(x, y, z, 1)`` in px at the
        record's binning, tomogram centre origin, tilt axis along y, to ``(u, v, depth)``: ``(u, v)`` the
        0-based pixel coordinates (x = column, y = row) of the point in each **raw** view, ``depth`` its
        coordinate along the beam after tilting (px; see ``defocus_handedness``).

        ``P = [C + A⁻¹ (Ry(β) Rx(α) p)_xy - A⁻¹ d ; (Ry(β) Rx(α) p)_z]`` with C the image centre, i.e. the
        inverse of the view's xf applied to the aligned-frame projection. With ``volume_coordinates=True``
        and ``z_flip`` set, z of the input is negated first (points read from the stored volume).
        For points in Å, divide x, y, z by :attr:`pixel_size_binned_A` first.
        """
        aligned = self.aligned_projection_matrices()
        m = self.xf_array()
        ainv = np.linalg.inv(m[:, :, :2])
        out = np.zeros_like(aligned)
        out[:, :2, :3] = ainv @ aligned[:, :2, :3]
        out[:, :2, 3] = self.image_centre_px() - (ainv @ m[:, :, 2:])[..., 0]
        out[:, 2, :] = aligned[:, 2, :]
        if volume_coordinates and self.z_flip:
            out[:, :, 2] *= -1.0
        return out

    def project(self, points_px: Any, *, volume_coordinates: bool = False) -> np.ndarray:
        """Project (m, 3) specimen points (px, tomogram centre origin) into every view: (n, m, 3) of
        ``(u, v, depth)`` as in :meth:`projection_matrices`."""
        p = np.asarray(points_px, dtype=np.float64).reshape(-1, 3)
        ph = np.concatenate([p, np.ones((p.shape[0], 1))], axis=1)
        return np.einsum("nij,mj->nmi", self.projection_matrices(volume_coordinates=volume_coordinates), ph)

    def defocus_offset_A(self, points_px: Any) -> np.ndarray:
        """(n, m) defocus change in Å of specimen points relative to the tomogram centre in each view:
        ``defocus_handedness * depth * pixel size`` (positive = more underfocus)."""
        depth = self.project(points_px)[..., 2]
        return self.defocus_handedness * depth * self.pixel_size_binned_A

    # ---- convenience ---------------------------------------------------------------------------------

    def included_views(self) -> np.ndarray:
        """(k,) int64 0-based indices of views not excluded."""
        return np.flatnonzero(~np.asarray(self.excluded, dtype=bool))

    def excluded_view_list(self) -> list[int]:
        """1-based numbers of excluded views, as IMOD's EXCLUDELIST counts them."""
        return [int(i) + 1 for i in np.flatnonzero(np.asarray(self.excluded, dtype=bool))]

    @classmethod
    def sorted_by_tilt(cls, tilt_angles_deg: Sequence[float]) -> np.ndarray:
        """Stable permutation that puts views in ascending tilt order (the record's view order)."""
        return np.argsort(np.asarray(tilt_angles_deg, dtype=np.float64), kind="stable")
