"""The step framework's helper for long compute calls that report progress through a callback."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tomoguide.steps.base import Cancelled, Progress, RunContext


def _ctx(tmp_path: Path) -> RunContext:
    return RunContext(project_dir=tmp_path, run_dir=tmp_path, upstream={}, cancel_event=threading.Event())


def test_run_in_thread_yields_progress_and_returns_the_result(tmp_path: Path) -> None:
    def work(progress):
        for i in range(3):
            progress((i + 1) / 3, f"iteration {i + 1}")
        return 42

    gen = _ctx(tmp_path).run_in_thread(work)
    seen = []
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert result == 42
    assert [p.message for p in seen if p.fraction is not None] == ["iteration 1", "iteration 2", "iteration 3"]
    assert all(isinstance(p, Progress) for p in seen)


def test_run_in_thread_cancels_at_the_next_progress_call(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    calls = []

    def work(progress):
        for i in range(1000):
            calls.append(i)
            progress(i / 1000, "")
        return "finished"

    ctx.cancel_event.set()
    with pytest.raises(Cancelled):
        list(ctx.run_in_thread(work))
    assert calls == [0]


def test_run_in_thread_passes_errors_on(tmp_path: Path) -> None:
    def work(progress):
        raise ValueError("tomo.mrc: data: broken")

    with pytest.raises(ValueError, match="tomo.mrc"):
        list(_ctx(tmp_path).run_in_thread(work))


# ---------------------------------------------------------------------------------------------------------------
# the one guarded way to write (design rule 8)
# ---------------------------------------------------------------------------------------------------------------


def test_run_context_writes_inside_its_run_folder_only(tmp_path: Path) -> None:
    from tomoguide.integrity import PathRefused

    project = tmp_path / "project"
    run = project / "steps" / "xray_erase" / "run-1.partial"
    run.mkdir(parents=True)
    ctx = RunContext(project_dir=project, run_dir=run, upstream={})
    assert ctx.out_path("TS_01.mrc") == run / "TS_01.mrc"
    assert ctx.out_path(run / "TS_01.mrc") == run / "TS_01.mrc"  # an absolute path already inside: accepted
    assert ctx.write_text("notes.txt", "ok").read_text() == "ok"
    assert ctx.mkdir("sub") == run / "sub"
    ctx.write_bytes("sub/x.bin", b"\x00\x01")
    assert (run / "sub" / "x.bin").read_bytes() == b"\x00\x01"
    assert ctx.out_path("deep/er/y.mrc", mkdir=True).parent.is_dir()
    ctx.remove("sub")
    assert not (run / "sub").exists()
    victim = tmp_path / "elsewhere" / "TS_01_000_0.0.mrc"
    victim.parent.mkdir()
    victim.write_bytes(b"raw movie")
    bad = [str(victim), "/etc/passwd", "../../x.mrc", "a/../../b", "..", "a\\..\\b", "x\x00y", "C:/x.mrc",
           str(project / "steps" / "xray_erase" / "run-0" / "x")]
    for name in bad:
        for call in (ctx.out_path, lambda n: ctx.write_text(n, "overwritten"), ctx.remove, ctx.mkdir):
            with pytest.raises(PathRefused):
                call(name)
    with pytest.raises(PathRefused):
        ctx.remove(".")  # the run folder itself
    # a symbolic link planted in the run folder is never written through, nor deleted through
    (run / "link").symlink_to(victim.parent)
    (run / "file_link.mrc").symlink_to(victim)
    for name in ("link/TS_01_000_0.0.mrc", "file_link.mrc"):
        with pytest.raises(PathRefused, match="symbolic link"):
            ctx.write_text(name, "overwritten")
        with pytest.raises(PathRefused, match="symbolic link"):
            ctx.remove(name)
    assert victim.read_bytes() == b"raw movie"
    # the run folder itself being a link: refused too
    linked = tmp_path / "linked_run"
    linked.symlink_to(victim.parent)
    with pytest.raises(PathRefused):
        RunContext(project_dir=project, run_dir=linked, upstream={}).out_path("x.mrc")


def test_names_from_records_are_checked() -> None:
    from tomoguide.integrity import check_name, check_relative_file

    for ok in ("TS_01", "Position 1 (2)", "tomo.01+a", "L2_G1_ts_003"):
        assert check_name(ok) == ok
    for bad in ("", ".", "..", "/abs", "a/b", "a\\b", "C:x", " lead", "trail ", "x\ny", "x\x7f", "a" * 201):
        with pytest.raises(ValueError):
            check_name(bad)
    for ok in ("TS_01.mrc", "subtomos/TS_01_000001_data.mrc", "previews/x.mrc"):
        assert check_relative_file(ok) == ok
    for bad in ("", "/etc/passwd", "../x", "a/../../b", "a//b", "./x", "C:\\x", "a\\b", "x\x00"):
        with pytest.raises(ValueError):
            check_relative_file(bad)


def test_series_records_refuse_path_names_when_read(tmp_path: Path) -> None:
    """The one record loader: a name that is a path, a file name leaving the folder, a truncated or non-UTF-8
    file — each one line naming the file and the field."""
    import json

    from tomoguide.geometry import Optics, TiltSeriesGeometry
    from tomoguide.steps.records import RecordError, SeriesEntry, SeriesSet

    g = TiltSeriesGeometry(name="TS_01", pixel_size_A=2.0, binning=1.0, image_shape_px=(64, 64), optics=Optics(),
                           tilt_axis_deg=85.0, tilt_angles_deg=[-3.0, 0.0, 3.0], acquisition_order=[1, 0, 2],
                           dose_e_A2=[3.0, 3.0, 3.0], prior_dose_e_A2=[3.0, 0.0, 6.0])
    path = SeriesSet(series=[SeriesEntry(name="TS_01", geometry=g, files={"stack": "TS_01.mrc"})]).save(tmp_path)
    good = json.loads(path.read_text())
    sset, base = SeriesSet.load(path)
    assert sset.names() == ["TS_01"] and sset.series[0].path("stack", base) == tmp_path / "TS_01.mrc"
    cases = {
        "series.0.name": ("name", "/elsewhere/TS_01_000_0.0"),
        "series.0.files": ("files", {"stack": "../../raw/TS_01.mrc"}),
    }
    for loc, (key, value) in cases.items():
        bad = json.loads(json.dumps(good))
        bad["series"][0][key] = value
        path.write_text(json.dumps(bad))
        with pytest.raises(RecordError) as err:
            SeriesSet.load(path)
        assert str(err.value).startswith(f"{path}: {loc}: ") and "\n" not in str(err.value)
    for data, words in ((b"", "empty"), (json.dumps(good).encode()[:100], "line 1"), (b"\xff\xfe{", "UTF-8")):
        path.write_bytes(data)
        with pytest.raises(RecordError, match=words):
            SeriesSet.load(tmp_path)
    # built in memory, the same rules hold (a step cannot write such a name either)
    with pytest.raises(ValueError):
        SeriesEntry(name="../TS_01", geometry=g)
