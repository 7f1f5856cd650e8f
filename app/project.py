"""The project: a folder with ``project.json`` that records everything and resumes, also after a crash.

Layout of a project folder::

    PROJECT/project.json        the state (this module's ProjectData, JSON, schema_version)
    PROJECT/project.json.bak    the previous state (``--use-backup`` / "Open backup" when project.json is unreadable)
    PROJECT/project.lock        held (OS lock) by the program that writes the project; says who (pid, host, …)
    PROJECT/steps/<step_id>/run-<stamp>/   outputs of one run of a step, with its ``run.json``

Rules (design.md, "The project file"):

* **Atomic saves.** The new state is written to a temporary file, flushed and fsynced, the current file is
  hard-linked to ``project.json.bak``, and the temporary file is renamed over ``project.json``: at every moment
  ``project.json`` is a complete file (old or new). ``tomoguide new`` writes ``project.json`` once, last.
* **One writer.** :class:`~tomoguide.integrity.ProjectLock` (an OS lock): a second program is refused with who
  holds the project; a lock left by a program that is gone (dead pid, pid reused, empty file) is taken over; a
  lock from another machine is refused and can be broken on request (``--break-lock``).
* **Leftovers.** A writable open removes what a killed program left (``run-*.partial`` folders, ``*.tmp``
  files) and adopts a run that finished but was not recorded (its ``run.json`` says what it produced).
* **Identity by content.** A step's identity (:meth:`Project.step_hash`) is the hash of its parameters (data
  paths by the fingerprint of the data, not by where it lies) and of the content hashes of the runs of every
  step it depends on. A step is up to date (:meth:`Project.is_up_to_date`) when it finished, its identity is
  unchanged, the steps it needs are up to date and its run folder still holds what the run recorded (sizes of
  every file, digests of the small record files: :func:`~tomoguide.integrity.verify_manifest`). So rerunning a
  step that gives identical results keeps the later steps done, and "stale" is computed, never guessed.
* **A way back.** The last runs of every step are kept (:class:`Retention`: 3 runs, 20 GB by default); when
  the parameters (or inputs) come back to those of a kept run, that run is restored instead of recomputed.
* **Portable.** Paths inside the project are relative to it; data paths (the movie folder, a gain file) are also
  stored relative to the project with a fingerprint of the data (sizes and hashes of the mdocs), so a project
  moved together with its data opens as it was, and one whose data moved asks once for the new folder
  (:meth:`Project.relocate`), checking it is the same data.
* **Checked when read.** A corrupt ``project.json``, one written by a newer tomoguide or one whose run folders
  or outputs point outside their step's folder (``run_dir = "steps"``, ``..``, absolute) raises
  :class:`ProjectError` as ``FILE: field: problem``, offering the backup.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tomoguide import __version__
from tomoguide.integrity import (
    RUN_RECORD_FILE,
    DigestCache,
    LockHeld,
    PathRefused,
    ProjectLock,
    build_manifest,
    check_name,
    check_relative_file,
    describe_owner,
    file_sha256,
    lock_state,
    no_links_below,
    read_lock_info,
    tree_bytes,
    verify_manifest,
)
from tomoguide.steps import registry

SCHEMA_VERSION = 2
PROJECT_FILE = "project.json"
BACKUP_FILE = "project.json.bak"
LOCK_FILE = "project.lock"
STEPS_DIR = "steps"

Status = Literal["pending", "running", "done", "failed", "interrupted", "stale", "skipped"]


class ProjectError(Exception):
    """A project that cannot be opened or written; the message says why and what to do."""


class ProjectLockedError(ProjectError):
    """Another program holds the project's lock (``owner``: what the lock file says; ``state``: "held" by a
    running program, "alive" (a running program wrote it), or "foreign" (another machine: cannot be checked))."""

    def __init__(self, message: str, *, owner: dict[str, Any] | None = None, state: str = "held") -> None:
        super().__init__(message)
        self.owner = owner
        self.state = state

    @property
    def can_break(self) -> bool:
        """Whether breaking the lock is possible (no program on this machine holds it)."""
        return self.state != "held"


class DataMissingError(ProjectError):
    """The data folder recorded in the project is not where it was (moved): relocate it."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunRecord(BaseModel):
    """One finished run of a step, as kept for a way back (and as written to the run's ``run.json``)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    hash: str | None = None  # the step's identity when it ran
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str | None] = Field(default_factory=dict)  # content hashes of the steps it depended on
    content_hash: str | None = None
    manifest: dict[str, list[Any]] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    log: list[str] = Field(default_factory=list)
    started: str | None = None
    finished: str | None = None


class RunFile(RunRecord):
    """``run.json`` in a run folder: the record and the step it belongs to (paths relative to the run folder)."""

    step_id: str
    schema_version: int = SCHEMA_VERSION
    app_version: str = __version__
    digests: dict[str, str] = Field(default_factory=dict)  # every file's content digest (reused for hard links)


class StepState(BaseModel):
    """The recorded state of one step. ``outputs`` paths are relative to the project folder.

    The fields ``run_dir`` … ``log``, ``hash``, ``content_hash``, ``manifest``, ``run_params`` and ``inputs``
    describe the current run (the one whose outputs later steps read); ``history`` the runs kept for a way back,
    newest first."""

    model_config = ConfigDict(extra="forbid")

    status: Status = "pending"
    params: dict[str, Any] = Field(default_factory=dict)
    hash: str | None = None  # the step's identity at its last successful run
    outputs: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    run_dir: str | None = None
    started: str | None = None
    finished: str | None = None
    log: list[str] = Field(default_factory=list)
    error: str | None = None
    stale_reason: str | None = None
    owner_pid: int | None = None  # pid of the program that marked it running
    content_hash: str | None = None
    manifest: dict[str, list[Any]] | None = None  # None: a run recorded before manifests existed
    run_params: dict[str, Any] | None = None
    inputs: dict[str, str | None] = Field(default_factory=dict)
    history: list[RunRecord] = Field(default_factory=list)

    def current_record(self) -> RunRecord | None:
        if not self.run_dir:
            return None
        return RunRecord(run_dir=self.run_dir, hash=self.hash, params=dict(self.run_params or self.params),
                         inputs=dict(self.inputs), content_hash=self.content_hash, manifest=dict(self.manifest or {}),
                         outputs=dict(self.outputs), metrics=dict(self.metrics), log=list(self.log),
                         started=self.started, finished=self.finished)

    def set_current(self, rec: RunRecord | None) -> None:
        if rec is None:
            self.run_dir, self.hash, self.content_hash, self.manifest = None, None, None, None
            self.run_params, self.inputs, self.outputs, self.metrics = None, {}, {}, {}
            return
        self.run_dir, self.hash, self.content_hash = rec.run_dir, rec.hash, rec.content_hash
        self.manifest = dict(rec.manifest)
        self.run_params, self.inputs = dict(rec.params), dict(rec.inputs)
        self.outputs, self.metrics, self.log = dict(rec.outputs), dict(rec.metrics), list(rec.log)
        self.started, self.finished = rec.started, rec.finished


class Retention(BaseModel):
    """How many runs of each step are kept (the current one included) and how much disk the older ones may use."""

    model_config = ConfigDict(extra="forbid")

    keep_runs: int = Field(3, ge=1, le=100, title="Runs kept per step",
                           description="The current run and the earlier ones kept for a way back.")
    budget_GB: float = Field(20.0, ge=0.0, le=1e6, title="Disk for earlier runs (GB)",
                             description="The earlier runs kept may use at most this much; the oldest go first.")


class DataPath(BaseModel):
    """Where a data path parameter points: absolute, relative to the project (when it can be), and a fingerprint
    of the data (the mdocs' names, sizes and SHA-256 for a folder; size and SHA-256 for a file)."""

    model_config = ConfigDict(extra="forbid")

    abs: str
    rel: str | None = None
    fingerprint: str | None = None
    files: dict[str, list[Any]] = Field(default_factory=dict)


class ProjectData(BaseModel):
    """Everything in ``project.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    app_version: str = __version__
    name: str = ""
    created: str = Field(default_factory=now_iso)
    modified: str = Field(default_factory=now_iso)
    dataset: dict[str, Any] = Field(default_factory=dict)
    settings: Retention = Field(default_factory=Retention)
    data_paths: dict[str, DataPath] = Field(default_factory=dict)
    steps: dict[str, StepState] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# atomic file writing
# ---------------------------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str, *, backup: Path | None = None) -> None:
    """Write ``text`` to ``path`` atomically; keep the previous file as ``backup`` (hard link, or copy)."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if backup is not None and path.exists():
            bak_tmp = backup.with_name(backup.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                bak_tmp.unlink()
            try:
                os.link(path, bak_tmp)
            except OSError:  # file systems without hard links
                bak_tmp.write_bytes(path.read_bytes())
            os.replace(bak_tmp, backup)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# ---------------------------------------------------------------------------------------------------------------
# lock (compatibility helpers; the lock itself is tomoguide.integrity.ProjectLock)
# ---------------------------------------------------------------------------------------------------------------


def read_lock(project_dir: Path) -> dict[str, Any] | None:
    """The lock's content (pid, host, machine, start, since, command) or None when unlocked or unreadable."""
    return read_lock_info(Path(project_dir) / LOCK_FILE)


def lock_is_live(info: dict[str, Any] | None) -> bool:
    """Whether the owner a lock file names may still be running (alive here, or on another machine)."""
    return lock_state(info) != "dead"


def _locked_message(lock: Path, exc: LockHeld) -> ProjectLockedError:
    owner = describe_owner(exc.info)
    if exc.state == "foreign":
        msg = (f"{lock}: the project is locked by {owner}, on another machine; if no tomoguide runs there any more, "
               f"take the lock over with --break-lock (command line) or \"Break the lock\" (wizard)")
    elif exc.state == "alive":
        msg = (f"{lock}: the project is open in another tomoguide ({owner}); close it there first (if that program "
               f"is not tomoguide any more, use --break-lock)")
    else:
        msg = f"{lock}: the project is open in another tomoguide ({owner}); close it there first"
    return ProjectLockedError(msg, owner=exc.info, state=exc.state)


# ---------------------------------------------------------------------------------------------------------------
# data fingerprints
# ---------------------------------------------------------------------------------------------------------------

_MAX_FINGERPRINT_FILES = 20000


def data_fingerprint(path: Path) -> tuple[str | None, dict[str, list[Any]]]:
    """A fingerprint of the data at ``path``: for a folder its ``.mdoc`` files (names relative to it, sizes and
    SHA-256; without mdocs, the names and sizes of its files); for a file its size and SHA-256. Returns
    (digest, per-file details), or (None, {}) when nothing is there."""
    path = Path(path)
    files: dict[str, list[Any]] = {}
    if path.is_file():
        st = path.stat()
        files[path.name] = [st.st_size, file_sha256(path)]
    elif path.is_dir():
        others: dict[str, list[Any]] = {}
        count = 0
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                count += 1
                if count > _MAX_FINGERPRINT_FILES:
                    break
                p = Path(dirpath) / name
                rel = p.relative_to(path).as_posix()
                try:
                    size = p.stat().st_size
                    if name.lower().endswith(".mdoc"):
                        files[rel] = [size, file_sha256(p)]
                    elif not files and len(others) < 2000 and Path(dirpath) == path:
                        others[rel] = [size]
                except OSError:
                    continue
        if not files:
            files = others
    else:
        return None, {}
    h = hashlib.sha256(json.dumps(files, sort_keys=True).encode())
    return h.hexdigest()[:32], files


def fingerprint_differences(old: dict[str, list[Any]], new: dict[str, list[Any]], *, limit: int = 4) -> str:
    """What differs between two fingerprints' files, in words (``TS_02.mdoc missing; TS_01.mdoc differs``)."""
    parts = [f"{n} missing" for n in sorted(set(old) - set(new))]
    parts += [f"{n} differs" for n in sorted(set(old) & set(new)) if old[n] != new[n]]
    parts += [f"{n} is new" for n in sorted(set(new) - set(old))]
    if len(parts) > limit:
        parts = parts[:limit] + [f"{len(parts) - limit} more"]
    return "; ".join(parts) or "different files"


def _path_params(step_id: str) -> list[str]:
    """Names of a step's parameters that are paths to data (folder or file widgets)."""
    try:
        meta = registry.get(step_id).Params.meta()
    except KeyError:
        return []
    return [name for name, m in meta.items() if m.widget in ("directory", "file")]


# ---------------------------------------------------------------------------------------------------------------
# the project
# ---------------------------------------------------------------------------------------------------------------

_RUN_NAME = re.compile(r"^run-[A-Za-z0-9._-]+$")
_UPTODATE_TTL_S = 1.0


class Project:
    """An open project. Use :meth:`create` or :meth:`open`; call :meth:`close` (or use ``with``) when done.

    ``readonly=True`` opens without taking the lock (for ``tomoguide status`` while another program runs).
    ``notes`` says what opening did (leftovers removed, runs adopted or restored, data found elsewhere);
    ``missing_data`` the data paths that are not where they were (``relocate`` them).
    """

    def __init__(self, directory: Path, data: ProjectData, *, readonly: bool) -> None:
        self.dir = Path(directory).resolve()
        self.data = data
        self.readonly = readonly
        self.notes: list[str] = []
        self.missing_data: list[str] = []
        self._lock = ProjectLock(self.dir / LOCK_FILE)
        self._digests = DigestCache()
        self._why_cache: dict[str, tuple[float, str | None]] = {}
        self._params_cache: dict[str, tuple[dict[str, Any], Any]] = {}

    @property
    def _locked(self) -> bool:
        return self._lock.held

    # -- opening ------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike[str], *, name: str | None = None,
               params: dict[str, dict[str, Any]] | None = None, break_lock: bool = False) -> Project:
        """Create a new project folder (it may exist but must not hold a project) with default parameters and
        ``params``. Every value is validated before anything is written, and ``project.json`` is written once,
        last: a program killed while creating leaves either a complete project or none."""
        d = Path(directory)
        if (d / PROJECT_FILE).exists():
            raise ProjectError(f"{d / PROJECT_FILE}: a project already exists here; open it instead")
        if d.exists() and not d.is_dir():
            raise ProjectError(f"{d}: not a folder")
        data = ProjectData(name=name or d.resolve().name)
        for step_cls in registry.workflow():
            data.steps[step_cls.id] = StepState(params=step_cls.default_params().model_dump(mode="json"))
        proj = cls(d, data, readonly=True)  # in memory: validate every value before touching the disk
        for step_id, values in (params or {}).items():
            proj._apply_params(step_id, values)
        d.mkdir(parents=True, exist_ok=True)
        proj.dir = d.resolve()
        proj._lock = ProjectLock(proj.dir / LOCK_FILE)
        proj.readonly = False
        proj._acquire_lock(break_lock=break_lock)
        try:
            if (d / PROJECT_FILE).exists():  # created meanwhile by another program
                raise ProjectError(f"{d / PROJECT_FILE}: a project already exists here; open it instead")
            proj.save()
        except BaseException:
            proj.close()
            raise
        return proj

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, readonly: bool = False, use_backup: bool = False,
             break_lock: bool = False) -> Project:
        """Open an existing project (``use_backup``: from ``project.json.bak``, which then becomes the project).

        A writable open takes the lock first (``break_lock``: also one from another machine), removes the
        leftovers of killed runs, adopts runs that finished unrecorded, marks steps left "running" as
        "interrupted", finds moved data and refreshes what is up to date."""
        d = Path(directory)
        if not d.is_dir():
            raise ProjectError(f"{d}: no such folder")
        path = d / (BACKUP_FILE if use_backup else PROJECT_FILE)
        if not path.exists():
            load_project_file(path)  # the message (no project here / no backup)
        proj = cls(d, ProjectData(), readonly=readonly)
        if not readonly:
            proj._acquire_lock(break_lock=break_lock)
        try:
            proj.data = load_project_file(path)
            loaded = proj.data.model_copy(deep=True)
            proj._after_load(legacy=proj.data.schema_version < SCHEMA_VERSION)
            if use_backup:
                proj.notes.append(f"opened from the backup {path.name}: it is now the project's state")
                if not readonly and (d / PROJECT_FILE).exists():  # keep the damaged file for a look, aside
                    with contextlib.suppress(OSError):
                        shutil.copyfile(d / PROJECT_FILE, d / (PROJECT_FILE + ".damaged"))
            if not readonly:
                if use_backup or proj.data != loaded:  # an open that changes nothing leaves the file as it is
                    proj.save()
                proj._delete_unreferenced_runs()
        except BaseException:
            proj.close()
            raise
        return proj

    def _after_load(self, *, legacy: bool) -> None:
        legacy_hashes = self._legacy_hashes() if legacy else {}
        for step_cls in registry.workflow():
            if step_cls.id not in self.data.steps:
                self.data.steps[step_cls.id] = StepState(params=step_cls.default_params().model_dump(mode="json"))
        if legacy:
            self._migrate(legacy_hashes)
        if not self.readonly:
            self._clean_leftovers()
        self._mark_interrupted()
        self._resolve_data_paths()
        if not self.readonly:
            self._adopt_runs()
        self._keep_interrupted_reruns()
        self.refresh_staleness()
        restored = self.restore_kept_runs()
        if restored:
            self.notes.append(f"restored kept runs of {', '.join(restored)} (same parameters and inputs)")

    def _mark_interrupted(self) -> None:
        owner_alive = self.readonly and lock_state(read_lock(self.dir)) == "alive"
        for st in self.data.steps.values():
            if st.status == "running" and not owner_alive:
                st.status = "interrupted"
                st.error = "the program stopped while this step was running; run it again"
                st.owner_pid = None

    def _keep_interrupted_reruns(self) -> None:
        """A step whose rerun was interrupted still has the results of its previous run: when those match its
        identity and are intact, it is done (the interrupted rerun changed nothing)."""
        kept = []
        for step_cls in registry.workflow():
            st = self.data.steps[step_cls.id]
            if st.status != "interrupted" or not st.run_dir or st.hash is None:
                continue
            self._why_cache.clear()
            if self.why_not_up_to_date(step_cls.id, ignore_status=True) is None:
                st.status, st.error = "done", None
                kept.append(step_cls.id)
        if kept:
            self.notes.append(f"a rerun of {', '.join(kept)} was interrupted; the results of the previous run "
                              f"are kept")
        self._why_cache.clear()

    def _acquire_lock(self, *, break_lock: bool = False) -> None:
        try:
            self._lock.acquire(break_lock=break_lock)
        except LockHeld as exc:
            raise _locked_message(self.dir / LOCK_FILE, exc) from None

    def close(self) -> None:
        """Release the lock (the state is saved after every change already)."""
        self._lock.release()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- saving -------------------------------------------------------------------------------------------------
    def save(self) -> None:
        if self.readonly:
            raise ProjectError(f"{self.dir}: opened read-only; cannot save")
        self.data.modified = now_iso()
        self.data.schema_version = SCHEMA_VERSION
        self.data.app_version = __version__
        self._why_cache.clear()
        atomic_write_text(self.dir / PROJECT_FILE, self.data.model_dump_json(indent=1),
                          backup=self.dir / BACKUP_FILE)

    # -- steps --------------------------------------------------------------------------------------------------
    def state(self, step_id: str) -> StepState:
        registry.get(step_id)  # KeyError with the list of known steps
        return self.data.steps[step_id]

    def params(self, step_id: str) -> Any:
        """The validated parameter model of a step."""
        step_cls = registry.get(step_id)
        return step_cls.params_from(self.data.steps[step_id].params)

    def params_of(self, step_id: str) -> Any:
        """The validated parameter model of a step, or None when the step is unknown or its stored values do not
        validate (what the entry mechanism consults: :func:`tomoguide.steps.registry.inputs_of`). Cached while
        the stored values are unchanged."""
        st = self.data.steps.get(step_id)
        if st is None:
            return None
        hit = self._params_cache.get(step_id)
        if hit is not None and hit[0] == st.params:
            return hit[1]
        try:
            value = registry.get(step_id).params_from(st.params)
        except Exception:  # noqa: BLE001 - invalid stored values: the declared inputs apply
            value = None
        self._params_cache[step_id] = (copy.deepcopy(st.params), value)
        return value

    def inputs_of(self, step_id: str) -> tuple[str, ...]:
        """The steps ``step_id`` needs directly with its current parameters (see ``Step.inputs_for``)."""
        return registry.inputs_of(step_id, self.params_of)

    def upstream(self, step_id: str) -> list[str]:
        """The steps ``step_id`` needs, directly or not, with the current parameters, in workflow order."""
        return registry.upstream(step_id, self.params_of)

    def downstream(self, step_id: str) -> list[str]:
        """The steps that need ``step_id``, directly or not, with the current parameters, in workflow order."""
        return registry.downstream(step_id, self.params_of)

    def is_needed(self, step_id: str) -> bool:
        """Whether the workflow's last step needs this step with the current parameters (an entry further on, e.g.
        particles read from files, leaves the earlier steps unneeded: they are not run and shown so)."""
        return step_id in registry.needed(self.params_of)

    def origin(self, step_id: str) -> str | None:
        """"from files"/"imported" when this step's results come from elsewhere with the current parameters (or its
        current run says so in its ``source`` metric), else None: the step list's badge."""
        step_cls = registry.get(step_id)
        params = self.params_of(step_id)
        label = step_cls.origin_for(params, self.params_of) if params is not None else None
        if label is None:
            st = self.data.steps.get(step_id)
            source = st.metrics.get("source") if st is not None and st.status in ("done", "stale") else None
            if source in ("files", "imported"):
                label = "from files" if source == "files" else "imported"
        return label

    def _apply_params(self, step_id: str, values: dict[str, Any]) -> bool:
        """Validate and set some parameters in memory (pydantic errors name the field); True when changed."""
        step_cls = registry.get(step_id)
        st = self.data.steps[step_id]
        new = step_cls.params_from({**st.params, **values}).model_dump(mode="json")
        changed = new != st.params
        old = st.params
        st.params = new
        for name in _path_params(step_id):
            if new.get(name) != old.get(name) or (new.get(name) and f"{step_id}.{name}" not in self.data.data_paths):
                self._update_data_path(step_id, name)
        return changed

    def set_params(self, step_id: str, values: dict[str, Any], *, save: bool = True) -> list[str]:
        """Change some parameters of a step (validated); returns the ids of the steps that were up to date and are
        not any more (stale). A kept run matching the new parameters is restored instead (nothing stale then)."""
        before = {sid for sid in self.data.steps if sid in registry.ids() and self.is_up_to_date(sid)}
        changed = self._apply_params(step_id, values)
        stale: list[str] = []
        if changed:
            self._why_cache.clear()
            self.refresh_staleness()
            self.restore_kept_runs()
            stale = [sid for sid in registry.ids() if sid in before and not self.is_up_to_date(sid)]
        if save and not self.readonly:
            self.save()
        return stale

    def mark_stale_from(self, step_id: str, *, reason: str, include_self: bool) -> list[str]:
        """Force the done steps downstream of ``step_id`` (and itself when asked) stale, whatever their identity
        (e.g. the code that computed them changed); returns their ids."""
        ids = self.downstream(step_id)
        if include_self:
            ids = [step_id, *ids]
        marked = []
        for sid in ids:
            st = self.data.steps[sid]
            if st.status in ("done", "skipped"):
                st.status = "stale"
                st.stale_reason = reason
                st.hash = None
                marked.append(sid)
        self._why_cache.clear()
        return marked

    # -- identity -----------------------------------------------------------------------------------------------
    def _identity_params(self, step_id: str, params: dict[str, Any]) -> dict[str, Any]:
        out = dict(params)
        for name in _path_params(step_id):
            value = out.get(name)
            entry = self.data.data_paths.get(f"{step_id}.{name}")
            if value and entry is not None and entry.fingerprint and entry.abs == str(value):
                out[name] = f"data:{entry.fingerprint}"
        return out

    def params_hash(self, step_id: str, params: dict[str, Any] | None = None) -> str:
        p = self.data.steps[step_id].params if params is None else params
        text = json.dumps(self._identity_params(step_id, p), sort_keys=True)
        return hashlib.sha256(f"{step_id}\0{text}".encode()).hexdigest()[:16]

    def input_hashes(self, step_id: str) -> dict[str, str | None]:
        """Content hashes of the current runs of every step ``step_id`` depends on (directly or not)."""
        out: dict[str, str | None] = {}
        for up in self.upstream(step_id):
            st = self.data.steps.get(up)
            out[up] = None if st is None else (st.content_hash or (f"legacy:{st.hash}" if st.hash else None))
        return out

    def step_hash(self, step_id: str, params: dict[str, Any] | None = None) -> str:
        """The step's identity: its parameters and the content of everything it reads (see the module doc)."""
        registry.get(step_id)
        h = hashlib.sha256()
        h.update(self.params_hash(step_id, params).encode())
        for up, content in self.input_hashes(step_id).items():
            h.update(f"\0{up}={content or '-'}".encode())
        return h.hexdigest()[:16]

    def _legacy_hashes(self) -> dict[str, str]:
        """Identities as schema 1 computed them (parameters and the upstream identities), for the migration."""
        out: dict[str, str] = {}
        for step_cls in registry.workflow():
            st = self.data.steps.get(step_cls.id)
            if st is None:
                continue
            h = hashlib.sha256()
            h.update(step_cls.id.encode())
            h.update(json.dumps(st.params, sort_keys=True).encode())
            for up in step_cls.inputs:
                up_st = self.data.steps.get(up)
                h.update(((up_st.hash if up_st is not None else None) or "-").encode())
            out[step_cls.id] = h.hexdigest()[:16]
        return out

    def _migrate(self, legacy_hashes: dict[str, str]) -> None:
        """Schema 1 -> 2: fingerprint the data paths, and give every run that was up to date (old rule) its
        manifest, content hash and new identity, in workflow order, so nothing finished becomes stale."""
        for step_cls in registry.workflow():
            for name in _path_params(step_cls.id):
                if self.data.steps[step_cls.id].params.get(name):
                    self._update_data_path(step_cls.id, name)
        for step_cls in registry.workflow():
            st = self.data.steps[step_cls.id]
            if st.status not in ("done", "skipped") or st.hash != legacy_hashes.get(step_cls.id) or not st.run_dir:
                continue
            if not all((self.dir / rel).exists() for rel in st.outputs.values()):
                continue
            run = self.dir / st.run_dir
            try:
                no_links_below(self.dir, run)
                st.manifest, st.content_hash = build_manifest(run)
            except (OSError, PathRefused):
                continue
            st.run_params = dict(st.params)
            st.inputs = self.input_hashes(step_cls.id)
            st.hash = self.step_hash(step_cls.id)
        self.data.schema_version = SCHEMA_VERSION

    # -- up to date ---------------------------------------------------------------------------------------------
    def verify_outputs(self, st: StepState | RunRecord) -> str | None:
        """None when a run's recorded outputs are intact on disk, otherwise what is wrong."""
        for rel in st.outputs.values():
            if not (self.dir / rel).exists():
                return f"outputs missing on disk: {rel}"
        manifest = st.manifest
        if manifest is None or not st.run_dir:
            return None
        run = self.dir / st.run_dir
        try:
            no_links_below(self.dir, run)
        except PathRefused as exc:
            return str(exc)
        problem = verify_manifest(run, manifest, self._digests)
        return None if problem is None else problem

    def why_not_up_to_date(self, step_id: str, *, ignore_status: bool = False) -> str | None:
        """None when the step is up to date (the resume rule), otherwise why not, in words."""
        now = time.monotonic()
        key = f"{step_id}|{ignore_status}"
        hit = self._why_cache.get(key)
        if hit is not None and now - hit[0] < _UPTODATE_TTL_S:
            return hit[1]
        reason = self._why_not(step_id, ignore_status)
        self._why_cache[key] = (now, reason)
        return reason

    def _why_not(self, step_id: str, ignore_status: bool) -> str | None:
        registry.get(step_id)
        st = self.data.steps[step_id]
        if not ignore_status and st.status not in ("done", "skipped"):
            return f"it is {st.status}"
        if not st.run_dir and not st.outputs and st.status != "skipped":
            return "it has no results"
        for up in self.inputs_of(step_id):
            if up in self.data.steps and self.why_not_up_to_date(up) is not None:
                return f"“{registry.get(up).title}” is not up to date"
        if st.hash is None or st.hash != self.step_hash(step_id):
            if st.hash is None:
                return st.stale_reason or "it must be run again"
            if st.run_params is not None and self.params_hash(step_id) != self.params_hash(step_id, st.run_params):
                return f"parameters of {step_id} changed"
            changed = [up for up, c in self.input_hashes(step_id).items() if st.inputs.get(up) != c]
            if changed:
                return f"the results of {', '.join(changed)} changed"
            return f"parameters or inputs of {step_id} changed"
        problem = self.verify_outputs(st)
        if problem is None and st.status != "skipped":
            problem = self.validate_outputs(step_id)  # records must also read back (cached by size and time)
        return problem

    def validate_outputs(self, step_id: str) -> str | None:
        """Validate the records among a step's current outputs with the one record loader (cached by size and
        modification time); None when they are sound, else ``FILE: field: problem``."""
        from tomoguide.steps.records import RecordError, validate_output

        st = self.data.steps[step_id]
        cache: dict[str, tuple[int, int]] = self.__dict__.setdefault("_validated", {})
        for rel in st.outputs.values():
            p = self.dir / rel
            target = p / "x" if p.is_dir() else p
            try:
                stt = p.stat()
            except OSError:
                return f"{p}: missing (the step's output was deleted or moved)"
            key = (stt.st_size, stt.st_mtime_ns)
            if p.is_dir():  # a folder output: its record file decides
                for name in ("series.json", "tilt_series.json", "particles.json", "average.json"):
                    if (p / name).is_file():
                        target = p / name
                        stt = target.stat()
                        key = (stt.st_size, stt.st_mtime_ns)
                        break
            if cache.get(str(target)) == key:
                continue
            try:
                validate_output(p)
            except RecordError as exc:
                return str(exc)
            cache[str(target)] = key
        return None

    def mark_damaged(self, step_id: str, problem: str) -> None:
        """A step whose output failed validation must be run again: stale, with the problem as the reason."""
        st = self.data.steps[step_id]
        if st.status in ("done", "skipped", "stale"):
            st.status = "stale"
            st.stale_reason = f"damaged output: {problem}"
            st.hash = None
        self._why_cache.clear()

    def is_up_to_date(self, step_id: str) -> bool:
        """The resume rule: done, same identity, the steps it needs up to date, outputs intact."""
        return self.why_not_up_to_date(step_id) is None

    def refresh_staleness(self) -> list[str]:
        """Set "done"/"stale" of every finished step from the resume rule (with the reason); returns the ids that
        changed to stale."""
        self._why_cache.clear()
        newly: list[str] = []
        for step_cls in registry.workflow():
            st = self.data.steps.get(step_cls.id)
            if st is None or st.status not in ("done", "stale"):
                continue
            reason = self.why_not_up_to_date(step_cls.id, ignore_status=True)
            if reason is None:
                st.status, st.stale_reason = "done", None
            else:
                if st.status == "done":
                    newly.append(step_cls.id)
                st.status, st.stale_reason = "stale", reason
            self._why_cache.clear()
        return newly

    def steps_at_risk(self, step_id: str) -> list[str]:
        """The later steps that are up to date now and would become stale if a run of ``step_id`` gave different
        results (the wizard asks before such a run; the command line says it)."""
        return [sid for sid in self.downstream(step_id) if self.is_up_to_date(sid)]

    def restore_kept_runs(self) -> list[str]:
        """Make current, in workflow order, every kept run whose identity is the step's identity now (parameters
        changed back, or inputs restored) and whose files are intact; returns the ids restored."""
        restored: list[str] = []
        for step_cls in registry.workflow():
            sid = step_cls.id
            st = self.data.steps.get(sid)
            if st is None or not st.history or st.status == "running":
                continue
            if self.is_up_to_date(sid) or any(self.why_not_up_to_date(up) is not None
                                              for up in self.inputs_of(sid) if up in self.data.steps):
                continue
            target = self.step_hash(sid)
            for i, rec in enumerate(st.history):
                if rec.hash != target or not rec.run_dir or self.verify_outputs(rec) is not None:
                    continue
                current = st.current_record()
                st.history.pop(i)
                if current is not None and (self.dir / current.run_dir).is_dir():
                    st.history.insert(0, current)
                st.set_current(rec)
                st.status, st.stale_reason, st.error = "done", None, None
                st.log = [*rec.log, f"restored the run finished {rec.finished or '?'} (same parameters and "
                                    f"inputs): nothing recomputed"]
                restored.append(sid)
                self._why_cache.clear()
                break
        return restored

    def first_not_done(self) -> str | None:
        """Id of the first step in workflow order that is not done (where opening the project lands)."""
        needed = registry.needed(self.params_of)
        for step_cls in registry.workflow():
            if step_cls.id in needed and not self.is_up_to_date(step_cls.id):
                return step_cls.id
        return None

    # -- runs on disk -------------------------------------------------------------------------------------------
    def known_digests(self, step_ids: Iterable[str]) -> dict[tuple[int, int, int, int], str]:
        """Digests of the files of these steps' current runs, by (device, inode, size, mtime): what a new run that
        hard-links them need not hash again (from each run's ``run.json``; files changed since are left out)."""
        from tomoguide.integrity import file_key
        from tomoguide.steps.records import RecordError, load_record

        out: dict[tuple[int, int, int, int], str] = {}
        for sid in step_ids:
            st = self.data.steps.get(sid)
            if st is None or not st.run_dir:
                continue
            run = self.dir / st.run_dir
            try:
                rf, _ = load_record(RunFile, run / RUN_RECORD_FILE)
            except RecordError:
                continue
            for rel, digest in rf.digests.items():
                try:
                    out[file_key((run / rel).lstat())] = digest
                except OSError:
                    continue
        return out

    def step_dir(self, step_id: str) -> Path:
        """``steps/<step_id>`` of this project, refused when it (or ``steps``) is a symbolic link."""
        check_name(step_id, "step id")
        folder = self.dir / STEPS_DIR / step_id
        no_links_below(self.dir, folder)
        return folder

    def run_path(self, step_id: str, rel: str) -> Path:
        """The run folder ``rel`` (as recorded: ``steps/<step_id>/run-…``) of a step, checked: exactly one
        ``run-…`` folder inside ``steps/<step_id>/`` — never ``steps``, the project folder, ``..``, an absolute
        path or a link. :class:`ProjectError` otherwise."""
        problem = _run_dir_problem(step_id, rel)
        if problem:
            raise ProjectError(f"{self.dir / PROJECT_FILE}: steps.{step_id}.run_dir: {problem}")
        folder = self.dir / rel
        try:
            no_links_below(self.dir, folder)
            folder.resolve().relative_to((self.dir / STEPS_DIR / step_id).resolve())
        except (PathRefused, ValueError) as exc:
            raise ProjectError(f"{folder}: not inside {self.dir / STEPS_DIR / step_id} ({exc})") from None
        return folder

    def remove_run(self, step_id: str, rel: str) -> bool:
        """Delete one run folder of a step (guarded by :meth:`run_path`); never the current run of any step."""
        folder = self.run_path(step_id, rel)
        if any(s.run_dir == rel for s in self.data.steps.values()):
            raise ProjectError(f"{folder}: the current run of a step; not deleting it")
        if not folder.is_dir():
            return False
        # renamed first (atomic): a program killed while deleting leaves a "….deleting" folder, removed on the
        # next open, never a half-deleted run that looks like one
        doomed = folder.with_name(folder.name + ".deleting")
        os.replace(folder, doomed)
        shutil.rmtree(doomed)
        return True

    def record_run(self, step_id: str, rec: RunRecord) -> list[tuple[str, str]]:
        """Make a finished run the step's current run (the previous one is kept for a way back), refresh what is
        up to date, and return the runs that the retention rule drops (delete them after saving)."""
        st = self.data.steps[step_id]
        previous = st.current_record()
        if previous is not None and previous.run_dir != rec.run_dir and (self.dir / previous.run_dir).is_dir():
            st.history.insert(0, previous)
        st.history = [h for h in st.history if h.run_dir != rec.run_dir]
        st.set_current(rec)
        st.status, st.stale_reason, st.error, st.owner_pid = "done", None, None, None
        self._why_cache.clear()
        self.refresh_staleness()
        self.restore_kept_runs()
        self.refresh_staleness()
        return self.prune_runs()

    def prune_runs(self) -> list[tuple[str, str]]:
        """Drop kept runs beyond the retention rule (per step, then the oldest while over the disk budget);
        returns (step id, run folder) of the dropped ones (still on disk: delete after saving)."""
        keep = self.data.settings.keep_runs
        dropped: list[tuple[str, str]] = []
        for sid, st in self.data.steps.items():
            st.history.sort(key=lambda r: r.finished or "", reverse=True)
            st.history = [h for h in st.history if h.run_dir != st.run_dir]
            while len(st.history) > keep - 1:
                dropped.append((sid, st.history.pop().run_dir))
        budget = self.data.settings.budget_GB * 1e9
        seen: set[tuple[int, int]] = set()
        for st in self.data.steps.values():  # files shared with current runs free nothing when dropped
            if st.run_dir and (self.dir / st.run_dir).is_dir():
                tree_bytes(self.dir / st.run_dir, seen)
        kept = sorted(((h.finished or "", sid, h) for sid, st in self.data.steps.items() for h in st.history),
                      key=lambda t: t[0])
        sizes = [tree_bytes(self.dir / h.run_dir, seen) for _, _, h in kept]
        total = sum(sizes)
        for (_, sid, h), size in zip(kept, sizes):
            if total <= budget:
                break
            self.data.steps[sid].history.remove(h)
            dropped.append((sid, h.run_dir))
            total -= size
        return dropped

    def delete_runs(self, runs: Iterable[tuple[str, str]]) -> list[str]:
        """Delete dropped run folders (guarded); problems are returned as messages, never raised."""
        problems = []
        for sid, rel in runs:
            try:
                self.remove_run(sid, rel)
            except (ProjectError, OSError) as exc:
                problems.append(str(exc))
        return problems

    def kept_runs(self) -> tuple[int, int]:
        """(number of earlier runs kept, bytes they use beyond the current runs) for the settings dialog."""
        seen: set[tuple[int, int]] = set()
        for st in self.data.steps.values():
            if st.run_dir and (self.dir / st.run_dir).is_dir():
                tree_bytes(self.dir / st.run_dir, seen)
        n, total = 0, 0
        for st in self.data.steps.values():
            for h in st.history:
                if (self.dir / h.run_dir).is_dir():
                    n += 1
                    total += tree_bytes(self.dir / h.run_dir, seen)
        return n, total

    def set_retention(self, *, keep_runs: int | None = None, budget_GB: float | None = None) -> list[str]:
        """Change how many runs are kept and the disk budget (validated), drop what is now beyond it, save."""
        values = self.data.settings.model_dump()
        if keep_runs is not None:
            values["keep_runs"] = keep_runs
        if budget_GB is not None:
            values["budget_GB"] = budget_GB
        self.data.settings = Retention.model_validate(values)
        dropped = self.prune_runs()
        self.save()
        return self.delete_runs(dropped)

    # -- leftovers of killed programs ---------------------------------------------------------------------------
    def _clean_leftovers(self) -> None:
        removed_tmp = 0
        for p in self.dir.iterdir():
            name = p.name
            if p.is_file() and not p.is_symlink() and name.endswith(".tmp") and name.startswith(PROJECT_FILE + "."):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed_tmp += 1
        removed_partial = 0
        steps = self.dir / STEPS_DIR
        if steps.is_dir() and not steps.is_symlink():
            for sd in steps.iterdir():
                if not sd.is_dir() or sd.is_symlink():
                    continue
                for run in sd.iterdir():
                    if run.name.endswith((".partial", ".deleting")) and run.name.startswith("run-") \
                            and run.is_dir() and not run.is_symlink():
                        with contextlib.suppress(OSError):
                            shutil.rmtree(run)
                            removed_partial += 1
                    elif run.name.endswith(".tmp") and run.is_file() and not run.is_symlink():
                        with contextlib.suppress(OSError):
                            run.unlink()
                            removed_tmp += 1
        if removed_partial:
            self.notes.append(f"removed {removed_partial} unfinished (or half-deleted) run folder(s) left by a "
                              f"stopped program")
        if removed_tmp:
            self.notes.append(f"removed {removed_tmp} temporary file(s) left by a stopped program")

    def _adopt_runs(self) -> None:
        """Runs that finished (renamed into place with their run.json) but were not recorded: the newest becomes
        the current run when it is newer than the recorded one, the others are kept (then pruned)."""
        steps = self.dir / STEPS_DIR
        if not steps.is_dir() or steps.is_symlink():
            return
        adopted = []
        for step_cls in registry.workflow():
            sid = step_cls.id
            st = self.data.steps[sid]
            sd = steps / sid
            if not sd.is_dir() or sd.is_symlink():
                continue
            known = {st.run_dir} | {h.run_dir for h in st.history}
            found: list[RunRecord] = []
            for run in sorted(sd.iterdir()):
                rel = f"{STEPS_DIR}/{sid}/{run.name}"
                if rel in known or not _RUN_NAME.match(run.name) or run.name.endswith((".partial", ".deleting")) \
                        or not run.is_dir() or run.is_symlink():
                    continue
                rec = _read_run_file(run, sid, rel)
                if rec is None or self.verify_outputs(rec) is not None:
                    continue
                found.append(rec)
            # a run that finished unrecorded was computed with the saved parameters and inputs: it has the
            # step's identity now (a kept run dropped just before a kill has another one and is only kept)
            target = self.step_hash(sid)
            for rec in sorted(found, key=lambda r: r.finished or ""):
                if rec.hash == target and not (st.hash == target and (st.finished or "") > (rec.finished or "")
                                               and st.status == "done"):
                    current = st.current_record()
                    if current is not None and (self.dir / current.run_dir).is_dir():
                        st.history.insert(0, current)
                    st.set_current(rec)
                    st.status, st.error, st.stale_reason, st.owner_pid = "done", None, None, None
                    st.log = [*rec.log, "recorded after the program stopped (the run had finished)"]
                    adopted.append(sid)
                else:
                    st.history.append(rec)
                st.history.sort(key=lambda r: r.finished or "", reverse=True)
                self._why_cache.clear()
        if adopted:
            self.notes.append(f"recorded {len(adopted)} run(s) that finished just before a program stopped "
                              f"({', '.join(sorted(set(adopted)))})")
        self._why_cache.clear()

    def _delete_unreferenced_runs(self) -> None:
        """After saving: drop runs beyond the retention rule (also adopted ones)."""
        dropped = self.prune_runs()
        if dropped:
            self.save()
            self.delete_runs(dropped)

    # -- data paths ---------------------------------------------------------------------------------------------
    def _update_data_path(self, step_id: str, name: str) -> None:
        key = f"{step_id}.{name}"
        value = self.data.steps[step_id].params.get(name)
        if not value:
            self.data.data_paths.pop(key, None)
            return
        p = Path(str(value)).expanduser()
        if not p.is_absolute():
            p = Path.cwd() / p
        p = Path(os.path.normpath(p))
        fp, files = data_fingerprint(p)
        try:
            rel: str | None = os.path.relpath(p, self.dir)
        except ValueError:  # another drive
            rel = None
        self.data.data_paths[key] = DataPath(abs=str(value), rel=rel, fingerprint=fp, files=files)

    def _resolve_data_paths(self) -> None:
        """Find each data path: the recorded place (relative to the project first: a project moved with its data
        uses its own copy), checked by its fingerprint; record the place found; list what is missing."""
        self.missing_data = []
        for key, entry in list(self.data.data_paths.items()):
            step_id, name = key.split(".", 1)
            st = self.data.steps.get(step_id)
            if st is None or not st.params.get(name):
                continue
            candidates: list[Path] = []
            if entry.rel is not None:
                candidates.append(Path(os.path.normpath(self.dir / entry.rel)))
            candidates.append(Path(entry.abs))
            found: Path | None = None
            for c in candidates:
                if c.exists() and (entry.fingerprint is None or data_fingerprint(c)[0] == entry.fingerprint):
                    found = c
                    break
            existing = Path(entry.abs) if found is None and Path(entry.abs).exists() else None
            if found is not None:
                if str(found) != entry.abs:
                    self.notes.append(f"{key}: the data were found at {found} (the project moved with them)")
                    st.params[name] = str(found)
                    entry.abs = str(found)
                    with contextlib.suppress(ValueError):
                        entry.rel = os.path.relpath(found, self.dir)
            elif existing is not None:  # the data changed in place: the step that reads them is not up to date
                fp, files = data_fingerprint(existing)
                self.notes.append(f"{key}: the data at {existing} changed since they were recorded "
                                  f"({fingerprint_differences(entry.files, files)})")
                entry.fingerprint, entry.files = fp, files
            else:
                self.missing_data.append(key)

    def data_problem(self, step_id: str) -> str | None:
        """A one-line message when a data path of ``step_id`` is missing (moved data), else None."""
        for key in self.missing_data:
            if key.split(".", 1)[0] == step_id:
                entry = self.data.data_paths[key]
                return (f"{entry.abs}: the data folder is not there any more ({key}); if it moved, tell tomoguide "
                        f"where: `tomoguide relocate {self.dir} --data NEW_FOLDER` (or the wizard's question)")
        return None

    def relocate(self, new_path: str | os.PathLike[str], *, key: str | None = None, force: bool = False) -> list[str]:
        """The data of ``key`` (default: the first missing data path, else the movie folder) are now at
        ``new_path``: checked to be the same data (fingerprint: mdoc names, sizes, hashes) unless ``force``;
        other data paths that were inside the old place follow. Returns what was changed, saves."""
        if not self.data.data_paths:
            raise ProjectError(f"{self.dir}: the project records no data folder")
        if key is None:
            key = self.missing_data[0] if self.missing_data else next(
                (k for k in self.data.data_paths if k.endswith("files_dir")), next(iter(self.data.data_paths)))
        if key not in self.data.data_paths:
            raise ProjectError(f"{key}: not a data path of this project ({', '.join(self.data.data_paths)})")
        new = Path(new_path).expanduser().resolve()
        if not new.exists():
            raise ProjectError(f"{new}: no such folder")
        entry = self.data.data_paths[key]
        fp, files = data_fingerprint(new)
        if entry.fingerprint is not None and fp != entry.fingerprint and not force:
            raise ProjectError(f"{new}: not the same data as recorded for {key} "
                               f"({fingerprint_differences(entry.files, files)}); choose the folder the data moved "
                               f"to (or --force to use these data: the steps that read them will run again)")
        old = Path(entry.abs)
        changed = [f"{key}: {old} -> {new}"]
        self._set_data_path(key, new, fp, files)
        for other, e in self.data.data_paths.items():
            if other == key:
                continue
            try:
                sub = Path(e.abs).relative_to(old)
            except ValueError:
                continue
            cand = new / sub
            if cand.exists() and (e.fingerprint is None or data_fingerprint(cand)[0] == e.fingerprint or force):
                self._set_data_path(other, cand, *data_fingerprint(cand))
                changed.append(f"{other}: {e.abs} -> {cand}")
        self._resolve_data_paths()
        self.refresh_staleness()
        self.save()
        return changed

    def _set_data_path(self, key: str, path: Path, fp: str | None, files: dict[str, list[Any]]) -> None:
        step_id, name = key.split(".", 1)
        self.data.steps[step_id].params[name] = str(path)
        rel: str | None
        try:
            rel = os.path.relpath(path, self.dir)
        except ValueError:
            rel = None
        self.data.data_paths[key] = DataPath(abs=str(path), rel=rel, fingerprint=fp, files=files)
        self._why_cache.clear()

    # -- paths and status ---------------------------------------------------------------------------------------
    def output_path(self, step_id: str, name: str) -> Path:
        rel = self.data.steps[step_id].outputs[name]
        return self.dir / rel

    def relpath(self, path: Path) -> str:
        return os.path.relpath(Path(path).resolve(), self.dir)

    def status_dict(self) -> dict[str, Any]:
        """The JSON form of ``tomoguide status --json``."""
        steps = []
        for step_cls in registry.workflow():
            st = self.data.steps[step_cls.id]
            steps.append({
                "id": step_cls.id,
                "title": step_cls.title,
                "status": st.status,
                "params": st.params,
                "outputs": {k: str(self.dir / v) for k, v in st.outputs.items()},
                "metrics": st.metrics,
                "finished": st.finished,
                "error": st.error,
                "stale_reason": st.stale_reason,
                "kept_runs": len(st.history),
                "origin": self.origin(step_cls.id),
                "needed": self.is_needed(step_cls.id),
            })
        return {"project": str(self.dir), "name": self.data.name, "schema_version": self.data.schema_version,
                "missing_data": [self.data.data_paths[k].abs for k in self.missing_data], "notes": self.notes,
                "steps": steps}


# ---------------------------------------------------------------------------------------------------------------
# reading the project file
# ---------------------------------------------------------------------------------------------------------------


def _run_dir_problem(step_id: str, rel: Any) -> str | None:
    """Why ``rel`` is not a run folder of ``step_id`` (``steps/<step_id>/run-…``), or None."""
    if not isinstance(rel, str):
        return "not text"
    try:
        check_relative_file(rel, "run folder")
    except ValueError as exc:
        return str(exc)
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != STEPS_DIR or parts[1] != step_id or not _RUN_NAME.match(parts[2]) \
            or parts[2].endswith((".partial", ".deleting")):
        return f"{rel!r} is not a run folder of this step (steps/{step_id}/run-…)"
    return None


def _state_problem(step_id: str, st: StepState) -> tuple[str, str] | None:
    """(field, problem) when a step's recorded folders or outputs point outside its own step folder."""
    try:
        check_name(step_id, "step id")
    except ValueError as exc:
        return "", str(exc)
    records: list[tuple[str, StepState | RunRecord]] = [("", st)]
    records += [(f"history.{i}.", h) for i, h in enumerate(st.history)]
    for prefix, rec in records:
        if rec.run_dir is not None:
            problem = _run_dir_problem(step_id, rec.run_dir)
            if problem:
                return f"{prefix}run_dir", problem
        base = f"{rec.run_dir}/" if rec.run_dir else f"{STEPS_DIR}/{step_id}/"
        for name, rel in rec.outputs.items():
            try:
                check_relative_file(rel, "output path")
            except ValueError as exc:
                return f"{prefix}outputs.{name}", str(exc)
            if not (rel + "/").startswith(base):
                return f"{prefix}outputs.{name}", f"{rel!r} is not inside the step's run folder {base}"
        for rel in (rec.manifest or {}):
            try:
                check_relative_file(rel, "file name")
            except ValueError as exc:
                return f"{prefix}manifest", str(exc)
    return None


def _read_run_file(run: Path, step_id: str, rel: str) -> RunRecord | None:
    """The record of a run folder from its run.json (paths made relative to the project), or None."""
    from tomoguide.steps.records import RecordError, load_record

    try:
        rf, _ = load_record(RunFile, run / RUN_RECORD_FILE)
    except RecordError:
        return None
    if rf.step_id != step_id:
        return None
    outputs = {}
    for name, out in rf.outputs.items():
        try:
            check_relative_file(out, "output")
        except ValueError:
            return None
        outputs[name] = f"{rel}/{out}" if out != "." else rel
    data = rf.model_dump(exclude={"step_id", "schema_version", "app_version", "digests"})
    data.update(run_dir=rel, outputs=outputs)
    rec = RunRecord.model_validate(data)
    return None if _state_problem(step_id, StepState(run_dir=rec.run_dir, outputs=rec.outputs,
                                                     manifest=rec.manifest)) else rec


def load_project_file(path: Path) -> ProjectData:
    """Read and validate a project file, with messages a trainee can act on (``FILE: field: problem``)."""
    path = Path(path)
    backup = path.with_name(BACKUP_FILE)
    offer = (f" A backup of the previous state exists: open it with --use-backup (tomoguide run/status) or "
             f"\"Open backup\" (wizard).") if backup.exists() and path.name != BACKUP_FILE else ""
    if not path.exists():
        if path.name == PROJECT_FILE and not path.parent.exists():
            raise ProjectError(f"{path.parent}: no such folder")
        if path.name == BACKUP_FILE:
            raise ProjectError(f"{path}: no backup here (it is written from the second save on)")
        raise ProjectError(f"{path}: no project file here (create one with `tomoguide new`).{offer}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProjectError(f"{path}: the project file is corrupt (not valid JSON: {exc}).{offer}") from exc
    except OSError as exc:
        raise ProjectError(f"{path}: unreadable ({exc.strerror or exc}).{offer}") from exc
    if not isinstance(raw, dict):
        raise ProjectError(f"{path}: the project file is corrupt (not a JSON object).{offer}")
    version = raw.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProjectError(f"{path}: schema_version: missing or not an integer; not a tomoguide project.{offer}")
    if version > SCHEMA_VERSION:
        raise ProjectError(
            f"{path}: schema_version: {version} was written by a newer tomoguide "
            f"({raw.get('app_version', '?')}); this is {__version__} (schema {SCHEMA_VERSION}). "
            f"Update tomoguide to open it.{offer}")
    try:
        data = ProjectData.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ProjectError(f"{path}: {loc}: {first['msg']}.{offer}") from exc
    except (TypeError, OverflowError, RecursionError) as exc:
        raise ProjectError(f"{path}: the project file is corrupt ({type(exc).__name__}: {exc}).{offer}") from exc
    for step_id, st in data.steps.items():
        problem = _state_problem(step_id, st)
        if problem:
            field, msg = problem
            raise ProjectError(f"{path}: steps.{step_id}{'.' + field if field else ''}: {msg}; the project file "
                               f"was edited or damaged, nothing was run.{offer}")
    return data
