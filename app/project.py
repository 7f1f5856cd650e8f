"""The project: a folder with ``project.json`` that records everything and resumes, also after a crash.

Layout of a project folder::

    PROJECT/project.json        the state (this module's ProjectData, JSON, schema_version)
    PROJECT/project.json.bak    the previous state (offered when project.json is unreadable)
    PROJECT/project.lock        held by the program that writes the project (pid, host)
    PROJECT/steps/<step_id>/run-<stamp>/   outputs of one run of a step

Rules (design.md, "The project file"):

* Saves are atomic: the new state is written to a temporary file, flushed and fsynced, the current file is
  hard-linked to ``project.json.bak``, and the temporary file is renamed over ``project.json``. At every
  moment ``project.json`` is a complete file (old or new), so a crash or SIGKILL never leaves an unreadable
  project.
* Paths stored in the file are relative to the project folder, so a project folder can be moved.
* Resume rule (Scipion's): a step counts as done only when it finished, the hash of its parameters and of its
  inputs is unchanged, and its outputs still exist. Changing a step's parameters (or re-running it) marks the
  steps that depend on it stale; nothing is deleted silently. A step left "running" by a crashed program is
  shown as "interrupted".
* A corrupt file, or one written by a newer tomoguide, raises :class:`ProjectError` with a clear message
  that offers the backup.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tomoguide import __version__
from tomoguide.steps import registry

SCHEMA_VERSION = 1
PROJECT_FILE = "project.json"
BACKUP_FILE = "project.json.bak"
LOCK_FILE = "project.lock"

Status = Literal["pending", "running", "done", "failed", "interrupted", "stale", "skipped"]


class ProjectError(Exception):
    """A project that cannot be opened or written; the message says why and what to do."""


class ProjectLockedError(ProjectError):
    """Another running program holds the project's lock."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class StepState(BaseModel):
    """The recorded state of one step. ``outputs`` paths are relative to the project folder."""

    model_config = ConfigDict(extra="forbid")

    status: Status = "pending"
    params: dict[str, Any] = Field(default_factory=dict)
    hash: str | None = None  # hash of params and of upstream hashes at the last successful run
    outputs: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    run_dir: str | None = None
    started: str | None = None
    finished: str | None = None
    log: list[str] = Field(default_factory=list)
    error: str | None = None
    stale_reason: str | None = None
    owner_pid: int | None = None  # pid of the program that marked it running


class ProjectData(BaseModel):
    """Everything in ``project.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    app_version: str = __version__
    name: str = ""
    created: str = Field(default_factory=now_iso)
    modified: str = Field(default_factory=now_iso)
    dataset: dict[str, Any] = Field(default_factory=dict)
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
# lock
# ---------------------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as dead
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_lock(project_dir: Path) -> dict[str, Any] | None:
    """The lock's content (pid, host, since) or None when unlocked or the lock is unreadable."""
    try:
        return json.loads((Path(project_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None


def lock_is_live(info: dict[str, Any] | None) -> bool:
    if not info:
        return False
    if info.get("host") != socket.gethostname():
        return True  # cannot check a process on another machine: respect the lock
    return _pid_alive(int(info.get("pid", -1)))


# ---------------------------------------------------------------------------------------------------------------
# the project
# ---------------------------------------------------------------------------------------------------------------


class Project:
    """An open project. Use :meth:`create` or :meth:`open`; call :meth:`close` (or use ``with``) when done.

    ``readonly=True`` opens without taking the lock (for ``tomoguide status`` while another program runs).
    """

    def __init__(self, directory: Path, data: ProjectData, *, readonly: bool) -> None:
        self.dir = Path(directory).resolve()
        self.data = data
        self.readonly = readonly
        self._locked = False

    # -- opening ------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike[str], *, name: str | None = None,
               params: dict[str, dict[str, Any]] | None = None) -> Project:
        """Create a new project folder (it may exist but must not hold a project) with default parameters."""
        d = Path(directory)
        if (d / PROJECT_FILE).exists():
            raise ProjectError(f"{d / PROJECT_FILE}: a project already exists here; open it instead")
        d.mkdir(parents=True, exist_ok=True)
        data = ProjectData(name=name or d.resolve().name)
        for step_cls in registry.workflow():
            data.steps[step_cls.id] = StepState(params=step_cls.default_params().model_dump(mode="json"))
        proj = cls(d, data, readonly=False)
        proj._acquire_lock()
        for step_id, values in (params or {}).items():
            proj.set_params(step_id, values, save=False)
        proj.save()
        return proj

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, readonly: bool = False,
             use_backup: bool = False) -> Project:
        """Open an existing project; marks steps left "running" by a dead program as "interrupted"."""
        d = Path(directory)
        path = d / (BACKUP_FILE if use_backup else PROJECT_FILE)
        data = load_project_file(path)
        proj = cls(d, data, readonly=readonly)
        if not readonly:
            proj._acquire_lock()
            if use_backup:
                proj.save()
        proj._reconcile()
        if not readonly:
            proj.save()
        return proj

    def _reconcile(self) -> None:
        """Apply the resume rule: add steps new to this version, flag interrupted runs and missing outputs."""
        for step_cls in registry.workflow():
            if step_cls.id not in self.data.steps:
                self.data.steps[step_cls.id] = StepState(
                    params=step_cls.default_params().model_dump(mode="json"))
        for step_id, st in self.data.steps.items():
            if st.status == "running":
                live = st.owner_pid is not None and st.owner_pid != os.getpid() and _pid_alive(st.owner_pid) \
                    and self.readonly
                if not live:
                    st.status = "interrupted"
                    st.error = "the program stopped while this step was running; run it again"
            if st.status == "done":
                missing = [n for n, rel in st.outputs.items() if not (self.dir / rel).exists()]
                if missing:
                    st.status = "stale"
                    st.stale_reason = f"outputs missing on disk: {', '.join(missing)}"

    def _acquire_lock(self) -> None:
        lock = self.dir / LOCK_FILE
        info = read_lock(self.dir)
        if info and lock_is_live(info) and int(info.get("pid", -1)) != os.getpid():
            raise ProjectLockedError(
                f"{lock}: the project is open in another tomoguide (pid {info.get('pid')} on "
                f"{info.get('host')}, since {info.get('since')}); close it there first")
        payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()})
        atomic_write_text(lock, payload)
        self._locked = True

    def close(self) -> None:
        """Release the lock (the state is saved after every change already)."""
        if self._locked:
            info = read_lock(self.dir)
            if info and int(info.get("pid", -1)) == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / LOCK_FILE).unlink()
            self._locked = False

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- saving -------------------------------------------------------------------------------------------------
    def save(self) -> None:
        if self.readonly:
            raise ProjectError(f"{self.dir}: opened read-only; cannot save")
        self.data.modified = now_iso()
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

    def set_params(self, step_id: str, values: dict[str, Any], *, save: bool = True) -> list[str]:
        """Change some parameters of a step (validated); returns the ids of steps that became stale."""
        step_cls = registry.get(step_id)
        st = self.data.steps[step_id]
        merged = {**st.params, **values}
        new = step_cls.params_from(merged).model_dump(mode="json")
        changed = new != st.params
        st.params = new
        stale: list[str] = []
        if changed:
            stale = self.mark_stale_from(step_id, reason=f"parameters of {step_id} changed", include_self=True)
        if save:
            self.save()
        return stale

    def mark_stale_from(self, step_id: str, *, reason: str, include_self: bool) -> list[str]:
        """Mark done steps downstream of ``step_id`` (and itself when asked) stale; returns their ids."""
        ids = registry.downstream(step_id)
        if include_self:
            ids = [step_id, *ids]
        marked = []
        for sid in ids:
            st = self.data.steps[sid]
            if st.status in ("done", "skipped"):
                st.status = "stale"
                st.stale_reason = reason
                marked.append(sid)
        return marked

    def step_hash(self, step_id: str) -> str:
        """Hash of a step's parameters and of the hashes of the steps it depends on."""
        step_cls = registry.get(step_id)
        h = hashlib.sha256()
        h.update(step_id.encode())
        h.update(json.dumps(self.data.steps[step_id].params, sort_keys=True).encode())
        for up in step_cls.inputs:
            h.update((self.data.steps[up].hash or "-").encode())
        return h.hexdigest()[:16]

    def is_up_to_date(self, step_id: str) -> bool:
        """The resume rule: done, same hash, outputs present."""
        st = self.data.steps[step_id]
        if st.status not in ("done", "skipped"):
            return False
        if st.hash != self.step_hash(step_id):
            return False
        return all((self.dir / rel).exists() for rel in st.outputs.values())

    def first_not_done(self) -> str | None:
        """Id of the first step in workflow order that is not done (where opening the project lands)."""
        for step_cls in registry.workflow():
            if not self.is_up_to_date(step_cls.id):
                return step_cls.id
        return None

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
            })
        return {"project": str(self.dir), "name": self.data.name, "schema_version": self.data.schema_version,
                "steps": steps}


def load_project_file(path: Path) -> ProjectData:
    """Read and validate a project file, with messages a trainee can act on."""
    path = Path(path)
    backup = path.with_name(BACKUP_FILE)
    offer = (f" A backup of the previous state exists: open it with --use-backup (command line) or "
             f"\"Open backup\" (wizard).") if backup.exists() and path.name != BACKUP_FILE else ""
    if not path.exists():
        if path.name == PROJECT_FILE and not path.parent.exists():
            raise ProjectError(f"{path.parent}: no such folder")
        raise ProjectError(f"{path}: no project file here (create one with `tomoguide new`).{offer}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProjectError(f"{path}: the project file is corrupt (not valid JSON: {exc}).{offer}") from exc
    if not isinstance(raw, dict):
        raise ProjectError(f"{path}: the project file is corrupt (not a JSON object).{offer}")
    version = raw.get("schema_version")
    if not isinstance(version, int):
        raise ProjectError(f"{path}: schema_version: missing or not an integer; not a tomoguide project.{offer}")
    if version > SCHEMA_VERSION:
        raise ProjectError(
            f"{path}: schema_version: {version} was written by a newer tomoguide "
            f"({raw.get('app_version', '?')}); this is {__version__} (schema {SCHEMA_VERSION}). "
            f"Update tomoguide to open it.{offer}")
    try:
        return ProjectData.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ProjectError(f"{path}: {loc}: {first['msg']}.{offer}") from exc
