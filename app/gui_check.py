"""Can the wizard start here? What is missing when it cannot (no Qt here: this runs before Qt is imported).

On a bare Linux machine Qt's own libraries come with PySide6, but the system libraries it loads do not: OpenGL/EGL,
fontconfig, freetype, GLib, D-Bus, xkbcommon for every platform, and the xcb libraries of Qt's X11 platform
plugin. Without them the import of PySide6 fails ("libEGL.so.1: cannot open shared object file") or, worse, Qt
aborts the interpreter while creating the application ("could not load the Qt platform plugin 'xcb'"), which no
Python code can catch. :func:`gui_problem` therefore looks *before* Qt is imported: it tries to load every system
library the chosen platform plugin needs (``ctypes``, by the name the dynamic linker resolves), checks that there
is a display to show windows on, and returns a message naming what is missing, the ``apt-get`` command that
installs it (the list of ``.ci/run`` and ``docs/platform-notes.md``) and ``--no-gui`` as the way to work
without the wizard. None when everything is there.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Mapping

#: shared library (soname) -> Debian package, for every platform Qt may use (offscreen included)
CORE_LIBRARIES: dict[str, str] = {
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libdbus-1.so.3": "libdbus-1-3",
    "libxkbcommon.so.0": "libxkbcommon0",
}
#: what Qt's X11 platform plugin (libqxcb.so) loads besides the core libraries
XCB_LIBRARIES: dict[str, str] = {
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
}
#: the packages of .ci/run (docs/platform-notes.md): installing them all is the advice, whatever is missing
APT_PACKAGES: tuple[str, ...] = (
    "libgl1", "libegl1", "libgl1-mesa-dri", "libx11-6", "libdbus-1-3", "libfontconfig1", "libfreetype6",
    "libglib2.0-0", "libxkbcommon0", "xvfb", "xauth", "libxcb-cursor0", "libxcb-icccm4", "libxcb-image0",
    "libxcb-keysyms1", "libxcb-render-util0", "libxcb-render0", "libxcb-shape0", "libxcb-util1", "libxcb-xkb1",
    "libxkbcommon-x11-0",
)
NO_GUI_HINT = ("Without the wizard, everything runs from the command line: `tomoguide demo --no-gui`, "
               "`tomoguide new PROJECT --movies DIR`, `tomoguide run PROJECT`.")


def library_loads(soname: str) -> bool:
    """Whether the dynamic linker finds and loads ``soname`` (e.g. "libxcb-cursor.so.0")."""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def qt_platform(environ: Mapping[str, str]) -> str:
    """The platform plugin Qt will use on Linux: ``QT_QPA_PLATFORM`` when set (its first choice), "wayland" on a
    Wayland session (``WAYLAND_DISPLAY`` set, and ``XDG_SESSION_TYPE=wayland`` or no X display), "xcb"
    otherwise."""
    chosen = environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip()
    if chosen:
        return chosen
    if environ.get("WAYLAND_DISPLAY") and (environ.get("XDG_SESSION_TYPE") == "wayland"
                                           or not environ.get("DISPLAY")):
        return "wayland"
    return "xcb"


def apt_command(packages: tuple[str, ...] | list[str] = APT_PACKAGES) -> str:
    """The command that installs ``packages`` on Debian/Ubuntu."""
    return "sudo apt-get install -y --no-install-recommends " + " ".join(packages)


def missing_libraries(platform: str, loads: Callable[[str], bool] | None = None) -> dict[str, str]:
    """soname -> package of every library ``platform`` needs that cannot be loaded (Linux only; {} elsewhere).
    ``loads`` default: :func:`library_loads`, looked up at call time."""
    if not sys.platform.startswith("linux"):
        return {}
    loads = library_loads if loads is None else loads
    needed = dict(CORE_LIBRARIES)
    if platform == "xcb":
        needed.update(XCB_LIBRARIES)
    return {so: pkg for so, pkg in needed.items() if not loads(so)}


def gui_problem(environ: Mapping[str, str] | None = None, *, offscreen: bool = False,
                loads: Callable[[str], bool] | None = None) -> str | None:
    """Why the wizard cannot start here (a message for the user), or None when it can.

    ``offscreen``: the caller renders without a display (screenshots, self-test). ``environ`` (default
    ``os.environ``) and ``loads`` (default: try to load the library) are parameters so that tests can simulate
    a bare machine."""
    env = os.environ if environ is None else environ
    platform = "offscreen" if offscreen else qt_platform(env)
    lines: list[str] = []
    missing = missing_libraries(platform, loads)
    if missing:
        names = ", ".join(f"{so} (package {pkg})" for so, pkg in missing.items())
        lines.append(f"Qt's system libraries are missing: {names}.")
        lines.append(f"Install them (and the rest of what Qt needs) with:\n  {apt_command()}")
    if sys.platform.startswith("linux") and platform in ("xcb", "wayland") and not offscreen:
        display = env.get("WAYLAND_DISPLAY") if platform == "wayland" else env.get("DISPLAY")
        if not display:
            lines.append("There is no display to open a window on (DISPLAY is not set): run tomoguide on a "
                         "desktop, through `ssh -X`, or under a virtual display: `xvfb-run -a tomoguide ...`.")
    if not lines:
        return None
    return "the wizard cannot start.\n" + "\n".join(lines) + "\n" + NO_GUI_HINT


def import_error_message(exc: BaseException) -> str:
    """A message for an ImportError of PySide6 (a missing system library named in it gets its package)."""
    text = str(exc)
    for so, pkg in {**CORE_LIBRARIES, **XCB_LIBRARIES}.items():
        if so in text:
            return (f"the wizard cannot start: Qt needs the system library {so} (package {pkg}).\n"
                    f"Install Qt's system libraries with:\n  {apt_command()}\n{NO_GUI_HINT}")
    return f"the wizard cannot start: {text}\n{NO_GUI_HINT}"
