"""The synthetic acquisition, checked on the FILES it writes (tiny preset), against its truth files.

Issue 3 "Done when": Thon-ring zeros where the true defocus puts them (2 %), mean counts = stated dose,
gain / X-ray hits / frame drift where the truth says, mdoc tilt angles = truth STAR, and the projection
of the true volume at 0° matches the 0° frame sum after undoing drift, gain and CTF.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import tifffile
from scipy.ndimage import fourier_shift

from tomoguide import synth
from tomoguide.compute import ctf
from tomoguide.compute.euler import euler_to_matrix
from tomoguide.compute.symmetry import rotation_about
from tomoguide.compute.io import imod, mdoc, movies, mrc, star
from tomoguide.geometry import TiltSeriesGeometry

TS = "TS_01"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("synth_tiny")
    calls: list[tuple[float, str]] = []
    summary = synth.generate(out, synth.PRESETS["tiny"], progress=lambda f, m: calls.append((f, m)))
    tilts = star.read_star(out / "truth" / TS / f"{TS}_tilts.star")
    geom = TiltSeriesGeometry.model_validate_json((out / "truth" / TS / f"{TS}_geometry.json").read_text())
    gain_file, _ = mrc.read_mrc(out / "data" / "gain.mrc")
    return {"out": out, "summary": summary, "calls": calls, "tilts": tilts["tilts"],
            "shifts": tilts["frame_shifts"], "geom": geom, "gain": np.asarray(gain_file)[:, ::-1],
            "params": synth.PRESETS["tiny"]}


def _movie(t: dict, view: int) -> np.ndarray:
    name = t["tilts"]["rlnMicrographMovieName"].iloc[view]
    return np.asarray(movies.read_movie(t["out"] / name), dtype=np.float32)


def _clean(frame: np.ndarray) -> np.ndarray:
    """Replace outliers (hot pixels, X-ray hits) by the frame median."""
    f = frame.copy()
    f[f > 15] = np.median(f)
    return f


def _aligned_sum(t: dict, view: int, *, use_shifts: bool = True) -> np.ndarray:
    """Gain-corrected, outlier-cleaned frame sum, frames translated by the truth's aligning shifts."""
    mov = _movie(t, view)
    name = t["tilts"]["rlnMicrographMovieName"].iloc[view]
    sh = t["shifts"][t["shifts"]["rlnMicrographMovieName"] == name]
    out = np.zeros(mov.shape[1:])
    for f, dx, dy in zip(mov, sh["rlnMicrographShiftX"], sh["rlnMicrographShiftY"], strict=True):
        g = _clean(f) * t["gain"]
        if use_shifts:
            g = np.fft.ifft2(fourier_shift(np.fft.fft2(g), (dy, dx))).real
        out += g
    return out


def _view_at(t: dict, angle: float) -> int:
    return int(np.argmin(np.abs(t["tilts"]["rlnTomoNominalStageTiltAngle"].to_numpy() - angle)))


def test_layout_and_summary(tiny: dict) -> None:
    out, s = tiny["out"], tiny["summary"]
    assert s.series == [TS] and s.mdoc_paths == [out / "data" / TS / f"{TS}.mdoc"]
    for rel in ("data/gain.mrc", "truth/apoferritin.mrc", "truth/particles.star", "truth/summary.json",
                f"truth/{TS}/{TS}.xf", f"truth/{TS}/{TS}.tlt", f"truth/{TS}/{TS}_xray_hits.csv",
                f"truth/{TS}/{TS}_specimen_bin2.mrc"):
        assert (out / rel).is_file(), rel
    info = json.loads((out / "truth" / "summary.json").read_text())
    assert info["params"]["seed"] == tiny["params"].seed
    for key in ("geometry", "defocus", "frame_shifts", "gain", "particle_orientation", "dose"):
        assert len(info["conventions"][key]) > 40
    assert tiny["calls"][-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in tiny["calls"])
    assert s.bytes_data > 0 and s.n_particles == tiny["params"].n_particles


def test_movies_do_not_depend_on_the_number_of_threads(tiny: dict, tmp_path: Path) -> None:
    # every view draws from its own stream, so the views simulated on one thread or on two (threads in parallel,
    # results written in order) give the same bytes; the fixture ran on the machine's own budget
    from tomoguide.compute import backend

    p = tiny["params"].model_copy(update={"n_series": 1})
    outs = {}
    for n in (1, 2):
        with backend.cpu_threads(n):
            synth.generate(tmp_path / f"t{n}", p)
        outs[n] = tmp_path / f"t{n}"
    files = sorted(f.relative_to(outs[1]) for f in (outs[1] / "data").rglob("*.mrc"))
    assert len(files) > p.n_frames  # every movie and the gain
    for rel in files:  # the data (the headers' labels carry the time of writing)
        one = np.asarray(mrc.read_mrc(outs[1] / rel)[0])
        np.testing.assert_array_equal(one, np.asarray(mrc.read_mrc(outs[2] / rel)[0]), err_msg=str(rel))
        np.testing.assert_array_equal(one, np.asarray(mrc.read_mrc(tiny["out"] / rel)[0]), err_msg=str(rel))
    assert ((outs[1] / "truth" / TS / f"{TS}_xray_hits.csv").read_text()
            == (outs[2] / "truth" / TS / f"{TS}_xray_hits.csv").read_text())


def test_mdoc_matches_truth(tiny: dict) -> None:
    md = mdoc.read_mdoc(tiny["summary"].mdoc_paths[0])
    tilts = tiny["tilts"]
    assert md.tilt_axis_deg == pytest.approx(85.0)
    assert md.pixel_spacing_A == pytest.approx(tiny["params"].pixel_size_A)
    recs = mdoc.tilt_records(md)
    assert len(recs) == len(tilts)
    by_angle = sorted(recs, key=lambda r: r.tilt_angle_deg)
    np.testing.assert_allclose([r.tilt_angle_deg for r in by_angle], tilts["rlnTomoNominalStageTiltAngle"],
                               atol=1e-3)
    # acquisition order (from DateTime), prior dose and movies agree with the truth
    np.testing.assert_array_equal([r.acquisition_order for r in by_angle], tilts["tomoguideAcquisitionOrder"])
    np.testing.assert_allclose([r.prior_dose_e_A2 for r in by_angle], tilts["rlnMicrographPreExposure"])
    assert all(r.movie_found for r in recs)
    assert [Path(r.movie_path).name for r in by_angle] == [Path(m).name for m in tilts["rlnMicrographMovieName"]]
    assert all(r.num_sub_frames == tiny["params"].n_frames for r in recs)
    # dose-symmetric order: 0 first, then +10 (tiny uses 10° steps)
    first = sorted(recs, key=lambda r: r.acquisition_order)
    assert [r.tilt_angle_deg for r in first[:3]] == [0.0, 10.0, -10.0]
    sec0 = md.sections[0]
    assert sec0.rotation_angle_deg == pytest.approx(175.0)
    assert "\\" in sec0.sub_frame_path


def test_imod_and_relion_truth_consistent(tiny: dict) -> None:
    geom, tilts, out = tiny["geom"], tiny["tilts"], tiny["out"]
    xf = imod.read_xf(out / "truth" / TS / f"{TS}.xf")
    tlt = imod.read_tlt(out / "truth" / TS / f"{TS}.tlt")
    rows, true_tilts = geom.to_imod()
    np.testing.assert_allclose(xf, rows, atol=2e-3)
    np.testing.assert_allclose(tlt, true_tilts, atol=1e-3)
    np.testing.assert_allclose(tilts["rlnTomoYTilt"], tilts["rlnTomoNominalStageTiltAngle"]
                               + tiny["params"].tilt_offset_deg, atol=1e-6)
    assert np.all(tilts["rlnDefocusU"] >= tilts["rlnDefocusV"])
    # defocus at the raw image centre differs from the tomogram centre's by the gradient over the shift
    diff = np.abs(tilts["tomoguideDefocusUAtImageCentre"] - tilts["rlnDefocusU"]).to_numpy()
    shift_A = np.hypot(tilts["rlnTomoXShiftAngst"], tilts["rlnTomoYShiftAngst"]).to_numpy()
    tilt = np.radians(np.abs(tilts["rlnTomoYTilt"].to_numpy()) + 5.0)
    assert np.all(diff <= shift_A * np.tan(tilt) + 1.0)
    parts = star.read_particles_star(out / "truth" / "particles.star")
    assert len(parts.particles) == tiny["params"].n_particles
    assert float(parts.optics["rlnTomoTiltSeriesPixelSize"].iloc[0]) == tiny["params"].pixel_size_A


def test_mean_counts_match_dose(tiny: dict) -> None:
    p = tiny["params"]
    expected = p.dose_per_tilt_e_A2 / p.n_frames * p.pixel_size_A**2  # counts per pixel per frame
    hot = np.loadtxt(tiny["out"] / "truth" / "hot_pixels.csv", delimiter=",", skiprows=1, dtype=int)
    mask = np.ones(tiny["gain"].shape, bool)
    mask[hot[:, 0], hot[:, 1]] = False
    means = []
    for v in range(len(tiny["tilts"])):
        corrected = _movie(tiny, v) * tiny["gain"]
        means.append(float(np.mean(np.clip(corrected, 0, 30)[:, mask])))
    # the weak-phase specimen lowers the mean by a fraction of a per cent (amplitude contrast)
    np.testing.assert_allclose(means, expected, rtol=0.02)


def test_gain_reference_is_flipped_in_x(tiny: dict) -> None:
    raw_mean = sum(_clean(f).astype(np.float64) for v in range(len(tiny["tilts"])) for f in _movie(tiny, v))
    g = tiny["gain"]  # = gain_file[:, ::-1], the orientation the truth states
    c_right = np.corrcoef(raw_mean.ravel(), (1.0 / g).ravel())[0, 1]
    c_wrong = np.corrcoef(raw_mean.ravel(), (1.0 / g[:, ::-1]).ravel())[0, 1]
    assert c_right > 0.3 and c_right > 3 * abs(c_wrong)
    # gain correction flattens the image: less variance of the corrected mean than of the raw one
    assert np.var(raw_mean * g) < 0.9 * np.var(raw_mean)


def test_xray_hits_and_hot_pixels_where_truth_says(tiny: dict) -> None:
    import pandas as pd

    hits = pd.read_csv(tiny["out"] / "truth" / TS / f"{TS}_xray_hits.csv")
    assert len(hits) > 0
    names = list(tiny["tilts"]["rlnMicrographMovieName"])
    hot = np.loadtxt(tiny["out"] / "truth" / "hot_pixels.csv", delimiter=",", skiprows=1, dtype=int)
    for v, name in enumerate(names):
        mov = _movie(tiny, v)
        h = hits[hits["movie"] == Path(name).name]
        for _, r in h.iterrows():
            assert mov[r["frame"], r["y"], r["x"]] >= 30, "an X-ray hit pixel is bright in its frame"
            others = np.delete(mov[:, r["y"], r["x"]], r["frame"])
            assert np.all(others < 25), "and ordinary in the other frames"
        # outside hot pixels and hits, no pixel of any frame is that bright
        bright = mov >= 30
        bright[:, hot[:, 0], hot[:, 1]] = False
        bright[h["frame"].to_numpy(), h["y"].to_numpy(), h["x"].to_numpy()] = False
        assert bright.sum() == 0
        # hot pixels: bright in every frame on average
        assert np.all(mov[:, hot[:, 0], hot[:, 1]].mean(axis=0) > 5 * mov.mean())


def _lowpass(img: np.ndarray, pixel_A: float, res_A: float) -> np.ndarray:
    ky = np.fft.fftfreq(img.shape[0], pixel_A)[:, None]
    kx = np.fft.fftfreq(img.shape[1], pixel_A)[None, :]
    f = np.exp(-0.5 * (np.hypot(kx, ky) * res_A) ** 2)
    return np.fft.ifft2(np.fft.fft2(img - img.mean()) * f).real


def test_frame_drift_present_where_truth_says(tiny: dict) -> None:
    px = tiny["params"].pixel_size_A
    v = _view_at(tiny, 0.0)
    mov = _movie(tiny, v)
    name = tiny["tilts"]["rlnMicrographMovieName"].iloc[v]
    sh = tiny["shifts"][tiny["shifts"]["rlnMicrographMovieName"] == name]
    true_rel = np.array([sh["rlnMicrographShiftX"].iloc[-1], sh["rlnMicrographShiftY"].iloc[-1]])
    assert np.hypot(*true_rel) > 2.0, "the drift of the first tilt is several pixels"
    a = _lowpass(_clean(mov[0]) * tiny["gain"], px, 20.0)
    b = _lowpass(_clean(mov[-1]) * tiny["gain"], px, 20.0)
    cc = np.fft.ifft2(np.fft.fft2(a) * np.conj(np.fft.fft2(b))).real  # peak at the shift that aligns b onto a
    iy, ix = np.unravel_index(np.argmax(cc), cc.shape)
    n = cc.shape[0]
    found = np.array([(ix + n // 2) % n - n // 2, (iy + n // 2) % n - n // 2], dtype=float)
    assert np.allclose(found, true_rel, atol=1.0), (found, true_rel)


def _radial_ps(img: np.ndarray, tile: int = 256) -> np.ndarray:
    w = np.outer(np.hanning(tile), np.hanning(tile))
    ps = np.zeros((tile, tile))
    for y in range(0, img.shape[0] - tile + 1, tile // 2):
        for x in range(0, img.shape[1] - tile + 1, tile // 2):
            t = img[y:y + tile, x:x + tile]
            ps += np.abs(np.fft.fft2((t - t.mean()) * w)) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(tile), np.fft.fftfreq(tile)))
    r = np.round(k * tile).astype(int)
    return np.bincount(r.ravel(), ps.ravel()) / np.bincount(r.ravel())


def test_thon_ring_zeros_at_true_defocus(tiny: dict) -> None:
    p = tiny["params"]
    v = _view_at(tiny, 0.0)
    img = _aligned_sum(tiny, v)
    tile = img.shape[0]  # one Hann-windowed periodogram of the whole gain- and drift-corrected frame sum
    rad = _radial_ps(img, tile)
    k = np.arange(rad.size) / (tile * p.pixel_size_A)
    flat = rad / scipy.ndimage.gaussian_filter1d(rad, 20.0)  # background-normalised: rings oscillate about 1
    row = tiny["tilts"].iloc[v]
    df = 0.5 * (row["rlnDefocusU"] + row["rlnDefocusV"])
    zeros = ctf.ctf_zeros_A(np.arange(1, 6), df, voltage_kV=p.voltage_kV, cs_mm=p.cs_mm,
                            amplitude_contrast=p.amplitude_contrast)
    found = []
    for z in zeros:  # the minimum of the spectrum within +-10 % of each predicted zero, refined by a parabola
        lo, hi = int(np.floor(z * 0.9 * tile * p.pixel_size_A)), int(np.ceil(z * 1.1 * tile * p.pixel_size_A))
        i = lo + int(np.argmin(flat[lo:hi + 1]))
        a, b, c = flat[i - 1], flat[i], flat[i + 1]
        off = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) > 0 else 0.0
        found.append((i + off) / (tile * p.pixel_size_A))
    # one 512² view at 3 e⁻/Å²: a single zero's minimum wanders with the noise and the particles' depths (this
    # seed: zeros 1-4 within 1.4 %; seeds and noise streams seen: up to 7 % on zeros 1-4, and the fifth is often not
    # resolved, its window's minimum at the window's edge); the rings as a whole are held to 2 % by the defocus
    # search below
    np.testing.assert_allclose(found[:4], zeros[:4], rtol=0.08)
    # the rings are real: the minima are clearly below the maxima between them
    peaks = [flat[int(round(0.5 * (z1 + z2) * tile * p.pixel_size_A))] for z1, z2 in zip(zeros, zeros[1:])]
    dips = [flat[int(round(z * tile * p.pixel_size_A))] for z in zeros[:-1]]
    assert np.mean(peaks) > np.mean(dips) + 0.2
    # and a 1D defocus search on the same spectrum lands on the true defocus (rings fit as a whole)
    band = (k > 0.02) & (k < 0.1)
    trial = np.arange(0.7, 1.3, 0.0025) * df
    score = [np.corrcoef(flat[band], ctf.ctf_1d(k[band], d) ** 2)[0, 1] for d in trial]
    assert trial[int(np.argmax(score))] == pytest.approx(df, rel=0.02)


def test_true_volume_projection_matches_zero_tilt_image(tiny: dict) -> None:
    p, geom = tiny["params"], tiny["geom"]
    v = _view_at(tiny, 0.0)
    img = _aligned_sum(tiny, v)  # drift and gain undone
    vol, info = mrc.read_mrc(tiny["out"] / "truth" / TS / f"{TS}_specimen_bin2.mrc")
    b = p.truth_binning
    pxb = p.pixel_size_A * b
    assert info.voxel_size_A[0] == pytest.approx(pxb)
    proj = np.asarray(vol, dtype=np.float64).sum(axis=0) * pxb  # V·Å, tomogram frame (z along the beam at 0°)
    # raw image -> aligned frame with the true xf: raw_xy = c + A^-1 (aligned_xy - c - d)
    m = geom.xf_array()[v]
    c = geom.image_centre_px()
    ainv = np.linalg.inv(m[:, :2])
    off_xy = c - ainv @ (c + m[:, 2])
    aligned = scipy.ndimage.affine_transform(img, ainv[::-1, ::-1], offset=off_xy[::-1], order=1, mode="nearest")
    ny, nx = aligned.shape
    binned = aligned.reshape(ny // b, b, nx // b, b).mean(axis=(1, 3))  # voxel centres (n-1)/2 coincide
    # undo the CTF by phase flipping with the tilt's true CTF; compare with the |CTF|-weighted projection
    row = tiny["tilts"].iloc[v]
    c2 = ctf.ctf_2d(binned.shape, pxb, row["rlnDefocusU"], row["rlnDefocusV"], row["rlnDefocusAngle"],
                    voltage_kV=p.voltage_kV, cs_mm=p.cs_mm, amplitude_contrast=p.amplitude_contrast)
    flipped = np.fft.ifft2(np.fft.fft2(binned - binned.mean()) * np.sign(c2)).real
    weighted = np.fft.ifft2(np.fft.fft2(proj - proj.mean()) * np.abs(c2)).real
    inner = (slice(24, -24), slice(24, -24))  # away from the edges the rotation leaves empty
    a = _lowpass(flipped, pxb, 30.0)[inner]
    t = _lowpass(weighted, pxb, 30.0)[inner]
    cc = np.corrcoef(a.ravel(), t.ravel())[0, 1]
    assert cc > 0.6, cc  # limited by shot noise (3 e/Å²) and ice; noise-free images reach 0.95 (test_simulate)
    # and not by chance: the same projection displaced does not match, nor does it with the wrong sign
    assert abs(np.corrcoef(a.ravel(), np.roll(t, (17, 23), axis=(0, 1)).ravel())[0, 1]) < 0.2
    flipped_raw = _lowpass(np.fft.ifft2(np.fft.fft2(binned - binned.mean())).real, pxb, 30.0)[inner]
    assert np.corrcoef(flipped_raw.ravel(), t.ravel())[0, 1] < 0.0  # particles are dark before CTF correction


def test_particles_star_orientations_reproduce_volume(tiny: dict) -> None:
    """Euler angles written for each particle reproduce its rotation: the truth volume around a particle
    equals the reference rotated by euler_to_matrix(rot, tilt, psi) (correlation at low resolution)."""
    p = tiny["params"]
    parts = star.read_particles_star(tiny["out"] / "truth" / "particles.star").particles
    vol, _ = mrc.read_mrc(tiny["out"] / "truth" / TS / f"{TS}_specimen_bin2.mrc")
    vol = np.asarray(vol, dtype=np.float64)
    ref, _ = mrc.read_mrc(tiny["out"] / "truth" / "apoferritin.mrc")
    ref = np.asarray(ref, dtype=np.float64)
    b = p.truth_binning
    r0 = parts.iloc[0]
    rot = euler_to_matrix(np.array([r0["rlnAngleRot"], r0["rlnAngleTilt"], r0["rlnAnglePsi"]]))
    centre = (np.array(vol.shape[::-1]) - 1) / 2.0
    t_vox = np.array([r0["rlnCenteredCoordinateXAngst"], r0["rlnCenteredCoordinateYAngst"],
                      r0["rlnCenteredCoordinateZAngst"]]) / (p.pixel_size_A * b) + centre
    half = 14
    g = np.arange(-half, half + 1)
    gz, gy, gx = np.meshgrid(g, g, g, indexing="ij")
    rel = np.stack([gx, gy, gz]).reshape(3, -1).astype(float)
    box_vals = scipy.ndimage.map_coordinates(vol, (rel[::-1] + t_vox[::-1, None]), order=1)
    ref_xyz = rot.T @ (rel * b) + ref.shape[0] // 2
    ref_vals = scipy.ndimage.map_coordinates(ref, ref_xyz[::-1], order=1)
    wrong = rotation_about((1.0, 2.0, 3.0), 40.0)  # not a symmetry operation of O
    ref_wrong = scipy.ndimage.map_coordinates(ref, (wrong @ rot.T @ (rel * b) + ref.shape[0] // 2)[::-1],
                                              order=1)
    cc = np.corrcoef(box_vals, ref_vals)[0, 1]
    assert cc > 0.6, cc
    assert cc > np.corrcoef(box_vals, ref_wrong)[0, 1] + 0.05


# ---- other sessions' conventions (issue 14): each option checked on the files it writes ------------------

CONV = synth.PRESETS["tiny"].model_copy(update=dict(
    seed=31, image_nx_px=256, image_ny_px=192, n_frames=2, n_particles=6, n_globular_distractors=0,
    dose_per_tilt_e_A2=12.0, shift_sigma_A=4.0, shift_walk_A=2.0, truth_binning=4,
    series_names=["TS_07"], layout="frames", mdoc_kind="both", movie_format="tiff", line_endings="crlf",
    gain_file_name="CountRef_TS_07.tif", gain_transpose=True, gain_flip_x=False, gain_flip_y=True,
    tilt_axis_deg=-94.0, mdoc_axis_error_deg=0.7, tilt_scheme="bidirectional", start_tilt_deg=-10.0,
    dark_view_tilts_deg=[20.0], jump_view_tilts_deg=[-20.0]))


@pytest.fixture(scope="module")
def conv(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small session in SerialEM's Frames/ layout: TS_07, LZW TIFF, CRLF series and per-movie mdocs, a
    transposed + Y-flipped TIFF gain, bidirectional from -10°, mdoc axis 0.7° off, a dark and a jump view."""
    params = synth.SimParams.model_validate(CONV.model_dump())  # validated like a user's --set
    out = tmp_path_factory.mktemp("synth_conv")
    summary = synth.generate(out, params)
    ts = "TS_07"
    tilts = star.read_star(out / "truth" / ts / f"{ts}_tilts.star")["tilts"]
    geom = TiltSeriesGeometry.model_validate_json((out / "truth" / ts / f"{ts}_geometry.json").read_text())
    info = json.loads((out / "truth" / "summary.json").read_text())
    return {"out": out, "summary": summary, "params": params, "tilts": tilts, "geom": geom, "info": info, "ts": ts}


def test_conventions_layout_names_and_crlf(conv: dict) -> None:
    out, s, ts = conv["out"], conv["summary"], conv["ts"]
    data = out / "data"
    assert s.series == [ts] and s.mdoc_paths == [data / f"{ts}.mdoc"]
    assert s.gain_path == data / "Frames" / "CountRef_TS_07.tif" and s.gain_path.is_file()
    movies_dir = data / "Frames" / ts
    names = sorted(p.name for p in movies_dir.glob("*.tif"))
    order = list(conv["params"].acquisition_tilts_deg())  # bidirectional from -10: -10, 0, 10, 20, 30, -20, -30
    assert order == [-10.0, 0.0, 10.0, 20.0, 30.0, -20.0, -30.0]
    assert names == sorted(f"{ts}_{i:03d}_{a:.2f}.tif" for i, a in enumerate(order))
    assert sorted(p.name for p in movies_dir.glob("*.mdoc")) == sorted(f"{n}.mdoc" for n in names)
    assert [p.parent for p in s.movie_mdoc_paths] == [movies_dir] * len(names)
    for path in [s.mdoc_paths[0], *s.movie_mdoc_paths]:
        raw = path.read_bytes()
        assert raw.count(b"\r\n") == raw.count(b"\n") > 10, path  # every line ends in CRLF
    md = mdoc.read_mdoc(s.mdoc_paths[0])
    subs = [sec.sub_frame_path for sec in md.sections]
    assert subs == [f"X:\\Frames\\{ts}\\{ts}_{i:03d}_{a:.2f}.tif" for i, a in enumerate(order)]
    assert conv["tilts"]["rlnMicrographMovieName"].str.startswith(f"data/Frames/{ts}/").all()
    # the truth's movie names and the summary's lists point at the files
    assert all((out / m).is_file() for m in conv["info"]["series"][ts]["movies"])
    assert conv["info"]["series"][ts]["mdoc"] == f"data/{ts}.mdoc"


def test_conventions_mdoc_axis_is_true_plus_error(conv: dict) -> None:
    s, info, geom = conv["summary"], conv["info"], conv["geom"]
    md = mdoc.read_mdoc(s.mdoc_paths[0])
    assert md.tilt_axis_deg == pytest.approx(-94.0 + 0.7)
    assert all(sec.rotation_angle_deg == pytest.approx(-93.3 + 90.0) for sec in md.sections)
    frame = mdoc.read_mdoc(s.movie_mdoc_paths[0])
    assert frame.kind == "frameset" and frame.tilt_axis_deg is None  # frame mdocs state no axis in a title
    assert frame.sections[0].rotation_angle_deg == pytest.approx(-3.3)
    # the truth keeps the true axis
    assert geom.tilt_axis_deg == -94.0 and info["params"]["tilt_axis_deg"] == -94.0
    assert info["planted"]["tilt_axis"] == {"true_deg": -94.0, "mdoc_deg": pytest.approx(-93.3),
                                            "mdoc_error_deg": 0.7, "mdoc_rotation_angle_deg": -3.3,
                                            "title_states_axis": True}
    from tomoguide.geometry import rotation_angle_deg

    rot = rotation_angle_deg(geom.xf_array()[:, :, :2])
    assert np.all(np.abs(rot - 94.0) < 2.0)  # the true xf rotate by -(true axis)


def test_conventions_per_movie_mdocs_match_truth(conv: dict) -> None:
    s, tilts = conv["summary"], conv["tilts"]
    first = s.movie_mdoc_paths[0].read_text(encoding="latin-1").splitlines()
    assert first[0].startswith("T = SerialEM: ") and first[1] == "Voltage = 300" and first[3] == "[FrameSet = 0]"
    recs = mdoc.tilt_records_from_movie_mdocs(sorted(s.movie_mdoc_paths, key=lambda p: p.name)[::-1])
    by_angle = sorted(recs, key=lambda r: r.tilt_angle_deg)
    np.testing.assert_allclose([r.tilt_angle_deg for r in by_angle], tilts["rlnTomoNominalStageTiltAngle"])
    np.testing.assert_array_equal([r.acquisition_order for r in by_angle], tilts["tomoguideAcquisitionOrder"])
    np.testing.assert_allclose([r.prior_dose_e_A2 for r in by_angle], tilts["rlnMicrographPreExposure"])
    np.testing.assert_allclose([r.dose_e_A2 for r in by_angle], tilts["tomoguideDose"])
    assert all(r.movie_found for r in recs)
    assert [Path(r.movie_path).name for r in by_angle] == [Path(m).name for m in tilts["rlnMicrographMovieName"]]
    for path in s.movie_mdoc_paths:
        sec = mdoc.mdoc_for_frameset(path)
        assert sec.raw["GainReference"] == "CountRef_TS_07.tif"
        assert sec.num_sub_frames == 2 and sec.pixel_spacing_A == 2.0 and sec.target_defocus_um == 4.0
        assert sec.sub_frame_path.endswith(path.name.removesuffix(".mdoc"))
        row = tilts[tilts["rlnTomoNominalStageTiltAngle"] == sec.tilt_angle_deg].iloc[0]
        assert sec.defocus_um * 1e4 == pytest.approx((row["rlnDefocusU"] + row["rlnDefocusV"]) / 2, abs=1.0)


def test_conventions_tiff_movies_are_lzw(conv: dict) -> None:
    for name in conv["tilts"]["rlnMicrographMovieName"]:
        with tifffile.TiffFile(conv["out"] / name) as tif:
            assert len(tif.pages) == 2
            assert all(p.compression == tifffile.COMPRESSION.LZW for p in tif.pages)
            assert tif.pages[0].dtype == np.uint8 and tif.pages[0].shape == (192, 256)
    assert movies.read_movie(conv["out"] / name).shape == (2, 192, 256)


def _raw_mean(t: dict, exclude: set[int] = frozenset()) -> np.ndarray:
    total = 0.0
    for v, name in enumerate(t["tilts"]["rlnMicrographMovieName"]):
        if v not in exclude:
            total = total + sum(_clean_at(f, 80) for f in movies.read_movie(t["out"] / name).astype(np.float64))
    return total


def _clean_at(frame: np.ndarray, limit: float) -> np.ndarray:
    f = frame.copy()
    f[f > limit] = np.median(f)
    return f


def test_gain_orientation_restored_by_recorded_ops(conv: dict) -> None:
    """The gain file, read with the orientation the truth records, explains the fixed pattern of the raw
    frames; none of the 7 other orientations does."""
    g = conv["info"]["planted"]["gain"]
    assert (g["transpose"], g["flip_x"], g["flip_y"]) == (True, False, True)
    path = conv["out"] / g["path"]
    stored = movies.tiff_rows(np.asarray(tifffile.imread(path)))  # the TIFF's rows in the MRC frame (io.movies)
    assert stored.dtype == np.float32 and stored.shape == (256, 192)  # transposed: (nx, ny) on disk
    dark = {int(conv["info"]["planted"]["dark_views"]["TS_07"][0]["view_index"])}
    raw = _raw_mean(conv, exclude=dark)
    scores = {}
    for tr in (False, True):
        for fx in (False, True):
            for fy in (False, True):
                gain = movies.read_gain(path, transpose=tr, flip_x=fx, flip_y=fy)
                if gain.shape != raw.shape:
                    scores[(tr, fx, fy)] = 0.0
                    continue
                scores[(tr, fx, fy)] = np.corrcoef(raw.ravel(), (1.0 / gain).ravel())[0, 1]
    best = max(scores, key=scores.get)
    assert best == (True, False, True), scores
    others = [v for k, v in scores.items() if k != best]
    assert scores[best] > 0.5 and scores[best] > 2 * max(others), scores
    np.testing.assert_array_equal(synth.restore_gain(stored, transpose=True, flip_x=False, flip_y=True),
                                  movies.read_gain(path, transpose=True, flip_x=False, flip_y=True))


def test_every_gain_orientation_round_trips(tmp_path: Path) -> None:
    """stored_gain is the inverse of read_gain's transpose -> flip X -> flip Y, for all 8 orientations."""
    gain = np.random.default_rng(0).uniform(0.8, 1.2, (6, 9)).astype(np.float32)
    seen = set()
    for tr in (False, True):
        for fx in (False, True):
            for fy in (False, True):
                stored = synth.stored_gain(gain, transpose=tr, flip_x=fx, flip_y=fy)
                seen.add(stored.tobytes())
                mrc.write_mrc(tmp_path / "g.mrc", stored, 1.0)
                movies.write_gain_tiff(tmp_path / "g.tif", stored)
                for name in ("g.mrc", "g.tif"):
                    back = movies.read_gain(tmp_path / name, transpose=tr, flip_x=fx, flip_y=fy)
                    np.testing.assert_array_equal(back, gain)
    assert len(seen) == 8  # eight different files


def test_dark_view_is_dark_and_its_dose_recorded(conv: dict) -> None:
    p, tilts, info = conv["params"], conv["tilts"], conv["info"]
    (entry,) = info["planted"]["dark_views"]["TS_07"]
    v = entry["view_index"]
    assert entry["nominal_tilt_deg"] == 20.0 and tilts["rlnTomoNominalStageTiltAngle"].iloc[v] == 20.0
    assert entry["acquisition_order"] == 3 and entry["movie"].endswith("TS_07_003_20.00.tif")
    assert tilts["tomoguideDose"].iloc[v] == pytest.approx(12.0 * 0.03)
    frames = [movies.read_movie(conv["out"] / m).astype(float) for m in tilts["rlnMicrographMovieName"]]
    gain = movies.read_gain(conv["out"] / info["planted"]["gain"]["path"], transpose=True, flip_y=True)
    hot = np.loadtxt(conv["out"] / "truth" / "hot_pixels.csv", delimiter=",", skiprows=1, dtype=int)
    mask = np.ones(gain.shape, bool)
    mask[hot[:, 0], hot[:, 1]] = False
    counts = np.array([np.mean(np.clip(f * gain, 0, 80)[:, mask]) for f in frames])  # per pixel and frame
    normal = np.delete(counts, v)
    expected = p.dose_per_tilt_e_A2 / p.n_frames * p.pixel_size_A**2
    np.testing.assert_allclose(normal, expected, rtol=0.02)
    assert counts[v] / expected == pytest.approx(0.03, rel=0.05)
    md = mdoc.read_mdoc(conv["summary"].mdoc_paths[0])
    sec = next(s for s in md.sections if s.tilt_angle_deg == 20.0)
    assert sec.exposure_dose_e_A2 == pytest.approx(0.36)
    # the views acquired after it had 11.64 e/Å² less prior dose than 12 x their order
    later = tilts["tomoguideAcquisitionOrder"] > 3
    np.testing.assert_allclose(tilts["rlnMicrographPreExposure"][later],
                               12.0 * tilts["tomoguideAcquisitionOrder"][later] - 11.64)


def test_jump_view_in_truth_alignment(conv: dict) -> None:
    geom, tilts, info = conv["geom"], conv["tilts"], conv["info"]
    (entry,) = info["planted"]["jump_views"]["TS_07"]
    v = entry["view_index"]
    assert entry["nominal_tilt_deg"] == -20.0 and entry["jump_px"] == [120.0, -72.0]
    shifts = geom.specimen_shifts_px()
    others = np.delete(shifts, v, axis=0)
    # random shifts are small in this fixture (4 Å, 2 Å walk): the jump stands out by (120, -72) px
    np.testing.assert_allclose(shifts[v] - np.median(others, axis=0), [120.0, -72.0], atol=8.0)
    assert np.all(np.hypot(*(others - np.median(others, axis=0)).T) < 8.0)
    # the same jump in the truth STAR and the truth .xf the alignment is scored against
    np.testing.assert_allclose(tilts["tomoguideSpecimenShiftX"].iloc[v], shifts[v, 0])
    xf = imod.read_xf(conv["out"] / "truth" / "TS_07" / "TS_07.xf")
    s_xf = -np.linalg.solve(xf[:, :4].reshape(-1, 2, 2), xf[:, 4:, None])[..., 0]
    np.testing.assert_allclose(s_xf, shifts, atol=0.01)


def test_sim_params_refuse_bad_combinations() -> None:
    base = synth.PRESETS["tiny"].model_dump()
    bad = {
        "not a tilt of the series": dict(dark_view_tilts_deg=[15.0]),
        "listed twice": dict(jump_view_tilts_deg=[10.0, 10.0]),
        "series_names has 2 names": dict(series_names=["A", "B"]),
        "distinct": dict(n_series=2, series_names=["A", "A"]),
        "letters, digits": dict(series_names=["TS 1"]),
        "plain file name": dict(gain_file_name="Frames/gain.mrc"),
        "ending in": dict(gain_file_name="gain.dm4"),
        "start_tilt_deg must be 0": dict(tilt_scheme="unidirectional", start_tilt_deg=-10.0),
        "electrons per pixel per EER fraction": dict(movie_format="eer", eer_fractions_per_frame=2),
        "Extra inputs": dict(no_such_option=1),
        "Input should be 'flat' or 'frames'": dict(layout="Frames"),
    }
    for message, change in bad.items():
        with pytest.raises(ValueError, match=message):
            synth.SimParams.model_validate({**base, **change})
    ok = synth.SimParams.model_validate({**base, "tilt_scheme": "bidirectional", "start_tilt_deg": -10.0,
                                         "dark_view_tilts_deg": [30.0], "movie_format": "eer"})
    assert ok.names() == ["TS_01"] and ok.acquisition_tilts_deg()[0] == -10.0


@pytest.fixture(scope="module")
def eer_pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same small session written three times, as MRC, EER and TIFF movies (same seed: the same frames)."""
    base = synth.PRESETS["tiny"].model_copy(update=dict(
        seed=9, image_nx_px=160, image_ny_px=128, n_frames=2, max_tilt_deg=10.0, n_particles=3,
        n_globular_distractors=0, truth_binning=4, tilt_scheme="unidirectional", mdoc_kind="both",
        xray_hits_per_tilt=3.0))
    out = {}
    for fmt in ("mrc", "eer", "tiff"):
        d = tmp_path_factory.mktemp(f"synth_{fmt}")
        out[fmt] = (d, synth.generate(d, synth.SimParams.model_validate({**base.model_dump(), "movie_format": fmt})))
    return out


def test_eer_movies_are_the_frames_split_into_fractions(eer_pair: dict) -> None:
    """Decoded by tifffile/imagecodecs, each group of 16 EER fractions sums to the simulated frame (the
    MRC movie of the same seed), saturated at 16 counts (one event per pixel and fraction)."""
    (d_mrc, _), (d_eer, s_eer) = eer_pair["mrc"], eer_pair["eer"]
    names = sorted(p.name for p in (d_eer / "data" / "TS_01").glob("*.eer"))
    assert names == ["TS_01_000_-10.0.eer", "TS_01_001_0.0.eer", "TS_01_002_10.0.eer"]
    n_sat = 0
    for name in names:
        frames = np.asarray(movies.read_movie(d_mrc / "data" / "TS_01" / name.replace(".eer", ".mrc")), np.int64)
        with tifffile.TiffFile(d_eer / "data" / "TS_01" / name) as tif:
            assert tif.is_eer and all(int(p.compression) == 65001 for p in tif.pages)
            meta = tif.eer_metadata
            fractions = tif.asarray()
        assert fractions.shape == (32, 128, 160) and meta["numberOfFrames"] == 32
        assert meta["sensorPixelSize.width"] == pytest.approx(2e-10) and meta["totalDose"] == pytest.approx(3.0)
        summed = fractions.reshape(2, 16, 128, 160).sum(axis=1)
        # an EER raster is stored top row first: the MRC movie's frames flipped in Y (IMOD reads EER so)
        np.testing.assert_array_equal(summed, np.minimum(frames, 16)[:, ::-1, :])
        got = movies.read_movie(d_eer / "data" / "TS_01" / name, eer_fractions_per_frame=16)
        np.testing.assert_array_equal(got, np.minimum(frames, 16))  # read back: the same array as the MRC movie
        n_sat += int(np.count_nonzero(frames > 16))
    assert n_sat > 0  # hot pixels and X-ray hits saturate, as on a counting camera
    sec = mdoc.mdoc_for_frameset(s_eer.movie_mdoc_paths[0])
    assert sec.num_sub_frames == 32 and sec.frame_dose_e_A2 == pytest.approx(3.0 / 32)
    assert json.loads((d_eer / "truth" / "summary.json").read_text())["planted"]["eer_fractions_per_frame"] == 16


def test_same_session_as_mrc_tiff_and_eer_reads_the_same_with_the_same_truth(eer_pair: dict) -> None:
    """A simulated session written as MRC, as LZW TIFF (rows top first, as SerialEM writes TIFF frames) and as EER
    reads back into the same frames, with the same mdoc axis, geometry, hot pixels and X-ray hits: the truth
    refers to one frame (the MRC frame) whatever the format, as a real session's mdoc does."""
    import pandas as pd

    (d_mrc, s_mrc), (d_tif, s_tif), (d_eer, _) = eer_pair["mrc"], eer_pair["tiff"], eer_pair["eer"]
    names = sorted(p.name for p in (d_mrc / "data" / "TS_01").glob("*.mrc"))
    assert len(names) == 3
    for name in names:
        ref = movies.read_movie(d_mrc / "data" / "TS_01" / name)
        tif_path = d_tif / "data" / "TS_01" / name.replace(".mrc", ".tif")
        np.testing.assert_array_equal(movies.read_movie(tif_path), ref)
        np.testing.assert_array_equal(movies.read_movie_sum(tif_path), ref.sum(0).astype(np.float64))
        # on disk the TIFF holds the frames top row first (what tifffile reads is the MRC array flipped in Y)
        np.testing.assert_array_equal(tifffile.imread(tif_path), ref[:, ::-1, :])
        eer_sum = movies.read_movie_sum(d_eer / "data" / "TS_01" / name.replace(".mrc", ".eer"))
        np.testing.assert_array_equal(eer_sum, np.minimum(ref, 16).sum(0))
    truth = {}
    for fmt, d in (("mrc", d_mrc), ("tiff", d_tif), ("eer", d_eer)):
        info = json.loads((d / "truth" / "summary.json").read_text())
        truth[fmt] = {
            "axis": info["planted"]["tilt_axis"], "gain": {k: info["planted"]["gain"][k] for k in
                                                           ("transpose", "flip_x", "flip_y")},
            "geometry": (d / "truth" / "TS_01" / "TS_01_geometry.json").read_text(),
            "hot": pd.read_csv(d / "truth" / "hot_pixels.csv"),
            "xray": pd.read_csv(d / "truth" / "TS_01" / "TS_01_xray_hits.csv").drop(columns="movie"),
            "mdoc_axis": mdoc.read_mdoc(d / "data" / "TS_01" / "TS_01.mdoc").tilt_axis_deg,
        }
    for fmt in ("tiff", "eer"):
        assert truth[fmt]["axis"] == truth["mrc"]["axis"] and truth[fmt]["gain"] == truth["mrc"]["gain"]
        assert truth[fmt]["geometry"] == truth["mrc"]["geometry"]
        assert truth[fmt]["mdoc_axis"] == truth["mrc"]["mdoc_axis"] == pytest.approx(85.0)
        pd.testing.assert_frame_equal(truth[fmt]["hot"], truth["mrc"]["hot"])
        pd.testing.assert_frame_equal(truth[fmt]["xray"], truth["mrc"]["xray"])
    # the hot pixels of the truth are where the TIFF movie, as read, has them (the MRC frame)
    hot = truth["tiff"]["hot"]
    total = sum(movies.read_movie_sum(p) for p in sorted((d_tif / "data" / "TS_01").glob("*.tif")))
    assert np.median(total[hot["y"], hot["x"]]) > 2 * np.median(total)
    # the gain file is the same bytes of the camera's gain whatever the movie format
    np.testing.assert_array_equal(movies.read_gain(s_tif.gain_path), movies.read_gain(s_mrc.gain_path))


def test_scenarios_are_valid_and_described() -> None:
    assert len(synth.SCENARIOS) == 8 and set(synth.SCENARIO_NOTES) == set(synth.SCENARIOS)
    seeds = [p.seed for p in synth.SCENARIOS.values()]
    assert len(set(seeds)) == 8
    for name, p in synth.SCENARIOS.items():
        again = synth.SimParams.model_validate(p.model_dump())  # every option passes validation
        assert again == p, name
        assert (p.image_nx_px, p.image_ny_px, p.n_frames) == (1024, 1024, 6), name
    sc = synth.SCENARIOS
    assert sc["frames_windows"].names() == ["TS_07"] and sc["frames_windows"].layout == "frames"
    assert sc["frames_windows"].mdoc_axis_deg() == pytest.approx(-93.6)
    assert sc["per_movie_mdocs"].names() == ["TS_01", "TS_02"] and sc["per_movie_mdocs"].mdoc_kind == "per_movie"
    assert sc["axis_off_eer"].movie_format == "eer" and sc["axis_off_eer"].mdoc_axis_deg() == -95.0
    assert sc["inverted_axis"].mdoc_axis_deg() == -95.0 and sc["inverted_axis"].tilt_axis_deg == 85.0
    assert sc["sparse_lowdose"].acquisition_tilts_deg()[0] == -60.0
    assert sc["near90_tiff"].names() == ["Position_3"] and sc["near90_tiff"].mdoc_axis_deg() == pytest.approx(91.3)
    assert sc["grouped_dark"].mdoc_axis_deg() == pytest.approx(85.0)


def test_scenario_planted_block(tmp_path: Path) -> None:
    """frames_windows at reduced size (256², 2 frames): the files are where the planted block says."""
    p = synth.SCENARIOS["frames_windows"].model_copy(update=dict(
        image_nx_px=256, image_ny_px=256, n_frames=2, n_particles=4, n_globular_distractors=0, truth_binning=8))
    synth.generate(tmp_path, synth.SimParams.model_validate(p.model_dump()))
    from tomoguide import truth

    pl = truth.planted(tmp_path / "truth")
    assert pl["layout"] == "frames" and pl["movie_format"] == "tiff" and pl["line_endings"] == "crlf"
    assert pl["tilt_scheme"] == "bidirectional" and pl["tilts_in_acquisition_order"][:2] == [-20.0, -17.0]
    assert pl["gain"]["path"] == "data/Frames/CountRef_TS_07.mrc" and (tmp_path / pl["gain"]["path"]).is_file()
    assert (pl["gain"]["transpose"], pl["gain"]["flip_x"], pl["gain"]["flip_y"]) == (False, False, True)
    assert pl["tilt_axis"]["true_deg"] == -94.0 and pl["tilt_axis"]["mdoc_deg"] == pytest.approx(-93.6)
    md = mdoc.read_mdoc(tmp_path / "data" / "TS_07.mdoc")
    assert md.tilt_axis_deg == pytest.approx(pl["tilt_axis"]["mdoc_deg"])
    tilts = star.read_star(tmp_path / "truth" / "TS_07" / "TS_07_tilts.star")["tilts"]
    for kind, tilt in (("dark_views", 58.0), ("jump_views", 22.0)):
        (e,) = pl[kind]["TS_07"]
        row = tilts.iloc[e["view_index"]]
        assert e["nominal_tilt_deg"] == row["rlnTomoNominalStageTiltAngle"] == tilt
        assert e["acquisition_order"] == row["tomoguideAcquisitionOrder"]
        assert e["movie"] == row["rlnMicrographMovieName"] and (tmp_path / e["movie"]).is_file()
    assert pl["dark_views"]["TS_07"][0]["dose_e_A2"] == pytest.approx(0.09)


def test_simulate_command_with_a_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tomoguide.cli import main

    assert main(["simulate", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name}: " in listed for name in synth.SCENARIOS)
    small = ["--set", "image_nx_px=128", "--set", "image_ny_px=128", "--set", "n_frames=2", "--set",
             "n_particles=2", "--set", "n_globular_distractors=0", "--set", "truth_binning=8"]
    assert main(["simulate", "--scenario", "grouped_dark", "--seed", "5", "--out", str(tmp_path), *small]) == 0
    info = json.loads((tmp_path / "truth" / "summary.json").read_text())
    assert info["params"]["seed"] == 5 and info["params"]["image_nx_px"] == 128
    assert info["params"]["tilt_axis_deg"] == 84.2 and info["params"]["group_size"] == 4
    assert [e["nominal_tilt_deg"] for e in info["planted"]["dark_views"]["TS_01"]] == [-51.0, 60.0]
    assert [e["nominal_tilt_deg"] for e in info["planted"]["jump_views"]["TS_01"]] == [-27.0]
    assert main(["simulate", "--scenario", "no_such", "--out", str(tmp_path)]) == 2
    assert "frames_windows" in capsys.readouterr().err
    assert main(["simulate", "--scenario", "grouped_dark", "--preset", "tiny", "--out", str(tmp_path)]) == 2
    assert main(["simulate", "--scenario", "grouped_dark", "--out", str(tmp_path),
                 "--set", "dark_view_tilts_deg=[50]"]) == 2
    assert "dark_view_tilts_deg at 50° is not a tilt of the series" in capsys.readouterr().err


@pytest.mark.parametrize("hand", [-1, 1], ids=["default_hand", "other_hand"])
def test_ctf_estimate_tilt_direction_on_a_simulated_session(tmp_path_factory: pytest.TempPathFactory,
                                                              hand: int) -> None:
    """The tiny preset out to ±50° run through the steps with default parameters: with the simulator's default
    handedness (-1, real instruments) the ctf_estimate step's tilt-direction check finds the direction "as given"
    (the geometry record's default is -1 too); data simulated with +1 disagree with it ("inverted", so the step
    turns the axis by 180°, its default remedy)."""
    from tomoguide.demo import demo_params
    from tomoguide.project import Project
    from tomoguide.runner import StepRun, run_to_end
    from tomoguide.steps import registry

    params = synth.PRESETS["tiny"].model_copy(update={"max_tilt_deg": 50.0})
    if hand != -1:
        params = params.model_copy(update={"defocus_handedness": hand})
    assert params.defocus_handedness == hand
    root = tmp_path_factory.mktemp(f"hand{hand}")
    synth.generate(root / "sim", synth.SimParams.model_validate(params.model_dump()))
    proj = Project.create(root / "proj", params=demo_params(root / "sim" / "data", params))
    try:
        steps = registry.ids()[: registry.ids().index("ctf_estimate") + 1]
        for step in steps:
            st = run_to_end(StepRun(proj, step))
            assert st.status == "done", (step, st.error)
        direction = proj.data.steps["ctf_estimate"].metrics["series"]["TS_01"]["tilt_direction"]
        if hand == -1:
            assert direction["verdict"] == "as given" and direction["z"] >= 6.0, direction
            assert direction["action"] == "none"
        else:
            assert direction["verdict"] == "inverted" and direction["z"] <= -5.0, direction
    finally:
        proj.close()
