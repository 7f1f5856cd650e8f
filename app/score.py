"""Training mode: a project's results scored against the simulator's truth, step by step (issue 16).

For a project whose data came from ``tomoguide simulate`` (the truth folder ``OUT/truth`` beside the session folder
``OUT/data``; found once and recorded in the project, :func:`locate_truth`), :func:`score_project` measures every
finished step against the truth with the functions of :mod:`tomoguide.truth` (the same the benches in ``bench/``
call, so ``tomoguide score`` and the benches agree) and grades each figure *good*, *acceptable* or *poor* by the
thresholds of :data:`THRESHOLDS`, the one table of grades (``tomoguide score --thresholds`` prints it). A step not
run yet is *not run*; a figure that cannot be measured (a file missing, a step without the needed output) is
*n/a* with the reason; *info* rows give context without a grade. A step's grade is its worst graded figure.

Challenges (:mod:`tomoguide.challenges`) add answer-key rows: the planted problem of the challenge, checked at its
step (the dark view excluded, the true pixel size typed over the header's, ...), good when found or handled, poor
when missed.

Conventions: angles in degrees (tilt axis from image +Y, counter-clockwise, compared modulo 180° for the axis and
modulo 360° for the tilt direction), distances in Å unless a unit says px, defocus in Å (underfocus positive),
resolutions in Å, ratios to Nyquist (= 2 × voxel size) dimensionless.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

Grade = Literal["good", "acceptable", "poor", "not run", "info", "n/a"]
GRADED: tuple[str, ...] = ("good", "acceptable", "poor")
_RANK = {"good": 0, "acceptable": 1, "poor": 2}
TRUTH_KEY = "truth_dir"  # in ProjectData.dataset: the truth folder, relative to the project (or absolute)
APOFERRITIN_DIAMETER_A = 136.0  # outer shell (atoms up to 68 Å from the centre)
JUMP_FOLLOWED_A = 15.0  # a view after a tracking jump counts as followed when its shift error is at most this


# ---------------------------------------------------------------------------------------------------------------
# the table of grades
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """One graded figure: ``better`` says which way is better ("lower", "higher", or "yes" for a yes/no figure);
    a value at or better than ``good`` is good, at or better than ``acceptable`` acceptable (None: no such band),
    otherwise poor. ``meaning``: what the figure says, for a trainee."""

    key: str
    step: str
    label: str
    unit: str
    better: Literal["lower", "higher", "yes"]
    good: float | None = None
    acceptable: float | None = None
    meaning: str = ""

    def grade(self, value: Any) -> Grade:
        """The grade of ``value`` (None or not finite: "n/a")."""
        if value is None:
            return "n/a"
        if self.better == "yes":
            return "good" if bool(value) else "poor"
        v = float(value)
        if not math.isfinite(v):
            return "n/a"
        assert self.good is not None
        ok = (lambda t: v <= t) if self.better == "lower" else (lambda t: v >= t)
        if ok(self.good):
            return "good"
        if self.acceptable is not None and ok(self.acceptable):
            return "acceptable"
        return "poor"

    def rule(self) -> str:
        """The thresholds in words: "≤ 0.3 px good, ≤ 0.6 px acceptable, else poor"."""
        if self.better == "yes":
            return "yes good, no poor"
        sign = "≤" if self.better == "lower" else "≥"
        unit = self.unit if self.unit in ("°", "") else f" {self.unit}"
        text = f"{sign} {self.good:g}{unit} good"
        if self.acceptable is not None:
            text += f", {sign} {self.acceptable:g}{unit} acceptable"
        return text + ", else poor"


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("import.series", "import_movies", "tilt series and tilts found", "%", "higher", 100.0, None,
              "Every tilt series and every tilt image of the session must be found: a missing movie is a missing "
              "view."),
    Threshold("import.pixel_size", "import_movies", "pixel size error", "%", "lower", 0.5, 2.0,
              "The pixel size turns pixels into Å everywhere: a 10 % error makes every distance 10 % wrong, throws "
              "the defocus fits off by about 20 % and the map's scale by 10 %."),
    Threshold("import.tilt_axis", "import_movies", "starting tilt-axis error (mod 180°)", "°", "lower", 2.0, 10.0,
              "The axis the alignment starts from: it refines it from up to 10° away; farther off it may settle "
              "on a wrong axis."),
    Threshold("import.dose", "import_movies", "dose per tilt error (worst view)", "%", "lower", 5.0, 20.0,
              "The dose per tilt sets the exposure filter: too low keeps noise the high-dose views should lose, "
              "too high throws signal away."),
    Threshold("import.gain_orientation", "import_movies", "gain orientation detected right", "", "yes",
              meaning="The gain reference must be applied the way round the camera recorded it, else its pattern "
                      "stays in every image."),
    Threshold("motion_ctf.frame_shifts", "motion_ctf", "frame-shift error (RMS, offset removed)", "px", "lower",
              0.3, 0.6, "How far the aligned frames lie from where they should: blur of the dose-weighted sums "
                        "(dark views that cannot be aligned are left out)."),
    Threshold("motion_ctf.defocus", "motion_ctf", "per-tilt defocus error (median, |tilt| ≤ 45°)", "Å", "lower",
              100.0, 300.0, "The defocus of each tilt image as fitted on the frame sum, against the true defocus at "
                            "the image centre."),
    Threshold("motion_ctf.gain_orientation", "motion_ctf", "gain applied in the right orientation", "", "yes",
              meaning="The orientation in which the gain multiplied the frames."),
    Threshold("xray_erase.found", "xray_erase", "X-ray hit pixels replaced", "%", "higher", 95.0, 80.0,
              "X-ray hits left in the images make bright spots that the alignment and picking may follow."),
    Threshold("xray_erase.other", "xray_erase", "other pixels touched", "%", "lower", 0.01, 0.1,
              "Pixels replaced although no hit was there: lost signal (particles erased as 'hits')."),
    Threshold("preprocess_for_alignment.normalise", "preprocess_for_alignment",
              "views scaled to mean 0, SD 1 (worst deviation)", "", "lower", 0.01, 0.1,
              "Equal scaling of every view (the tutorial's mean 0, SD 1) keeps dark high-tilt views from being "
              "ignored or over-weighted in the alignment."),
    Threshold("align.tilt_axis", "align", "tilt-axis error (mod 180°)", "°", "lower", 0.5, 1.5,
              "The in-plane angle of the tilt axis found by the alignment against the truth; 1° off smears "
              "particles far from the centre into arcs."),
    Threshold("align.shifts", "align", "view shift error (RMS, origin removed)", "Å", "lower", 5.0, 15.0,
              "How far each view is placed from where the specimen really was (the arbitrary origin of an "
              "alignment removed): blur of the tomogram."),
    Threshold("assign_alignment.shifts", "assign_alignment", "view shift error at full size (RMS)", "Å", "lower",
              5.0, 15.0, "The alignment carried over to the full-size views (shifts scaled by the binning)."),
    Threshold("ctf_estimate.defocus", "ctf_estimate", "defocus error (median, |tilt| ≤ 45°)", "Å", "lower", 100.0,
              300.0, "The defocus of each tilt image against the true one at the image centre: the CTF correction "
                     "and the averages use it."),
    Threshold("ctf_estimate.defocus_max", "ctf_estimate", "worst defocus error (|tilt| ≤ 45°)", "Å", "lower",
              500.0, 1000.0, "One bad fit is enough to blur that view's contribution; the exclusion step can "
                             "replace it by the trend."),
    Threshold("ctf_estimate.direction", "ctf_estimate", "tilt direction right (axis mod 360°)", "", "yes",
              meaning="An axis 180° off aligns as well but mirrors the tomogram (the wrong hand) and flips the "
                      "defocus gradient across the tilted views."),
    Threshold("exclude.planted", "exclude", "planted bad views dealt with", "%", "higher", 100.0, None,
              "Views recorded dark spoil the tomogram where they are kept: they must be excluded; a view after a "
              "tracking jump must be excluded unless the alignment followed the jump (its shift error ≤ 15 Å)."),
    Threshold("exclude.others", "exclude", "good views excluded", "%", "lower", 10.0, 25.0,
              "Every view excluded without need loses signal and widens the missing wedge."),
    Threshold("ctf_correct.sign", "ctf_correct", "defocus gradient across the views the right way", "%", "higher",
              100.0, 90.0, "Phase flipping in strips follows the defocus change across each tilted view: the wrong "
                           "way round corrects the far side of every view with the wrong defocus."),
    Threshold("preprocess_for_reconstruction.normalise", "preprocess_for_reconstruction",
              "views scaled as asked (worst deviation)", "", "lower", 0.01, 0.1,
              "With 'scale', every view must have the mean and SD asked for."),
    Threshold("reconstruct.cc_ratio", "reconstruct", "correlation with the truth vs the true alignment's", "",
              "higher", 0.8, 0.6,
              "The tomogram's correlation with the true specimen (both low-passed to 2 voxels), relative to the "
              "same reconstruction made with the true alignment: what alignment and exclusion errors cost."),
    Threshold("reconstruct.hand", "reconstruct", "hand right (truth better than its mirror image)", "", "yes",
              meaning="A mirrored tomogram gives a mirrored map: the wrong hand of a chiral molecule."),
    Threshold("reconstruct.inside", "reconstruct", "true particles inside the tomogram", "%", "higher", 100.0, 95.0,
              "A tomogram thinner than the specimen cuts particles off."),
    Threshold("pick.recall", "pick", "true particles picked (recall)", "%", "higher", 90.0, 70.0,
              "Particles missed are lost for the average."),
    Threshold("pick.precision", "pick", "picks that are particles (precision)", "%", "higher", 90.0, 70.0,
              "False picks (ice, contamination, other proteins) add noise to the average."),
    Threshold("extract.box", "extract", "box side / particle diameter", "×", "higher", 1.5, 1.1,
              "The box must hold the particle with room around it for its CTF-delocalised signal and the mask."),
    Threshold("extract_fine.box", "extract_fine", "box side / particle diameter", "×", "higher", 1.5, 1.1,
              "The box must hold the particle with room around it for its CTF-delocalised signal and the mask."),
    Threshold("map.fsc_truth", "", "FSC with the true map: 0.5 crossing / Nyquist", "×", "lower", 1.5, 2.5,
              "How much of the true structure the map holds: the resolution where its FSC with the true map "
              "falls to 0.5, over the finest the voxel size allows (Nyquist = 2 × voxel)."),
    Threshold("map.hand", "", "hand right (truth better than its mirror image)", "", "yes",
              meaning="The map correlates better with the true map than with its mirror image."),
    Threshold("map.resolution", "", "resolution (half maps, FSC 0.143) / Nyquist", "×", "lower", 1.5, 2.0,
              "The gold-standard resolution over the finest the voxel size allows; far from 1, the particles' "
              "number or accuracy limits it, not the sampling (at full sampling the data themselves stop short of "
              "Nyquist: the small demo's particles with their true poses give 1.39 × at 2 Å voxels)."),
    Threshold("map.claim", "", "claimed resolution better than the truth shows", "%", "lower", 15.0, 30.0,
              "The half-map resolution (FSC 0.143) against where the map's FSC with the true map falls to 0.5 "
              "(the same point for an honest FSC): a claim much better than the truth is overfitting."),
    Threshold("map.angles", "", "orientation error (median, up to O symmetry)", "°", "lower", 3.0, 8.0,
              "The angle between each particle's refined orientation and its true one."),
    Threshold("map.centres", "", "particle centre error (RMS, rigid fit removed)", "Å", "lower", 5.0, 10.0,
              "Where the particles' refined centres lie against the true ones, after the tomogram's arbitrary "
              "origin and turn about the tilt axis (unobservable) are removed."),
    Threshold("answer", "", "answer key", "", "yes",
              meaning="The planted problem of this challenge: found and handled (good) or missed (poor)."),
)
THRESHOLD: dict[str, Threshold] = {t.key: t for t in THRESHOLDS}
MAP_STEPS = ("initial_model", "refine", "reconstruct_particle", "refine_fine")


def thresholds_table() -> str:
    """:data:`THRESHOLDS` as a text table (``tomoguide score --thresholds``)."""
    rows = [("figure", "step", "good / acceptable / poor")]
    for t in THRESHOLDS:
        step = t.step or ("every averaging step" if t.key.startswith("map.") else "the challenge's step")
        rows.append((t.label, step, t.rule()))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(c.ljust(n) for c, n in zip(r, w, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * n for n in w))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------------------------


class Measure(BaseModel):
    """One scored figure: ``value`` in ``unit`` (None when not measured), ``text`` as shown, its grade and the rule
    that gave it, what it means, and ``answer_key`` for a challenge's planted problem."""

    key: str
    label: str
    value: float | bool | str | None = None
    unit: str = ""
    text: str = ""
    grade: Grade = "n/a"
    rule: str = ""
    meaning: str = ""
    answer_key: bool = False
    short: str = ""  # a short form of ``text`` for a table cell (info rows)


class StepScore(BaseModel):
    """A step's figures. ``status``: the step's status in the project; ``grade``: its worst graded figure, "not run"
    when the step has not run (or is not up to date), "info" when nothing is graded."""

    step: str
    number: int
    title: str
    status: str
    grade: Grade
    measures: list[Measure] = Field(default_factory=list)
    note: str = ""


class ProjectScore(BaseModel):
    """The score of a project: per step (wizard order), the truth folder and how it was found, the challenge
    (answer key) if any, and the data of the figures (``figures``: ``defocus``: per series tilt, fit and true
    defocus; ``fsc``: per averaging step the half-map FSC and the FSC against the true map)."""

    project: str
    name: str
    truth_dir: str
    truth_found: str
    challenge: dict[str, Any] | None = None
    steps: list[StepScore]
    figures: dict[str, Any] = Field(default_factory=dict)

    def step(self, step_id: str) -> StepScore:
        for s in self.steps:
            if s.step == step_id:
                return s
        raise KeyError(step_id)

    def measure(self, key: str) -> Measure:
        """The first figure with ``key`` (e.g. "pick.recall", "refine_fine.map.fsc_truth", an answer key's id)."""
        for s in self.steps:
            for m in s.measures:
                if m.key == key:
                    return m
        raise KeyError(key)

    def counts(self) -> dict[str, int]:
        """How many graded figures are good, acceptable, poor."""
        out = {g: 0 for g in GRADED}
        for s in self.steps:
            for m in s.measures:
                if m.grade in out:
                    out[m.grade] += 1
        return out


class TruthNotFound(Exception):
    """The project's data did not come from ``tomoguide simulate`` (or its truth folder is elsewhere)."""


# ---------------------------------------------------------------------------------------------------------------
# the truth folder of a project
# ---------------------------------------------------------------------------------------------------------------


def _data_dir(proj: Any) -> Path | None:
    value = proj.data.steps.get("import_movies").params.get("files_dir") if "import_movies" in proj.data.steps \
        else None
    return Path(value) if value else None


def locate_truth(proj: Any, override: Path | None = None) -> tuple[Path, str]:
    """The truth folder of the project ``proj`` and how it was found: ``override`` (a ``truth`` folder or the
    folder holding one: "given"), the one recorded in the project ("recorded"; relative to the project first, so a
    project moved with its data keeps it), or ``truth/`` beside the session folder or its parents ("found beside
    the data"; :func:`tomoguide.truth.find_truth_dir`). :class:`TruthNotFound` with the reason otherwise."""
    from tomoguide import truth

    if override is not None:
        o = Path(override).expanduser().resolve()
        for c in (o, o / "truth"):
            if (c / truth.TRUTH_SUMMARY).is_file():
                truth.read_summary(c)  # ValueError when not the simulator's
                return c, "given"
        raise TruthNotFound(f"{o}: no truth/summary.json here (the truth folder `tomoguide simulate` wrote)")
    rec = proj.data.dataset.get(TRUTH_KEY) if isinstance(proj.data.dataset, dict) else None
    if isinstance(rec, str) and rec:
        c = Path(os.path.normpath(proj.dir / rec))  # relative to the project, or absolute
        if (c / truth.TRUTH_SUMMARY).is_file() and truth.truth_matches_data(c):
            return c, "recorded"
    data = _data_dir(proj)
    if data is not None:
        found = truth.find_truth_dir(data)
        if found is not None:
            return found, "found beside the data"
    where = f"the session folder {data}" if data is not None else "the project (no session folder set)"
    raise TruthNotFound(f"{proj.dir}: no truth folder found for {where}: scores need data made by `tomoguide "
                        f"simulate` (its truth/ folder beside data/); give it with --truth DIR")


def record_truth(proj: Any, truth_dir: Path) -> bool:
    """Record ``truth_dir`` in the project (``dataset["truth_dir"]``: relative to the project when it can be, so a
    project moved with its data keeps it, else absolute) and save; False when the project is read-only or it is
    recorded already."""
    truth_dir = Path(os.path.abspath(truth_dir))  # a linked truth folder stays the link beside the data
    try:
        entry = os.path.relpath(truth_dir, proj.dir)
    except ValueError:  # another drive
        entry = str(truth_dir)
    if proj.data.dataset.get(TRUTH_KEY) == entry or proj.readonly:
        return False
    proj.data.dataset[TRUTH_KEY] = entry
    proj.save()
    return True


# ---------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    proj: Any
    truth_dir: Path
    summary: dict[str, Any]
    answer_key: dict[str, Any] | None
    facts: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def out(self, step: str, name: str) -> Path:
        return self.proj.output_path(step, name)

    def done(self, step: str) -> bool:
        return self.proj.data.steps[step].status == "done"

    def metrics(self, step: str) -> dict[str, Any]:
        return self.proj.data.steps[step].metrics or {}

    def params(self, step: str) -> Any:
        return self.proj.params(step)


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, spec)


def _measure(key: str, value: Any, text: str, *, threshold: str | None = None, label: str | None = None,
             meaning: str | None = None) -> Measure:
    t = THRESHOLD[threshold or key.split(":", 1)[0]]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, np.bool_):
        value = bool(value)
    return Measure(key=key, label=label or t.label, value=value, unit=t.unit, text=text, grade=t.grade(value),
                   rule=t.rule(), meaning=meaning or t.meaning)


def _info(key: str, label: str, text: str, meaning: str = "", short: str = "") -> Measure:
    return Measure(key=key, label=label, text=text, grade="info", meaning=meaning, short=short)


def _na(key: str, text: str, *, threshold: str | None = None, label: str | None = None) -> Measure:
    t = THRESHOLD.get(threshold or key.split(":", 1)[0])
    return Measure(key=key, label=label or (t.label if t else key), text=text, grade="n/a",
                   rule=t.rule() if t else "", meaning=t.meaning if t else "")


def _answer(item: dict[str, Any], found: bool | None, text: str) -> Measure:
    t = THRESHOLD["answer"]
    title = item.get("what") or item.get("kind")
    return Measure(key=f"answer:{item.get('id', item['kind'])}", label=f"answer key: {title}",
                   value=found, text=text, grade=t.grade(found), rule=t.rule(),
                   meaning=item.get("meaning") or t.meaning, answer_key=True)


# ---- per step ------------------------------------------------------------------------------------------------


def _score_import(c: _Ctx) -> list[Measure]:
    from tomoguide import truth

    f = truth.import_errors(c.out("import_movies", "tilt_series"), c.truth_dir)
    c.facts["import_movies"] = f
    found, true = set(f["series_found"]), set(f["series_true"])
    n_tilts = sum(f["n_tilts"].get(n, 0) for n in true & found)
    n_tilts_true = sum(f["n_tilts_true"].values())
    pct = 100.0 * (len(true & found) + n_tilts) / max(len(true) + n_tilts_true, 1)
    text = f"{len(true & found)} of {len(true)} series, {n_tilts} of {n_tilts_true} tilts"
    if found - true:
        text += f"; not in the truth: {', '.join(sorted(found - true))}"
        pct = min(pct, 99.0)
    out = [_measure("import.series", pct, text)]
    per = f["series"]
    px_err = max((abs(v["pixel_size_error_pct"]) for v in per.values()), default=None)
    name0 = next(iter(per), None)
    if name0 is not None:
        v = per[name0]
        out.append(_measure("import.pixel_size", px_err,
                            f"{v['pixel_size_A']:.2f} Å used ({f['pixel_size_source'][name0]}), true "
                            f"{f['true_pixel_size_A']:.2f} Å ({v['pixel_size_error_pct']:+.1f} %)"))
        axes = [(n, x) for n, x in per.items() if "axis_error_deg" in x]
        if axes:
            n, x = max(axes, key=lambda kv: kv[1]["axis_error_deg"])
            extra = ""
            if abs(x["axis_error_mod360_deg"]) > 90:
                extra = "; the direction is 180° off (the CTF estimation's tilt-direction check looks at it)"
            out.append(_measure("import.tilt_axis", x["axis_error_deg"],
                                f"{f['tilt_axis_imported_deg'][n]:g}° ({f['tilt_axis_source'][n]}), true "
                                f"{x['true_tilt_axis_deg']:g}°: {x['axis_error_deg']:.1f}° off{extra}"))
        doses = [x["dose_error_pct_max"] for x in per.values() if "dose_error_pct_max" in x]
        if doses:
            out.append(_measure("import.dose", max(doses), f"worst view {max(doses):.1f} % off the true dose"))
    orient = f["gain_orientation"]
    if orient:
        right = all(v["right"] for v in orient.values() if v["right"] is not None)
        from tomoguide.compute.gain import orientation_name

        g = f["gain_true"]
        v0 = next(iter(orient.values()))
        out.append(_measure("import.gain_orientation", right,
                            f"detected '{orientation_name(bool(v0['transpose']), bool(v0['flip_x']), bool(v0['flip_y']))}'"
                            f" (confidence {_fmt(v0.get('confidence'), '.0f')}), true "
                            f"'{orientation_name(bool(g['transpose']), bool(g['flip_x']), bool(g['flip_y']))}'"))
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:240] if text else type(exc).__name__


def _guard(out: list[Measure], key: str, fn: Callable[[], Any]) -> None:
    """Append what ``fn`` returns (a Measure or a list); a figure that cannot be measured becomes n/a with the
    reason, the step's other figures stay."""
    try:
        r = fn()
    except Exception as exc:
        out.append(_na(key, _one_line(exc)))
        return
    out.extend(r if isinstance(r, list) else [r])


def _score_motion(c: _Ctx) -> list[Measure]:
    from tomoguide import truth
    from tomoguide.compute.gain import orientation_name

    out: list[Measure] = []

    def frames() -> Measure:
        fs = truth.frame_shift_errors(c.truth_dir, c.out("motion_ctf", "series"))
        flagged = f"; {fs['n_movies_flagged']} movie(s) flagged as not alignable left out " \
                  f"({', '.join(f'{t:+.0f}°' for t in fs['flagged_tilts_deg'])})" if fs["n_movies_flagged"] else ""
        return _measure("motion_ctf.frame_shifts", fs["rms_offset_removed_px"],
                        f"{fs['rms_offset_removed_px']:.2f} px over {fs['n_movies']} movies (worst movie "
                        f"{fs['worst_movie_rms_px']:.2f} px){flagged}")

    def defocus() -> Measure:
        d = truth.defocus_errors(c.truth_dir, c.out("motion_ctf", "series"))
        return _measure("motion_ctf.defocus", d["median_abs_error_A"],
                        f"{d['median_abs_error_A']:.0f} Å (worst {d['max_abs_error_A']:.0f} Å; "
                        f"{d['n_failed']} fit(s) flagged failed)")

    _guard(out, "motion_ctf.frame_shifts", frames)
    if c.params("motion_ctf").estimate_ctf:
        _guard(out, "motion_ctf.defocus", defocus)
    gain = (c.summary.get("planted") or {}).get("gain") or {}
    series_metrics = c.metrics("motion_ctf").get("series", {})
    used = {n: m.get("gain_orientation") for n, m in series_metrics.items() if m.get("gain_orientation")}
    if used and gain:
        true_name = orientation_name(bool(gain.get("transpose")), bool(gain.get("flip_x")), bool(gain.get("flip_y")))
        right = all(u == true_name for u in used.values())
        u0 = next(iter(used.values()))
        c.facts["motion_ctf"] = {"gain_used": used, "gain_true": true_name, "gain_right": right}
        src = next(iter(series_metrics.values())).get("gain_orientation_source", "")
        out.append(_measure("motion_ctf.gain_orientation", right, f"used '{u0}' ({src}), true '{true_name}'"))
    return out


def _score_xray(c: _Ctx) -> list[Measure]:
    from tomoguide import truth

    x = truth.xray_detection(c.truth_dir, c.out("motion_ctf", "series"), c.out("xray_erase", "series"))
    out = []
    if x["hit_pixels"]:
        out.append(_measure("xray_erase.found", 100.0 * x["hit_pixels_replaced_fraction"],
                            f"{100 * x['hit_pixels_replaced_fraction']:.1f} % of {x['hit_pixels']} hit pixels"))
    else:
        out.append(_info("xray_erase.found", THRESHOLD["xray_erase.found"].label, "no X-ray hits were simulated"))
    out.append(_measure("xray_erase.other", 100.0 * x["other_pixels_touched_fraction"],
                        f"{100 * x['other_pixels_touched_fraction']:.4f} % ({x['other_pixels_touched']} pixels)"))
    return out


def _score_binning(c: _Ctx, step: str) -> list[Measure]:
    from tomoguide import truth

    params = c.params(step)
    st = truth.normalisation_stats(c.out(step, "series"))
    name0 = next(iter(st["series"]))
    s0 = st["series"][name0]
    true_px = truth.true_pixel_size_A(c.truth_dir) * float(s0["binning"])
    out = [_info(f"{step}.binning", "binning",
                 f"bin {s0['binning']:g}: {s0['shape_px'][2]}×{s0['shape_px'][1]} px of {s0['pixel_size_A']:.2f} Å "
                 f"(true {true_px:.2f} Å)", short=f"bin {s0['binning']:g}: {s0['pixel_size_A']:.2f} Å pixels")]
    key = f"{step}.normalise"
    worst = max(st["worst_abs_mean"], st["worst_abs_sd_minus_1"])
    if params.density_mode == "scale":
        means = [m for s in st["series"].values() for m in s["mean"]]
        sds = [v for s in st["series"].values() for v in s["sd"]]
        dev = max(max(abs(m - params.mean) for m in means), max(abs(v - params.sd) for v in sds))
        if step == "preprocess_for_alignment":
            dev = worst
        out.append(_measure(key, dev, f"means {min(means):+.3f}…{max(means):+.3f}, SDs {min(sds):.3f}…"
                                      f"{max(sds):.3f}"))
    elif step == "preprocess_for_alignment":
        out.append(_measure(key, worst, f"not scaled (densities 'none'): worst |mean| {st['worst_abs_mean']:.3g}, "
                                        f"worst |SD − 1| {st['worst_abs_sd_minus_1']:.3g}"))
    else:
        out.append(_info(key, "densities", "kept as they are ('none', the default here): the tomogram's contrast "
                                           "follows the dose", short="not scaled ('none')"))
    return out


def _score_align(c: _Ctx, step: str) -> list[Measure]:
    from tomoguide import truth

    dark = {name: [float(v["nominal_tilt_deg"]) for v in views if v["kind"] == "dark"]
            for name, views in truth.planted_bad_views(c.truth_dir).items()}
    a = truth.alignment_errors(c.truth_dir, c.out(step, "series"), leave_out_tilts_deg=dark)
    c.facts[step] = a
    left_out = [f"{t:+.0f}°" for v in dark.values() for t in v]
    note = f"; planted dark view(s) {', '.join(left_out)} left out (judged at the exclusion)" if left_out else ""
    out = []
    per = a["series"]
    worst_shift = max(per.values(), key=lambda v: v["shift_rms_px"])
    shift_A = worst_shift["shift_rms_px"] * worst_shift["pixel_size_A"]
    view = max(per.values(), key=lambda v: v["worst_view_error_px"])
    if step == "align":
        w = max(per.values(), key=lambda v: v["axis_error_deg"])
        out.append(_measure("align.tilt_axis", w["axis_error_deg"],
                            f"{w['tilt_axis_deg']:.2f}°, true {w['true_tilt_axis_deg']:g}° "
                            f"({w['axis_error_deg']:.2f}° off)"))
        out.append(_measure("align.shifts", shift_A, f"{shift_A:.1f} Å = {worst_shift['shift_rms_px']:.2f} px of "
                                                     f"{worst_shift['pixel_size_A']:.1f} Å; worst view "
                                                     f"{view['worst_view_tilt_deg']:+.0f}° "
                                                     f"({view['worst_view_error_px'] * view['pixel_size_A']:.0f} Å)"
                                                     f"{note}"))
        r = max(per.values(), key=lambda v: v["view_rotation"]["rms_deg"])["view_rotation"]
        out.append(_info("align.view_rotations", "per-view rotation error (RMS, common axis removed)",
                         f"{r['rms_deg']:.2f}° (worst view {r['max_deg']:.2f}°); the true views turn "
                         f"{r['truth_spread_rms_deg']:.2f}° RMS about the axis",
                         "How far each view's in-plane rotation is from the true one: a view turned by 0.3° moves a "
                         "particle 1000 px from the centre by 5 px, which blurs averages at full sampling. The "
                         "alignment fits a rotation per view (from 15 views); the truth's spread is what one "
                         "rotation for all views leaves.", short=f"{r['rms_deg']:.2f}°"))
        off = [n for n, v in per.items() if abs(v["axis_error_mod360_deg"]) > 90]
        out.append(_info("align.direction", "tilt direction (axis mod 360°)",
                         f"180° off in {', '.join(off)}: the alignment cannot see it (the same line); the CTF "
                         "estimation's tilt-direction check must turn it" if off else "as the truth",
                         short="180° off" if off else "right"))
    else:
        out.append(_measure("assign_alignment.shifts", shift_A,
                            f"{shift_A:.1f} Å = {worst_shift['shift_rms_px']:.2f} px of "
                            f"{worst_shift['pixel_size_A']:.2f} Å{note}"))
    return out


def _score_ctf_estimate(c: _Ctx) -> list[Measure]:
    from tomoguide import truth

    series = c.out("ctf_estimate", "series")
    table = truth.defocus_table(c.truth_dir, series)
    c.figures["defocus"] = {name: {"tilt_deg": g["tilt"].tolist(), "fit_A": g["fit_A"].tolist(),
                                   "true_A": g["true_A"].tolist(), "failed": g["failed"].tolist()}
                            for name, g in table.groupby("series")}
    d = truth.defocus_errors(c.truth_dir, series)
    out = [_measure("ctf_estimate.defocus", d["median_abs_error_A"],
                    f"{d['median_abs_error_A']:.0f} Å over {d['n_tilts']} tilts ({d['n_failed']} fit(s) flagged "
                    f"failed)"),
           _measure("ctf_estimate.defocus_max", d["max_abs_error_A"],
                    f"{d['max_abs_error_A']:.0f} Å (all tilts: {d['max_abs_error_all_tilts_A']:.0f} Å)")]
    dirs = truth.tilt_direction_errors(series, c.truth_dir)
    c.facts["ctf_estimate"] = {"direction": dirs}
    right = all(v["direction_right"] for v in dirs.values())
    v0 = next(iter(dirs.values()))
    verdicts = c.metrics("ctf_estimate").get("tilt_direction", {})
    how = f"; the check: {', '.join(f'{k} {v}' for k, v in verdicts.items())}" if verdicts else ""
    out.append(_measure("ctf_estimate.direction", right,
                        f"axis {v0['axis_deg']:.1f}°, true {v0['true_axis_deg']:g}° "
                        f"({v0['error_mod360_deg']:+.1f}° mod 360){how}"))
    return out


def _score_exclude(c: _Ctx) -> list[Measure]:
    from tomoguide import truth

    b = truth.bad_view_detection(c.out("exclude", "series"), c.truth_dir)
    c.facts["exclude"] = {"bad_views": b}
    planted = [dict(p, series=name) for name, v in b.items() for p in v["planted_views"]]
    out = []
    if planted:
        kept_jumps = [p for p in planted if p["kind"] == "jump" and not p["excluded"]]
        if kept_jumps:  # a jump the alignment followed needs no exclusion
            a = truth.alignment_errors(c.truth_dir, c.out("exclude", "series"))["series"]
            for p in kept_jumps:
                v = a[p["series"]]
                k = int(np.argmin(np.abs(np.asarray(v["view_tilts_deg"]) - p["nominal_tilt_deg"])))
                p["error_A"] = v["view_error_px"][k] * v["pixel_size_A"]
                p["followed"] = p["error_A"] <= JUMP_FOLLOWED_A
        c.facts["exclude"]["planted"] = planted

        def state(p: dict[str, Any]) -> str:
            if p["excluded"]:
                return "excluded"
            if p.get("followed"):
                return f"kept, followed by the alignment ({p['error_A']:.0f} Å)"
            return "KEPT" + (f" ({p['error_A']:.0f} Å off)" if "error_A" in p else "")

        n_ok = sum(p["excluded"] or bool(p.get("followed")) for p in planted)
        out.append(_measure("exclude.planted", 100.0 * n_ok / len(planted),
                            f"{n_ok} of {len(planted)} (" + ", ".join(f"{p['kind']} {p['nominal_tilt_deg']:+.0f}°: "
                                                                      f"{state(p)}" for p in planted) + ")"))
    else:
        out.append(_info("exclude.planted", THRESHOLD["exclude.planted"].label, "none planted in this data set",
                         short="none planted"))
    n_other = sum(v["n_other_excluded"] for v in b.values())
    n_good = sum(v["n_views_true"] for v in b.values()) - len(planted)
    tilts = [t for v in b.values() for t in v["other_excluded_tilts_deg"]]
    out.append(_measure("exclude.others", 100.0 * n_other / max(n_good, 1),
                        f"{n_other} of {n_good}" + (f" ({', '.join(f'{t:+.0f}°' for t in tilts)})" if tilts else "")))
    return out


def _score_ctf_correct(c: _Ctx) -> list[Measure]:
    from tomoguide import truth

    g = truth.defocus_gradient_agreement(c.out("ctf_correct", "series"), c.truth_dir)
    if g["fraction_right"] is None:
        return [_na("ctf_correct.sign", "no included view tilted by 5° or more")]
    s0 = next(iter(g["series"].values()))
    return [_measure("ctf_correct.sign", 100.0 * g["fraction_right"],
                     f"{100 * g['fraction_right']:.0f} % of {g['n_views']} tilted views (handedness "
                     f"{s0['handedness']:+d}, axis as the geometry says; gradient size "
                     f"{g['median_magnitude_ratio']:.2f} × the truth's)")]


def _score_reconstruct(c: _Ctx) -> list[Measure]:
    from tomoguide import truth

    t = truth.tomograms_vs_true_alignment(c.truth_dir, c.out("preprocess_for_reconstruction", "series"),
                                          c.out("reconstruct", "tomograms"), c.params("reconstruct"))
    c.facts["reconstruct"] = t
    per = t["series"]
    w = min(per.values(), key=lambda v: v["ratio"] if v["ratio"] is not None else -1.0)
    out = [_measure("reconstruct.cc_ratio", w["ratio"],
                    f"{_fmt(w['ratio'])} (correlation {w['cc']:.3f}; with the true alignment "
                    f"{w['cc_with_true_alignment']:.3f}; {w['lowpass_A']:.0f} Å low-pass)")]
    hand = all(v["cc"] > v["cc_z_mirrored"] for v in per.values())
    out.append(_measure("reconstruct.hand", hand, f"correlation {w['cc']:.3f} with the truth, "
                                                  f"{w['cc_z_mirrored']:.3f} with its mirror image"))
    shifts = {n: v["shift_zyx_px"] for n, v in per.items()}

    def inside() -> Measure:
        ins = truth.particles_inside_tomogram(c.out("reconstruct", "tomograms"), c.truth_dir, shifts)
        c.facts["reconstruct"]["inside"] = ins
        s0 = next(iter(ins["series"].values()))
        return _measure("reconstruct.inside", 100.0 * (ins["fraction_inside"] or 0.0) if ins["n_true"] else None,
                        f"{ins['n_inside']} of {ins['n_true']}; tomogram {s0['thickness_A']:.0f} Å thick, ice "
                        f"{ins['slab_thickness_A']:.0f} Å")

    _guard(out, "reconstruct.inside", inside)
    return out


def _score_pick(c: _Ctx) -> list[Measure]:
    from tomoguide import truth

    per = truth.pick_errors(c.out("pick", "particles"), c.truth_dir)
    tot = truth.pick_totals(per)
    c.facts["pick"] = tot
    out = [_measure("pick.recall", None if tot["recall"] is None else 100.0 * tot["recall"],
                    f"{tot['n_found']} of {tot['n_true']} true particles"),
           _measure("pick.precision", None if tot["precision"] is None else 100.0 * tot["precision"],
                    f"{tot['n_picked']} picks, {tot['n_picked'] - round((tot['precision'] or 0) * tot['n_picked'])} "
                    f"match no particle")]
    spec = {n: m.get("specimen") for n, m in c.metrics("pick").get("series", {}).items() if m.get("specimen")}
    if spec:
        s = next(iter(spec.values()))
        if s.get("found"):
            import re

            found = re.search(r"slab (\d+(?:\.\d+)?) Å thick", str(s.get("note", "")))
            if found:
                thick = float(found.group(1))
                true = float(c.summary["params"]["slab_thickness_A"])
                out.append(_info("pick.slab", "specimen slab thickness (the pick step's estimate)",
                                 f"{thick:.0f} Å, true ice {true:.0f} Å ({100 * (thick - true) / true:+.0f} %)",
                                 short=f"{thick:.0f} Å (true {true:.0f} Å)"))
    return out


def _score_extract(c: _Ctx, step: str) -> list[Measure]:
    m = c.metrics(step)
    box, voxel = m.get("box_px"), m.get("voxel_A")
    params = c.params(step)
    crop = getattr(params, "crop_px", None)
    out = []
    if box and voxel:
        side = float(crop or box) * float(voxel)
        out.append(_measure(f"{step}.box", side / APOFERRITIN_DIAMETER_A,
                            f"{crop or box} px × {voxel:g} Å = {side:.0f} Å for a particle of "
                            f"{APOFERRITIN_DIAMETER_A:.0f} Å"))
    if step == "extract" and "pick" in c.facts:
        out.append(_info("extract.count", "particles extracted",
                         f"{m.get('n_particles')} of {c.facts['pick']['n_picked']} picked",
                         short=f"{m.get('n_particles')} / {c.facts['pick']['n_picked']}"))
    return out


def _score_map(c: _Ctx, step: str) -> list[Measure]:
    from tomoguide import truth

    mp = truth.map_errors(c.out(step, "average"), c.truth_dir)
    c.facts[step] = mp
    c.figures.setdefault("fsc", {})[step] = {
        "vs_truth": mp.get("fsc_vs_truth"), "half_maps": mp.get("fsc_half_maps"),
        "voxel_A": mp["voxel_A"], "resolution_A": mp.get("resolution_A")}
    out = []
    nyq = mp["nyquist_A"]
    out.append(_measure(f"{step}.map.fsc_truth", mp["fsc_vs_truth_0.5_over_nyquist"],
                        f"{mp['fsc_vs_truth_0.5_A']:.1f} Å (Nyquist {nyq:.1f} Å: "
                        f"{mp['fsc_vs_truth_0.5_over_nyquist']:.2f} ×)", threshold="map.fsc_truth"))
    out.append(_measure(f"{step}.map.hand", mp["cc_truth"] > mp["cc_truth_mirrored"],
                        f"correlation {mp['cc_truth']:.3f} with the true map, {mp['cc_truth_mirrored']:.3f} with its "
                        f"mirror image", threshold="map.hand"))
    res = mp.get("resolution_A")
    if res:
        n = c.metrics(step).get("n_particles")
        few = f"; {n} particles" if n else ""
        out.append(_measure(f"{step}.map.resolution", mp["resolution_over_nyquist"],
                            f"{res:.1f} Å (Nyquist {nyq:.1f} Å: {mp['resolution_over_nyquist']:.2f} ×{few})",
                            threshold="map.resolution"))
        claim = 100.0 * (mp["fsc_vs_truth_0.5_A"] / res - 1.0)
        out.append(_measure(f"{step}.map.claim", claim,
                            f"half maps {res:.1f} Å, truth's FSC 0.5 at {mp['fsc_vs_truth_0.5_A']:.1f} Å "
                            f"({claim:+.0f} %)", threshold="map.claim"))
    if step in ("refine", "refine_fine") and "angle_error_deg" in mp:  # the steps that refine the poses
        a = mp["angle_error_deg"]
        out.append(_measure(f"{step}.map.angles", a["median"],
                            f"median {a['median']:.1f}°, 90 % within {a['p90']:.1f}° ({a['n']} particles)",
                            threshold="map.angles"))
        if mp.get("centre_error_rigid_rms_A") is not None:
            out.append(_measure(f"{step}.map.centres", mp["centre_error_rigid_rms_A"],
                                f"{mp['centre_error_rigid_rms_A']:.1f} Å (mean offset only: "
                                f"{mp['centre_error_rms_A']:.1f} Å)", threshold="map.centres"))
    return out


_SCORERS: dict[str, Callable[[_Ctx], list[Measure]]] = {
    "import_movies": _score_import,
    "motion_ctf": _score_motion,
    "xray_erase": _score_xray,
    "preprocess_for_alignment": lambda c: _score_binning(c, "preprocess_for_alignment"),
    "align": lambda c: _score_align(c, "align"),
    "assign_alignment": lambda c: _score_align(c, "assign_alignment"),
    "ctf_estimate": _score_ctf_estimate,
    "exclude": _score_exclude,
    "ctf_correct": _score_ctf_correct,
    "preprocess_for_reconstruction": lambda c: _score_binning(c, "preprocess_for_reconstruction"),
    "reconstruct": _score_reconstruct,
    "pick": _score_pick,
    "extract": lambda c: _score_extract(c, "extract"),
    "initial_model": lambda c: _score_map(c, "initial_model"),
    "refine": lambda c: _score_map(c, "refine"),
    "extract_fine": lambda c: _score_extract(c, "extract_fine"),
    "reconstruct_particle": lambda c: _score_map(c, "reconstruct_particle"),
    "refine_fine": lambda c: _score_map(c, "refine_fine"),
}


# ---- answer key ------------------------------------------------------------------------------------------------


def _check_answer(c: _Ctx, item: dict[str, Any]) -> Measure:
    """One answer-key item graded from the facts its step's scorer gathered (the step has run)."""
    kind = item["kind"]
    if kind in ("exclude_view", "exclude_or_follow_view"):
        views = c.facts["exclude"]["bad_views"].get(item["series"], {}).get("planted_views", [])
        row = next((v for v in views if abs(v["nominal_tilt_deg"] - item["nominal_tilt_deg"]) < 0.05), None)
        if row is None:
            return _answer(item, None, "the view is not in the result")
        sug = "suggested" if row["suggested"] else "not suggested"
        if row["excluded"]:
            return _answer(item, True, f"excluded ({sug})")
        if kind == "exclude_view":
            return _answer(item, False, f"kept ({sug}): exclude it")
        from tomoguide import truth

        a = truth.alignment_errors(c.truth_dir, c.out("exclude", "series"))["series"][item["series"]]
        k = int(np.argmin(np.abs(np.asarray(a["view_tilts_deg"]) - item["nominal_tilt_deg"])))
        err_A = a["view_error_px"][k] * a["pixel_size_A"]
        ok = err_A <= float(item.get("max_error_A", JUMP_FOLLOWED_A))
        return _answer(item, ok, f"kept ({sug}); its shift error {err_A:.0f} Å: " +
                       ("the alignment followed the jump" if ok else "the alignment lost it: exclude it"))
    if kind == "gain_orientation":
        f = c.facts.get("motion_ctf")
        if not f:
            return _answer(item, None, "no gain orientation recorded by the motion correction")
        return _answer(item, f["gain_right"], f"used '{next(iter(f['gain_used'].values()))}', "
                                              f"true '{f['gain_true']}'")
    if kind == "tilt_axis":
        a = c.facts["align"]["series"]
        worst = max(v["axis_error_deg"] for v in a.values())
        v0 = next(iter(a.values()))
        ok = worst <= float(item.get("max_error_deg", 1.0))
        return _answer(item, ok, f"found {v0['tilt_axis_deg']:.1f}° ({worst:.2f}° off the truth; the mdoc's "
                                 f"{item.get('mdoc_deg'):g}°)")
    if kind == "tilt_direction":
        d = c.facts["ctf_estimate"]["direction"]
        ok = all(v["direction_right"] for v in d.values())
        v0 = next(iter(d.values()))
        return _answer(item, ok, f"axis {v0['axis_deg']:.1f}° ({v0['error_mod360_deg']:+.0f}° from the truth mod "
                                 f"360): " + ("right hand" if ok else "mirrored: the axis must turn by 180°"))
    if kind == "pixel_size":
        per = c.facts["import_movies"]["series"]
        err = max(abs(v["pixel_size_error_pct"]) for v in per.values())
        used = next(iter(per.values()))["pixel_size_A"]
        ok = err <= float(item.get("max_error_pct", 0.5))
        return _answer(item, ok, f"{used:g} Å used" + ("" if ok else f" ({err:.0f} % off): type the true one"))
    if kind == "ice_thickness":
        ins = c.facts["reconstruct"]["inside"]
        ok = ins["n_true"] > 0 and ins["n_inside"] == ins["n_true"]
        s0 = next(iter(ins["series"].values()))
        return _answer(item, ok, f"tomogram {s0['thickness_A']:.0f} Å for ice of {ins['slab_thickness_A']:.0f} Å; "
                                 f"{ins['n_inside']} of {ins['n_true']} particles inside")
    if kind == "particle_count":
        tot = c.facts["pick"]
        ok = tot["recall"] is not None and tot["recall"] >= float(item.get("min_recall", 0.9))
        return _answer(item, ok, f"{tot['n_found']} of {tot['n_true']} found ({tot['n_picked']} picks)")
    return _answer(item, None, f"unknown check {kind!r}")


# ---- the whole project ----------------------------------------------------------------------------------------


def _safe_measures(fn: Callable[[], list[Measure]], step: str) -> list[Measure]:
    try:
        return fn()
    except Exception as exc:  # a figure that cannot be measured is reported, not fatal
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return [Measure(key=f"{step}.error", label="could not be measured", text=text, grade="n/a")]


def _step_grade(measures: list[Measure]) -> Grade:
    graded = [m.grade for m in measures if m.grade in _RANK]
    if not graded:
        return "n/a" if any(m.grade == "n/a" for m in measures) else "info"
    return max(graded, key=lambda g: _RANK[g])  # type: ignore[return-value]


def _context(proj: Any, truth_dir: Path) -> _Ctx:
    from tomoguide import truth
    from tomoguide.challenges import read_answer_key

    return _Ctx(proj=proj, truth_dir=Path(truth_dir), summary=truth.read_summary(truth_dir),
                answer_key=read_answer_key(truth_dir))


def _score_steps(c: _Ctx, step_ids: list[str]) -> list[StepScore]:
    from tomoguide.steps import registry

    numbers = {s.id: i for i, s in enumerate(registry.workflow(), start=1)}
    wanted = set(step_ids)
    needed = set(wanted)
    # answer checks and figures read facts of other steps: score those first (cheap ones) when they are done
    if "extract" in wanted:
        needed.add("pick")
    out = []
    for step_cls in registry.workflow():
        sid = step_cls.id
        if sid not in needed:
            continue
        st = c.proj.data.steps[sid]
        if st.status != "done":
            note = {"pending": "not run yet", "stale": f"stale: {st.stale_reason or 'parameters changed'}; run it "
                    "again", "failed": f"failed: {st.error or ''}"}.get(st.status, st.status)
            score = StepScore(step=sid, number=numbers[sid], title=step_cls.title, status=st.status, grade="not run",
                              note=note)
        else:
            measures = _safe_measures(lambda sid=sid: _SCORERS[sid](c), sid)
            for item in (c.answer_key or {}).get("items", []):
                if item["step"] == sid:
                    measures += _safe_measures(lambda item=item: [_check_answer(c, item)], sid)
            score = StepScore(step=sid, number=numbers[sid], title=step_cls.title, status=st.status,
                              grade=_step_grade(measures), measures=measures)
        if sid in wanted:
            out.append(score)
    return out


def score_project(proj: Any, truth_dir: Path | None = None, *, steps: list[str] | None = None,
                  found: str = "") -> ProjectScore:
    """Score every step (or ``steps``) of the open project ``proj`` against the truth (``truth_dir``, default:
    :func:`locate_truth`). Steps not done are "not run"."""
    from tomoguide.steps import registry

    if truth_dir is None:
        truth_dir, found = locate_truth(proj)
    c = _context(proj, truth_dir)
    ids = steps or registry.ids()
    scores = _score_steps(c, ids)
    challenge = None
    if c.answer_key:
        challenge = {k: c.answer_key.get(k) for k in ("challenge", "title", "brief", "story", "size")}
    return ProjectScore(project=str(proj.dir), name=proj.data.name, truth_dir=str(truth_dir), truth_found=found,
                        challenge=challenge, steps=scores, figures=c.figures)


def score_step(proj: Any, step_id: str, truth_dir: Path) -> StepScore:
    """One step's score (the truth panel of a wizard page)."""
    return _score_steps(_context(proj, truth_dir), [step_id])[0]


# ---------------------------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------------------------


def format_score(score: ProjectScore, *, meanings: bool = True) -> str:
    """The score as text: per step its grade, then each figure with its value, grade and thresholds (and what it
    means); the counts of grades at the end."""
    lines = [f"tomoguide score: {score.name} ({score.project})",
             f"truth: {score.truth_dir} ({score.truth_found})" if score.truth_found else f"truth: {score.truth_dir}"]
    if score.challenge:
        lines.append(f"challenge: {score.challenge.get('challenge')}: {score.challenge.get('title')} — "
                     f"{score.challenge.get('brief')}")
    for s in score.steps:
        lines.append("")
        head = f"{s.number:2d}. {s.title} [{s.step}]"
        lines.append(f"{head:<60} {s.grade.upper() if s.grade in _RANK else s.grade}")
        if s.note:
            lines.append(f"      {s.note}")
        for m in s.measures:
            grade = m.grade if m.grade != "info" else ""
            lines.append(f"    {m.label:<50} {grade:<10} {m.text}")
            if m.rule:
                lines.append(f"    {'':<50} {'':<10} ({m.rule})")
            if meanings and m.meaning:
                lines.append(f"    {'':<50} {'':<10} {m.meaning}")
    counts = score.counts()
    lines += ["", "figures: " + ", ".join(f"{n} {g}" for g, n in counts.items())
              + f"; steps not run: {sum(s.grade == 'not run' for s in score.steps)}"]
    return "\n".join(lines)
