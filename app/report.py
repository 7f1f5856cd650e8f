"""The class report: several trainees' scores side by side in ONE self-contained HTML file (issue 16).

``tomoguide class-report PROJECT... --out report.html`` (and ``tomoguide score PROJECT --html FILE`` for one
project) writes a single HTML file with inline CSS and inline SVG figures, readable offline in any browser and
printable: no script, no external file, no network. It holds

* per trainee: the project, the truth folder, the challenge (answer key) if any, the counts of grades;
* the per-step grade table: one row per figure of :data:`tomoguide.score.THRESHOLDS` that any project has, one
  column per trainee, each cell coloured by its grade with the value (the full text and the thresholds in the
  cell's tooltip and in the details below);
* figures: the FSC between the half maps and the FSC against the true map of each trainee's final map (the last
  averaging step done), and the tilt-series defocus against the tilt (fitted dots, the truth as a line) per
  trainee;
* the table of grades (thresholds) and, per trainee, every figure with its text and meaning.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tomoguide.score import MAP_STEPS, THRESHOLDS, Measure, ProjectScore

GRADE_COLOURS = {"good": "#c8e6c9", "acceptable": "#fff0b3", "poor": "#ffcdd2", "not run": "#e0e0e0",
                 "info": "#e3f2fd", "n/a": "#f5f5f5"}
# distinguishable on screen and in grey print (Okabe-Ito)
LINE_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


# ---------------------------------------------------------------------------------------------------------------
# SVG line plots
# ---------------------------------------------------------------------------------------------------------------


def svg_plot(curves: Sequence[dict[str, Any]], *, x_range: tuple[float, float], y_range: tuple[float, float],
             x_label: str, y_label: str, title: str = "", x_ticks: Sequence[tuple[float, str]] = (),
             y_ticks: Sequence[tuple[float, str]] = (), hlines: Sequence[tuple[float, str]] = (),
             width: int = 460, height: int = 300, legend: bool = True) -> str:
    """An inline SVG plot. ``curves``: dicts with ``x``, ``y`` (sequences), ``label``, ``colour``, optional
    ``dash`` (SVG dash array), ``points`` (True: markers only), ``marker_colours`` (per point). ``hlines``:
    horizontal reference lines (value, label). Values outside the ranges are clipped to the frame."""
    left, right, top, bottom = 58, 14, 26 if title else 10, 44
    pw, ph = width - left - right, height - top - bottom
    x0, x1 = x_range
    y0, y1 = y_range

    def sx(x: float) -> float:
        return left + (min(max(x, x0), x1) - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (min(max(y, y0), y1) - y0) / (y1 - y0) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img" '
             f'aria-label="{_e(title or y_label)}">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#ffffff" stroke="#555"/>']
    if title:
        parts.append(f'<text x="{left + pw / 2:.1f}" y="16" text-anchor="middle" font-size="12" '
                     f'font-weight="bold">{_e(title)}</text>')
    for v, lab in x_ticks:
        if x0 <= v <= x1:
            parts.append(f'<line x1="{sx(v):.1f}" y1="{top}" x2="{sx(v):.1f}" y2="{top + ph}" stroke="#eee"/>')
            parts.append(f'<text x="{sx(v):.1f}" y="{top + ph + 14}" text-anchor="middle">{_e(lab)}</text>')
    for v, lab in y_ticks:
        if y0 <= v <= y1:
            parts.append(f'<line x1="{left}" y1="{sy(v):.1f}" x2="{left + pw}" y2="{sy(v):.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{left - 5}" y="{sy(v) + 4:.1f}" text-anchor="end">{_e(lab)}</text>')
    for v, lab in hlines:
        parts.append(f'<line x1="{left}" y1="{sy(v):.1f}" x2="{left + pw}" y2="{sy(v):.1f}" stroke="#888" '
                     f'stroke-dasharray="2,3"/>')
        parts.append(f'<text x="{left + pw - 3}" y="{sy(v) - 3:.1f}" text-anchor="end" fill="#666">{_e(lab)}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{_e(x_label)}</text>')
    parts.append(f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + ph / 2:.1f})">{_e(y_label)}</text>')
    for c in curves:
        pts = [(float(x), float(y)) for x, y in zip(c["x"], c["y"], strict=True)
               if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
        if not pts:
            continue
        colour = c.get("colour", "#000")
        if c.get("points"):
            mc = c.get("marker_colours") or [colour] * len(pts)
            for (x, y), m in zip(pts, mc, strict=False):
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{m}" stroke="none"/>')
        else:
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            dash = f' stroke-dasharray="{c["dash"]}"' if c.get("dash") else ""
            parts.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.6"{dash}/>')
    if legend:  # below the plot: it never hides a curve
        labelled = [c for c in curves if c.get("label")]
        for i, c in enumerate(labelled):
            y = height + 16 * i + 8
            colour = c.get("colour", "#000")
            if c.get("points"):
                parts.append(f'<circle cx="{left + 8}" cy="{y - 4}" r="3" fill="{colour}"/>')
            else:
                dash = f' stroke-dasharray="{c["dash"]}"' if c.get("dash") else ""
                parts.append(f'<line x1="{left}" y1="{y - 4}" x2="{left + 16}" y2="{y - 4}" stroke="{colour}" '
                             f'stroke-width="2"{dash}/>')
            parts.append(f'<text x="{left + 22}" y="{y}" fill="#222">{_e(c["label"])}</text>')
        extra = 16 * len(labelled) + 4 if labelled else 0
        parts[0] = parts[0].replace(f'height="{height}" viewBox="0 0 {width} {height}"',
                                    f'height="{height + extra}" viewBox="0 0 {width} {height + extra}"')
    parts.append("</svg>")
    return "".join(parts)


def _resolution_ticks(f_max: float) -> list[tuple[float, str]]:
    """Ticks of a spatial-frequency axis (Å⁻¹) labelled in Å."""
    out = []
    for res in (100, 50, 33, 25, 20, 16, 12, 10, 8, 6, 5, 4, 3):
        f = 1.0 / res
        if f <= f_max * 1.0001:
            out.append((f, f"{res}"))
    return out


def _final_map_step(score: ProjectScore) -> str | None:
    fsc = score.figures.get("fsc", {})
    for step in reversed(MAP_STEPS):
        if step in fsc:
            return step
    return None


def fsc_figures(scores: Sequence[ProjectScore]) -> str:
    """Two SVG plots: the FSC between the half maps and against the true map of each project's final map."""
    halves, truths = [], []
    f_max = 0.0
    for i, s in enumerate(scores):
        step = _final_map_step(s)
        if step is None:
            continue
        rec = s.figures["fsc"][step]
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        label = f"{s.name} ({step}, {rec['voxel_A']:g} Å voxels)"
        if rec.get("half_maps"):
            h = rec["half_maps"]
            halves.append({"x": h["freq_per_A"], "y": h["fsc"], "label": label, "colour": colour})
            f_max = max(f_max, max(h["freq_per_A"]))
        if rec.get("vs_truth"):
            t = rec["vs_truth"]
            truths.append({"x": t["freq_per_A"], "y": t["fsc"], "label": label, "colour": colour})
            f_max = max(f_max, max(t["freq_per_A"]))
    if not halves and not truths:
        return "<p class='none'>No trainee has a map yet (no averaging step done).</p>"
    ticks = _resolution_ticks(f_max)
    yt = [(v, f"{v:g}") for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    common = {"x_range": (0.0, f_max), "y_range": (-0.1, 1.02), "x_label": "resolution (Å)", "y_label": "FSC",
              "x_ticks": ticks, "y_ticks": yt}
    out = []
    if halves:
        out.append(svg_plot(halves, title="FSC between the half maps", hlines=[(0.143, "0.143")], **common))
    if truths:
        out.append(svg_plot(truths, title="FSC against the true map", hlines=[(0.5, "0.5")], **common))
    return "<div class='figs'>" + "".join(f"<figure>{o}</figure>" for o in out) + "</div>"


def defocus_figures(scores: Sequence[ProjectScore]) -> str:
    """Per project an SVG plot of the tilt-series defocus (µm) against the tilt: fitted (dots; failed fits red)
    and true (line), every series."""
    figs = []
    all_vals: list[float] = []
    for s in scores:
        for d in s.figures.get("defocus", {}).values():
            all_vals += [v / 1e4 for v in d["fit_A"] + d["true_A"] if v is not None and math.isfinite(v)]
    if not all_vals:
        return "<p class='none'>No trainee has estimated the tilt-series CTF yet.</p>"
    lo, hi = min(all_vals), max(all_vals)
    pad = max(0.1, 0.08 * (hi - lo))
    y_range = (lo - pad, hi + pad)
    step = 0.5 if hi - lo < 3 else 1.0
    yt = [(k * step, f"{k * step:g}") for k in range(int(math.floor(y_range[0] / step)),
                                                      int(math.ceil(y_range[1] / step)) + 1)]
    xt = [(v, f"{v:g}") for v in range(-60, 61, 20)]
    for i, s in enumerate(scores):
        curves = []
        data = s.figures.get("defocus", {})
        for k, (name, d) in enumerate(sorted(data.items())):
            colour = LINE_COLOURS[k % len(LINE_COLOURS)]
            order = sorted(range(len(d["tilt_deg"])), key=lambda j, d=d: d["tilt_deg"][j])
            tilts = [d["tilt_deg"][j] for j in order]
            curves.append({"x": tilts, "y": [d["true_A"][j] / 1e4 for j in order], "colour": colour,
                           "label": f"{name} true" if len(data) > 1 else "true", "dash": "5,3"})
            curves.append({"x": tilts, "y": [d["fit_A"][j] / 1e4 for j in order], "colour": colour, "points": True,
                           "marker_colours": ["#d32f2f" if d["failed"][j] else colour for j in order],
                           "label": f"{name} fitted" if len(data) > 1 else "fitted (red: fit failed)"})
        if not curves:
            figs.append(f"<figure><div class='empty'>{_e(s.name)}: no CTF estimate yet</div></figure>")
            continue
        figs.append("<figure>" + svg_plot(curves, x_range=(-65, 65), y_range=y_range, x_label="tilt (°)",
                                          y_label="defocus (µm)", title=s.name, x_ticks=xt, y_ticks=yt, width=360,
                                          height=260) + "</figure>")
    return "<div class='figs'>" + "".join(figs) + "</div>"


# ---------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------


def short_value(m: Measure) -> str:
    """A cell's value: the number with its unit, yes/no, or the grade's word."""
    v = m.value
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)) and math.isfinite(float(v)):
        x = float(v)
        text = f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"
        return f"{text}{m.unit}" if m.unit in ("°", "") else f"{text} {m.unit}"
    if m.grade == "info":
        text = m.short or m.text
        return text if len(text) <= 40 else text[:38] + "…"
    return m.grade


def _rows(scores: Sequence[ProjectScore]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(step, step title, [(measure key, label)]) in wizard order, every figure any project has."""
    out: list[tuple[str, str, list[tuple[str, str]]]] = []
    first = scores[0]
    for st in first.steps:
        keys: list[tuple[str, str]] = []
        for s in scores:
            try:
                ss = s.step(st.step)
            except KeyError:
                continue
            for m in ss.measures:
                if (m.key, m.label) not in keys and m.key not in [k for k, _ in keys]:
                    keys.append((m.key, m.label))
        out.append((st.step, f"{st.number}. {st.title}", keys))
    return out


def grade_table(scores: Sequence[ProjectScore]) -> str:
    """The per-step grade table: a step row with each trainee's step grade, then a row per figure."""
    head = "".join(f"<th>{_e(s.name)}</th>" for s in scores)
    lines = [f"<table class='grades'><thead><tr><th>step / figure</th>{head}</tr></thead><tbody>"]
    for step, title, keys in _rows(scores):
        cells = []
        for s in scores:
            try:
                ss = s.step(step)
            except KeyError:
                cells.append("<td></td>")
                continue
            tip = ss.note or ss.status
            cells.append(f"<td class='g' style='background:{GRADE_COLOURS.get(ss.grade, '#fff')}' "
                         f"title='{_e(tip)}'><b>{_e(ss.grade)}</b></td>")
        lines.append(f"<tr class='step'><th>{_e(title)}</th>{''.join(cells)}</tr>")
        for key, label in keys:
            cells = []
            for s in scores:
                m = None
                try:
                    m = next((x for x in s.step(step).measures if x.key == key), None)
                except KeyError:
                    pass
                if m is None:
                    cells.append("<td class='m'></td>")
                    continue
                tip = m.text + (f" — {m.rule}" if m.rule else "")
                cells.append(f"<td class='m' style='background:{GRADE_COLOURS.get(m.grade, '#fff')}' "
                             f"title='{_e(tip)}'>{_e(short_value(m))}"
                             f"{'' if m.grade == 'info' else f' <small>{_e(m.grade)}</small>'}</td>")
            cls = " class='answer'" if key.startswith("answer:") else ""
            lines.append(f"<tr{cls}><td class='label'>{_e(label)}</td>{''.join(cells)}</tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


def thresholds_html() -> str:
    rows = []
    for t in THRESHOLDS:
        step = t.step or ("every averaging step" if t.key.startswith("map.") else "the challenge's step")
        rows.append(f"<tr><td>{_e(t.label)}</td><td>{_e(step)}</td><td>{_e(t.rule())}</td>"
                    f"<td>{_e(t.meaning)}</td></tr>")
    return ("<table class='thr'><thead><tr><th>figure</th><th>step</th><th>grades</th><th>what it means</th></tr>"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>")


def details_html(score: ProjectScore) -> str:
    rows = []
    for st in score.steps:
        rows.append(f"<tr class='step'><th colspan='3'>{st.number}. {_e(st.title)}: {_e(st.grade)}"
                    f"{' — ' + _e(st.note) if st.note else ''}</th></tr>")
        for m in st.measures:
            rows.append(f"<tr><td style='background:{GRADE_COLOURS.get(m.grade, '#fff')}'>{_e(m.grade)}</td>"
                        f"<td>{_e(m.label)}</td><td>{_e(m.text)}"
                        f"{'<br><small>' + _e(m.rule) + '</small>' if m.rule else ''}"
                        f"{'<br><small class=mean>' + _e(m.meaning) + '</small>' if m.meaning else ''}</td></tr>")
    return "<table class='details'>" + "".join(rows) + "</table>"


def _summary_table(scores: Sequence[ProjectScore]) -> str:
    rows = []
    for i, s in enumerate(scores):
        c = s.counts()
        not_run = sum(st.grade == "not run" for st in s.steps)
        final = _final_map_step(s)
        res = "—"
        if final is not None:
            r = s.figures["fsc"][final].get("resolution_A")
            res = f"{r:.1f} Å ({final})" if r else f"— ({final})"
        chal = s.challenge.get("title") if s.challenge else "—"
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        rows.append(f"<tr><td><span class='sw' style='background:{colour}'></span>{_e(s.name)}</td>"
                    f"<td><code>{_e(s.project)}</code></td><td>{_e(chal)}</td>"
                    f"<td style='background:{GRADE_COLOURS['good']}'>{c['good']}</td>"
                    f"<td style='background:{GRADE_COLOURS['acceptable']}'>{c['acceptable']}</td>"
                    f"<td style='background:{GRADE_COLOURS['poor']}'>{c['poor']}</td><td>{not_run}</td>"
                    f"<td>{_e(res)}</td></tr>")
    return ("<table class='summary'><thead><tr><th>trainee</th><th>project</th><th>challenge</th><th>good</th>"
            "<th>acceptable</th><th>poor</th><th>steps not run</th><th>final resolution</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ccc}
p.meta{color:#555;margin:0 0 12px}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
table.grades th{background:#f0f0f0;position:sticky;top:0}
table.grades tr.step th{text-align:left;background:#fafafa;font-weight:bold}
table.grades td.label{padding-left:18px;color:#333;max-width:360px}
table.grades td.m,table.grades td.g{text-align:center;min-width:110px;white-space:nowrap}
table.grades tr.answer td.label{font-weight:bold}
td small{color:#555}small.mean{color:#777}
.figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}
.sw{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;border:1px solid #ccc}
details{margin:6px 0}summary{cursor:pointer;font-weight:bold}
table.details td:first-child{white-space:nowrap}
.none{color:#777}.empty{width:360px;height:260px;border:1px dashed #bbb;display:flex;align-items:center;
justify-content:center;color:#777}
@media print{table.grades th{position:static}details{page-break-inside:avoid}}
"""


def render_report(scores: Sequence[ProjectScore], *, title: str = "tomoguide class report") -> str:
    """The report as one HTML document (a string)."""
    from tomoguide import __version__

    if not scores:
        raise ValueError("a report needs at least one project")
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    legend = "".join(f"<span style='background:{GRADE_COLOURS[g]}'>{g}</span>"
                     for g in ("good", "acceptable", "poor", "not run", "info", "n/a"))
    challenges = {s.challenge.get("challenge"): s.challenge for s in scores if s.challenge}
    chal_html = "".join(f"<p><b>Challenge {_e(k)}: {_e(v.get('title'))}.</b> For the trainee: {_e(v.get('brief'))}"
                        f"<br><small>{_e(v.get('story'))}</small></p>" for k, v in challenges.items())
    truths = sorted({s.truth_dir for s in scores})
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>{len(scores)} project(s) scored against the simulator's truth on {now} by tomoguide "
        f"{_e(__version__)}; truth: {', '.join(f'<code>{_e(t)}</code>' for t in truths)}</p>",
        chal_html,
        _summary_table(scores),
        "<h2>Grades per step</h2>",
        f"<p class='legend'>{legend} — hover over a cell for the measured value and the thresholds; every figure's "
        "meaning is in the details at the end.</p>",
        grade_table(scores),
        "<h2>FSC of the final maps</h2>", fsc_figures(scores),
        "<h2>Defocus against the tilt (tilt-series CTF estimation)</h2>", defocus_figures(scores),
        "<h2>Details per trainee</h2>",
        "".join(f"<details><summary>{_e(s.name)}</summary>{details_html(s)}</details>" for s in scores),
        "<h2>The grades' thresholds</h2>", thresholds_html(),
    ]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width'><title>{_e(title)}</title><style>{CSS}</style>"
            "</head><body>" + "\n".join(body) + "</body></html>\n")


def write_report(scores: Sequence[ProjectScore], out: Path, *, title: str = "tomoguide class report") -> Path:
    """Write :func:`render_report` to ``out`` (UTF-8); returns the path."""
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(scores, title=title), encoding="utf-8")
    return out
