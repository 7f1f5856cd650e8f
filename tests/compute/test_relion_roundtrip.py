"""RELION 5 2D-stack particles written in RELION 5's layout from tomoguide's own geometry and simulated particles,
read back (:func:`tomoguide.compute.io.relion_particles.read_relion_particles`) and reconstructed
(:mod:`tomoguide.compute.relion_reconstruct`): the geometry, the poses and the reconstruction are those we started
from (issue 17, entry point (c)).

The per-tilt STAR carries the tilt series' alignment as ``rlnTomoXTilt/YTilt/ZRot`` (what tomoguide's RELION 5
export writes, :meth:`tomoguide.geometry.TiltSeriesGeometry.to_relion5`, checked against RELION's
``Tomogram::setProjectionMatrix`` in ``tests/test_geometry.py``); the particles carry ``rlnTomoSubtomogram*`` angles
and origin offsets, centred coordinates, and stacks holding only the visible tilts (RELION's own extraction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import map_coordinates

from tomoguide.compute.euler import euler_to_matrix
from tomoguide.compute.io.mrc import write_mrc
from tomoguide.compute.io.relion_particles import read_relion_particles
from tomoguide.compute.io.star import write_particles_star, write_star
from tomoguide.compute.relion_reconstruct import (
    reconstruct_relion_particles,
    relion_centred_coordinates_A,
    relion_ctf,
    relion_half_maps,
    relion_poses_A,
    relion_pseudo_subtomograms,
    relion_subtilts,
)
from tomoguide.compute.sta import Reconstructor, Subtilts
from tomoguide.geometry import TiltSeriesGeometry

B, C = 24, 12
PX = 10.0  # Å: stacks and tilt series at the same pixel (binning 1)


def _phantom() -> np.ndarray:
    g = np.arange(B) - C
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    blobs = [((5, 0, 0), 1.0), ((0, 3, 0), 0.7), ((0, 0, -6), 0.5), ((3, 4, 2), 0.9), ((-4, -2, 3), 0.6)]
    return sum(a * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2 + (zz - p[2]) ** 2) / 4.0) for p, a in blobs)


def _project(ref: np.ndarray, a: np.ndarray, t_px: np.ndarray) -> np.ndarray:
    """RELION's model in real space: the reference point r lands at A r + P t (image column u, row v)."""
    g = np.arange(B) - C
    vv, uu, ww = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([uu.ravel(), vv.ravel(), ww.ravel()]).astype(float) - t_px[:, None]
    r = a.T @ pts
    return map_coordinates(ref, [r[2] + C, r[1] + C, r[0] + C], order=1).reshape(B, B, B).sum(2)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_relion5_set(tmp_path_factory.mktemp("relion5"))


def write_relion5_set(root: Path) -> dict:
    """Two tilt series, 12 particles, written as RELION 5 files under ``root``; returns the truth and the root."""
    rng = np.random.default_rng(11)
    ref = _phantom()
    series, truth = [], {"rot": [], "t_px": [], "coords_A": [], "views": {}, "images": [], "visible": []}
    parts = []
    tomo_rows = []
    for k, name in enumerate(("TS_01", "TS_02")):
        tilts = np.linspace(-54, 54, 7)
        g0 = TiltSeriesGeometry(name=name, pixel_size_A=PX, image_shape_px=(400, 380), tilt_angles_deg=tilts,
                                x_tilt_deg=1.5 * (k + 1))
        g = g0.with_xf_from_axis_and_shifts(85.3 - 4 * k, rng.normal(0, 3, (tilts.size, 2)))
        views = g.projection_matrices()[:, :, :3]
        truth["views"][name] = views
        cols = g.to_relion5()
        tilt_df = pd.DataFrame({**cols,
                                "rlnDefocusU": np.full(tilts.size, 12000.0), "rlnDefocusV": np.full(tilts.size, 11800.0),
                                "rlnDefocusAngle": np.full(tilts.size, 30.0),
                                "rlnMicrographPreExposure": 3.0 * np.argsort(np.argsort(np.abs(tilts)))})
        write_star(root / "tilt_series" / f"{name}.star", {name: tilt_df})
        tomo_rows.append({"rlnTomoName": name, "rlnTomoTiltSeriesStarFile": f"tilt_series/{name}.star",
                          "rlnTomoFrameCount": tilts.size, "rlnTomoSizeX": 380, "rlnTomoSizeY": 400,
                          "rlnTomoSizeZ": 120, "rlnTomoHand": -1.0, "rlnTomoTiltSeriesPixelSize": PX,
                          "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.07})
        for j in range(6):
            ang = rng.uniform([0, 0, 0], [360, 180, 360])
            sub = rng.uniform([0, 0, 0], [360, 180, 360])
            origin_A = rng.normal(0, 8.0, 3)
            coord_A = rng.uniform([-1000, -1200, -300], [1000, 1200, 300])
            a_sub = euler_to_matrix(sub)
            rot = a_sub @ euler_to_matrix(ang)
            t_px = -(a_sub @ origin_A) / PX  # the particle sits at coordinate − A_sub · origin
            vis = np.ones(tilts.size, bool)
            vis[rng.choice(tilts.size, size=j % 3, replace=False)] = False
            ims = np.stack([_project(ref, views[f] @ rot, views[f] @ t_px) for f in range(tilts.size)])
            # raw data: the projections seen through the CTF of the tilt (rlnCtfDataAreCtfPremultiplied 0)
            ctf = relion_ctf(tilt_df["rlnDefocusU"].to_numpy(), tilt_df["rlnDefocusV"].to_numpy(),
                             tilt_df["rlnDefocusAngle"].to_numpy(), np.zeros(tilts.size), np.ones(tilts.size),
                             None, box=B, pixel_size_A=PX, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.07)
            ft = np.fft.fft2(np.fft.ifftshift(ims, axes=(-2, -1))) * ctf
            ims = np.fft.fftshift(np.fft.ifft2(ft).real, axes=(-2, -1)).astype(np.float32)
            stack = f"particles/{name}_{j + 1:03d}.mrcs"
            (root / "particles").mkdir(exist_ok=True)
            write_mrc(root / stack, ims[vis], PX, is_stack=True)  # only the visible tilts, as RELION writes them
            truth["rot"].append(rot)
            truth["t_px"].append(t_px)
            truth["coords_A"].append(coord_A)
            truth["images"].append(ims * vis[:, None, None])
            truth["visible"].append(vis)
            parts.append({"rlnTomoName": name, "rlnTomoParticleName": f"{name}/{j + 1}",
                          "rlnCenteredCoordinateXAngst": coord_A[0], "rlnCenteredCoordinateYAngst": coord_A[1],
                          "rlnCenteredCoordinateZAngst": coord_A[2],
                          "rlnAngleRot": ang[0], "rlnAngleTilt": ang[1], "rlnAnglePsi": ang[2],
                          "rlnTomoSubtomogramRot": sub[0], "rlnTomoSubtomogramTilt": sub[1],
                          "rlnTomoSubtomogramPsi": sub[2],
                          "rlnOriginXAngst": origin_A[0], "rlnOriginYAngst": origin_A[1],
                          "rlnOriginZAngst": origin_A[2],
                          "rlnTomoVisibleFrames": "[" + ",".join(str(int(v)) for v in vis) + "]",
                          "rlnImageName": stack})
    write_star(root / "tomograms.star", {"global": pd.DataFrame(tomo_rows)})
    write_particles_star(root / "particles.star", pd.DataFrame(parts),
                         {"rlnTomoTiltSeriesPixelSize": PX, "rlnImagePixelSize": PX, "rlnImageSize": B,
                          "rlnImageDimensionality": 2, "rlnCtfDataAreCtfPremultiplied": 0,
                          "rlnTomoSubtomogramBinning": 1.0, "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
                          "rlnAmplitudeContrast": 0.07},
                         general={"rlnTomoSubTomosAre2DStacks": 1})
    write_star(root / "optimisation_set.star", {"": {"rlnTomoParticlesFile": "particles.star",
                                                      "rlnTomoTomogramsFile": "tomograms.star"}})
    truth = {k: (np.asarray(v) if k != "views" else v) for k, v in truth.items()}
    return {"root": root, "ref": ref, **truth}


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_geometry_and_poses_come_back(written: dict) -> None:
    p = read_relion_particles(written["root"] / "optimisation_set.star")
    assert p.n_particles == 12 and [g.name for g in p.tomograms] == ["TS_01", "TS_02"]
    for g in p.tomograms:  # rlnTomoXTilt/YTilt/ZRot give back our own view matrices
        np.testing.assert_allclose(g.view_matrices, written["views"][g.name], atol=1e-6)
    rots, t_a = relion_poses_A(p)
    np.testing.assert_allclose(rots, written["rot"], atol=1e-5)
    np.testing.assert_allclose(t_a, written["t_px"] * PX, atol=1e-4)
    np.testing.assert_allclose(relion_centred_coordinates_A(p), written["coords_A"], atol=1e-3)
    # stacks of the visible tilts only: image i is the i-th visible tilt; the others are blank
    imgs = np.concatenate([g.images for g in p.tomograms])
    np.testing.assert_allclose(imgs, written["images"], atol=1e-4)
    assert np.array_equal(np.concatenate([g.visible for g in p.tomograms]), written["visible"])
    assert not p.ctf_premultiplied and not p.notes


def test_reconstruction_equals_ours_and_the_phantom(written: dict) -> None:
    p = read_relion_particles(written["root"] / "optimisation_set.star")
    vol = reconstruct_relion_particles(p)
    # ours: the same sub-tilts (multiplied by the same CTF) straight from the simulation, with the true poses
    sub = relion_subtilts(p)
    ours = Reconstructor([Subtilts(images=s.images, weights=s.weights, view_matrices=written["views"][g.name],
                                   views=s.views, pixel_size_A=PX, defocus_A=s.defocus_A)
                          for s, g in zip(sub, p.tomograms, strict=True)])
    mine = ours.reconstruct(written["rot"], written["t_px"])
    np.testing.assert_allclose(vol, mine, atol=1e-4 * float(np.abs(mine).max()))
    assert _cc(vol, written["ref"]) > 0.9
    assert _cc(np.roll(vol[::-1], 1, axis=0), written["ref"]) < 0.6  # not the mirror image
    # the 3D pseudo-subtomograms (the extraction's format) hold the same particles: their average is the phantom
    data, weights = relion_pseudo_subtomograms(sub)
    assert data.shape == (12, B, B, B) and weights.shape == data.shape and np.all(weights >= 0)
    half = relion_half_maps(p, np.arange(12) % 2 + 1, mask_diameter_A=200.0)
    assert _cc(half.merged, written["ref"]) > 0.85


def test_binned_coordinates_are_recognised(written: dict, tmp_path: Path) -> None:
    """WarpTools writes rlnCoordinateX/Y/Z in the exported pixels; RELION 5's own files use tilt-series pixels. The
    reader tells them apart by whether every particle fits in the tomograms shrunk by rlnTomoSubtomogramBinning."""
    from tomoguide.compute.io.star import read_star

    blocks = read_star(written["root"] / "particles.star")
    df = blocks["particles"].copy()
    xyz = df[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]]
    corner = xyz.to_numpy(float) / PX + np.array([380, 400, 120]) / 2.0  # tilt-series px from the corner
    optics = blocks["optics"].copy()
    for binned in (False, True):
        d = df.drop(columns=list(xyz.columns)).copy()
        scale = 4.0 if binned else 1.0
        for k, c in enumerate(("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")):
            d[c] = corner[:, k] / scale
        optics["rlnTomoSubtomogramBinning"] = 4.0
        d["rlnImageName"] = [str(written["root"] / n) for n in d["rlnImageName"]]
        path = tmp_path / f"p{int(binned)}.star"
        write_particles_star(path, d, optics, general={"rlnTomoSubTomosAre2DStacks": 1})
        p = read_relion_particles(path, written["root"] / "tomograms.star", load_images=False)
        pos = np.concatenate([g.positions_px for g in p.tomograms])
        np.testing.assert_allclose(pos, xyz.to_numpy(float) / PX, atol=1e-3)
        assert ("binned pixels" in " ".join(p.notes)) == binned
