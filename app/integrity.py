"""What keeps a project trustworthy, below the project file itself (no Qt, no project logic here):

* **Names and paths.** :func:`check_name` (a series name, a role: one path component, no separators, no control
  characters, not ``.``/``..``) and :func:`check_relative_file` (a file name stored in a record: relative, no
  ``..``, no backslash, no drive) are applied when records are *read*; :func:`guarded_path` is the one way to
  turn a name into a path for writing or deleting: the result must lie inside the given folder, and no existing
  component between the folder and the target may be a symbolic link (links are never followed for writing).
* **Content digests.** :func:`content_digest` hashes a file's *content* (SHA-256), ignoring what changes from run
  to run without changing the data: the 800 bytes of MRC labels (mrcfile stamps the date there), ``#`` comment
  lines of STAR files (the writer's time stamp) and the time stamps of ``.npz`` archives. A run's
  :func:`build_manifest` lists every file of its folder with its size (and the digest of the small record files);
  :func:`manifest_digest` is the run's content hash; :func:`verify_manifest` checks a folder against it cheaply
  (sizes of all files, digests of the small record files only, cached by size and modification time).
* **The lock.** :class:`ProjectLock`: an exclusive OS lock (``flock``) on ``project.lock``, which also holds the
  owner's pid, host, machine id, process start time and command. A lock whose owner is gone (dead pid, pid reused
  by another process — its start time differs —, a killed program's empty file) is taken over; one held by a
  running program, or written on another machine, is refused with what is known about its owner
  (:class:`LockHeld`), and can be broken on request when no program on this machine holds it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import re
import socket
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

try:  # POSIX; elsewhere the lock falls back to an exclusive create
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------------------------
# names and paths
# ---------------------------------------------------------------------------------------------------------------

MAX_NAME_CHARS = 200
_BAD_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:]")


class PathRefused(ValueError):
    """A name or path that would lead outside the folder it belongs to (or through a symbolic link)."""


def check_name(value: Any, what: str = "name") -> str:
    """A name used to build a file name (series name, role): one path component, printable, no separators.

    Refused: empty, longer than 200 characters, ``.`` or ``..``, leading or trailing spaces, ``/``, ``\\``,
    ``:`` (a drive or RELION's ``stack.mrc:3``) and control characters. Raises ``ValueError`` saying which."""
    if not isinstance(value, str):
        raise ValueError(f"a {what} must be text, not {type(value).__name__}")
    if not value:
        raise ValueError(f"empty {what}")
    if len(value) > MAX_NAME_CHARS:
        raise ValueError(f"{what} {value[:40]!r}… is longer than {MAX_NAME_CHARS} characters")
    if value in (".", ".."):
        raise ValueError(f"{what} {value!r} is not a name")
    if value != value.strip():
        raise ValueError(f"{what} {value!r} starts or ends with a space")
    bad = _BAD_NAME_CHARS.search(value)
    if bad:
        ch = bad.group()
        desc = {"/": "a '/'", "\\": "a '\\'", ":": "a ':'"}.get(ch, f"the control character {ch!r}")
        raise ValueError(f"{what} {value!r} contains {desc}; a {what} must be a plain name, not a path")
    return value


def check_relative_file(value: Any, what: str = "file name") -> str:
    """A file name stored in a record, relative to the record's folder: ``name`` or ``sub/name``; no absolute
    path, no drive, no ``..`` or empty component, no backslash, no control character."""
    if not isinstance(value, str):
        raise ValueError(f"a {what} must be text, not {type(value).__name__}")
    if not value:
        raise ValueError(f"empty {what}")
    if len(value) > 1000:
        raise ValueError(f"{what} {value[:40]!r}… is too long")
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{what} {value!r} is an absolute path; records name files relative to their folder")
    if re.search(r"[\x00-\x1f\x7f\\]", value):
        raise ValueError(f"{what} {value!r} contains a backslash or a control character")
    for part in value.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"{what} {value!r} leaves its folder or has an empty part ({part!r})")
    return value


def _relative_parts(base: Path, parts: Iterable[str | os.PathLike[str]]) -> list[str]:
    out: list[str] = []
    for p in parts:
        path = Path(p)
        if path.is_absolute():
            try:
                path = path.relative_to(base)
            except ValueError:
                raise PathRefused(f"{p}: outside {base}; refusing to write there") from None
        text = PurePosixPath(path.as_posix()).as_posix()
        if text in ("", "."):
            continue
        try:
            check_relative_file(text, "path")
        except ValueError as exc:
            raise PathRefused(f"{base}: {exc}") from None
        out.extend(text.split("/"))
    return out


def guarded_path(base: Path, *parts: str | os.PathLike[str]) -> Path:
    """``base / parts``, refused (:class:`PathRefused`) unless it lies inside ``base``.

    ``parts`` are relative names (``"TS_01.mrc"``, ``"sub/x.mrc"``) or absolute paths already inside ``base``.
    No ``..``, no absolute path elsewhere, and no existing component below ``base`` (nor ``base`` itself) may be a
    symbolic link: a link planted in a project is never followed for writing or deleting."""
    base = Path(base)
    rel = _relative_parts(base, parts)
    if base.is_symlink():
        raise PathRefused(f"{base}: a symbolic link; tomoguide does not write through links")
    cur = base
    for comp in rel:
        cur = cur / comp
        if cur.is_symlink():
            raise PathRefused(f"{cur}: a symbolic link; tomoguide does not write through links")
    target = base.joinpath(*rel) if rel else base
    try:
        target.resolve().relative_to(base.resolve())
    except ValueError:
        raise PathRefused(f"{target}: outside {base}; refusing to write there") from None
    return target


def no_links_below(root: Path, path: Path) -> None:
    """Raise :class:`PathRefused` when ``path`` is not below ``root`` or any component from ``root`` (excluded)
    down to ``path`` (included) is a symbolic link."""
    root = Path(root)
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        raise PathRefused(f"{path}: outside {root}") from None
    cur = root
    for comp in rel.parts:
        if comp in ("..", ""):
            raise PathRefused(f"{path}: leaves {root}")
        cur = cur / comp
        if cur.is_symlink():
            raise PathRefused(f"{cur}: a symbolic link inside the project; tomoguide does not write through "
                              f"links (remove it, or copy the project with its files)")


# ---------------------------------------------------------------------------------------------------------------
# content digests and manifests
# ---------------------------------------------------------------------------------------------------------------

MRC_SUFFIXES = frozenset({".mrc", ".mrcs", ".st", ".map", ".rec", ".ali", ".preali"})
#: small text files whose digest is checked whenever a run's outputs are verified (records, tables)
RECORD_SUFFIXES = frozenset({".json", ".star", ".txt", ".xf", ".tlt", ".csv", ".mod", ".aln"})
RECORD_MAX_BYTES = 8 * 1024 * 1024
_CHUNK = 8 * 1024 * 1024
RUN_RECORD_FILE = "run.json"


def content_digest(path: Path) -> str:
    """SHA-256 (hex) of a file's content, without what changes between identical runs (see the module doc)."""
    path = Path(path)
    suffix = path.suffix.lower()
    h = hashlib.sha256()
    if suffix == ".star":
        for line in path.read_bytes().splitlines():
            if not line.lstrip().startswith(b"#"):
                h.update(line.rstrip() + b"\n")
        return h.hexdigest()
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as z:
                for name in sorted(z.namelist()):
                    h.update(name.encode() + b"\0")
                    with z.open(name) as fh:
                        for chunk in iter(lambda: fh.read(_CHUNK), b""):
                            h.update(chunk)
            return h.hexdigest()
        except (zipfile.BadZipFile, OSError, ValueError):
            h = hashlib.sha256()  # not a valid archive: hash its bytes
    with open(path, "rb") as fh:
        if suffix in MRC_SUFFIXES:
            head = fh.read(1024)
            h.update(head[:220])  # 220..1024: number of labels and the labels (time stamps)
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def is_record_file(rel: str, size: int) -> bool:
    return Path(rel).suffix.lower() in RECORD_SUFFIXES and size <= RECORD_MAX_BYTES


FileKey = tuple[int, int, int, int]  # (device, inode, size, mtime_ns): the same file, unchanged


def file_key(st: os.stat_result) -> FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def build_manifest(folder: Path, *, exclude: Iterable[str] = (RUN_RECORD_FILE,),
                   known: dict[FileKey, str] | None = None,
                   digests_out: dict[str, str] | None = None) -> tuple[dict[str, list[Any]], str]:
    """Every file below ``folder`` -> ``[size]`` or, for small record files, ``[size, digest]``; and the content
    hash of the folder (over every file's digest). Symbolic links are refused (:class:`PathRefused`).

    ``known``: digests of files already hashed (by :func:`file_key`): a stack hard-linked from an earlier step's
    run is not read again. ``digests_out`` receives every file's digest (for the run's ``run.json``)."""
    folder = Path(folder)
    skip = set(exclude)
    manifest: dict[str, list[Any]] = {}
    digests: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        d = Path(dirpath)
        for name in list(dirnames):
            if (d / name).is_symlink():
                raise PathRefused(f"{d / name}: a symbolic link in a run folder")
        for name in filenames:
            p = d / name
            rel = p.relative_to(folder).as_posix()
            if rel in skip:
                continue
            st = p.lstat()
            if not os.path.isfile(p) or p.is_symlink():
                raise PathRefused(f"{p}: not a plain file (a link or a device) in a run folder")
            digest = (known or {}).get(file_key(st)) if st.st_nlink > 1 else None
            if digest is None:
                digest = content_digest(p)
            digests[rel] = (st.st_size, digest)
            if digests_out is not None:
                digests_out[rel] = digest
            manifest[rel] = [st.st_size, digest] if is_record_file(rel, st.st_size) else [st.st_size]
    return dict(sorted(manifest.items())), manifest_digest(digests)


def manifest_digest(digests: dict[str, tuple[int, str]]) -> str:
    """The content hash of a run: SHA-256 over the sorted (name, size, digest) of its files (32 hex digits)."""
    h = hashlib.sha256()
    for rel in sorted(digests):
        size, digest = digests[rel]
        h.update(f"{rel}\0{size}\0{digest}\n".encode())
    return h.hexdigest()[:32]


class DigestCache:
    """Digests of files by (path, size, mtime_ns), so that verifying outputs again costs a ``stat`` per file."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, int, str]] = {}

    def digest(self, path: Path, st: os.stat_result) -> str:
        key = str(path)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        d = content_digest(path)
        self._cache[key] = (st.st_size, st.st_mtime_ns, d)
        return d


def verify_manifest(folder: Path, manifest: dict[str, list[Any]], cache: DigestCache | None = None) -> str | None:
    """None when every listed file is there, a plain file of the recorded size, and every small record file has
    its recorded digest; otherwise what is wrong (one line, naming the file)."""
    folder = Path(folder)
    try:
        if folder.is_symlink() or not folder.is_dir():
            return f"{folder}: the run folder is missing"
    except OSError as exc:
        return f"{folder}: {exc.strerror or exc}"
    for rel, entry in manifest.items():
        p = folder / rel
        try:
            st = p.lstat()
        except OSError:
            return f"{p}: missing"
        if p.is_symlink() or not os.path.isfile(p):
            return f"{p}: not a plain file any more (a link?)"
        if not entry or st.st_size != entry[0]:
            return f"{p}: changed on disk (size {st.st_size} bytes, recorded {entry[0] if entry else '?'})"
        if len(entry) > 1:
            try:
                d = cache.digest(p, st) if cache is not None else content_digest(p)
            except OSError as exc:
                return f"{p}: unreadable ({exc.strerror or exc})"
            if d != entry[1]:
                return f"{p}: modified on disk after the run"
    return None


def tree_bytes(folder: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes used by the files below ``folder`` (hard-linked files counted once across calls sharing ``seen``)."""
    seen = set() if seen is None else seen
    total = 0
    for dirpath, _, filenames in os.walk(folder, followlinks=False):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_size
    return total


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# the lock
# ---------------------------------------------------------------------------------------------------------------


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.readline().strip() or None
    except OSError:
        return None


def machine_id() -> str:
    """An id of this machine that survives a change of host name (systemd's machine-id), else the host name."""
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        value = _read_first_line(p)
        if value:
            return value
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as ``<boot id>:<clock ticks since boot>`` (Linux), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20:
        return None
    boot = _read_first_line("/proc/sys/kernel/random/boot_id") or "?"
    return f"{boot}:{fields[19]}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def owner_info() -> dict[str, Any]:
    """What the lock says about its owner: this process."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "machine": machine_id(),
            "start": process_start(os.getpid()),
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:300] if sys.argv else ""}


def describe_owner(info: dict[str, Any] | None) -> str:
    """``pid 123 on host h (tomoguide run P), since …``."""
    if not info:
        return "an unknown program (the lock file is empty or unreadable)"
    text = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    if info.get("command"):
        text += f" ({info['command']})"
    if info.get("since"):
        text += f", since {info['since']}"
    return text


def lock_state(info: dict[str, Any] | None) -> str:
    """What a lock file's content says about its owner, seen from this machine:

    ``"dead"`` (the owner is gone: empty file, dead pid, pid reused by another process, our own pid),
    ``"alive"`` (a running process with the recorded pid and start time), ``"foreign"`` (written on another
    machine: cannot be checked from here)."""
    if not info or not isinstance(info, dict):
        return "dead"
    same_machine = info.get("machine") == machine_id() if info.get("machine") else \
        info.get("host") == socket.gethostname()
    if not same_machine:
        return "foreign"
    try:
        pid = int(info.get("pid", -1))
    except (TypeError, ValueError):
        return "dead"
    if pid == os.getpid():
        return "dead"  # our own leftover: this process cannot be waiting for itself
    if not pid_alive(pid):
        return "dead"
    start = info.get("start")
    if start and process_start(pid) not in (None, start):
        return "dead"  # the pid now belongs to another process
    return "alive"


class LockHeld(Exception):
    """The lock is held (``state`` "alive" or "held") or cannot be checked ("foreign"); ``info`` is its owner."""

    def __init__(self, path: Path, info: dict[str, Any] | None, state: str) -> None:
        self.path = Path(path)
        self.info = info
        self.state = state
        super().__init__(f"{path}: locked by {describe_owner(info)}")


def read_lock_info(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return raw if isinstance(raw, dict) else None


class ProjectLock:
    """An exclusive lock on a file (see the module docstring). :meth:`acquire` or raise :class:`LockHeld`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, break_lock: bool = False) -> None:
        """Take the lock. ``break_lock``: also take a lock whose owner cannot be checked (another machine) or that
        a program without the OS lock wrote; never one that a running program on this machine holds."""
        if self._fd is not None:
            return
        if fcntl is None:  # pragma: no cover - Windows: exclusive create, stale check by content
            self._acquire_excl(break_lock)
            return
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockHeld(self.path, self._owner_of_held_lock(), "held") from None
                raise
            try:  # the file may have been removed or replaced between open and flock: lock the current one
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = read_lock_info(self.path)
            state = lock_state(info)
            if state != "dead" and not break_lock:
                os.close(fd)
                raise LockHeld(self.path, info, state)
            data = json.dumps(owner_info()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            with contextlib.suppress(OSError):
                os.fsync(fd)
            self._fd = fd
            return
        raise LockHeld(self.path, read_lock_info(self.path), "held")

    def _owner_of_held_lock(self) -> dict[str, Any] | None:
        """What a held lock says about its owner; the owner may have locked it a moment ago and not written yet:
        wait for that a little (at most 0.5 s)."""
        import time

        for _ in range(50):
            info = read_lock_info(self.path)
            if info:
                return info
            time.sleep(0.01)
        return None

    def _acquire_excl(self, break_lock: bool) -> None:  # pragma: no cover - Windows
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = read_lock_info(self.path)
                state = lock_state(info)
                if state == "dead" or break_lock:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                raise LockHeld(self.path, info, state) from None
            os.write(fd, json.dumps(owner_info()).encode())
            self._fd = fd
            return
        raise LockHeld(self.path, read_lock_info(self.path), "held")

    def release(self) -> None:
        """Remove the lock file and let go of the lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    os.unlink(self.path)
        finally:
            os.close(fd)

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
