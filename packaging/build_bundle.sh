#!/usr/bin/env bash
# Build the one-folder bundle of tomoguide with PyInstaller, then run the frozen program's self-test.
#
#   packaging/build_bundle.sh [OUT_DIR]        (default OUT_DIR: dist/ in the repository)
#
# Result: OUT_DIR/tomoguide/tomoguide (run it; the whole OUT_DIR/tomoguide folder is the installation).
# Works from a clean clone: it makes its own virtual environment in build/bundle/venv (reused by later runs;
# TOMOGUIDE_BUNDLE_FRESH=1 starts it afresh), installs tomoguide (`pip install .`) and PyInstaller there,
# builds with packaging/tomoguide.spec and runs `tomoguide --selftest` on the result (offscreen, with a
# timeout). Exit status: 0 when the bundle was built and its self-test passed, non-zero otherwise.
#
# Environment: PYTHON (default python3, 3.10 or newer), TOMOGUIDE_BUNDLE_WORK (default build/bundle),
# TOMOGUIDE_BUNDLE_VENV (an existing virtual environment to build in instead, e.g. CI's .venv that already holds
# a non-editable `pip install .`: saves the install; tomoguide is reinstalled from this clone (not editable)
# and PyInstaller is added to it; TOMOGUIDE_BUNDLE_FRESH does not delete it),
# TOMOGUIDE_SELFTEST_TIMEOUT_S (default 120), TOMOGUIDE_SELFTEST_3D (default: require when libEGL is installed,
# else try; see app/pages/selftest.py).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$REPO/dist}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${TOMOGUIDE_BUNDLE_WORK:-$REPO/build/bundle}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
PYTHON="${PYTHON:-python3}"
PYINSTALLER_REQ="pyinstaller==6.22.3"
VENV="${TOMOGUIDE_BUNDLE_VENV:-$WORK/venv}"
SELFTEST_TIMEOUT_S="${TOMOGUIDE_SELFTEST_TIMEOUT_S:-120}"

say() { printf 'build_bundle: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

t_start=$(now)

# 1. the virtual environment: tomoguide (not editable: the bundle must not point into the clone) + PyInstaller
if [ "${TOMOGUIDE_BUNDLE_FRESH:-0}" = "1" ] && [ -z "${TOMOGUIDE_BUNDLE_VENV:-}" ]; then rm -rf "$VENV"; fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating the virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
say "installing tomoguide and $PYINSTALLER_REQ into $VENV"
# pip always reinstalls a project given as a folder, so a reused environment gets this clone's code.
# --no-compile: PyInstaller compiles what it bundles itself; skipping pip's byte-compilation saves time.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-compile "$REPO" "$PYINSTALLER_REQ"
if "$VENV/bin/python" -m pip show -q PySide6-Addons >/dev/null 2>&1; then
  say "error: PySide6-Addons is installed in $VENV; the bundle must hold PySide6-Essentials only"
  exit 1
fi
t_install=$(since "$t_start")

# 2. the bundle
t_build0=$(now)
say "running PyInstaller (packaging/tomoguide.spec) into $OUT/tomoguide"
rm -rf "$OUT/tomoguide"
(cd "$WORK" && "$VENV/bin/pyinstaller" --noconfirm --log-level WARN --distpath "$OUT" --workpath "$WORK/pyinstaller" \
  "$REPO/packaging/tomoguide.spec")
t_build=$(since "$t_build0")
EXE="$OUT/tomoguide/tomoguide"
if [ ! -x "$EXE" ]; then
  say "error: PyInstaller did not produce $EXE"
  exit 1
fi
size=$(du -sh "$OUT/tomoguide" | cut -f1)

# 3. the frozen program's self-test: offscreen, hermetic (own settings and numba cache, so numba compiles as on
# a first run), bounded in time
if [ -z "${TOMOGUIDE_SELFTEST_3D:-}" ]; then
  if { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q 'libEGL\.so\.1'; then TOMOGUIDE_SELFTEST_3D=require; else TOMOGUIDE_SELFTEST_3D=try; fi
fi
rm -rf "$WORK/selftest-home"
mkdir -p "$WORK/selftest-home/config" "$WORK/selftest-home/cache" "$WORK/selftest-home/tmp"
say "running the frozen self-test: $EXE --selftest (3D check: $TOMOGUIDE_SELFTEST_3D)"
t_test0=$(now)
set +e
(cd "$WORK/selftest-home" && env -u DISPLAY -u WAYLAND_DISPLAY \
  QT_QPA_PLATFORM=offscreen TOMOGUIDE_CONFIG_DIR="$WORK/selftest-home/config" \
  XDG_CACHE_HOME="$WORK/selftest-home/cache" TMPDIR="$WORK/selftest-home/tmp" \
  TOMOGUIDE_SELFTEST_TIMEOUT_S="$SELFTEST_TIMEOUT_S" TOMOGUIDE_SELFTEST_3D="$TOMOGUIDE_SELFTEST_3D" \
  timeout -k 10 "$((${SELFTEST_TIMEOUT_S%.*} + 60))" "$EXE" --selftest)
status=$?
set -e
t_test=$(since "$t_test0")

echo "bundle:     $OUT/tomoguide ($size)"
echo "times:      install ${t_install} s, PyInstaller ${t_build} s, self-test ${t_test} s, total $(since "$t_start") s"
if [ "$status" -ne 0 ]; then
  say "error: the frozen self-test failed (exit status $status)"
  exit "$status"
fi
say "OK"
