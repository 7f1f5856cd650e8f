"""Warp / WarpTools tilt-series metadata (``<TiltSeries ...>`` XML, one file per tilt series).

Layout (Warp's ``TiltSeries.LoadMeta`` / ``SaveMeta``): a root element ``TiltSeries`` whose attributes hold
series-wide values (``DataDirectory``, ``AreAnglesInverted``, ``PlaneNormal``, ``Bfactor``, ``Weight``,
``MagnificationCorrection``, ``UnselectFilter``, ``UnselectManual``, ``CTFResolutionEstimate``, ...) and
children:

* per-tilt lists, one value per line, in **stack order** (the order of ``MoviePath``): ``Angles``
  (nominal tilt, degrees), ``Dose`` (e⁻/Å² accumulated **before** this tilt's exposure, i.e. RELION's
  ``rlnMicrographPreExposure``: 0 for the first exposure, as WarpTools exports it), ``UseTilt``
  (``True``/``False``), ``AxisAngle`` (tilt-axis angle per tilt, degrees), ``AxisOffsetX``/``AxisOffsetY``
  (per-tilt shift of the tilt axis, Å), ``MoviePath`` (the tilt movies, relative to the XML's folder),
  ``FOVFraction``;
* ``CTF`` with ``<Param Name=... Value=.../>`` children: ``Defocus`` (µm, positive = underfocus),
  ``DefocusDelta`` (µm, astigmatism: DefocusU − DefocusV), ``DefocusAngle`` (degrees), ``PixelSize`` (Å),
  ``Voltage`` (kV), ``Cs`` (mm), ``Amplitude``, ``PhaseShift`` (fraction of π), ...;
* cubic grids ``GridCTF``, ``GridCTFDefocusDelta``, ``GridCTFDefocusAngle``, ``GridCTFPhase``,
  ``GridMovementX/Y``, ``GridAngleX/Y/Z``, ``GridDose...``, each ``<GridX Width= Height= Depth=>`` with
  ``<Node X= Y= Z= Value=/>`` children (flat index ``(Z * Height + Y) * Width + X``). For a tilt series
  the CTF grids are ``1 × 1 × n_tilts``: Warp's ``GetTiltDefocus(t)`` returns ``GridCTF``'s value ``t``
  (µm), likewise for the delta, angle and phase (fraction of π) grids.

Per-tilt defocus here follows Warp's own export to RELION: ``DefocusU = (defocus + delta / 2) · 10⁴`` Å,
``DefocusV = (defocus − delta / 2) · 10⁴`` Å, angle = ``DefocusAngle`` (degrees); delta and angle from the
per-tilt grids when they hold one value per tilt, else from the ``CTF`` params. When ``GridCTF`` does not
hold one value per tilt (a series whose CTF was never fitted: a ``1 × 1 × 1`` grid with value 0) the
per-tilt defocus is ``None`` — the ``CTF`` ``Defocus`` param alone is then only Warp's starting value.

**Tilt sign.** Warp keeps the angles as imported in ``Angles`` and flags a series whose angles must be
negated with ``AreAnglesInverted="True"``; every geometric use in Warp takes ``AnglesCorrect =
-Angles if AreAnglesInverted else Angles`` (``Matrix3.Euler(0, angle * (AreAnglesInverted ? -1 : 1), 0)``).
So ``tilt_corrected_deg`` below is the tilt in Warp's geometry; with the flag set it is the negative of
what SerialEM/IMOD/AreTomo wrote for the same view — the "Warp's tilt sign inverted against AreTomo"
failure comes from ignoring this flag. ``tilt_deg`` is the stored value.

**Encodings.** Warp on Windows writes with .NET's ``XmlTextWriter``: UTF-8 with a byte-order mark, or
UTF-16 (little-endian, BOM) when the writer was given ``Encoding.Unicode``; older versions formatted the
per-tilt axis angles and offsets with the Windows locale, so decimal commas (``-4,29``) occur: both are
read (the ``encoding`` and ``decimal_commas`` fields say what was found).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.compute.io.errors import FormatError, problem

__all__ = ["WarpGrid", "WarpTiltSeries", "describe", "read_warp_tilt_series_xml", "sniff_warp_xml",
           "write_warp_tilt_series_xml"]

PathType = str | PathLike[str]

_PER_TILT_FLOAT = ("Angles", "Dose", "AxisAngle", "AxisOffsetX", "AxisOffsetY", "FOVFraction")


@dataclass
class WarpGrid:
    """A Warp cubic grid: ``values`` (Depth, Height, Width) float64, as stored."""

    values: np.ndarray

    @property
    def shape_whd(self) -> tuple[int, int, int]:
        d, h, w = self.values.shape
        return w, h, d

    def per_tilt(self, n_tilts: int) -> np.ndarray | None:
        """(n_tilts,) values when the grid is 1 × 1 × n_tilts (one value per tilt), else None."""
        d, h, w = self.values.shape
        if w == 1 and h == 1 and d == n_tilts:
            return self.values[:, 0, 0].copy()
        return None


@dataclass
class WarpTiltSeries:
    """A Warp / WarpTools tilt-series XML (conventions in the module docstring). Per-tilt arrays are (n,), in
    stack order.

    Attributes:
        path: the file. encoding: "UTF-8", "UTF-8 (BOM)", "UTF-16 LE (BOM)", "UTF-16 BE (BOM)".
        tilt_deg: stored ``Angles``. tilt_corrected_deg: the tilt in Warp's geometry (negated when
            ``angles_inverted``). angles_inverted: ``AreAnglesInverted``.
        dose_prior_e_per_A2: ``Dose``: dose accumulated before each tilt (NaN when the file has none).
        use_tilt: ``UseTilt`` (bool). axis_angle_deg: ``AxisAngle``. axis_offset_A: (n, 2) ``AxisOffsetX/Y``.
        movie_paths: ``MoviePath`` entries as written. fov_fraction: ``FOVFraction`` or None.
        defocus_um: per-tilt defocus from ``GridCTF`` (µm, positive underfocus) or None.
        defocus_u_A, defocus_v_A, defocus_angle_deg: per-tilt RELION-style CTF (None without ``defocus_um``).
        phase_shift_deg: per-tilt phase shift from ``GridCTFPhase`` (degrees) or None.
        ctf: the ``CTF`` params (name -> float, or text when not a number).
        attributes: the root attributes as text. grids: every grid by element name.
        decimal_commas: some numbers used a decimal comma.
    """

    path: Path
    encoding: str
    tilt_deg: np.ndarray
    tilt_corrected_deg: np.ndarray
    angles_inverted: bool
    dose_prior_e_per_A2: np.ndarray
    use_tilt: np.ndarray
    axis_angle_deg: np.ndarray
    axis_offset_A: np.ndarray
    movie_paths: list[str]
    fov_fraction: np.ndarray | None = None
    defocus_um: np.ndarray | None = None
    defocus_u_A: np.ndarray | None = None
    defocus_v_A: np.ndarray | None = None
    defocus_angle_deg: np.ndarray | None = None
    phase_shift_deg: np.ndarray | None = None
    ctf: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    grids: dict[str, WarpGrid] = field(default_factory=dict)
    decimal_commas: bool = False

    @property
    def n_tilts(self) -> int:
        return int(self.tilt_deg.size)

    @property
    def pixel_size_A(self) -> float | None:
        v = self.ctf.get("PixelSize")
        return float(v) if isinstance(v, float) and v > 0 else None


def _decode(path: Path, data: bytes) -> tuple[str, str]:
    """Text of an XML file and the encoding found (BOM first, then a zero byte pattern, else UTF-8)."""
    if data.startswith(b"\xef\xbb\xbf"):
        codec, name, body = "utf-8", "UTF-8 (BOM)", data[3:]
    elif data.startswith(b"\xff\xfe"):
        codec, name, body = "utf-16-le", "UTF-16 LE (BOM)", data[2:]
    elif data.startswith(b"\xfe\xff"):
        codec, name, body = "utf-16-be", "UTF-16 BE (BOM)", data[2:]
    elif len(data) >= 2 and data[0] == 0x3C and data[1] == 0:
        codec, name, body = "utf-16-le", "UTF-16 LE", data
    elif len(data) >= 2 and data[0] == 0 and data[1] == 0x3C:
        codec, name, body = "utf-16-be", "UTF-16 BE", data
    else:
        codec, name, body = "utf-8", "UTF-8", data
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as err:
        raise FormatError(path, f"byte {err.start}", f"not {name} text ({err.reason}): not a Warp XML file") from err
    # the declaration's encoding no longer applies to the decoded text
    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text, count=1)
    return text, name


def _root(path: Path) -> tuple[ET.Element, str]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FormatError(path, None, f"cannot read ({err.strerror})") from err
    text, encoding = _decode(path, data)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise FormatError(path, f"line {err.position[0]}", f"not well-formed XML ({err}): cut short?") from err
    return root, encoding


def sniff_warp_xml(path: PathType) -> str | None:
    """The root element name of an XML file ("TiltSeries", "Movie", ...), or None when it is not XML."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    try:
        text, _ = _decode(p, head)
    except FormatError:
        try:
            text, _ = _decode(p, head[:-1])  # a UTF-16 read cut in the middle of a character
        except FormatError:
            return None
    m = re.search(r"<\s*([A-Za-z_][\w.-]*)", re.sub(r"<!--.*?-->", "", text, flags=re.S))
    return m.group(1) if m else None


def _number(text: str, path: Path, field_name: str, strict: bool, commas: list[bool]) -> float:
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    if "," in t and "." not in t:
        try:
            value = float(t.replace(",", "."))
        except ValueError:
            pass
        else:
            commas[0] = True
            return value
    problem(strict, path, field_name, f"not a number: {t!r}")
    return float("nan")


def _lines(elem: ET.Element) -> list[str]:
    return [s.strip() for s in (elem.text or "").split("\n") if s.strip()]


def _grid(elem: ET.Element, path: Path, strict: bool, commas: list[bool]) -> WarpGrid:
    name = elem.tag
    try:
        w, h, d = (int(elem.get(k, "1")) for k in ("Width", "Height", "Depth"))
    except ValueError as err:
        raise FormatError(path, f"{name}/Width", f"grid size is not an integer ({err})") from err
    if min(w, h, d) < 1 or w * h * d > 10_000_000:
        raise FormatError(path, f"{name}/Width", f"grid size {w} x {h} x {d} is not valid")
    values = np.zeros((d, h, w))
    seen = np.zeros((d, h, w), dtype=bool)
    for node in elem.findall("Node"):
        try:
            x, y, z = (int(node.get(k, "0")) for k in ("X", "Y", "Z"))
        except ValueError as err:
            raise FormatError(path, f"{name}/Node", f"node index is not an integer ({err})") from err
        if not (0 <= x < w and 0 <= y < h and 0 <= z < d):
            raise FormatError(path, f"{name}/Node", f"node ({x}, {y}, {z}) outside the {w} x {h} x {d} grid")
        values[z, y, x] = _number(node.get("Value", ""), path, f"{name}/Node Value", strict, commas)
        seen[z, y, x] = True
    if not seen.all():
        problem(strict, path, name, f"{int((~seen).sum())} of {seen.size} grid nodes are missing (cut short?)")
    return WarpGrid(values)


def read_warp_tilt_series_xml(path: PathType, *, strict: bool = True) -> WarpTiltSeries:
    """Read a Warp / WarpTools tilt-series XML (UTF-8 or UTF-16; see the module docstring).

    Raises:
        FormatError: naming the file and the element: not a ``TiltSeries`` (a Warp ``Movie`` XML of a single
            micrograph is refused by name), no ``Angles``, per-tilt lists of a different length than ``Angles``,
            values that are not numbers / booleans, malformed grids.
    """
    p = Path(path)
    root, encoding = _root(p)
    if root.tag != "TiltSeries":
        what = "a Warp micrograph/movie XML (one image, not a tilt series)" if root.tag == "Movie" else \
            f"root element <{root.tag}>"
        raise FormatError(p, "root", f"{what}: only Warp <TiltSeries> files are read (not supported)")
    commas = [False]
    angles_el = root.find("Angles")
    if angles_el is None or not _lines(angles_el):
        raise FormatError(p, "Angles", "missing or empty: a Warp tilt series lists one tilt angle per line")
    lists: dict[str, np.ndarray] = {}
    for name in _PER_TILT_FLOAT:
        el = root.find(name)
        if el is None:
            continue
        lists[name] = np.array([_number(v, p, name, strict, commas) for v in _lines(el)], dtype=np.float64)
    n = lists["Angles"].size

    def per_tilt(name: str, default: float) -> np.ndarray:
        arr = lists.get(name)
        if arr is None:
            return np.full(n, default)
        if arr.size != n:
            raise FormatError(p, name, f"{arr.size} values for {n} tilt angles")
        return arr

    tilt = per_tilt("Angles", np.nan)
    if np.any(np.abs(tilt) > 90):
        problem(strict, p, "Angles", f"tilt angle {tilt[np.abs(tilt) > 90][0]:g}° is outside ±90°")
    use_el = root.find("UseTilt")
    if use_el is not None:
        words = _lines(use_el)
        bad = [w for w in words if w.lower() not in ("true", "false")]
        if bad:
            raise FormatError(p, "UseTilt", f"not True/False: {bad[0]!r}")
        use = np.array([w.lower() == "true" for w in words], dtype=bool)
        if use.size != n:
            raise FormatError(p, "UseTilt", f"{use.size} values for {n} tilt angles")
    else:
        use = np.ones(n, dtype=bool)
    movie_el = root.find("MoviePath")
    movies = [re.sub(r"[\t\r ]", "", v) for v in _lines(movie_el)] if movie_el is not None else []
    if movies and len(movies) != n:
        raise FormatError(p, "MoviePath", f"{len(movies)} movies for {n} tilt angles")
    attrs = {k: str(v) for k, v in root.attrib.items()}
    inv_text = attrs.get("AreAnglesInverted", "False")
    if inv_text.lower() not in ("true", "false"):
        raise FormatError(p, "AreAnglesInverted", f"not True/False: {inv_text!r}")
    inverted = inv_text.lower() == "true"

    ctf: dict[str, Any] = {}
    ctf_el = root.find("CTF")
    if ctf_el is not None:
        for param in ctf_el.findall("Param"):
            name = param.get("Name")
            if not name:
                continue
            value = param.get("Value", "")
            try:
                ctf[name] = float(value)
            except ValueError:
                ctf[name] = value
    grids: dict[str, WarpGrid] = {}
    for child in root:
        if child.tag.startswith("Grid") and child.find("Node") is not None:
            grids[child.tag] = _grid(child, p, strict, commas)

    defocus = du = dv = dang = phase = None
    gctf = grids.get("GridCTF")
    per = gctf.per_tilt(n) if gctf is not None else None
    if per is not None and np.any(per != 0):
        defocus = per
        delta_grid = grids.get("GridCTFDefocusDelta")
        delta = delta_grid.per_tilt(n) if delta_grid is not None else None
        if delta is None:
            delta = np.full(n, float(ctf["DefocusDelta"]) if isinstance(ctf.get("DefocusDelta"), float) else 0.0)
        angle_grid = grids.get("GridCTFDefocusAngle")
        dang = angle_grid.per_tilt(n) if angle_grid is not None else None
        if dang is None:
            dang = np.full(n, float(ctf["DefocusAngle"]) if isinstance(ctf.get("DefocusAngle"), float) else 0.0)
        du = (defocus + delta / 2.0) * 1e4
        dv = (defocus - delta / 2.0) * 1e4
        phase_grid = grids.get("GridCTFPhase")
        ph = phase_grid.per_tilt(n) if phase_grid is not None else None
        if ph is not None:
            phase = ph * 180.0
        bad = np.flatnonzero(defocus[use] <= 0)
        if bad.size:
            problem(strict, p, "GridCTF", f"defocus {defocus[use][bad[0]]:g} µm of a used tilt is not underfocus")

    offsets = np.stack([per_tilt("AxisOffsetX", 0.0), per_tilt("AxisOffsetY", 0.0)], axis=1)
    return WarpTiltSeries(
        path=p,
        encoding=encoding,
        tilt_deg=tilt,
        tilt_corrected_deg=-tilt if inverted else tilt.copy(),
        angles_inverted=inverted,
        dose_prior_e_per_A2=per_tilt("Dose", np.nan),
        use_tilt=use,
        axis_angle_deg=per_tilt("AxisAngle", 0.0),
        axis_offset_A=offsets,
        movie_paths=movies,
        fov_fraction=per_tilt("FOVFraction", 1.0) if "FOVFraction" in lists else None,
        defocus_um=defocus,
        defocus_u_A=du,
        defocus_v_A=dv,
        defocus_angle_deg=dang,
        phase_shift_deg=phase,
        ctf=ctf,
        attributes=attrs,
        grids=grids,
        decimal_commas=commas[0],
    )


def describe(path: PathType, *, strict: bool = True) -> dict[str, Any]:
    """Facts for ``tomoguide inspect``: kind, flavour (encoding), tilts, dose, axis, CTF."""
    ts = read_warp_tilt_series_xml(path, strict=strict)
    t = ts.tilt_deg
    facts: dict[str, Any] = {
        "kind": "warp_tilt_series_xml",
        "flavour": f"Warp tilt-series XML ({ts.encoding.split()[0]})",
        "encoding": ts.encoding,
        "n_tilts": ts.n_tilts,
        "n_used": int(ts.use_tilt.sum()),
        "tilt_range_deg": [float(t.min()), float(t.max())],
        "angles_inverted": ts.angles_inverted,
        "axis_angle_deg": float(np.median(ts.axis_angle_deg)),
        "max_axis_offset_A": float(np.hypot(ts.axis_offset_A[:, 0], ts.axis_offset_A[:, 1]).max()),
    }
    dose = ts.dose_prior_e_per_A2
    if np.isfinite(dose).all():
        facts["dose_prior_range_e_per_A2"] = [float(dose.min()), float(dose.max())]
        order = np.argsort(dose, kind="stable")
        steps = np.diff(dose[order])
        if steps.size:
            facts["dose_per_tilt_e_per_A2"] = float(np.median(steps))
    if ts.pixel_size_A is not None:
        facts["pixel_size_A"] = ts.pixel_size_A
    if ts.defocus_um is not None:
        facts["defocus_range_um"] = [float(ts.defocus_um.min()), float(ts.defocus_um.max())]
    else:
        facts["defocus"] = "no per-tilt CTF fit (GridCTF is not one value per tilt)"
    if ts.movie_paths:
        facts["first_movie"] = ts.movie_paths[0]
    if ts.decimal_commas:
        facts["decimal_commas"] = True
    return facts


def write_warp_tilt_series_xml(
    path: PathType,
    *,
    tilt_deg: Any,
    dose_prior_e_per_A2: Any,
    axis_angle_deg: Any,
    axis_offset_A: Any,
    pixel_size_A: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    use_tilt: Any | None = None,
    movie_paths: list[str] | None = None,
    defocus_u_A: Any | None = None,
    defocus_v_A: Any | None = None,
    defocus_angle_deg: Any | None = None,
) -> None:
    """Write a Warp tilt-series XML (UTF-8 with a byte-order mark, as Warp on Windows writes it) that
    :func:`read_warp_tilt_series_xml` and Warp read back: per-tilt lists in stack order (``tilt_deg`` (n,)
    true tilts, degrees, written with ``AreAnglesInverted="False"``; ``dose_prior_e_per_A2`` (n,) dose before
    each tilt; ``axis_angle_deg`` (n,); ``axis_offset_A`` (n, 2) in Å; ``use_tilt`` (n,) bool, default all),
    ``MoviePath`` (default ``<stem>_<k>.mrc``), the ``CTF`` params, and with ``defocus_u_A``/``defocus_v_A``
    (Å, positive = underfocus) and ``defocus_angle_deg`` the per-tilt ``1 × 1 × n`` grids ``GridCTF``
    (mean defocus, µm), ``GridCTFDefocusDelta`` (U − V, µm) and ``GridCTFDefocusAngle`` (degrees): the
    inverse of the reader's ``U, V = (defocus ± delta / 2) · 10⁴``."""
    path = Path(path)
    t = np.asarray(tilt_deg, np.float64).reshape(-1)
    n = t.size

    def per_tilt(values: Any, name: str, shape: tuple[int, ...] = ()) -> np.ndarray:
        a = np.asarray(values, np.float64).reshape((n, *shape))
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: {name}: not finite")
        return a

    dose = per_tilt(dose_prior_e_per_A2, "Dose")
    axis = per_tilt(axis_angle_deg, "AxisAngle")
    off = per_tilt(axis_offset_A, "AxisOffset", (2,))
    use = np.ones(n, bool) if use_tilt is None else np.asarray(use_tilt, bool).reshape(n)
    movies = movie_paths if movie_paths is not None else [f"{path.stem}_{k:03d}.mrc" for k in range(n)]
    if len(movies) != n:
        raise ValueError(f"{path}: MoviePath: {len(movies)} paths for {n} tilts")

    def lines(tag: str, values: Any) -> str:
        return f"\t<{tag}>" + "\n".join(values) + f"</{tag}>\n"

    def fmt(values: np.ndarray) -> list[str]:
        return [f"{float(x):.6g}" for x in values]

    def grid(tag: str, values: np.ndarray) -> str:
        nodes = "".join(f'\t\t<Node X="0" Y="0" Z="{k}" Value="{float(x):.7g}" />\n' for k, x in enumerate(values))
        return (f'\t<{tag} Width="1" Height="1" Depth="{n}" MarginX="0" MarginY="0" MarginZ="0">\n{nodes}'
                f"\t</{tag}>\n")

    mean_um = delta_um = angle = None
    if defocus_u_A is not None and defocus_v_A is not None:
        u, v = per_tilt(defocus_u_A, "DefocusU"), per_tilt(defocus_v_A, "DefocusV")
        mean_um, delta_um = (u + v) / 2e4, (u - v) / 1e4
        angle = np.zeros(n) if defocus_angle_deg is None else per_tilt(defocus_angle_deg, "DefocusAngle")
    params = {"PixelSize": pixel_size_A, "Voltage": voltage_kV, "Cs": cs_mm, "Amplitude": amplitude_contrast,
              "Defocus": float(np.median(mean_um)) if mean_um is not None else 0.0, "DefocusDelta": 0.0,
              "DefocusAngle": 0.0, "PhaseShift": 0.0, "Scale": 1.0, "Bfactor": 0.0}
    ctf = "".join(f'\t\t<Param Name="{k}" Value="{float(val):.6g}" />\n' for k, val in params.items())
    xml = ('<?xml version="1.0" encoding="utf-8"?>\n'
           '<TiltSeries AreAnglesInverted="False" PlaneNormal="0, 0, 0" Bfactor="0" Weight="1">\n'
           + lines("Angles", fmt(t)) + lines("Dose", fmt(dose))
           + lines("UseTilt", ["True" if x else "False" for x in use])
           + lines("AxisAngle", fmt(axis)) + lines("AxisOffsetX", fmt(off[:, 0])) + lines("AxisOffsetY", fmt(off[:, 1]))
           + lines("MoviePath", movies) + f"\t<CTF>\n{ctf}\t</CTF>\n")
    if mean_um is not None:
        xml += (grid("GridCTF", mean_um) + grid("GridCTFDefocusDelta", delta_um)
                + grid("GridCTFDefocusAngle", angle))
    xml += "</TiltSeries>\n"
    path.write_bytes(b"\xef\xbb\xbf" + xml.encode("utf-8"))
