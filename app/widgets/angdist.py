"""The particles' angular distribution: where their view directions point, as an equal-area 2D histogram.

A particle with RELION Euler angles (rot, tilt, psi) (degrees, :mod:`tomoguide.compute.euler`) is seen along
the reference-frame direction ``d = Aᵀ e_z = (sin tilt cos rot, sin tilt sin rot, cos tilt)`` (psi, the
in-plane angle, does not move it). The histogram uses Lambert's cylindrical equal-area projection: x = rot (°,
−180 to 180), y = cos(tilt) (+1 at the top: tilt 0°; −1 at the bottom: tilt 180°), so that every bin covers the
same solid angle and uniformly random orientations give a flat histogram; the y axis is labelled in tilt
degrees.

With a symmetry group (C_n, D_n, T, O, I; :mod:`tomoguide.compute.symmetry`) the directions can be folded into
one asymmetric unit: of the n equivalent directions ``R_k d`` the one closest to a fixed generic direction
:data:`FOLD_REFERENCE` is kept (the Dirichlet domain around it is an asymmetric unit of the group on the sphere).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF
from PySide6.QtWidgets import QCheckBox, QLabel, QVBoxLayout, QWidget

BACKGROUND = "#202020"
ROT_BINS = 72
COS_BINS = 36
#: a direction fixed by no rotation of the supported groups (tilt 25°, rot 15°): the centre of the folded unit
FOLD_REFERENCE = np.array([np.sin(np.deg2rad(25.0)) * np.cos(np.deg2rad(15.0)),
                           np.sin(np.deg2rad(25.0)) * np.sin(np.deg2rad(15.0)), np.cos(np.deg2rad(25.0))])
TILT_TICKS_DEG = (0, 30, 60, 90, 120, 150, 180)


def view_directions(rot_deg: np.ndarray, tilt_deg: np.ndarray) -> np.ndarray:
    """Unit view directions (n, 3) (x, y, z) in the reference frame from rot and tilt (n,) in degrees."""
    r = np.deg2rad(np.asarray(rot_deg, dtype=np.float64))
    t = np.deg2rad(np.asarray(tilt_deg, dtype=np.float64))
    return np.stack([np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)], axis=-1)


def direction_angles(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) in degrees (rot in (−180, 180], tilt in [0, 180]) of unit directions (n, 3)."""
    d = np.asarray(directions, dtype=np.float64)
    rot = np.rad2deg(np.arctan2(d[..., 1], d[..., 0]))
    tilt = np.rad2deg(np.arccos(np.clip(d[..., 2], -1.0, 1.0)))
    return rot, tilt


def fold_directions(directions: np.ndarray, symmetry: str) -> np.ndarray:
    """Each direction (n, 3) replaced by its symmetry mate ``R_k d`` closest to :data:`FOLD_REFERENCE`."""
    from tomoguide.compute.symmetry import symmetry_matrices

    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    mats = symmetry_matrices(symmetry)
    mates = np.einsum("kij,nj->nki", mats, d)  # (n, k, 3)
    best = np.argmax(mates @ FOLD_REFERENCE, axis=1)
    return mates[np.arange(len(d)), best]


def angular_histogram(rot_deg: np.ndarray, tilt_deg: np.ndarray, *, symmetry: str | None = None,
                      rot_bins: int = ROT_BINS, cos_bins: int = COS_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of view directions on the equal-area grid: ``(counts (cos_bins, rot_bins), rot_edges (°),
    cos_edges)``; counts row 0 is cos(tilt) from −1 (tilt 180°) upwards. Folded into ``symmetry``'s
    asymmetric unit when given (and not C1)."""
    d = view_directions(rot_deg, tilt_deg)
    if symmetry and symmetry.strip().upper() != "C1":
        d = fold_directions(d, symmetry)
    rot, tilt = direction_angles(d)
    rot_edges = np.linspace(-180.0, 180.0, rot_bins + 1)
    cos_edges = np.linspace(-1.0, 1.0, cos_bins + 1)
    counts, _, _ = np.histogram2d(np.cos(np.deg2rad(tilt)), rot, bins=(cos_edges, rot_edges))
    return counts, rot_edges, cos_edges


def asu_bins(symmetry: str, rot_edges: np.ndarray, cos_edges: np.ndarray) -> np.ndarray:
    """Whether each bin's centre direction lies in the asymmetric unit :func:`fold_directions` folds into:
    bool (len(cos_edges) - 1, len(rot_edges) - 1)."""
    rc = 0.5 * (rot_edges[:-1] + rot_edges[1:])
    cc = 0.5 * (cos_edges[:-1] + cos_edges[1:])
    cos_g, rot_g = np.meshgrid(cc, rc, indexing="ij")
    d = view_directions(rot_g.ravel(), np.rad2deg(np.arccos(cos_g.ravel())))
    inside = np.einsum("ni,ni->n", fold_directions(d, symmetry), d) > 1.0 - 1e-9
    return inside.reshape(cos_g.shape)


class TiltAxis(pg.AxisItem):
    """A left axis in cos(tilt) labelled in tilt degrees at :data:`TILT_TICKS_DEG`."""

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list:  # noqa: N802,N803 - Qt API
        ticks = [float(np.cos(np.deg2rad(t))) for t in TILT_TICKS_DEG]
        return [(1.0, [v for v in ticks if minVal - 1e-9 <= v <= maxVal + 1e-9])]

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:  # noqa: N802 - Qt API
        return [f"{np.rad2deg(np.arccos(np.clip(v, -1.0, 1.0))):.0f}°" for v in values]


class AngularDistribution(QWidget):
    """The equal-area histogram of view directions with a colour bar; "fold into the asymmetric unit" check box
    when a symmetry other than C1 is given."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget(axisItems={"left": TiltAxis(orientation="left")})
        self.plot.setObjectName("angdist_plot")
        self.plot.setBackground(BACKGROUND)
        self.plot.setMenuEnabled(False)
        self.plot.setMinimumSize(260, 180)
        self.plot.setLabel("bottom", "rot (°)")
        self.plot.setLabel("left", "tilt (equal-area scale)")
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.plot.getAxis("bottom").setTicks([[(float(v), f"{v}") for v in range(-180, 181, 60)]])
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image_item)
        self.cmap = pg.colormap.get("viridis")
        self.colour_bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=self.cmap, label="particles per bin",
                                          interactive=False, width=12)
        self.colour_bar.setImageItem(self.image_item, insert_in=self.plot.getPlotItem())
        self.fold_box = QCheckBox("Fold into the asymmetric unit")
        self.fold_box.setObjectName("fold_asu")
        self.fold_box.setToolTip("Show each particle's symmetry-equivalent direction inside one asymmetric unit")
        self.fold_box.toggled.connect(lambda _: self._draw())
        self.caption = QLabel("")
        self.caption.setObjectName("angdist_caption")
        self.caption.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.fold_box)
        lay.addWidget(self.caption)
        self._rot = np.zeros(0)
        self._tilt = np.zeros(0)
        self.symmetry = "C1"
        self.counts = np.zeros((COS_BINS, ROT_BINS))
        self.clear()

    def set_angles(self, rot_deg: np.ndarray, tilt_deg: np.ndarray, *, symmetry: str = "C1",
                   fold: bool | None = None) -> None:
        """Show the directions of particles with these rot and tilt angles (n,) in degrees; ``fold`` (default:
        whenever the symmetry is not C1) folds them into the asymmetric unit."""
        self._rot = np.asarray(rot_deg, dtype=np.float64).ravel()
        self._tilt = np.asarray(tilt_deg, dtype=np.float64).ravel()
        if self._rot.shape != self._tilt.shape:
            raise ValueError(f"rot: {self._rot.size} angles but tilt: {self._tilt.size}")
        self.symmetry = (symmetry or "C1").strip().upper()
        foldable = self.symmetry != "C1"
        self.fold_box.blockSignals(True)
        self.fold_box.setEnabled(foldable)
        self.fold_box.setChecked(foldable if fold is None else bool(fold and foldable))
        self.fold_box.blockSignals(False)
        self.setEnabled(True)
        self._draw()

    def folded(self) -> bool:
        return self.fold_box.isChecked() and self.fold_box.isEnabled()

    def _draw(self) -> None:
        n = self._rot.size
        sym = self.symmetry if self.folded() else None
        self.counts, rot_edges, cos_edges = angular_histogram(self._rot, self._tilt, symmetry=sym)
        top = float(max(self.counts.max(), 1.0)) if n else 1.0
        shown = self.counts.copy()
        if sym:  # bins whose centre lies outside the asymmetric unit: transparent
            shown[~asu_bins(sym, rot_edges, cos_edges)] = np.nan
        self.image_item.setImage(shown, levels=(0.0, top), autoLevels=False)
        self.image_item.setRect(QRectF(-180.0, -1.0, 360.0, 2.0))
        self.colour_bar.setLevels((0.0, top))
        if n and sym:
            d = fold_directions(view_directions(self._rot, self._tilt), sym)
            rot, tilt = direction_angles(d)
            c = np.cos(np.deg2rad(tilt))
            dx, dy = 360.0 / ROT_BINS, 2.0 / COS_BINS
            self.plot.setXRange(max(-180.0, rot.min() - 2 * dx), min(180.0, rot.max() + 2 * dx), padding=0.0)
            self.plot.setYRange(max(-1.0, c.min() - 2 * dy), min(1.0, c.max() + 2 * dy), padding=0.0)
        else:
            self.plot.setXRange(-180.0, 180.0, padding=0.0)
            self.plot.setYRange(-1.0, 1.0, padding=0.0)
        if not n:
            self.caption.setText("No particles")
            return
        where = f"folded into the asymmetric unit of {sym}" if sym else "whole sphere"
        solid = 4 * np.pi / (ROT_BINS * COS_BINS)
        self.caption.setText(f"{n} particles, {where}; bins of {solid * (180.0 / np.pi) ** 2:.0f} deg² "
                             f"(equal area), at most {int(self.counts.max())} per bin")

    def clear(self) -> None:
        self._rot = np.zeros(0)
        self._tilt = np.zeros(0)
        self.symmetry = "C1"
        self.fold_box.setEnabled(False)
        self._draw()
        self.caption.setText("")
        self.setEnabled(False)


__all__ = ["AngularDistribution", "angular_histogram", "asu_bins", "fold_directions", "view_directions",
           "direction_angles"]
