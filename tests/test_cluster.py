"""The executor (issue 18): inline and local Dask runs give the same results, failed units are retried and then
named, cancel stops every unit, a worker killed mid-step changes no result, and the tiny demo run through a real
SLURM cluster (marked ``slurm``: CI starts a one-node cluster with .ci/slurm_one_node.sh; skipped without
``sbatch`` or an idle node) equals the inline run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomoguide import synth
from tomoguide.cluster import (
    ClusterSettings,
    DaskExecutor,
    InlineExecutor,
    SlurmSettings,
    Unit,
    UnitFailed,
    atomic_output,
    choose_kind,
    load_settings,
    open_executor,
    save_settings,
)
from tomoguide.steps.base import Cancelled

# the steps up to the picks; those that submit units to the executor are rerun on Dask workers
STEPS = ["import_movies", "motion_ctf", "xray_erase", "preprocess_for_alignment", "align", "assign_alignment",
         "ctf_estimate", "exclude", "ctf_correct", "preprocess_for_reconstruction", "reconstruct", "pick", "extract"]
RERUN = STEPS[1:]


def reallocation_faults() -> dict[str, object]:
    """Minor page faults of 100 allocations of a 1 MiB array in this process (each freed before the next), and the
    MALLOC_TRIM_THRESHOLD_ its environment was started with."""
    import resource

    np.ones(1 << 18, np.float32)  # the heap has grown to this size once
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        b = np.ones(1 << 18, np.float32)
        del b
    return {"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0,
            "trim_env": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def blas_dot(seed: int) -> float:
    """A BLAS reduction (ddot of 2e6 numbers): its value depends on how many threads OpenBLAS splits it over."""
    rng = np.random.default_rng(seed)
    return float(rng.normal(size=2_000_003) @ rng.normal(size=2_000_003))


def square(x: int) -> int:
    return x * x


def fail_for(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"value {x} refused")
    return x


def fail_first_time(x: int, marker_dir: str) -> int:
    """Fails the first time it is called for ``x`` (a marker file remembers the try across processes)."""
    marker = Path(marker_dir) / f"tried_{x}"
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"transient failure of {x}")
    return x + 100


def sleep_then_mark(seconds: float, marker: str) -> None:
    time.sleep(seconds)
    Path(marker).touch()


def write_value(value: float, out: str) -> str:
    with atomic_output(out) as tmp:
        np.save(tmp, np.full(4, value))
    return Path(out).name


@pytest.fixture(scope="module")
def local() -> DaskExecutor:
    ex = DaskExecutor("local", ClusterSettings(workers=2, retries=2))
    yield ex
    ex.close()


def test_inline_and_local_give_the_same_results_named_by_unit(local: DaskExecutor, tmp_path: Path) -> None:
    units = [Unit(f"u{i:02d}", (i,)) for i in range(20)]
    progress: list[tuple[int, int, str]] = []
    inline = dict(InlineExecutor().map_units(square, units))
    dask = dict(local.map_units(square, units, on_progress=lambda d, n, name: progress.append((d, n, name))))
    assert inline == dask == {f"u{i:02d}": i * i for i in range(20)}
    assert [p[0] for p in progress] == list(range(1, 21)) and {p[1] for p in progress} == {20}
    # units write through a temporary file renamed into place: no temporary file is left
    outs = {u.name: str(tmp_path / f"{u.name}.npy") for u in units[:4]}
    got = dict(local.map_units(write_value, [Unit(n, (float(i), p)) for i, (n, p) in enumerate(outs.items())]))
    assert got == {n: Path(p).name for n, p in outs.items()}
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(Path(p).name for p in outs.values())
    assert [float(np.load(p)[0]) for p in outs.values()] == [0.0, 1.0, 2.0, 3.0]
    # one single-threaded worker per core, each pinned to its own core
    assert len(local.workers()) == 2 and all(w.threads == 1 for w in local.workers())
    pins = local.client.run(lambda: sorted(os.sched_getaffinity(0)))
    assert sorted(p[0] for p in pins.values()) == sorted(os.sched_getaffinity(0))[:2] or os.cpu_count() == 1


def test_a_unit_gives_the_same_bits_inline_and_on_a_worker(local: DaskExecutor) -> None:
    """Units run inline with one BLAS thread, as on a single-threaded worker: a BLAS reduction (which the alignment's
    least squares use) gives the same bits on both executors; with this process's BLAS threads it may not."""
    units = [Unit(f"s{i}", (i,)) for i in range(3)]
    inline = dict(InlineExecutor().map_units(blas_dot, units))
    worker = dict(local.map_units(blas_dot, units))
    assert inline == worker
    if (os.cpu_count() or 1) > 1:  # the limit matters: the threaded main process sums in another order
        from threadpoolctl import threadpool_info

        if max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas") > 1:
            assert any(blas_dot(i) != inline[f"s{i}"] for i in range(3))


def test_workers_reuse_freed_memory_as_the_main_process_does(local: DaskExecutor) -> None:
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's dynamic mmap
    threshold: every array of 128 KiB or more became a fresh mmap whose 256 pages fault in again (the CTF fit ran
    3-6x slower on a worker). The workers' setup (cluster.tune_malloc) restores heap reuse: 100 allocations of
    1 MiB cost a few faults, not 100 x 256."""
    import distributed

    got = local.client.run(reallocation_faults)
    assert len(got) == 2
    for addr, r in got.items():
        assert r["faults"] < 2000, (addr, r)
    assert reallocation_faults()["faults"] < 2000
    # the check discriminates: a plain Dask worker (no tomoguide setup) with the nanny's setting faults per page
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                                  scheduler_port=0) as cluster, distributed.Client(cluster) as client:
        plain = next(iter(client.run(reallocation_faults).values()))
    if plain["trim_env"] is not None:
        assert plain["faults"] > 100 * 200, plain


@pytest.mark.parametrize("kind", ["inline", "local"])
def test_a_failed_unit_is_retried_then_named(kind: str, local: DaskExecutor, tmp_path: Path) -> None:
    ex = InlineExecutor(retries=2) if kind == "inline" else local
    # a transient failure: the retry succeeds
    got = dict(ex.map_units(fail_first_time, [Unit(f"TS_{i:02d}", (i, str(tmp_path))) for i in range(3)],
                            retries=1))
    assert got == {"TS_00": 100, "TS_01": 101, "TS_02": 102}
    # a unit that fails every time: reported with its name and the error after 1 + retries tries
    with pytest.raises(UnitFailed) as info:
        list(ex.map_units(fail_for, [Unit(f"TS_{i:02d}", (i, 3)) for i in range(5)], retries=2))
    assert info.value.unit == "TS_03"
    assert str(info.value) == "TS_03: failed 3 times: value 3 refused"


def test_cancel_stops_every_unit(local: DaskExecutor, tmp_path: Path) -> None:
    cancel = threading.Event()
    units = [Unit(f"slow{i}", (6.0, str(tmp_path / f"done{i}"))) for i in range(4)]
    threading.Timer(1.0, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        list(local.map_units(sleep_then_mark, units, cancel_event=cancel))
    assert time.monotonic() - t0 < 5.0  # the units take 6 s each: the busy workers were restarted
    time.sleep(max(0.0, 7.0 - (time.monotonic() - t0)))
    assert not list(tmp_path.iterdir()), "a cancelled unit kept running and finished"
    # the executor still works after a cancel (its workers were restarted)
    local.client.wait_for_workers(2, timeout=60)
    assert dict(local.map_units(square, [Unit("a", (3,))])) == {"a": 9}


def test_settings_file_and_the_choice_of_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOMOGUIDE_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("TOMOGUIDE_CLUSTER", raising=False)
    assert load_settings().kind == "local" and choose_kind() == "local"
    s = ClusterSettings(kind="slurm", retries=1)
    s.slurm.job_extra_directives = ["--gres=gpu:1"]
    save_settings(s)
    assert load_settings() == s and choose_kind() == "slurm"
    monkeypatch.setenv("TOMOGUIDE_CLUSTER", "inline")
    assert choose_kind() == "inline" and choose_kind("local") == "local"
    assert isinstance(open_executor(), InlineExecutor)
    monkeypatch.setenv("TOMOGUIDE_CLUSTER", "cloud")
    with pytest.raises(ValueError, match="TOMOGUIDE_CLUSTER: unknown cluster 'cloud'"):
        choose_kind()
    (tmp_path / "cluster.json").write_text('{"kind": "local", "slurm": {"cores": 0}}')
    with pytest.raises(ValueError, match=r"cluster.json: field slurm.cores: "):
        load_settings()


# ---------------------------------------------------------------------------------------------------------------
# the tiny demo's steps: inline against local, and a worker killed mid-step
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inline_project(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ROOT/data`` + ``ROOT/project`` run inline up to the tomogram (WBP, bin 5 for the alignment)."""
    from tomoguide.demo import demo_params
    from tomoguide.project import Project
    from tomoguide.runner import StepRun, run_to_end

    root = tmp_path_factory.mktemp("cluster_inline")
    shutil.copytree(tiny_dataset / "data", root / "data")
    params = demo_params(root / "data", synth.PRESETS["tiny"])
    params["preprocess_for_alignment"] = {"binning": 5}
    proj = Project.create(root / "project", params=params)
    try:
        for step in STEPS:
            st = run_to_end(StepRun(proj, step, executor=InlineExecutor()))
            assert st.status == "done", (step, st.error)
    finally:
        proj.close()
    return root


def _rerun(root: Path, dst: Path, executor: object, steps: list[str]) -> Path:
    from tomoguide.project import Project
    from tomoguide.runner import StepRun, run_to_end

    shutil.copytree(root, dst, symlinks=True)
    proj = Project.open(dst / "project")
    try:
        for step in steps:
            st = run_to_end(StepRun(proj, step, executor=executor))
            assert st.status == "done", (step, st.error)
    finally:
        proj.close()
    return dst / "project"


def _outputs(project: Path, steps: list[str]) -> dict[str, np.ndarray | str]:
    """Every MRC (data) and text output of the latest run of each step, in its subfolders too (the particles'
    files of an extraction)."""
    out: dict[str, np.ndarray | str] = {}
    for step in steps:
        run = sorted(p for p in (project / "steps" / step).glob("run-*") if not p.name.endswith(".partial"))[-1]
        for f in sorted(p for p in run.rglob("*") if p.is_file()):
            key = f"{step}/{f.relative_to(run)}"
            if f.suffix == ".mrc":
                out[key] = mrcfile.read(f)
            elif f.suffix in (".star", ".xf", ".tlt") or f.name in ("series.json", "particles.json"):
                text = f.read_text().replace(run.name, "RUN")  # comments hold the time of writing
                out[key] = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    return out


def _assert_same(a: dict[str, np.ndarray | str], b: dict[str, np.ndarray | str]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], str):
            assert a[key] == b[key], key
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_local_workers_give_the_inline_results_bit_for_bit(inline_project: Path, local: DaskExecutor,
                                                           tmp_path: Path) -> None:
    steps = RERUN + ["initial_model"]  # its random starts are units too, each on one thread wherever it runs
    ref = _rerun(inline_project, tmp_path / "inline", InlineExecutor(), steps)
    got = _rerun(inline_project, tmp_path / "local", local, steps)
    a, b = _outputs(ref, steps), _outputs(got, steps)
    assert any(k.startswith("reconstruct/") and k.endswith(".mrc") for k in a)
    assert any(k.startswith("initial_model/") and k.endswith(".mrc") for k in a)
    # the extraction: one unit per tilt series, every particle's files and the table in the original order
    assert "extract/particles.star" in a and "extract/particles.json" in a
    assert sum(k.startswith("extract/subtomos/") for k in a) >= 4 * 2
    _assert_same(a, b)


class _Killer(threading.Thread):
    """Kills (SIGKILL) the worker process that runs the first unit it sees running; ``killed`` holds its pid."""

    def __init__(self, ex: DaskExecutor) -> None:
        super().__init__(daemon=True)
        self.ex = ex
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        pids = self.ex.worker_pids()
        while not self.stop.is_set() and self.killed is None:
            busy = [addr for addr, keys in self.ex.client.processing().items() if keys]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                self.killed = pids[busy[0]]
                return
            time.sleep(0.005)


@pytest.mark.parametrize("step", ["motion_ctf", "ctf_estimate", "reconstruct", "extract"])
def test_a_worker_killed_mid_step_changes_no_result(step: str, inline_project: Path, tmp_path: Path) -> None:
    """SIGKILL to the worker process running a unit of ``step``: its unfinished units are rerun elsewhere and the
    step's outputs equal the undisturbed inline run's."""
    steps = [step]
    ref = _rerun(inline_project, tmp_path / "inline", InlineExecutor(), steps)
    with DaskExecutor("local", ClusterSettings(workers=2, retries=0)) as ex:
        killer = _Killer(ex)
        killer.start()
        got = _rerun(inline_project, tmp_path / "killed", ex, steps)
        killer.stop.set()
        killer.join()
        assert killer.killed is not None, "no unit was seen running"
        assert killer.killed not in ex.worker_pids().values()
    _assert_same(_outputs(ref, steps), _outputs(got, steps))


# ---------------------------------------------------------------------------------------------------------------
# a real SLURM cluster
# ---------------------------------------------------------------------------------------------------------------


def _slurm_ready() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM here (sbatch not on PATH)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if not any(s.strip().startswith(("idle", "mix")) for s in states.splitlines()):
        return f"no idle SLURM node (sinfo: {states.strip() or 'nothing'})"
    return None


@pytest.mark.slurm
def test_the_tiny_demo_on_slurm_equals_the_inline_run(inline_project: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    why = _slurm_ready()
    if why is not None:
        pytest.skip(why)
    from tomoguide.cli import run_steps

    logs = tmp_path / "slurm_logs"
    logs.mkdir()
    monkeypatch.setenv("TOMOGUIDE_CONFIG_DIR", str(tmp_path / "config"))
    save_settings(ClusterSettings(kind="slurm", slurm=SlurmSettings(
        cores=1, memory="2GB", walltime="00:15:00", max_jobs=2, log_directory=str(logs))))
    steps = RERUN + ["initial_model"]  # the initial model's random starts run in SLURM jobs too
    ref = _rerun(inline_project, tmp_path / "inline", InlineExecutor(), steps)
    shutil.copytree(inline_project, tmp_path / "slurm", symlinks=True)
    project = tmp_path / "slurm" / "project"
    assert run_steps(project, until="initial_model", force=True, quiet=True, cluster="slurm") == 0
    _assert_same(_outputs(ref, steps), _outputs(project, steps))
    # the workers ran in SLURM jobs: one log per job submitted with sbatch, and SLURM knows the job by its id
    ids = sorted({m.group(1) for f in logs.iterdir() if (m := re.fullmatch(r"dask-worker-(\d+)\.err", f.name))})
    assert ids, f"no job logs in {logs}: {sorted(f.name for f in logs.iterdir())}"
    shown = subprocess.run(["scontrol", "show", "job", ids[-1]], capture_output=True, text=True, timeout=20).stdout
    assert f"JobId={ids[-1]} " in shown and "JobName=dask-worker" in shown, shown
    worker_log = (logs / f"dask-worker-{ids[-1]}.err").read_text()
    assert "Registered to" in worker_log or "Start worker" in worker_log, worker_log[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# one unit from the command line: tomoguide run PROJECT --only STEP --item TS_02
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_series_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset with two tilt series, run inline up to the tomogram."""
    from tomoguide.demo import demo_params
    from tomoguide.project import Project
    from tomoguide.runner import StepRun, run_to_end

    root = tmp_path_factory.mktemp("cluster_items")
    sim = synth.PRESETS["tiny"].model_copy(update={"n_series": 2})
    synth.generate(root, sim)
    params = demo_params(root / "data", sim)
    params["preprocess_for_alignment"] = {"binning": 5}
    proj = Project.create(root / "project", params=params)
    try:
        for step in STEPS[:STEPS.index("reconstruct") + 1]:
            st = run_to_end(StepRun(proj, step, executor=InlineExecutor()))
            assert st.status == "done", (step, st.error)
    finally:
        proj.close()
    return root


def _latest(project: Path, step: str) -> Path:
    return sorted(p for p in (project / "steps" / step).glob("run-*") if not p.name.endswith(".partial"))[-1]


@pytest.mark.parametrize("step", ["motion_ctf", "reconstruct"])
def test_one_series_from_the_command_line_merges_into_the_project(step: str, two_series_project: Path,
                                                                 tmp_path: Path) -> None:
    from tomoguide.cli import main
    from tomoguide.project import Project
    from tomoguide.steps.records import SeriesSet

    shutil.copytree(two_series_project, tmp_path / "p", symlinks=True)
    project = tmp_path / "p" / "project"
    before = _latest(project, step)
    assert main(["run", str(project), "--only", step, "--item", "TS_02", "--cluster", "inline"]) == 0
    after = _latest(project, step)
    assert after != before
    sset, base = SeriesSet.load(after / "series.json")
    assert sset.names() == ["TS_01", "TS_02"]
    # TS_01 kept from the previous run (the same file), TS_02 computed again: identical (deterministic units)
    old, _ = SeriesSet.load(before / "series.json")
    for s_new, s_old in zip(sset.series, old.series, strict=True):
        assert s_new.files == s_old.files
        for role in s_new.files:
            a, b = s_new.path(role, base), s_old.path(role, before)
            if s_new.name == "TS_01" and not a.is_symlink():
                assert a.stat().st_ino == b.stat().st_ino, role
            if a.suffix == ".mrc":
                np.testing.assert_array_equal(mrcfile.read(a), mrcfile.read(b), err_msg=f"{s_new.name} {role}")
    assert not list((project / "steps" / step).glob("*items*")), "the filtered inputs were not removed"
    proj = Project.open(project, readonly=True)
    try:
        st = proj.data.steps[step]
        assert st.status == "done" and st.metrics["items_rerun"] == ["TS_02"]
        assert sorted(st.metrics["series"]) == ["TS_01", "TS_02"]
        assert proj.is_up_to_date("reconstruct"), "identical results keep the later steps done"
    finally:
        proj.close()


def test_an_unknown_item_or_one_without_only_is_refused(two_series_project: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from tomoguide.cli import main

    shutil.copytree(two_series_project, tmp_path / "p", symlinks=True)
    project = tmp_path / "p" / "project"
    assert main(["run", str(project), "--only", "reconstruct", "--item", "TS_09"]) != 0
    err = capsys.readouterr().err
    assert "--item TS_09: no such tilt series in reconstruct's results (it has: TS_01, TS_02)" in err
    assert main(["run", str(project), "--item", "TS_01"]) != 0
    assert "--item needs --only STEP" in capsys.readouterr().err


def test_the_full_preset_is_the_tutorials_scale() -> None:
    """``simulate --preset full``: at least 8 tilt series of 41 tilts, as many particles per series as small."""
    from tomoguide.cli import build_parser

    full, small = synth.PRESETS["full"], synth.PRESETS["small"]
    assert full.n_series >= 8 and len(full.acquisition_tilts_deg()) == 41
    assert full.n_particles == small.n_particles
    assert {k: v for k, v in full.model_dump().items() if k != "n_series"} == \
        {k: v for k, v in small.model_dump().items() if k != "n_series"}
    assert build_parser().parse_args(["simulate", "--preset", "full"]).preset == "full"


# ---------------------------------------------------------------------------------------------------------------
# the refinement's expectation step in particle batches
# ---------------------------------------------------------------------------------------------------------------


def test_expectation_in_batches_equals_one_call() -> None:
    """Batches of EXPECTATION_BATCH particles (as the units get them: their own rows, the selection's far_px) give
    the poses, shifts and scores of one call over the whole selection, bit for bit, for a global search with the
    FFT offsets and a local one with the ±step candidates."""
    from tomoguide.compute.refine import (
        EXPECTATION_BATCH,
        asymmetric_unit_grid,
        centred_fft_stack,
        expectation,
        local_rotations,
        prepare_reference,
    )

    rng = np.random.default_rng(7)
    m, b = 2 * EXPECTATION_BATCH + 37, 16
    dft = centred_fft_stack(rng.normal(size=(m, b, b, b)).astype(np.float32))
    w = rng.uniform(0.2, 1.0, size=(m, b, b, b)).astype(np.float32)
    ref = prepare_reference(rng.normal(size=(b, b, b)).astype(np.float32), None)
    sel = np.sort(rng.choice(m, size=m - 20, replace=False))
    # centres growing along the particles: each batch alone would examine a cube of translations of its own size
    centres = rng.uniform(-1, 1, size=(m, 3)) * np.linspace(0.2, 3.0, m)[:, None]
    q, _ = np.linalg.qr(rng.normal(size=(m, 3, 3)))
    for rot, pert, fft_shifts in ((np.repeat(np.eye(3)[None], m, axis=0), asymmetric_unit_grid(30.0, "C1"), True),
                                  (q * np.sign(np.linalg.det(q))[:, None, None], local_rotations(5.0), False)):
        opts = dict(shift_step_px=1.0, n_shifts=7, fft_shifts=fft_shifts, offset_range_px=2.0,
                    far_px=float(np.abs(centres[sel]).max()))
        one = expectation(dft, w, ref, sel, rot, centres + 0.5, centres, pert, 6.0, **opts)
        parts = [expectation(dft[rows], w[rows], ref, np.arange(rows.size), rot[rows], centres[rows] + 0.5,
                             centres[rows], pert, 6.0, **opts)
                 for rows in (sel[i:i + EXPECTATION_BATCH] for i in range(0, sel.size, EXPECTATION_BATCH))]
        assert len(parts) == 3
        for k in range(3):
            np.testing.assert_array_equal(one[k], np.concatenate([p[k] for p in parts]))


def _average_outputs(project: Path, step: str, with_numbers: bool = False) -> dict[str, np.ndarray | str]:
    """The maps of the latest run of ``step`` and its particles table's columns (text; the scores as numbers, and
    with ``with_numbers`` every numeric column)."""
    import pandas as pd

    from tomoguide.compute.io.star import read_particles_star

    run = _latest(project, step)
    out: dict[str, np.ndarray | str] = {}
    for f in sorted(run.glob("*.mrc")):
        out[f.name] = mrcfile.read(f)
    df = read_particles_star(run / "particles.star").particles
    for c in df.columns:
        numeric = c == SCORE or (with_numbers and pd.api.types.is_numeric_dtype(df[c]))
        out[f"particles.star/{c}"] = df[c].to_numpy(np.float64) if numeric else df[c].astype(str).str.cat(sep=" ")
    return out


# workers run single-threaded, the main process threaded: the scores' sums may differ in the last bit (float32
# ulps; the poses, offsets and maps do not on the tiny demo; see tomoguide.cluster)
SCORE = "rlnLogLikeliContribution"


def test_refinement_on_workers_with_one_killed_equals_the_inline_run(tiny_project_root: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The refinement's expectation step in particle batches on 2 local workers (as if this machine had 1 core:
    the batches go to workers that bring more cores than the main process has), one of them killed (SIGKILL)
    while it runs a batch, gives the inline run's poses (particles.star) and maps to float32 rounding (the workers
    run the search kernels single-threaded, this process with all its threads: the reductions' order may differ
    in the last bit, as the cluster module says; a different pose would differ by a sampling step, 1e5 times more);
    no scratch reference is left."""
    import tomoguide.cluster

    ref = _rerun(tiny_project_root, tmp_path / "inline", InlineExecutor(), ["refine"])
    monkeypatch.setattr(tomoguide.cluster, "usable_cores", lambda: 1)
    with DaskExecutor("local", ClusterSettings(workers=2, retries=0)) as ex:
        killer = _Killer(ex)
        killer.start()
        got = _rerun(tiny_project_root, tmp_path / "local", ex, ["refine"])
        killer.stop.set()
        killer.join()
        assert killer.killed is not None, "no unit was seen running"
    a, b = _average_outputs(ref, "refine", True), _average_outputs(got, "refine", True)
    assert {"half1.mrc", "half2.mrc", "map.mrc", "particles.star/rlnAngleRot", "particles.star/rlnOriginXAngst",
            f"particles.star/{SCORE}"} <= set(a)
    # float32 sums over a particle's sub-tilts and voxels in another order: seen up to 1.2e-6 relative
    np.testing.assert_allclose(a.pop(f"particles.star/{SCORE}"), b.pop(f"particles.star/{SCORE}"), rtol=1e-5)
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], str):
            assert a[key] == b[key], key
        elif key.startswith("particles.star/"):  # angles (degrees) and origins (Å)
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-3, err_msg=key)
        else:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5 * float(np.abs(a[key]).max()), err_msg=key)
    assert not (_latest(got, "refine") / "units").exists()


def test_expectation_batches_fit_the_workers_memory() -> None:
    """The refinement's particle batches: a half set over the workers in multiples of EXPECTATION_BATCH, and split
    further when a batch would need more than half a worker's memory (measured bytes per particle and voxel)."""
    from tomoguide.compute.refine import EXPECTATION_BATCH as E
    from tomoguide.steps.refine import UNIT_BYTES_PER_PARTICLE_VOXEL as PER, expectation_batch_size

    assert expectation_batch_size(597, 1, 36, []) == 7 * E  # one batch: the whole half set
    assert expectation_batch_size(597, 2, 36, []) == 4 * E
    # the full preset's SLURM workers (3.54 GiB): a batch of 597 box-36 particles (3.46 GB) was too big
    size = expectation_batch_size(597, 1, 36, [int(3.54 * 2**30)])
    assert size % E == 0 and size * PER * 36**3 <= 0.5 * 3.54 * 2**30 and size >= E
    assert size < 597
    # never below one EXPECTATION_BATCH, however little memory
    assert expectation_batch_size(597, 1, 200, [2**28]) == E


def test_slurm_jobs_ask_for_the_memory_set_not_rounded_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dask-jobqueue writes --mem rounded up to whole GB (3800MB -> 4G: two jobs no longer fit an 8000 MB node);
    tomoguide's jobs ask for the setting in MiB, rounded down, and a bad amount is refused naming the field."""
    from tomoguide.cluster import make_slurm_cluster, slurm_job_mem

    assert slurm_job_mem("3800MB") == "3623M" and slurm_job_mem("32GiB") == "32768M"
    cluster = make_slurm_cluster(SlurmSettings(cores=1, memory="3800MB"))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --mem=3623M" in script and "--memory-limit 3.54GiB" in script, script
    monkeypatch.setenv("TOMOGUIDE_CONFIG_DIR", str(tmp_path))
    (tmp_path / "cluster.json").write_text('{"kind": "slurm", "slurm": {"memory": "lots"}}')
    with pytest.raises(ValueError, match=r"cluster.json: field slurm.memory: .*'lots' is not an amount of memory"):
        load_settings()


def test_work_in_this_process_keeps_to_the_cores_of_a_local_cluster(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """A step's in-place work (the averaging searches, ``RunContext.run_in_thread``) beside a local cluster of N
    single-threaded workers uses N threads (``workers: 1`` keeps tomoguide on one core); the default local
    cluster (a worker per core), inline and SLURM leave every core to it."""
    import numba

    from tomoguide.cluster import LazyExecutor, local_core_budget
    from tomoguide.compute.backend import fft_workers
    from tomoguide.steps.base import RunContext

    monkeypatch.setattr("tomoguide.cluster.usable_cores", lambda: 8)
    assert local_core_budget(None) is None and local_core_budget(8) is None and local_core_budget(16) is None
    assert local_core_budget(3) == 3 and local_core_budget(2, threads_per_worker=2) == 4
    assert LazyExecutor("local", ClusterSettings(workers=1)).in_place_cores() == 1
    assert LazyExecutor("local", ClusterSettings()).in_place_cores() is None
    assert LazyExecutor("slurm", ClusterSettings(workers=1)).in_place_cores() is None
    assert InlineExecutor().in_place_cores() is None

    def budget(progress: object) -> tuple[int, int]:
        return numba.get_num_threads(), fft_workers()

    def run(executor: object) -> tuple[int, int]:
        ctx = RunContext(project_dir=tmp_path, run_dir=tmp_path, upstream={}, executor=executor)
        gen = ctx.run_in_thread(budget)
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return stop.value

    assert run(LazyExecutor("local", ClusterSettings(workers=1))) == (1, 1)
    assert run(LazyExecutor("local", ClusterSettings())) == (numba.get_num_threads(), -1)
    assert run(None) == (numba.get_num_threads(), -1)
    # a lone unit run here by a small local cluster that has not started keeps to its cores as well
    ex = LazyExecutor("local", ClusterSettings(workers=1))
    assert dict(ex.map_units(budget, [Unit("one", (None,))])) == {"one": (1, 1)}
    assert not ex.started


def test_a_local_cluster_starts_ahead_when_a_step_runs(inline_project: Path, tmp_path: Path) -> None:
    """The runner asks the executor to start ahead when a step starts: a local LazyExecutor then starts its cluster
    in the background (the first units of a later step do not wait for it) and the next map_units uses it; inline
    and SLURM executors start nothing ahead; close() ends a cluster that was being started."""
    from tomoguide.cluster import LazyExecutor

    class Counting(InlineExecutor):
        calls = 0

        def prestart(self) -> None:
            Counting.calls += 1

    _rerun(inline_project, tmp_path / "p", Counting(), ["exclude"])
    assert Counting.calls == 1
    for kind in ("inline", "slurm"):
        lazy = LazyExecutor(kind, ClusterSettings(workers=1))
        lazy.prestart()
        assert lazy._prestart is None and not lazy.started
    lazy = LazyExecutor("local", ClusterSettings(workers=2))
    try:
        lazy.prestart()
        lazy.prestart()  # once
        assert lazy._prestart is not None
        lazy._prestart.join(timeout=120)
        assert lazy.started and len(lazy.workers()) == 2
        assert dict(lazy.map_units(square, [Unit("a", (3,)), Unit("b", (4,))])) == {"a": 9, "b": 16}
    finally:
        lazy.close()
    assert not lazy.started
    lazy = LazyExecutor("local", ClusterSettings(workers=1))
    lazy.prestart()
    lazy.close()  # while it starts: waits for it, then closes it
    assert not lazy.started and lazy._prestart is None
