"""A trainer's session: simulated data sets with a planted problem to find, each with its answer key (issue 16).

``tomoguide simulate --challenge NAME --out DIR`` writes ``DIR/data`` (the session a trainee gets) and ``DIR/truth``
(the simulator's truth, see :mod:`tomoguide.synth`) plus ``DIR/truth/answer_key.json``: what the trainee should find,
at which step and where (series, tilt, view number as the wizard and IMOD count them, 1-based), and the check that
``tomoguide score`` applies (:mod:`tomoguide.score`; a problem found shows as *good* in that step's answer-key row,
one missed as *poor*). ``--preset tiny`` makes the same problem on the tiny preset's physics (one 7-tilt series of
512², seconds; for tests and a quick try); the default is the small preset's physics with one tilt series (1024²,
±60° in 3° steps, as the scenarios of :data:`tomoguide.synth.SCENARIOS`).

Every challenge runs through with the defaults (``tomoguide new`` + ``tomoguide run``); the planted problem is then
visible in the score of its step, found or not (the defaults find some of them by themselves: the exercise is to
see it, and why).

Answer-key checks (``kind``), each graded good (found / handled) or poor:

* ``exclude_view``: the view must be excluded by the exclusion step (a dark view);
* ``exclude_or_follow_view``: the view must be excluded, or the alignment must have followed it (its shift error
  after the exclusion step ≤ ``max_error_A``; a tracking jump);
* ``gain_orientation``: the motion-correction step must have used the gain in the planted orientation;
* ``tilt_axis``: the alignment's tilt axis within ``max_error_deg`` of the truth (modulo 180°);
* ``tilt_direction``: the geometry after the CTF estimation must have the right tilt direction (the axis modulo
  360°: 180° off mirrors the tomogram);
* ``pixel_size``: the pixel size the import used within ``max_error_pct`` of the truth (typed over the header's);
* ``ice_thickness``: every true particle inside the tomogram's thickness;
* ``particle_count``: picks recall at least ``min_recall``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tomoguide import synth

ANSWER_KEY_FILE = "answer_key.json"
Size = Literal["small", "tiny"]


@dataclass(frozen=True)
class Challenge:
    """One planted problem: the simulation changes for each size (on top of :func:`base_params`), the text a
    trainer reads (``title``, ``brief`` for the trainee, ``story``: what is wrong and how it shows) and the
    answer-key checks (``checks``: dicts with ``kind``, ``step`` and the check's values; the planted view's series,
    tilt and view number are filled in from the truth)."""

    name: str
    title: str
    brief: str
    story: str
    changes: dict[str, Any]
    tiny_changes: dict[str, Any]
    checks: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def base_params(size: Size) -> dict[str, Any]:
    """The physics a challenge starts from: the small preset with one tilt series, or the tiny preset."""
    if size == "tiny":
        return synth.PRESETS["tiny"].model_dump()
    return {**synth.PRESETS["small"].model_dump(), "n_series": 1}


CHALLENGES: dict[str, Challenge] = {c.name: c for c in (
    Challenge(
        "dark_view", "A dark view",
        "One tilt image of this series was recorded (nearly) without beam. Find it and keep it out of the "
        "tomogram.",
        "A view got 3 % of the dose (the shutter or the beam failed): its image is nearly black, its frames cannot "
        "be aligned and its CTF cannot be fitted. It shows on the motion-correction page (drift flagged), in the "
        "tilt-series viewer (a dark image) and on the exclusion page (suggested: dark view). It must be excluded.",
        {"seed": 1601, "dark_view_tilts_deg": [36.0]}, {"seed": 1601, "dark_view_tilts_deg": [20.0]},
        ({"kind": "exclude_view", "step": "exclude", "planted": "dark_views"},)),
    Challenge(
        "tracking_jump", "A tracking jump",
        "During this tilt series the stage lost the area once. Find the view and deal with it.",
        "One view is shifted by 28 nm (stage tracking failed): the alignment's patches lose it, its residual "
        "jumps, and the exclusion page suggests it (tracking jump). Exclude it, or check that the alignment "
        "followed it (its shift error stays small).",
        {"seed": 1602, "jump_view_tilts_deg": [-24.0]}, {"seed": 1602, "jump_view_tilts_deg": [-20.0]},
        ({"kind": "exclude_or_follow_view", "step": "exclude", "planted": "jump_views", "max_error_A": 15.0},)),
    Challenge(
        "gain_rotated", "A gain reference stored rotated",
        "The gain reference of this session was saved by another program. Check that it is applied the right way "
        "round.",
        "The gain file is stored rotated by 90° (transpose + flip X restores it) under the name "
        "CountRef_session.mrc. Applied as stored, the camera's pattern stays in the sums; the import detects the "
        "orientation from the movies (import page: gain orientation and its confidence) and the motion-correction "
        "step uses it.",
        {"seed": 1603, "gain_transpose": True, "gain_flip_x": True, "gain_flip_y": False,
         "gain_file_name": "CountRef_session.mrc"},
        {"seed": 1603, "gain_transpose": True, "gain_flip_x": True, "gain_flip_y": False,
         "gain_file_name": "CountRef_session.mrc"},
        ({"kind": "gain_orientation", "step": "motion_ctf"},)),
    Challenge(
        "axis_off", "A tilt axis several degrees off",
        "The tilt-axis angle in this session's mdoc comes from an old calibration. What is the true axis?",
        "The mdoc says the tilt axis is 6° away from the true one. The alignment refines the axis (align page: "
        "the axis found against the mdoc's, and the residuals); a tomogram reconstructed with the mdoc's axis "
        "would smear every particle into arcs.",
        {"seed": 1604, "tilt_axis_deg": -87.0, "mdoc_axis_error_deg": 6.0},
        {"seed": 1604, "tilt_axis_deg": -87.0, "mdoc_axis_error_deg": 6.0},
        ({"kind": "tilt_axis", "step": "align", "max_error_deg": 1.0},)),
    Challenge(
        "axis_inverted", "A tilt axis 180° off",
        "This session comes from a microscope whose mdoc states the tilt axis with the opposite direction. Will "
        "your tomogram have the right hand?",
        "The mdoc's axis is 180° off: the alignment cannot see it (the same line), but the tomogram would be the "
        "mirror image of the specimen. The CTF estimation's tilt-direction check (defocus gradient of the tilted "
        "views; CTF page) finds it and turns the axis; the score shows the tomogram's and the map's hand.",
        {"seed": 1605, "tilt_axis_deg": 85.0, "mdoc_axis_error_deg": 180.0},
        # tiny: tilts to ±50° (the tiny preset's ±30° leave 4 views with |tilt| ≥ 20° and too little defocus
        # gradient for the check to decide, z ≈ −2.6; ±50° gives 8 views, z ≈ −10)
        {"seed": 1605, "tilt_axis_deg": 85.0, "mdoc_axis_error_deg": 180.0, "max_tilt_deg": 50.0},
        ({"kind": "tilt_direction", "step": "ctf_estimate"},)),
    Challenge(
        "thick_ice", "Thick ice",
        "This grid had thick ice. How thick is the specimen, and does your tomogram hold all of it?",
        "The ice is 1500 Å thick (more than twice the demo's): lower contrast, and a tomogram thinner than the slab "
        "would cut particles off. Measure the slab in the tomogram's XZ view or on the pick page (specimen slab); "
        "the default tomogram thickness holds it.",
        {"seed": 1606, "slab_thickness_A": 1500.0, "n_particles": 200},
        {"seed": 1606, "slab_thickness_A": 1200.0, "n_particles": 24},
        ({"kind": "ice_thickness", "step": "reconstruct"},)),
    Challenge(
        "few_particles", "Few particles",
        "This area held only a few particles. Find every one of them and judge what resolution to expect.",
        "Only 20 apoferritin particles (6 on the tiny size): every particle counts (picks recall), and the "
        "resolution is limited by their number, not by the voxel size: do not expect Nyquist.",
        {"seed": 1607, "n_particles": 20},
        # tiny: tilts to ±50° (with 6 particles in 7 views over ±30° the patch tracks put the tilt axis 5.6° off
        # even from the true axis, and picking then misses 2 of 6; ±50° gives 1.4° and 6 of 6)
        {"seed": 1607, "n_particles": 6, "max_tilt_deg": 50.0},
        ({"kind": "particle_count", "step": "pick", "min_recall": 0.9},)),
    Challenge(
        "wrong_pixel_size", "A wrong pixel size in the headers",
        "The camera's pixel size in this session's files comes from a wrong calibration. Find the true pixel size "
        "(apoferritin is a shell of 12 nm outer diameter) and use it.",
        "The mdoc's PixelSpacing and the movies' headers say 2.2 Å; the true pixel size is 2.0 Å. With 2.2 Å every "
        "distance is 10 % too large: defocus fits are off by about 20 %, the particles measure 13.2 nm instead of "
        "12, and the map does not match apoferritin. The trainee must type the true pixel size on the import page "
        "(import_movies.pixel_size_A = 2.0).",
        {"seed": 1608, "stated_pixel_size_A": 2.2}, {"seed": 1608, "stated_pixel_size_A": 2.2},
        ({"kind": "pixel_size", "step": "import_movies", "max_error_pct": 0.5},)),
)}


def challenge_params(name: str, size: Size = "small") -> synth.SimParams:
    """The simulation parameters of challenge ``name`` at ``size`` ("small": the small preset's physics, one
    series; "tiny": the tiny preset's). KeyError naming the known challenges when ``name`` is not one."""
    if name not in CHALLENGES:
        raise KeyError(f"unknown challenge {name!r}; the challenges are: {', '.join(CHALLENGES)}")
    c = CHALLENGES[name]
    changes = c.tiny_changes if size == "tiny" else c.changes
    return synth.SimParams.model_validate({**base_params(size), **changes})


def _view_number(view_index: int) -> int:
    return int(view_index) + 1


def answer_key(name: str, summary: dict[str, Any], size: Size = "small") -> dict[str, Any]:
    """The answer key of challenge ``name`` for the simulation whose ``truth/summary.json`` is ``summary``: the
    checks of :data:`CHALLENGES` with the planted views' series, nominal tilt, view index (angle order,
    0-based) and view number (1-based, as the wizard and IMOD count them) filled in, and the values the trainee
    should find (true tilt axis, true pixel size, ice thickness, number of particles)."""
    c = CHALLENGES[name]
    planted = summary.get("planted", {})
    prm = summary["params"]
    items: list[dict[str, Any]] = []
    for check in c.checks:
        kind = check["kind"]
        base = {k: v for k, v in check.items() if k != "planted"}
        if "planted" in check:
            for series, views in (planted.get(check["planted"]) or {}).items():
                for v in views:
                    items.append({**base, "id": f"{kind}:{series}:{v['nominal_tilt_deg']:+.1f}", "series": series,
                                  "nominal_tilt_deg": float(v["nominal_tilt_deg"]), "view_index": int(v["view_index"]),
                                  "view_number": _view_number(v["view_index"]),
                                  "what": f"{series}, view {_view_number(v['view_index'])} "
                                          f"({v['nominal_tilt_deg']:+.1f}°)"})
            continue
        item = {**base, "id": kind}
        if kind == "gain_orientation":
            g = planted.get("gain", {})
            item.update(transpose=bool(g.get("transpose")), flip_x=bool(g.get("flip_x")),
                        flip_y=bool(g.get("flip_y")), file_name=g.get("file_name"),
                        what=f"gain {g.get('file_name')}: {_orientation_text(g)}")
        elif kind in ("tilt_axis", "tilt_direction"):
            ax = planted.get("tilt_axis", {})
            item.update(true_deg=ax.get("true_deg"), mdoc_deg=ax.get("mdoc_deg"),
                        what=f"true tilt axis {ax.get('true_deg'):g}°, the mdoc says {ax.get('mdoc_deg'):g}°")
        elif kind == "pixel_size":
            ps = planted.get("pixel_size") or {"true_A": prm["pixel_size_A"], "stated_A": prm["pixel_size_A"]}
            item.update(true_A=ps["true_A"], stated_A=ps["stated_A"],
                        what=f"true pixel size {ps['true_A']:g} Å, the files say {ps['stated_A']:g} Å")
        elif kind == "ice_thickness":
            item.update(slab_thickness_A=prm["slab_thickness_A"],
                        what=f"ice {prm['slab_thickness_A']:g} Å thick")
        elif kind == "particle_count":
            n = sum(int(s["n_particles"]) for s in summary["series"].values())
            item.update(n_particles=n, what=f"{n} particles")
        items.append(item)
    return {"challenge": name, "size": size, "title": c.title, "brief": c.brief, "story": c.story, "items": items}


def _orientation_text(g: dict[str, Any]) -> str:
    from tomoguide.compute.gain import orientation_name

    return orientation_name(bool(g.get("transpose")), bool(g.get("flip_x")), bool(g.get("flip_y")))


def make_challenge(name: str, out: Path, *, size: Size = "small", seed: int | None = None,
                   progress: Any = None) -> dict[str, Any]:
    """Simulate challenge ``name`` into ``out`` (``out/data``, ``out/truth``) and write its answer key to
    ``out/truth/answer_key.json``; returns the answer key."""
    params = challenge_params(name, size)
    if seed is not None:
        params = params.model_copy(update={"seed": seed})
    synth.generate(out, params, progress=progress)
    return write_answer_key(name, Path(out) / "truth", size)


def write_answer_key(name: str, truth_dir: Path, size: Size = "small") -> dict[str, Any]:
    """Write ``truth_dir/answer_key.json`` for challenge ``name`` from the simulation's ``summary.json``; returns
    the key."""
    summary = json.loads((Path(truth_dir) / "summary.json").read_text())
    key = answer_key(name, summary, size)
    (Path(truth_dir) / ANSWER_KEY_FILE).write_text(json.dumps(key, indent=1))
    return key


def read_answer_key(truth_dir: Path) -> dict[str, Any] | None:
    """``truth/answer_key.json`` or None when the data are not a challenge; ValueError naming the file when it
    is damaged."""
    path = Path(truth_dir) / ANSWER_KEY_FILE
    if not path.is_file():
        return None
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not readable ({type(exc).__name__}: {exc})") from None
    if not isinstance(key, dict) or not isinstance(key.get("items"), list):
        raise ValueError(f"{path}: items: missing (not an answer key)")
    for i, item in enumerate(key["items"]):
        if not isinstance(item, dict) or "kind" not in item or "step" not in item:
            raise ValueError(f"{path}: items.{i}: needs 'kind' and 'step'")
    return key


def challenges_text() -> str:
    """The list of challenges (``tomoguide simulate --challenge --list``): name, title, the trainee's brief."""
    lines = ["challenges (tomoguide simulate --challenge NAME --out DIR [--preset tiny]):", ""]
    for c in CHALLENGES.values():
        lines.append(f"  {c.name}: {c.title}")
        lines.append(f"      trainee: {c.brief}")
        lines.append(f"      trainer: {c.story}")
    return "\n".join(lines)
