"""The ``extract`` and ``extract_fine`` preview: the gallery of extracted particles, a table per tomogram, and one
particle's pseudo-subtomogram with its weights.

Reads the step's output ``particles`` (a folder with :class:`~tomoguide.steps.average_records.ParticleStack`
``particles.json``): ``particles.star`` (one row per particle, in the order of ``gallery.mrc``'s thumbnails),
``gallery.mrc`` (m, B, B) and per particle ``rlnImageName`` (the (B, B, B) pseudo-subtomogram, or the (k, B, B)
sub-tilts of a 2D extraction) and ``rlnCtfImage`` (its CTF² weights on the centred Fourier grid) relative to that
folder. A 2D extraction's particle is back-projected into 3D for display
(:func:`tomoguide.compute.sta.backproject_subtomogram`, with the view matrices the record keeps).

The selected particle is shown as central slices (:class:`~tomoguide.widgets.map_view.CentralSlices`): its
density, and its weights, whose XZ slice shows the missing wedge (the tilt axis is along Y).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from tomoguide.pages.previews import Preview
from tomoguide.project import Project
from tomoguide.widgets.map_view import CentralSlices
from tomoguide.widgets.particle_gallery import ParticleGallery

OUTPUT = "particles"


def particle_names(particles: Any) -> list[str]:
    """Display names of the rows of a particles table: ``rlnTomoParticleName`` when present, else
    ``<rlnTomoName> #<row from 1>``."""
    if "rlnTomoParticleName" in particles.columns:
        return [str(v) for v in particles["rlnTomoParticleName"]]
    return [f"{t} #{i + 1}" for i, t in enumerate(particles["rlnTomoName"].astype(str))]


def per_tomogram_counts(particles: Any) -> list[tuple[str, int, int, int]]:
    """``(tomogram, n particles, n in half 1, n in half 2)`` per tomogram in order of appearance (halves from
    ``rlnRandomSubset``; 0 when the column is absent)."""
    names = particles["rlnTomoName"].astype(str).to_numpy()
    subset = (particles["rlnRandomSubset"].to_numpy() if "rlnRandomSubset" in particles.columns
              else np.zeros(len(names), int))
    out = []
    for t in dict.fromkeys(names):
        sel = names == t
        out.append((str(t), int(sel.sum()), int(np.sum(subset[sel] == 1)), int(np.sum(subset[sel] == 2))))
    return out


def load_particle(record: Any, folder: Path, row: Any) -> tuple[np.ndarray, np.ndarray]:
    """One particle's ``(data (B, B, B), weights (B', B', B'))`` float32 from its row of the particles table
    (paths relative to ``folder``); a 2D extraction's sub-tilts are back-projected into 3D."""
    from tomoguide.compute.io.mrc import read_mrc

    data, _ = read_mrc(folder / str(row["rlnImageName"]))
    weights, _ = read_mrc(folder / str(row["rlnCtfImage"]))
    data = np.asarray(data, np.float32)
    weights = np.asarray(weights, np.float32)
    if int(record.dimensionality) == 2:
        from tomoguide.compute import sta

        tomo = str(row["rlnTomoName"])
        mats = np.asarray(record.info["view_matrices"][tomo], np.float64)
        mats = mats[np.asarray(record.info["views_used"][tomo], int)]
        data, weights = sta.backproject_subtomogram(data, weights, mats)
    return data, weights


class ExtractPreview(Preview):
    """extract / extract_fine: table per tomogram, gallery, the selected particle's slices and weights."""

    COLUMNS = ("Tomogram", "Particles", "Half sets\n1 / 2")

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.record: Any = None
        self.folder = Path()
        self.particles: Any = None
        self.shown_index = -1
        self.summary = QLabel("")
        self.summary.setObjectName("extract_summary")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setObjectName("tomogram_table")
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.gallery = ParticleGallery()
        self.gallery.particle_selected.connect(self.show_particle)
        self.particle_title = QLabel("Click a particle in the gallery")
        self.particle_title.setObjectName("particle_title")
        self.particle_title.setWordWrap(True)
        self.data_slices = CentralSlices("Pseudo-subtomogram (real space)")
        self.weight_slices = CentralSlices("Its CTF² weights (Fourier space, centred): the missing wedge is the "
                                           "empty double cone in XZ", percentiles=(0.0, 99.0))
        # top: the table beside the gallery; below: the chosen particle's slices and weights
        top = QWidget()
        tl = QHBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.table, 0, Qt.AlignmentFlag.AlignTop)
        tl.addWidget(self.gallery, 1)
        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(self.particle_title)
        bl.addWidget(self.data_slices, 1)
        bl.addWidget(self.weight_slices, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(bottom)
        split.setChildrenCollapsible(False)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 5)
        split.setSizes([200, 500])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.note)
        lay.addWidget(self.summary)
        lay.addWidget(split, 1)
        self.refresh()

    def refresh(self) -> None:
        from tomoguide.compute.io.mrc import read_mrc
        from tomoguide.compute.io.star import read_particles_star
        from tomoguide.steps.average_records import ParticleStack

        self.note.setText(self.status_note())
        self.record, self.particles = None, None
        if self.has_results():
            try:
                self.record, self.folder = ParticleStack.load(self.project.output_path(self.step_id, OUTPUT))
                self.particles = read_particles_star(self.folder / self.record.star).particles
                gallery, _ = read_mrc(self.folder / self.record.gallery)
                gallery = np.asarray(gallery, np.float32)
            except (OSError, ValueError, KeyError) as exc:
                self.record, self.particles = None, None
                self.note.setText(f"Cannot read the particles: {exc}")
        if self.record is None or self.particles is None:
            self.summary.setText("")
            self.table.setRowCount(0)
            self.gallery.clear()
            self.data_slices.clear()
            self.weight_slices.clear()
            self.particle_title.setText("")
            return
        rec = self.record
        n = len(self.particles)
        self.summary.setText(
            f"<b>{n} particles</b> from {len(per_tomogram_counts(self.particles))} tomogram(s) · box "
            f"{rec.box_px} px of {rec.voxel_A:.2f} Å ({rec.box_px * rec.voxel_A / 10.0:.1f} nm) · binning "
            f"{rec.binning:g} · " + ("3D pseudo-subtomograms" if int(rec.dimensionality) == 3
                                     else "2D sub-tilt stacks (shown inserted into 3D)"))
        rows = per_tomogram_counts(self.particles)
        self.table.setRowCount(len(rows))
        for r, (name, count, h1, h2) in enumerate(rows):
            cells = [name, str(count), f"{h1} / {h2}"]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c > 0:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        self.table.resizeRowsToContents()
        height = (self.table.horizontalHeader().sizeHint().height() + 2 * self.table.frameWidth()
                  + sum(self.table.rowHeight(r) for r in range(min(len(rows), 5))))
        self.table.setFixedHeight(height)
        self.table.setFixedWidth(self.table.horizontalHeader().length() + 2 * self.table.frameWidth()
                                 + (self.table.verticalScrollBar().sizeHint().width() if len(rows) > 5 else 0))
        names = particle_names(self.particles)
        m = gallery.shape[0] if gallery.ndim == 3 else 1
        self.gallery.set_images(gallery, names[:m],
                                caption=f"{m} of {n} particles (central slab of each) — hover for the name, click "
                                        "to show one below")
        if m:
            self.gallery.select(0)
            self.show_particle(0)

    def show_particle(self, index: int) -> None:
        """Show particle ``index`` (row of particles.star): central slices of its density and of its weights."""
        if self.record is None or self.particles is None or not 0 <= index < len(self.particles):
            return
        row = self.particles.iloc[int(index)]
        name = particle_names(self.particles)[int(index)]
        try:
            data, weights = load_particle(self.record, self.folder, row)
        except (OSError, ValueError, KeyError) as exc:
            self.particle_title.setText(f"{name}: cannot read it: {exc}")
            self.data_slices.clear()
            self.weight_slices.clear()
            return
        coords = [c for c in ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                              "rlnCenteredCoordinateZAngst") if c in row.index]
        where = (" at (" + ", ".join(f"{float(row[c]):.0f}" for c in coords) + ") Å from the tomogram centre"
                 if len(coords) == 3 else "")
        self.particle_title.setText(f"<b>{name}</b>{where}")
        self.data_slices.set_volume(data)
        self.weight_slices.set_volume(weights)
        self.shown_index = int(index)
