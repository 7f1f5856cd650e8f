"""The ctf_estimate step's tilt-direction check: the geometry turned by 180° (what it changes and keeps), and the
step on a synthetic tilt series whose axis was given 180° off (corrected, reported or flipped as asked) or right."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tomoguide.compute import ctf as ctfmod
from tomoguide.compute import ctffit
from tomoguide.compute.io.mrc import write_mrc
from tomoguide.compute.io.star import read_ctf_star
from tomoguide.geometry import TiltSeriesGeometry, rotation_2d
from tomoguide.pages.preview_ctf import tilt_direction_text
from tomoguide.steps.base import RunContext, StepOutputs, StepResult
from tomoguide.steps.ctf_estimate import CtfEstimate, CtfEstimateParams, rotate_tilt_axis_180, search_maximum_A
from tomoguide.steps.records import SeriesEntry, SeriesSet, link_or_copy

PX = 2.0
TRUE_AXIS = 85.0
TILTS = (-48.0, -33.0, -21.0, 0.0, 21.0, 33.0, 48.0)
DF = 30000.0


def _geometry(axis: float, *, tilts: tuple[float, ...] = TILTS, shape: tuple[int, int] = (768, 768), hand: int = 1,
              seed: int = 0, nominal_um: float = DF / 1e4) -> TiltSeriesGeometry:
    """A record with specimen shifts and small per-view rotation errors, as an alignment leaves it."""
    rng = np.random.default_rng(seed)
    n = len(tilts)
    g = TiltSeriesGeometry(name="TS_01", pixel_size_A=PX, image_shape_px=shape, tilt_axis_deg=axis,
                           tilt_angles_deg=tilts, tilt_offset_deg=0.0, defocus_handedness=hand,
                           nominal_defocus_um=[nominal_um] * n)
    a = rotation_2d(-(axis + rng.normal(0.0, 0.4, n)))
    s = rng.normal(0.0, 12.0, (n, 2))
    xf = np.concatenate([a, -(a @ s[:, :, None])], axis=2)
    return g.model_validate({**g.model_dump(), "xf": xf})


# ---- the geometry turned by 180° ---------------------------------------------------------------------------------


def test_rotate_tilt_axis_180_keeps_shifts_and_projects_the_inverted_specimen() -> None:
    g = _geometry(TRUE_AXIS, shape=(1000, 1200))
    g2 = rotate_tilt_axis_180(g)
    assert g2.tilt_axis_deg == pytest.approx(-95.0)
    assert rotate_tilt_axis_180(_geometry(-100.0)).tilt_axis_deg == pytest.approx(80.0)
    assert rotate_tilt_axis_180(_geometry(0.0)).tilt_axis_deg == pytest.approx(180.0)
    # the aligned centre stays where it was in every raw view; per-view rotation errors are kept (+180°)
    np.testing.assert_allclose(g2.specimen_shifts_px(), g.specimen_shifts_px(), atol=1e-9)
    np.testing.assert_allclose(g2.xf_array(), -g.xf_array())
    # what alignment cannot tell apart: the point-inverted specimen projects to the same raw pixels ...
    pts = np.random.default_rng(1).uniform(-200.0, 200.0, (50, 3))
    a, b = g.project(pts), g2.project(-pts)
    np.testing.assert_allclose(b[..., :2], a[..., :2], atol=1e-9)
    # ... but every depth, hence the defocus gradient across each tilted view, has the opposite sign
    np.testing.assert_allclose(b[..., 2], -a[..., 2], atol=1e-9)
    np.testing.assert_allclose(g2.defocus_offset_A(-pts), -g.defocus_offset_A(pts), atol=1e-9)
    # and the same point of the mid-plane, seen at the same raw pixel, gets the opposite offset
    yy, xx = np.mgrid[0:1000:97, 0:1200:113]
    o1 = ctffit.defocus_offsets_A(xx, yy, (1000, 1200), PX, 40.0, g.tilt_axis_deg, 1)
    o2 = ctffit.defocus_offsets_A(xx, yy, (1000, 1200), PX, 40.0, g2.tilt_axis_deg, 1)
    np.testing.assert_allclose(o2, -o1, atol=1e-6)
    # twice is the identity; the other fields are kept
    g3 = rotate_tilt_axis_180(g2)
    np.testing.assert_allclose(g3.xf_array(), g.xf_array(), atol=1e-12)
    assert g3.tilt_axis_deg == pytest.approx(TRUE_AXIS)
    for field in ("tilt_angles_deg", "tilt_offset_deg", "x_tilt_deg", "defocus_handedness", "excluded", "binning"):
        assert getattr(g2, field) == getattr(g, field), field


# ---- the step on a synthetic series -----------------------------------------------------------------------------


def _tilted_stack(shape: tuple[int, int] = (768, 768), noise: float = 2.0, tilts: tuple[float, ...] = TILTS,
                  df: float = DF) -> np.ndarray:
    """Views of a flat specimen tilted about the true axis (defocus gradient with handedness +1)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    kx, ky = ctfmod.frequency_grid(shape, PX, rfft=True)
    k2 = kx * kx + ky * ky
    out = []
    for i, t in enumerate(tilts):
        rng = np.random.default_rng(100 + i)
        spec = np.fft.rfft2(rng.normal(size=shape)) * np.exp(-20.0 * k2) / (1.0 + k2 / 0.003)
        offs = ctffit.defocus_offsets_A(xx, yy, shape, PX, t, TRUE_AXIS, 1)
        levels = np.arange(offs.min() - 100.0, offs.max() + 200.0, 100.0)
        f = (offs - levels[0]) / 100.0
        j0 = np.floor(f).astype(int)
        w1 = f - j0
        img = np.zeros(shape)
        for j, lev in enumerate(levels):
            m0, m1 = j0 == j, j0 == j - 1
            if m0.any() or m1.any():
                c = ctfmod.ctf_2d(shape, PX, df + 150.0 + lev, df - 150.0 + lev, 25.0, rfft=True, dtype=np.float64)
                layer = np.fft.irfft2(spec * c, s=shape)
                img[m0] += layer[m0] * (1.0 - w1[m0])
                img[m1] += layer[m1] * w1[m1]
        img /= img.std()
        out.append(img + noise * rng.normal(size=shape))
    return np.asarray(out, dtype=np.float32)


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hand") / "TS_01.mrc"
    write_mrc(path, _tilted_stack(), voxel_size_A=PX, is_stack=True)
    return path


def _run(stack_file: Path, tmp_path: Path, geometry: TiltSeriesGeometry, **params: Any) -> tuple[StepResult,
                                                                                                     SeriesEntry]:
    result, entry, _ = _run_logged(stack_file, tmp_path, geometry, **params)
    return result, entry


def _run_logged(stack_file: Path, tmp_path: Path, geometry: TiltSeriesGeometry,
                **params: Any) -> tuple[StepResult, SeriesEntry, list[str]]:
    src = tmp_path / "assign"
    src.mkdir(parents=True)
    link_or_copy(stack_file, src / "TS_01.mrc")
    series = SeriesSet(series=[SeriesEntry(name="TS_01", geometry=geometry, files={"stack": "TS_01.mrc"})]).save(src)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ctx = RunContext(project_dir=tmp_path, run_dir=run_dir, cancel_event=threading.Event(),
                     upstream={"assign_alignment": StepOutputs("assign_alignment", {"series": series}, {}, {})})
    p = CtfEstimateParams(**{"box_px": 256, "res_high_A": 6.0, **params})
    step = CtfEstimate()
    assert not [i for i in step.check(p, ctx) if i.level == "error"]
    gen = step.run(p, ctx)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        result = stop.value
    assert isinstance(result, StepResult)
    out, _ = SeriesSet.load(result.outputs["series"])
    return result, out.series[0], ctx.log_lines


@pytest.fixture(scope="module")
def as_given_run(stack_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[StepResult, SeriesEntry]:
    return _run(stack_file, tmp_path_factory.mktemp("given"), _geometry(TRUE_AXIS))


def _defocus(result: StepResult, entry: SeriesEntry) -> np.ndarray:
    table = read_ctf_star(Path(result.outputs["series"]).parent / entry.files["ctf_star"])
    return table[["rlnDefocusU", "rlnDefocusV"]].to_numpy(float)


def test_step_keeps_a_right_tilt_direction(as_given_run: tuple[StepResult, SeriesEntry]) -> None:
    result, entry = as_given_run
    d = entry.info["tilt_direction"]
    assert d["verdict"] == "as given" and d["action"] == "none" and d["z"] >= 4.0
    assert d["n_views"] == 6 and d["n_as_given"] == 6  # the six views at |tilt| ≥ 20°
    assert entry.geometry.tilt_axis_deg == TRUE_AXIS
    np.testing.assert_array_equal(entry.geometry.xf_array(), _geometry(TRUE_AXIS).xf_array())
    assert result.metrics["tilt_direction"] == {"TS_01": "as given"}
    assert result.metrics["n_tilt_direction_changed"] == 0
    assert "tilt direction as given (1 series)" in result.summary
    # the defocus at the image centre: within 150 Å of the truth at every tilt
    uv = _defocus(result, entry)
    np.testing.assert_allclose(uv.mean(axis=1), DF, atol=150.0)
    assert "as given" in tilt_direction_text(d)


def test_step_corrects_an_axis_given_180_degrees_off(stack_file: Path, tmp_path: Path,
                                                     as_given_run: tuple[StepResult, SeriesEntry]) -> None:
    wrong = rotate_tilt_axis_180(_geometry(TRUE_AXIS))  # e.g. typed as −95° for 85°, alignment fits it as well
    result, entry = _run(stack_file, tmp_path, wrong)
    d = entry.info["tilt_direction"]
    assert d["verdict"] == "inverted" and d["action"] == "rotate_axis" and d["z"] <= -4.0
    assert d["n_inverted"] == 6
    assert d["tilt_axis_before_deg"] == pytest.approx(-95.0) and d["tilt_axis_after_deg"] == pytest.approx(85.0)
    # the geometry passed on is the right one again, transforms included
    assert entry.geometry.tilt_axis_deg == pytest.approx(TRUE_AXIS)
    np.testing.assert_allclose(entry.geometry.xf_array(), _geometry(TRUE_AXIS).xf_array(), atol=1e-12)
    assert "corrected to 85.0°" in result.summary and "off by 180°" in result.summary
    assert result.metrics["n_tilt_direction_changed"] == 1
    # the CTF was fitted with the corrected gradient: the same fits as with the right axis from the start
    np.testing.assert_allclose(_defocus(result, entry), _defocus(*as_given_run), atol=0.5)
    assert "inverted" in tilt_direction_text(d) and "#c62828" in tilt_direction_text(d)


def test_step_reports_or_flips_the_defocus_handedness_when_asked(stack_file: Path, tmp_path: Path,
                                                                 as_given_run: tuple[StepResult, SeriesEntry]) -> None:
    wrong = rotate_tilt_axis_180(_geometry(TRUE_AXIS))
    result, entry = _run(stack_file, tmp_path / "report", wrong, tilt_direction="report")
    d = entry.info["tilt_direction"]
    assert d["verdict"] == "inverted" and d["action"] == "none"
    assert entry.geometry.tilt_axis_deg == pytest.approx(-95.0) and entry.geometry.defocus_handedness == 1
    assert "kept ('report')" in result.summary and result.metrics["n_tilt_direction_changed"] == 0
    # Warp's way: the axis stays, the defocus handedness flips, and the CTF is fitted with the data's gradient
    result, entry = _run(stack_file, tmp_path / "flip", wrong, tilt_direction="flip_defocus")
    assert entry.geometry.tilt_axis_deg == pytest.approx(-95.0) and entry.geometry.defocus_handedness == -1
    assert entry.info["tilt_direction"]["action"] == "flip_defocus"
    np.testing.assert_allclose(_defocus(result, entry), _defocus(*as_given_run), atol=0.5)
    # off: no check, nothing recorded
    result, entry = _run(stack_file, tmp_path / "off", wrong, tilt_direction="off")
    assert "tilt_direction" not in entry.info and "tilt_direction" not in result.metrics
    assert entry.geometry.tilt_axis_deg == pytest.approx(-95.0)


def test_step_searches_beyond_the_maximum_when_the_mdoc_targets_more(tmp_path: Path) -> None:
    """A session recorded at 5.5 µm: the tutorial's 1-5 µm range would flag every fit at its edge."""
    tilts, df = (-3.0, 0.0, 3.0), 56000.0
    path = tmp_path / "deep.mrc"
    write_mrc(path, _tilted_stack(tilts=tilts, df=df), voxel_size_A=PX, is_stack=True)
    g = _geometry(TRUE_AXIS, tilts=tilts, nominal_um=5.5)
    p = CtfEstimateParams()
    assert search_maximum_A(p, g) == pytest.approx(75000.0)
    assert search_maximum_A(p, _geometry(TRUE_AXIS, tilts=tilts, nominal_um=2.5)) == p.defocus_max_A
    assert search_maximum_A(CtfEstimateParams(narrow_around_nominal=True), g) == p.defocus_max_A
    result, entry, log = _run_logged(path, tmp_path / "wide", g)
    assert result.metrics["n_failed"] == 0
    np.testing.assert_allclose(_defocus(result, entry).mean(axis=1), df, atol=150.0)
    assert any("defocus searched up to 7.5 µm" in line for line in log)
    # with the range as typed and no target in the mdoc, the same views fail at the edge of the range
    result, entry, log = _run_logged(path, tmp_path / "narrow", g.model_copy(update={"nominal_defocus_um": None}))
    assert result.metrics["n_failed"] == 3 and not any("searched up to" in line for line in log)
