"""Where a step's work runs: in this process, on Dask workers on this machine, or on a SLURM cluster.

One executor API for every step (issue 18). A step cuts its work into **units** — one movie, one tilt series, one
batch of particles — each a picklable module-level function with small arguments (file paths, parameter values)
that reads its inputs by path and writes its outputs to a temporary file renamed into the run folder
(:func:`atomic_output`), and returns a small JSON-able result. The step hands the units to
:meth:`tomoguide.steps.base.RunContext.map_units`, which sends them to the executor:

* ``inline`` (:class:`InlineExecutor`): no Dask; units run one after another in this process (in a helper thread so
  that progress and cancel stay prompt). Tests and debugging; the executor of a :class:`RunContext` that was given
  none.
* ``local`` (:class:`DaskExecutor` on a ``distributed.LocalCluster``): one single-threaded worker *process* per core
  (each pinned to its own core, BLAS/numba threads 1), the default of the command line and the wizard.
* ``slurm`` (:class:`DaskExecutor` on a ``dask_jobqueue.SLURMCluster``): pilot jobs submitted with ``sbatch`` from
  :class:`SlurmSettings` (queue, cores, memory, walltime, extra directives such as ``--gres=gpu:1``, maximum jobs),
  scaled by ``adapt`` between ``min_jobs`` and ``max_jobs``.

Work a step runs in this process instead of as units (the averaging steps' searches, which beat units on one
machine) keeps to the cores of the chosen cluster (:meth:`Executor.in_place_cores`): beside a local cluster of N
single-threaded workers it runs on N threads (numba, FFT, BLAS: :func:`tomoguide.compute.backend.cpu_threads`), so
``workers: 1`` keeps tomoguide on one core; inline and the default local cluster (a worker per core) use every core.

Chosen by ``--cluster`` on the command line, else ``$TOMOGUIDE_CLUSTER``, else the settings file
``<config_dir>/cluster.json`` (:func:`settings_path`; written by the wizard's settings dialog), else ``local``.

Guarantees of :meth:`Executor.map_units`:

* results are yielded as units complete, each with its unit's name; a unit's result does not depend on which
  worker ran it (units seed their random numbers from their own name, never from the process), nor on whether it
  ran in this process: inline units run with one BLAS thread, as workers do (:func:`one_blas_thread`; numba's and
  the FFT's threads do not change results). Only work done outside the units differs: the refinement's search on
  SLURM workers (single-threaded BLAS) and in place (this process's BLAS threads) may differ in the last bits;
  such a rerun changes a record's content, so the steps after it become stale by content, as after any rerun;
* a failed unit is retried ``retries`` times (settings, default 2), then :class:`UnitFailed` names it (the series,
  the movie, the particle batch) with the last error;
* a worker lost mid-step (killed, its SLURM job ended) loses only its unfinished units: Dask reruns them on the
  other workers (or on the restarted one);
* cancel (the run's ``cancel_event``) cancels every queued unit and restarts the workers that were running one, so
  nothing keeps computing for a cancelled run.

Only the main process writes ``project.json``: workers write inside the run folder only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ClusterKind = Literal["inline", "local", "slurm"]
KINDS: tuple[str, ...] = ("inline", "local", "slurm")
ENV_VAR = "TOMOGUIDE_CLUSTER"
SETTINGS_FILE = "cluster.json"


# ---------------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------------


class SlurmSettings(BaseModel):
    """How the Dask workers are started on a SLURM cluster (one pilot job = ``processes`` workers)."""

    model_config = ConfigDict(extra="forbid")

    queue: str | None = Field(None, description="partition (sbatch -p); empty: the cluster's default")
    account: str | None = Field(None, description="account to charge (sbatch -A); empty: none")
    cores: int = Field(1, ge=1, le=1024, description="cores per job")
    processes: int = Field(1, ge=1, le=1024, description="worker processes per job (each gets cores/processes)")
    memory: str = Field("4GB", description="memory per job (e.g. 4GB, 32GiB)")
    walltime: str = Field("01:00:00", description="time limit per job (HH:MM:SS)")
    job_extra_directives: list[str] = Field(default_factory=list,
                                            description="extra #SBATCH lines, e.g. --gres=gpu:1")
    min_jobs: int = Field(0, ge=0, le=10000, description="jobs kept while idle (adapt)")
    max_jobs: int = Field(4, ge=1, le=10000, description="most jobs at once (adapt)")
    local_directory: str | None = Field(None, description="workers' scratch folder on the nodes; empty: $TMPDIR")
    log_directory: str | None = Field(None, description="where the jobs' stdout/stderr go; empty: the working folder")
    python: str | None = Field(None, description="the Python the jobs run; empty: this one (sys.executable)")
    interface: str | None = Field(None, description="network interface the workers listen on (e.g. ib0)")

    @field_validator("memory")
    @classmethod
    def _memory_is_an_amount(cls, v: str) -> str:
        from dask.utils import parse_bytes

        try:
            n = int(parse_bytes(v))
        except (ValueError, TypeError):
            raise ValueError(f"{v!r} is not an amount of memory (e.g. 4GB, 3800MB, 32GiB)") from None
        if n < 2**20:
            raise ValueError(f"{v!r} is less than 1 MiB")
        return v


class ClusterSettings(BaseModel):
    """The executor choice and its settings, as stored in ``cluster.json``."""

    model_config = ConfigDict(extra="forbid")

    kind: ClusterKind = Field("local", description="inline (no Dask), local (this machine) or slurm")
    workers: int | None = Field(None, ge=1, le=4096,
                                description="local workers; empty: one per core this process may use")
    memory_per_worker: str | None = Field(None, description="local: memory limit per worker; empty: RAM / workers")
    retries: int = Field(2, ge=0, le=100, description="tries after the first when a unit fails")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)


def settings_path() -> Path:
    """``<config_dir>/cluster.json`` (``$TOMOGUIDE_CONFIG_DIR`` when set, else the user's config folder)."""
    from tomoguide.recent import config_dir

    return config_dir() / SETTINGS_FILE


def load_settings(path: Path | None = None) -> ClusterSettings:
    """The stored settings (defaults when the file does not exist); a damaged file is refused naming the file and
    the field."""
    path = path or settings_path()
    if not path.is_file():
        return ClusterSettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable cluster settings file ({exc})") from None
    try:
        return ClusterSettings.model_validate(data)
    except Exception as exc:  # pydantic ValidationError: the first line names the field
        errors = getattr(exc, "errors", lambda: [])()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "?"
        what = errors[0]["msg"] if errors else str(exc)
        raise ValueError(f"{path}: field {where}: {what}") from None


def save_settings(settings: ClusterSettings, path: Path | None = None) -> Path:
    """Write the settings atomically; returns the path."""
    path = path or settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(settings.model_dump_json(indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def choose_kind(requested: str | None = None, settings: ClusterSettings | None = None) -> ClusterKind:
    """The executor kind: ``requested`` (``--cluster``), else ``$TOMOGUIDE_CLUSTER``, else the settings' kind."""
    for value, origin in ((requested, "--cluster"), (os.environ.get(ENV_VAR), ENV_VAR)):
        if value:
            if value not in KINDS:
                raise ValueError(f"{origin}: unknown cluster {value!r}; choose one of {', '.join(KINDS)}")
            return value  # type: ignore[return-value]
    return (settings or load_settings()).kind


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where affinity is not known)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def local_core_budget(workers: int | None, threads_per_worker: int = 1) -> int | None:
    """CPU threads that work done in this process may use beside a local cluster of ``workers`` (None: one per
    core) workers of ``threads_per_worker`` threads: their total, at most :func:`usable_cores`; None when that is
    every usable core (no limit)."""
    cores = usable_cores()
    n = min(cores, (workers or cores) * max(1, threads_per_worker))
    return None if n >= cores else n


# ---------------------------------------------------------------------------------------------------------------
# units and their outputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One piece of a step's work: ``fn(*args, **kwargs)`` of :meth:`Executor.map_units`, named for progress and
    errors (``"TS_03"``, ``"TS_03_012.tif"``, ``"particles 0-99"``). Arguments are small: paths, numbers."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


class UnitFailed(RuntimeError):
    """A unit failed on every try; the message names the unit and the last error."""

    def __init__(self, unit: str, tries: int, error: BaseException | str) -> None:
        self.unit = unit
        self.tries = tries
        self.error = error
        text = str(error).strip().splitlines()
        detail = text[0] if text else type(error).__name__
        if isinstance(error, BaseException) and not isinstance(error, (ValueError, OSError)):
            detail = f"{type(error).__name__}: {detail}"
        super().__init__(f"{unit}: failed {tries} time{'s' if tries != 1 else ''}: {detail}")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without error
    (removed otherwise). The temporary name is unique per attempt, so a unit rerun on another worker after a lost
    one never meets a half-written file of the first."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as the GUI shows it: its name, where it runs, its state and how many units it holds."""

    name: str
    host: str
    state: str  # "running" (idle or busy), "busy", "pending" (a SLURM job waiting in the queue), "inline"
    threads: int
    memory_limit_bytes: int | None
    processing: int


ProgressFn = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------------------------------------------


class Executor:
    """Base of the executors: :meth:`map_units` (a generator of ``(name, result)`` as units complete) and
    :meth:`run_units` (the same, driven from a step's run generator with heartbeats)."""

    kind: ClusterKind = "inline"

    def __init__(self, retries: int = 2) -> None:
        self.retries = retries

    # -- life cycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (nothing for inline)."""

    def workers(self) -> list[WorkerInfo]:
        """The workers and their state (for the GUI)."""
        return [WorkerInfo("this process", "localhost", "inline", 1, None, 0)]

    def describe(self) -> str:
        return "inline (this process)"

    def in_place_cores(self) -> int | None:
        """The CPU threads a step may use for work it runs in this process rather than as units (the averaging
        steps' searches): None for all this process's cores. A local cluster grants what its workers would use
        (workers × threads, at most :func:`usable_cores`), so that ``workers: 1`` keeps tomoguide on one core."""
        return None

    def prestart(self) -> None:
        """Start the workers ahead, in the background, when a step starts to run (the runner calls it): nothing
        here; a :class:`LazyExecutor` of kind ``local`` starts its cluster."""

    # -- work ---------------------------------------------------------------------------------------------------
    def map_units(self, fn: Callable[..., Any], units: Sequence[Unit], *, retries: int | None = None,
                  on_progress: ProgressFn | None = None,
                  cancel_event: threading.Event | None = None) -> Iterator[tuple[str, Any]]:
        """Run ``fn(*unit.args, **unit.kwargs)`` for every unit; yield ``(unit.name, result)`` as each completes.
        ``on_progress(done, total, name)`` after each. Raises :class:`UnitFailed` (retries exhausted) or
        :class:`~tomoguide.steps.base.Cancelled` (``cancel_event`` set)."""
        for item in self._events(fn, units, retries, cancel_event):
            if item is None:
                continue
            if on_progress is not None:
                on_progress(item[2], len(units), item[0])
            yield item[0], item[1]

    def _events(self, fn: Callable[..., Any], units: Sequence[Unit], retries: int | None,
                cancel_event: threading.Event | None) -> Iterator[tuple[str, Any, int] | None]:
        """Yields ``(name, result, done)`` per completed unit and ``None`` as a heartbeat (about twice a second)
        while waiting."""
        raise NotImplementedError


def _unique_names(units: Sequence[Unit]) -> None:
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"unit names must be unique; repeated: {', '.join(dup)}")


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS (OpenBLAS, MKL) limited to one thread while a unit runs in this process, as on a worker
    (``OPENBLAS_NUM_THREADS=1``): a BLAS reduction split over threads sums in another order, and the alignment's
    least squares then differ in the last digits between the executors (measured: 5.6e-6 px in a transform of
    the full preset, which a CTF fit downstream turned into a different defocus for one view). Numba's and the
    FFT's threads do not change results and stay. The limit is process-wide while it lasts (``threadpoolctl``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; results may then differ in the last digits
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class InlineExecutor(Executor):
    """Units one after another in this process (each in a helper thread: heartbeats and prompt cancel)."""

    kind: ClusterKind = "inline"

    def __init__(self, retries: int = 2, *, cores: int | None = None) -> None:
        super().__init__(retries)
        self.cores = cores  # CPU threads of each unit (None: all this process's cores)

    def in_place_cores(self) -> int | None:
        return self.cores

    def _events(self, fn: Callable[..., Any], units: Sequence[Unit], retries: int | None,
                cancel_event: threading.Event | None) -> Iterator[tuple[str, Any, int] | None]:
        from tomoguide.compute.backend import cpu_threads
        from tomoguide.steps.base import Cancelled

        _unique_names(units)
        tries_allowed = 1 + (self.retries if retries is None else retries)
        for done, unit in enumerate(units, start=1):
            for attempt in range(1, tries_allowed + 1):
                if cancel_event is not None and cancel_event.is_set():
                    raise Cancelled()
                events: queue.Queue[tuple[str, Any]] = queue.Queue()

                def target(unit: Unit = unit, events: queue.Queue[tuple[str, Any]] = events) -> None:
                    try:
                        with cpu_threads(self.cores), one_blas_thread():
                            events.put(("done", fn(*unit.args, **unit.kwargs)))
                    except BaseException as exc:  # handed to the caller's thread
                        events.put(("error", exc))

                thread = threading.Thread(target=target, daemon=True, name=f"unit {unit.name}")
                thread.start()
                while True:
                    try:
                        kind, value = events.get(timeout=0.5)
                        break
                    except queue.Empty:
                        if cancel_event is not None and cancel_event.is_set():
                            raise Cancelled() from None
                        yield None
                thread.join()
                if kind == "done":
                    yield unit.name, value, done
                    break
                if isinstance(value, Cancelled):
                    raise value
                if attempt == tries_allowed:
                    raise UnitFailed(unit.name, attempt, value) from value
                logging.getLogger(__name__).warning("%s: try %d failed (%s); retrying", unit.name, attempt, value)


#: glibc ``mallopt`` parameters (malloc.h) and the values a worker gets (see :func:`tune_malloc`)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's own ceiling for its dynamic threshold (64-bit)
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES  # what glibc pairs with it


def tune_malloc() -> bool:
    """Give this process glibc's usual allocation behaviour back: blocks up to 32 MiB from the heap, reused.

    Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``),
    and glibc then turns off its dynamic mmap threshold: every array of 128 KiB or more is a fresh ``mmap`` whose
    pages fault in on first touch, and every free is a ``munmap``. numpy code that allocates temporaries of that
    size in a loop (the CTF fit's objective: a 160 KB float32 array per evaluation) ran 3-6× slower on a worker
    than in the main process (measured: ``np.cos`` of 40 000 float32 values 0.176 s vs 0.030 s per 2000 calls;
    the small demo's CTF estimation 31 s on one worker vs 8.5 s in process). The thresholds set here are the
    values glibc's dynamic rule reaches on its own. Returns False where there is no glibc ``mallopt``."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    return ok


def _worker_setup(env: dict[str, str], cores: list[int]) -> Callable[..., None]:
    """A Dask worker plugin's setup: pin the worker process to one core (round robin by its name; none where
    ``cores`` is empty), keep its thread pools at one thread and its allocator as in the main process
    (:func:`tune_malloc`)."""

    def setup(dask_worker: Any) -> None:
        tune_malloc()
        os.environ.update(env)
        if cores and hasattr(os, "sched_setaffinity"):
            try:
                index = int(str(dask_worker.name).rsplit("-", 1)[-1])
            except ValueError:
                index = abs(hash(str(dask_worker.name)))
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {cores[index % len(cores)]})
        with contextlib.suppress(Exception):
            import numba

            numba.set_num_threads(1)

    return setup


#: the thread pools of a single-threaded worker (set before the worker process starts)
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "NUMBA_NUM_THREADS": "1", "TOMOGUIDE_WORKER": "1"}


class DaskExecutor(Executor):
    """Units on Dask workers: a ``LocalCluster`` (``kind="local"``) or a ``SLURMCluster`` (``kind="slurm"``), or
    an existing scheduler (``address``). Start with :func:`open_executor`."""

    def __init__(self, kind: ClusterKind, settings: ClusterSettings, *, address: str | None = None,
                 pin_cores: bool = True) -> None:
        super().__init__(settings.retries)
        self.kind = kind
        self.settings = settings
        self.cluster: Any = None
        self.client: Any = None
        self._scratch: str | None = None
        self._started = time.monotonic()
        import distributed

        with _quiet_dask():
            if address is not None:
                self.client = distributed.Client(address, set_as_default=False)
            elif kind == "local":
                import tempfile

                # the workers' scratch space, removed by close() (Dask's default leaves one in $TMPDIR)
                self._scratch = tempfile.mkdtemp(prefix="tomoguide-dask-")
                n = settings.workers or usable_cores()
                cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
                import dask

                with dask.config.set({"temporary-directory": self._scratch}):
                    self.cluster = distributed.LocalCluster(
                        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                        memory_limit=settings.memory_per_worker or "auto", env=dict(SINGLE_THREAD_ENV),
                        silence_logs=logging.ERROR, scheduler_port=0, local_directory=self._scratch)
                self.client = distributed.Client(self.cluster, set_as_default=False)
                self.client.register_plugin(_worker_plugin(dict(SINGLE_THREAD_ENV), cores if pin_cores else []),
                                            name="tomoguide-setup")
            elif kind == "slurm":
                self.cluster = make_slurm_cluster(settings.slurm)
                self.cluster.adapt(minimum_jobs=settings.slurm.min_jobs, maximum_jobs=settings.slurm.max_jobs)
                self.client = distributed.Client(self.cluster, set_as_default=False)
                # no pinning (SLURM gives the job its cores); one thread per worker and glibc's usual allocator
                self.client.register_plugin(_worker_plugin(dict(SINGLE_THREAD_ENV), []), name="tomoguide-setup")
            else:
                raise ValueError(f"DaskExecutor: kind {kind!r} is not a Dask cluster")

    def describe(self) -> str:
        n = len(self.client.scheduler_info(n_workers=-1).get("workers", {})) if self.client is not None else 0
        if self.kind == "slurm":
            return f"SLURM ({n} worker{'s' if n != 1 else ''} now, at most {self.settings.slurm.max_jobs} jobs)"
        return f"local ({n} worker process{'es' if n != 1 else ''})"

    def close(self) -> None:
        with _quiet_dask():
            if self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.close(timeout=10)
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    self.cluster.close(timeout=20)
        self.client = None
        self.cluster = None
        if self._scratch is not None:
            import shutil

            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> its process id (for tests that kill one)."""
        return dict(self.client.run(os.getpid))

    def job_ids(self) -> list[str]:
        """SLURM job ids of the pilot jobs started so far (empty for local)."""
        jobs = getattr(self.cluster, "workers", {}) if self.cluster is not None else {}
        out = []
        for job in jobs.values():
            jid = getattr(job, "job_id", None)
            if jid:
                out.append(str(jid))
        return out

    def in_place_cores(self) -> int | None:
        if self.kind != "local" or self.cluster is None:
            return None  # SLURM or another scheduler: this process's machine is not the workers'
        return local_core_budget(self.settings.workers)

    def workers(self) -> list[WorkerInfo]:
        if self.client is None:
            return []
        info = self.client.scheduler_info(n_workers=-1).get("workers", {})
        processing = {}
        with contextlib.suppress(Exception):
            processing = {k: len(v) for k, v in self.client.processing().items()}
        out = [WorkerInfo(name=str(w.get("name", addr)), host=str(w.get("host", "")),
                          state="busy" if processing.get(addr) else "idle", threads=int(w.get("nthreads", 1)),
                          memory_limit_bytes=w.get("memory_limit"), processing=int(processing.get(addr, 0)))
               for addr, w in info.items()]
        if self.kind == "slurm" and self.cluster is not None:
            running = {str(w.name) for w in out}
            for name in getattr(self.cluster, "worker_spec", {}):
                if not any(r.startswith(str(name)) for r in running):
                    out.append(WorkerInfo(str(name), "", "pending", self.settings.slurm.cores, None, 0))
        return out

    def _events(self, fn: Callable[..., Any], units: Sequence[Unit], retries: int | None,
                cancel_event: threading.Event | None) -> Iterator[tuple[str, Any, int] | None]:
        from tomoguide.steps.base import Cancelled

        _unique_names(units)
        retries = self.retries if retries is None else retries
        token = uuid.uuid4().hex[:8]
        futures = {}
        for unit in units:
            fut = self.client.submit(fn, *unit.args, key=f"{unit.name}-{token}", pure=False, retries=retries,
                                     **unit.kwargs)
            futures[fut] = unit.name
        pending = set(futures)
        finished_q: queue.Queue[Any] = queue.Queue()
        for fut in futures:
            fut.add_done_callback(finished_q.put)
        done_n = 0
        try:
            while pending:
                if cancel_event is not None and cancel_event.is_set():
                    raise Cancelled()
                try:
                    finished = {finished_q.get(timeout=0.5)}
                except queue.Empty:
                    yield None
                    continue
                while True:
                    try:
                        finished.add(finished_q.get_nowait())
                    except queue.Empty:
                        break
                # report in submission order among those finished together
                for fut in [f for f in futures if f in finished and f in pending]:
                    pending.discard(fut)
                    name = futures[fut]
                    if fut.status == "error":
                        exc = fut.exception()
                        tries = retries + 1
                        if type(exc).__name__ == "KilledWorker":
                            exc = RuntimeError(f"its worker died each time it ran it ({exc})")
                        raise UnitFailed(name, tries, exc) from None
                    if fut.status == "cancelled":
                        raise UnitFailed(name, 1, "cancelled by the scheduler")
                    done_n += 1
                    yield name, fut.result(), done_n
                    fut.release()
        except BaseException:
            self._stop(list(pending))
            raise

    def _stop(self, futures: list[Any]) -> None:
        """Cancel ``futures``; end the worker processes that were running one of them (their nannies start new
        ones)."""
        if not futures or self.client is None:
            return
        with _quiet_dask():
            with contextlib.suppress(Exception):
                keys = {f.key for f in futures}
                busy = [addr for addr, v in self.client.processing().items() if keys & set(v)]
                self.client.cancel(futures, force=True)
                if busy:  # a running task cannot be interrupted: end its process (the nanny starts a new one)
                    self.client.run(_exit_worker, workers=busy, wait=False)


def _worker_plugin(env: dict[str, str], cores: list[int]) -> Any:
    """A ``distributed.WorkerPlugin`` running :func:`_worker_setup` in every worker (started or restarted)."""
    import distributed

    class WorkerSetupPlugin(distributed.WorkerPlugin):  # type: ignore[misc]
        def setup(self, worker: Any) -> None:
            _worker_setup(env, cores)(worker)

    return WorkerSetupPlugin()


async def _exit_worker() -> None:
    """Run inside a worker: end its process at once (cancel of a running unit)."""
    os._exit(1)


def slurm_job_mem(memory: str) -> str:
    """The job's ``#SBATCH --mem`` for a memory setting (``"3800MB"``, ``"32GiB"``), in MiB rounded down.

    dask-jobqueue would write it rounded *up* to whole gigabytes (3800MB -> ``--mem=4G``): on a node of 8000 MB,
    two such jobs then no longer fit and the second one waits while the first does all the work (measured on
    the one-node cluster with the full preset). The Dask worker's own limit stays the setting's value."""
    from dask.utils import parse_bytes

    return f"{int(parse_bytes(SlurmSettings(memory=memory).memory)) // 2**20}M"


def make_slurm_cluster(s: SlurmSettings) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` from the settings (no jobs yet: :meth:`adapt` starts them)."""
    import sys

    from dask_jobqueue import SLURMCluster

    kwargs: dict[str, Any] = dict(
        cores=s.cores, processes=s.processes, memory=s.memory, job_mem=slurm_job_mem(s.memory), walltime=s.walltime,
        job_extra_directives=list(s.job_extra_directives), python=s.python or sys.executable,
        job_script_prologue=[f"export {k}={v}" for k, v in SINGLE_THREAD_ENV.items()],
        scheduler_options={"dashboard_address": ":0"}, silence_logs="error")
    if s.queue:
        kwargs["queue"] = s.queue
    if s.account:
        kwargs["account"] = s.account
    if s.local_directory:
        kwargs["local_directory"] = s.local_directory
    if s.log_directory:
        kwargs["log_directory"] = s.log_directory
    if s.interface:
        kwargs["interface"] = s.interface
    return SLURMCluster(**kwargs)


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's own loggers at ERROR while starting and stopping clusters (their INFO lines are not for trainees)."""
    names = ["distributed", "dask_jobqueue", "tornado"]
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, lvl in old.items():
            logging.getLogger(n).setLevel(lvl)


def open_executor(kind: str | None = None, settings: ClusterSettings | None = None, *,
                  address: str | None = None) -> Executor:
    """Start an executor: ``kind`` from :func:`choose_kind` when None; ``settings`` from the settings file when
    None. Use as a context manager (``with open_executor("local") as ex:``) or call :meth:`Executor.close`."""
    settings = settings or load_settings()
    chosen = choose_kind(kind, settings)
    if chosen == "inline" and address is None:
        return InlineExecutor(settings.retries)
    return DaskExecutor(chosen, settings, address=address)


def _import_compute() -> None:
    """Import the compute modules the steps' units use (run on each worker when a cluster is started ahead)."""
    import tomoguide.compute.ctfcorrect  # noqa: F401
    import tomoguide.compute.ctffit  # noqa: F401
    import tomoguide.compute.motion  # noqa: F401
    import tomoguide.compute.reconstruct  # noqa: F401
    import tomoguide.compute.sta  # noqa: F401


class LazyExecutor(Executor):
    """An executor that starts its cluster on the first :meth:`map_units` call with work to spread (so a session
    that only looks at results never starts one), and keeps it for the next steps. The command line and the
    wizard use one per session. :meth:`prestart` (called by the runner when a step starts to run) starts a local
    cluster in the background already, so that the first units do not wait for it."""

    def __init__(self, kind: str | None = None, settings: ClusterSettings | None = None) -> None:
        self.settings = settings or load_settings()
        super().__init__(self.settings.retries)
        self.kind = choose_kind(kind, self.settings)
        self._inner: Executor | None = None
        self._lock = threading.Lock()
        self._prestart: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._inner is not None

    def inner(self) -> Executor:
        with self._lock:
            if self._inner is None:
                self._inner = open_executor(self.kind, self.settings)
            return self._inner

    def prestart(self) -> None:
        """Start a local cluster in a background thread (once; nothing for inline or SLURM, whose jobs are asked
        for when units wait) and import the compute modules on its workers. A failure is only logged here: the
        next :meth:`map_units` starts the cluster again and reports it."""
        if self.kind != "local" or self._inner is not None or self._prestart is not None:
            return

        def start() -> None:
            try:
                ex = self.inner()
                client = getattr(ex, "client", None)
                if client is not None:
                    client.run(_import_compute)
            except Exception as exc:  # reported by the map_units that needs the cluster
                logging.getLogger(__name__).warning("starting the local cluster ahead failed: %s", exc)

        self._prestart = threading.Thread(target=start, daemon=True, name="tomoguide cluster start")
        self._prestart.start()

    def describe(self) -> str:
        return self._inner.describe() if self._inner is not None else f"{self.kind} (not started yet)"

    def in_place_cores(self) -> int | None:
        if self.kind != "local":
            return None
        return local_core_budget(self.settings.workers)

    def workers(self) -> list[WorkerInfo]:
        return self._inner.workers() if self._inner is not None else []

    def close(self) -> None:
        if self._prestart is not None:
            self._prestart.join()  # a cluster being started ahead is closed too, not left behind
            self._prestart = None
        with self._lock:
            if self._inner is not None:
                self._inner.close()
                self._inner = None

    def _events(self, fn: Callable[..., Any], units: Sequence[Unit], retries: int | None,
                cancel_event: threading.Event | None) -> Iterator[tuple[str, Any, int] | None]:
        # a lone unit on this machine runs here, with the cores the cluster would use: no gain from a worker
        if self.kind == "local" and len(units) <= 1 and self._inner is None:
            return InlineExecutor(self.retries, cores=self.in_place_cores())._events(fn, units, retries,
                                                                                     cancel_event)
        return self.inner()._events(fn, units, retries, cancel_event)


def run_units(executor: Executor | None, fn: Callable[..., Any], units: Sequence[Unit], *,
              cancel_event: threading.Event | None = None, what: str = "",
              retries: int | None = None) -> Generator[Any, None, dict[str, Any]]:
    """Drive ``executor.map_units`` from a step's run generator: yields :class:`~tomoguide.steps.base.Progress`
    (fraction of units done, the unit just finished, the time left from the rate so far) and heartbeats; returns
    ``{unit name: result}`` in the units' order."""
    from tomoguide.steps.base import Progress

    ex = executor or InlineExecutor()
    results: dict[str, Any] = {}
    n = len(units)
    t0 = time.monotonic()
    if n == 0:
        return results
    yield Progress(0.0, f"{what + ': ' if what else ''}{n} unit{'s' if n != 1 else ''} on {ex.describe()}")
    for item in ex._events(fn, units, retries, cancel_event):
        if item is None:
            yield Progress(None, "working")
            continue
        name, value, done = item
        results[name] = value
        elapsed = time.monotonic() - t0
        left = elapsed / done * (n - done)
        yield Progress(done / n, f"{name} done ({done}/{n}; about {left:.0f} s left)")
    return {u.name: results[u.name] for u in units}


class _Session:
    """The executor of a GUI session (see :func:`session_executor`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: LazyExecutor | None = None
        self.key: str | None = None


_SESSION = _Session()


def session_executor() -> LazyExecutor:
    """The wizard's executor: one per process, started at the first step with units to spread and kept for the next
    steps (a cluster costs seconds to start); replaced (the old one closed) when the choice in the settings file or
    ``$TOMOGUIDE_CLUSTER`` changed since. Closed at exit."""
    import atexit

    settings = load_settings()
    kind = choose_kind(None, settings)
    key = kind + settings.model_dump_json()
    with _SESSION.lock:
        if _SESSION.executor is None or _SESSION.key != key:
            if _SESSION.executor is not None:
                _SESSION.executor.close()
            else:
                atexit.register(close_session_executor)
            _SESSION.executor = LazyExecutor(kind, settings)
            _SESSION.key = key
        return _SESSION.executor


def close_session_executor() -> None:
    """Stop the wizard's executor (its workers), if one was started."""
    with _SESSION.lock:
        if _SESSION.executor is not None:
            _SESSION.executor.close()
            _SESSION.executor = None
            _SESSION.key = None
