"""The command line: ``tomoguide new | run | status | export | inspect | simulate | demo | gui | screenshots``.

Every step's parameters come from its declaration: ``--set STEP.PARAM=VALUE`` is validated by the step's
parameter model, so a typo or an out-of-range value is refused with the reason. Long work shows a progress bar
(tqdm, on stderr). Errors a user can act on (a wrong path, a corrupt file, a refused run) are printed as one
line ``tomoguide: error: ...`` with exit status 2; a step that fails exits with 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tomoguide import __version__
from tomoguide.recent import remember_project

EXIT_USAGE = 2
EXIT_FAILED = 1


class CliError(Exception):
    """An error to print as one line (exit status 2)."""


# ---------------------------------------------------------------------------------------------------------------
# --set parsing
# ---------------------------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false, null, lists), an empty string means None
    ("read it from the data"), otherwise the text itself (paths, names)."""
    if text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sets(items: Sequence[str] | None, *, default_step: str | None = None) -> dict[str, dict[str, Any]]:
    """``["import_movies.tilt_axis_deg=85", ...]`` -> ``{"import_movies": {"tilt_axis_deg": 85}}``."""
    from tomoguide.steps import registry

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise CliError(f"--set {item!r}: expected STEP.PARAM=VALUE")
        key, value = item.split("=", 1)
        if "." in key:
            step_id, name = key.split(".", 1)
        elif default_step:
            step_id, name = default_step, key
        else:
            raise CliError(f"--set {item!r}: expected STEP.PARAM=VALUE")
        try:
            step_cls = registry.get(step_id)
        except KeyError as exc:
            raise CliError(f"--set {item!r}: {exc.args[0]}") from None
        fields = step_cls.Params.model_fields
        if name not in fields:
            raise CliError(f"--set {item!r}: step {step_id} has no parameter {name!r}; "
                           f"its parameters are: {', '.join(fields)}")
        out.setdefault(step_id, {})[name] = parse_value(value)
    return out


def _validation_message(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            parts.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
        return "; ".join(parts)
    return str(exc)


# ---------------------------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------------------------


#: ``tomoguide new --entry`` names (no spaces, for a shell) -> the entry keys of :mod:`tomoguide.entries`
CLI_ENTRIES = {"movies": "movies", "tilt-series": "tilt series", "alignment": "alignment", "particles": "particles"}


def cmd_new(args: argparse.Namespace) -> int:
    from tomoguide.entries import entry_params
    from tomoguide.project import Project

    entry = CLI_ENTRIES[args.entry]
    data = args.data or args.movies or ""
    if args.movies and args.data and Path(args.movies) != Path(args.data):
        raise CliError("--movies and --data name two different folders: give one")
    if entry != "particles" and not data:
        raise CliError(f"--entry {args.entry}: give the data folder with --data DIR"
                       + (" (or --movies DIR)" if entry == "movies" else ""))
    if data and not Path(data).is_dir():
        raise CliError(f"--data {data}: no such folder")
    try:
        params = entry_params(entry, data=data, alignment=args.alignment or "", ctf=args.ctf or "",
                              particles=args.particles or "")
    except ValueError as exc:  # a missing folder or file, or an entry this version cannot start from
        raise CliError(f"--entry {args.entry}: {exc}") from None
    for step_id, values in parse_sets(args.set, default_step="import_movies").items():
        params.setdefault(step_id, {}).update(values)  # --set wins over what the entry sets
    try:  # every value validated first, project.json written once: a killed `new` leaves all or nothing
        proj = Project.create(args.project, params=params)
    except Exception as exc:
        raise CliError(f"--set: {_validation_message(exc)}" if type(exc).__name__ == "ValidationError"
                       else str(exc)) from None
    try:
        report = import_report(proj) if entry != "particles" else ""
    finally:
        proj.close()
    remember_project(proj.dir)  # the wizard's start screen lists it
    where = Path(data).resolve() if data else Path(args.particles).resolve()
    print(f"created project {proj.dir} on {where} (entry: {args.entry})")
    if report:
        print(report)
    return 0


def import_report(proj: Any) -> str:
    """What the import step will find with the project's parameters (``tomoguide new`` prints it before any run):
    per tilt series the mdoc, tilts, movies found (where) or missing (named), gain, tilt axis, pixel size and dose
    with their sources, and the problems that would refuse or worry the run."""
    from tomoguide.compute.io.errors import FormatError
    from tomoguide.steps.import_movies import format_survey, survey

    try:
        params = proj.params("import_movies")
        sv = survey(params)
    except (FormatError, OSError, ValueError) as exc:
        return f"import: {exc}"
    text = format_survey(sv)
    if not sv.mdocs:
        text += f"\nno file matches the pattern {params.pattern!r}: set it with --set pattern=..."
    elif sv.errors:
        text += "\n`tomoguide run` refuses to import until these errors are fixed (--set import_movies.PARAM=VALUE)"
    return text


def _progress_bar(title: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=1000, desc=title, unit="‰", leave=True, file=sys.stderr,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
                disable=None)


def run_steps(project_dir: Path, *, until: str | None = None, only: str | None = None,
              sets: dict[str, dict[str, Any]] | None = None, force: bool = False,
              quiet: bool = False, use_backup: bool = False, break_lock: bool = False,
              cluster: str | None = None, items: list[str] | None = None) -> int:
    """Run the workflow's steps in order (skipping up-to-date ones); returns an exit status.

    ``cluster``: where the steps' units run (``inline``, ``local``, ``slurm``; None: ``$TOMOGUIDE_CLUSTER``, else
    the settings file, else ``local``: :mod:`tomoguide.cluster`); one executor serves every step of the call and
    starts only when a step has units to spread. ``items`` (with ``only``): run that step for these tilt series
    only and merge the results into its current run (:mod:`tomoguide.items`).

    ``sets`` are applied as one transaction before anything runs: values a step's checks refuse leave the
    project file as it was. Before rerunning a step whose later steps are done, says which may become stale,
    and after the run which did (identical results keep them done)."""
    from tomoguide.project import Project, ProjectError
    from tomoguide.runner import ParamsRefused, RunRefused, StepFailed, StepRun, run_to_end, set_params_checked
    from tomoguide.steps import registry

    ids = registry.ids()
    for name in (until, only):
        if name is not None and name not in ids:
            raise CliError(f"unknown step {name!r}; the steps are: {', '.join(ids)}")
    if items and not only:
        raise CliError("--item needs --only STEP (the step to run for these tilt series)")
    from tomoguide.cluster import LazyExecutor

    try:
        executor = LazyExecutor(cluster)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        proj = Project.open(project_dir, use_backup=use_backup, break_lock=break_lock)
    except ProjectError as exc:
        raise CliError(str(exc)) from None
    say = (lambda text: None) if quiet else (lambda text: print(text, file=sys.stderr))
    try:
        for note in proj.notes:
            say(f"note: {note}")
        if sets:
            try:
                stale = set_params_checked(proj, sets)
            except ParamsRefused as exc:
                raise CliError(f"--set {exc.step_id}: refused: " + "; ".join(i.message for i in exc.issues)
                               + " (nothing was saved)") from None
            except Exception as exc:
                raise CliError(f"--set: {_validation_message(exc)} (nothing was saved)") from None
            if stale:
                say(f"note: now stale (parameters changed): {', '.join(stale)}")
        if only:
            todo = [only]
        else:
            todo = ids[: ids.index(until) + 1] if until else ids
        needed_ids = [s for s in ids if proj.is_needed(s)]
        for step_id in todo:
            if step_id != only and not proj.is_needed(step_id):
                k = ids.index(step_id)
                why = ("the project enters later" if needed_ids and k < ids.index(needed_ids[0])
                       else "the project ends before it: nothing to run it on at this entry point"
                       if needed_ids and k > ids.index(needed_ids[-1])
                       else "what it makes comes with the imported data")
                say(f"{step_id}: not needed ({why}), skipped")
                continue
            if not force and proj.is_up_to_date(step_id) and step_id != only:
                say(f"{step_id}: up to date, skipped")
                continue
            at_risk = proj.steps_at_risk(step_id)
            run = StepRun(proj, step_id, on_log=None if quiet else (lambda m: print(f"  {m}", file=sys.stderr)),
                          executor=executor, items=items if step_id == only else None)
            try:
                warnings = run.preflight()
            except RunRefused as exc:
                raise CliError(f"{step_id} cannot run: " + "; ".join(i.message for i in exc.issues)) from None
            for w in warnings:
                say(f"{step_id}: {w.level}: {w.message}")
            if at_risk:
                say(f"{step_id}: note: {len(at_risk)} later step(s) are done ({', '.join(at_risk)}): they stay done "
                    f"if this run gives identical results, otherwise they become stale (their results are kept)")
            t0 = time.perf_counter()
            bar = None if quiet else _progress_bar(registry.get(step_id).title)

            def on_progress(p: Any, bar: Any = bar) -> None:
                if bar is None:
                    return
                if p.fraction is not None:
                    bar.n = int(1000 * max(0.0, min(1.0, p.fraction)))
                bar.set_postfix_str(p.message[:60], refresh=False)
                bar.refresh()

            try:
                st = run_to_end(run, on_progress)
            except StepFailed as exc:
                if bar is not None:
                    bar.close()
                print(f"tomoguide: {step_id} failed: {proj.data.steps[step_id].error}", file=sys.stderr)
                print(f"  ({exc}; the log is in the project file)", file=sys.stderr)
                return EXIT_FAILED
            if bar is not None:
                bar.close()
            dt = time.perf_counter() - t0
            say(f"{step_id}: done in {dt:.1f} s")
            if at_risk:
                now_stale = [s for s in at_risk if not proj.is_up_to_date(s)]
                say(f"{step_id}: now stale: {', '.join(now_stale)}" if now_stale else
                    f"{step_id}: identical results: the later steps stay done")
            st.metrics.setdefault("wall_time_s", round(dt, 2))
            proj.save()
        if not quiet and ids[-1] in todo and proj.is_up_to_date(ids[-1]):
            print_final_summary(proj)
    finally:
        executor.close()
        proj.close()
    return 0


def print_final_summary(proj: Any) -> None:
    """The end of the workflow on the terminal: the map and half maps with their paths, the resolution and
    Nyquist, what they mean, and the command lines of the 3D viewers (:mod:`tomoguide.results`)."""
    from tomoguide.results import final_summary, summary_text

    summary = final_summary(proj)
    if summary is not None:
        print("\n" + summary_text(summary, proj.dir))


def cmd_run(args: argparse.Namespace) -> int:
    if (Path(args.project) / "project.json").is_file():
        remember_project(Path(args.project))
    return run_steps(Path(args.project), until=args.until, only=args.only, sets=parse_sets(args.set),
                     force=args.force, use_backup=args.use_backup, break_lock=args.break_lock,
                     cluster=args.cluster, items=args.item)


def cmd_status(args: argparse.Namespace) -> int:
    from tomoguide.project import Project, ProjectError

    try:
        proj = Project.open(args.project, readonly=True, use_backup=args.use_backup)
    except ProjectError as exc:
        raise CliError(str(exc)) from None
    info = proj.status_dict()
    if args.json:
        print(json.dumps(info, indent=1, default=str, allow_nan=False) if _finite(info)
              else json.dumps(_nan_to_none(info), indent=1, default=str))
        return 0
    print(f"project {info['project']}")
    if args.use_backup:
        print("  (read from the backup project.json.bak; `tomoguide run --use-backup` makes it the project)")
    for key in proj.missing_data:
        print(f"  data missing: {proj.data_problem(key.split('.', 1)[0])}")
    for s in info["steps"]:
        line = f"  {s['id']:<28} {s['status']:<12}"
        if not s.get("needed", True):
            line = f"  {s['id']:<28} {'not needed':<12}"
        elif s.get("origin"):
            line += f" [{s['origin']}]"
        if s["status"] == "failed" and s["error"]:
            line += f" {s['error']}"
        elif s["status"] == "stale" and s["stale_reason"]:
            line += f" ({s['stale_reason']})"
        elif s["metrics"]:
            short = {k: v for k, v in s["metrics"].items() if isinstance(v, (int, float, str))}
            line += " " + ", ".join(f"{k}={v}" for k, v in list(short.items())[:4])
        print(line)
    return 0


def _finite(obj: Any) -> bool:
    import math

    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    return True


def _nan_to_none(obj: Any) -> Any:
    import math

    import numpy as np

    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_nan_to_none(v) for v in obj]
    return obj


def cmd_relocate(args: argparse.Namespace) -> int:
    """The project's data moved: record the new folder (checked to hold the same data)."""
    from tomoguide.project import Project, ProjectError

    try:
        with Project.open(args.project, break_lock=args.break_lock) as proj:
            changed = proj.relocate(args.data, key=args.param, force=args.force)
    except ProjectError as exc:
        raise CliError(str(exc)) from None
    for line in changed:
        print(line)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the project's results for RELION 5 or IMOD (:mod:`tomoguide.export`)."""
    from tomoguide.export import ExportError, export_project, summary_lines

    try:
        result = export_project(Path(args.project), args.to, Path(args.dir), force=args.force)
    except ExportError as exc:
        raise CliError(str(exc)) from None
    for line in summary_lines(result):
        print(line)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from tomoguide.inspect import describe_file, format_facts

    from tomoguide.compute.io.errors import FormatError

    status = 0
    results = []
    for f in args.files:
        try:
            facts = describe_file(Path(f), strict=not args.permissive)
        except (FormatError, OSError) as exc:  # they carry FILE: FIELD: message
            print(f"tomoguide: error: {_file_error(f, exc)}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        except Exception as exc:  # noqa: BLE001 - a reader's bug: one line naming the file, said to be a bug
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            print(f"tomoguide: error: {f}: internal error while reading it ({type(exc).__name__}: {text}); "
                  "please report it", file=sys.stderr)
            status = EXIT_USAGE
            continue
        results.append(facts)
        if not args.json:
            print(format_facts(facts))
    if args.json:  # valid JSON: a value that is not finite is written as null
        out = results if len(args.files) != 1 else (results[0] if results else {})
        print(json.dumps(_nan_to_none(out), indent=1, default=str, allow_nan=False))
    return status


def _file_error(path: str, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"{path}: no such file"
    if path not in text and Path(path).name not in text:
        return f"{path}: {text}"
    return text


def simulation_parameters_text() -> str:
    """Every simulation parameter with its unit, the presets' values and its help (``simulate --list``)."""
    from tomoguide import synth

    lines = ["simulation parameters (set with --set NAME=VALUE):", ""]
    for name, f in synth.SimParams.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        unit = extra.get("unit", "")
        presets = ", ".join(f"{p}={getattr(v, name)!r}" for p, v in synth.PRESETS.items())
        lines.append(f"  {name} [{unit}]  ({presets})" if unit else f"  {name}  ({presets})")
        if f.description:
            lines.append(f"      {f.description}")
    lines += ["", "scenarios (--scenario NAME; other SerialEM / vendor conventions with planted problems):", ""]
    for name, note in synth.SCENARIO_NOTES.items():
        lines.append(f"  {name}: {note}")
    from tomoguide.challenges import challenges_text

    lines += ["", challenges_text()]
    return "\n".join(lines)


def cmd_simulate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from tomoguide import synth

    if args.list:
        if args.challenge is not None:  # `simulate --challenge --list`: the challenges only
            from tomoguide.challenges import challenges_text

            print(challenges_text())
        else:
            print(simulation_parameters_text())
        return 0
    if args.scenario is not None and args.preset is not None:
        raise CliError("give either --preset or --scenario, not both")
    if args.scenario is not None and args.challenge is not None:
        raise CliError("give either --scenario or --challenge, not both")
    if args.challenge is not None:  # a trainer's session: a planted problem and its answer key
        from tomoguide.challenges import CHALLENGES, challenge_params

        if args.challenge not in CHALLENGES:
            raise CliError(f"--challenge {args.challenge!r}: unknown; choose one of {', '.join(CHALLENGES)} "
                           "(`tomoguide simulate --challenge --list` describes them)")
        params = challenge_params(args.challenge, args.preset or "small")
        label = f"challenge {args.challenge}" + (" (tiny)" if args.preset == "tiny" else "")
    elif args.scenario is not None:
        if args.scenario not in synth.SCENARIOS:
            raise CliError(f"--scenario {args.scenario!r}: unknown; choose one of {', '.join(synth.SCENARIOS)}")
        params, label = synth.SCENARIOS[args.scenario].model_copy(), args.scenario
    else:
        label = args.preset or "small"
        params = synth.PRESETS[label].model_copy()
    values = {}
    for item in args.set or []:
        if "=" not in item:
            raise CliError(f"--set {item!r}: expected PARAM=VALUE")
        k, v = item.split("=", 1)
        values[k] = parse_value(v)
    if args.seed is not None:
        values["seed"] = args.seed
    try:
        params = synth.SimParams.model_validate({**params.model_dump(), **values})
    except ValidationError as exc:  # a whole-model check has no field: its message alone, not the input
        msgs = [e["msg"].removeprefix("Value error, ") if not e["loc"] else None for e in exc.errors()]
        text = _validation_message(exc) if None in msgs else "; ".join(m for m in msgs if m)
        raise CliError(f"--set: {text}") from None
    except Exception as exc:
        raise CliError(f"--set: {_validation_message(exc)}") from None
    out = Path(args.out)
    bar = _progress_bar(f"simulating ({label})")

    def progress(fraction: float, message: str) -> None:
        bar.n = int(1000 * fraction)
        bar.set_postfix_str(message[:60], refresh=False)
        bar.refresh()

    t0 = time.perf_counter()
    summary = synth.generate(out, params, progress=progress)
    bar.close()
    print(f"wrote {out / 'data'} and {out / 'truth'} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    del summary
    if args.challenge is not None:
        from tomoguide.challenges import write_answer_key

        key = write_answer_key(args.challenge, out / "truth", "tiny" if args.preset == "tiny" else "small")
        print(f"challenge {args.challenge}: {key['title']}. For the trainee: {key['brief']}")
        print(f"the session: {out / 'data'}; the answer key (keep it from the trainee): "
              f"{out / 'truth' / 'answer_key.json'}; after the run: tomoguide score PROJECT")
    return 0


def _open_for_score(project: str, truth: str | None) -> tuple[Any, Path, str]:
    """Open a project read-only and find its truth folder (``truth``: given with --truth); record the folder in the
    project when it was found by looking (a short writable open; skipped when another program holds the project)."""
    from tomoguide.project import Project, ProjectError
    from tomoguide.score import TruthNotFound, locate_truth, record_truth

    try:
        proj = Project.open(project, readonly=True)
    except ProjectError as exc:
        raise CliError(str(exc)) from None
    try:
        truth_dir, how = locate_truth(proj, Path(truth) if truth else None)
    except (TruthNotFound, ValueError) as exc:
        raise CliError(str(exc)) from None
    if how == "found beside the data":  # (a folder given with --truth is used, not recorded)
        try:
            with Project.open(project) as writable:
                if record_truth(writable, truth_dir):
                    how += "; recorded in the project"
        except Exception:  # noqa: BLE001 - held by a running program, read-only folder: scoring goes on
            pass
    return proj, truth_dir, how


def cmd_score(args: argparse.Namespace) -> int:
    from tomoguide.score import format_score, score_project, thresholds_table

    if args.thresholds:
        print(thresholds_table())
        if args.project is None:
            return 0
    if args.project is None:
        raise CliError("score: give the project folder (or --thresholds alone for the table of grades)")
    proj, truth_dir, how = _open_for_score(args.project, args.truth)
    steps = None
    if args.step:
        from tomoguide.steps import registry

        unknown = [s for s in args.step if s not in registry.ids()]
        if unknown:
            raise CliError(f"--step {unknown[0]!r}: unknown; the steps are: {', '.join(registry.ids())}")
        steps = args.step
    score = score_project(proj, truth_dir, steps=steps, found=how)
    if args.html:
        from tomoguide.report import write_report

        write_report([score], Path(args.html), title=f"tomoguide score: {score.name}")
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps(_nan_to_none(score.model_dump()), indent=1, allow_nan=False))
    else:
        print(format_score(score, meanings=not args.brief))
    return 0


def cmd_class_report(args: argparse.Namespace) -> int:
    from tomoguide.report import write_report
    from tomoguide.score import score_project

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names is not None and len(names) != len(args.projects):
        raise CliError(f"--names: {len(names)} names for {len(args.projects)} projects")
    scores = []
    for i, project in enumerate(args.projects):
        proj, truth_dir, how = _open_for_score(project, args.truth)
        t0 = time.perf_counter()
        score = score_project(proj, truth_dir, found=how)
        if names is not None:
            score.name = names[i]
        scores.append(score)
        print(f"scored {project} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if names is None:  # trainees' projects are often all called "project": name them by their folders
        taken = [s.name for s in scores]
        for s, project in zip(scores, args.projects, strict=True):
            if not s.name or taken.count(s.name) > 1:
                folder = Path(project).resolve()
                s.name = f"{folder.parent.name}/{folder.name}"
    out = Path(args.out)
    write_report(scores, out, title=args.title)
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tomoguide.demo import prepare_demo

    out = Path(args.out)
    if not args.no_gui:  # say it before minutes of simulation, not after
        from tomoguide.gui_check import gui_problem

        problem = gui_problem()
        if problem is not None:
            raise CliError(problem.replace("`tomoguide demo --no-gui`", f"`tomoguide demo --preset {args.preset} "
                                                                         f"--no-gui --out {out}`"))
    t0 = time.perf_counter()
    project_dir = prepare_demo(out, preset=args.preset, seed=args.seed, progress_bar=_progress_bar)
    print(f"demo data in {out / 'data'} (truth in {out / 'truth'}), project {project_dir} "
          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    remember_project(project_dir)  # the wizard's start screen lists it, also after --no-gui
    if args.no_gui:
        return run_steps(project_dir, until=args.until)
    return _gui(project_dir)


def _gui(project_dir: Path | None) -> int:
    """Open the wizard, after checking that Qt can start here: a missing system library or a missing display is
    one message naming the libraries, the apt-get command that installs them and ``--no-gui``
    (:mod:`tomoguide.gui_check`), never Qt's abort "could not load the Qt platform plugin"."""
    from tomoguide.gui_check import gui_problem, import_error_message

    problem = gui_problem()
    if problem is not None:
        raise CliError(problem)
    try:
        from tomoguide.pages.app import main as gui_main
    except ImportError as exc:
        raise CliError(import_error_message(exc)) from None
    return gui_main(project_dir)


def _offscreen_gui_check() -> None:
    """For commands that render without a window (screenshots, self-test): the libraries Qt needs offscreen (or
    on the display when one is set, as :func:`tomoguide.pages.screenshots.offscreen_app` chooses)."""
    import os

    from tomoguide.gui_check import gui_problem

    offscreen = "QT_QPA_PLATFORM" not in os.environ and not (os.environ.get("DISPLAY")
                                                              or os.environ.get("WAYLAND_DISPLAY"))
    problem = gui_problem(offscreen=offscreen)
    if problem is not None:
        raise CliError(problem)


def cmd_gui(args: argparse.Namespace) -> int:
    return _gui(Path(args.project) if args.project else None)


def cmd_screenshots(args: argparse.Namespace) -> int:
    project = Path(args.project)
    if not (project / "project.json").exists():
        raise CliError(f"{project}: no project here")
    _offscreen_gui_check()
    try:
        from tomoguide.pages.screenshots import render_all
    except ImportError as exc:
        from tomoguide.gui_check import import_error_message

        raise CliError(import_error_message(exc)) from None
    paths = render_all(project, Path(args.out))
    for p in paths:
        print(p)
    return 0


def cmd_selftest() -> int:
    """Open the wizard on a tiny simulated data set, run the import step, exit 0 when it worked."""
    _offscreen_gui_check()
    try:
        from tomoguide.pages.selftest import run_selftest
    except ImportError as exc:
        from tomoguide.gui_check import import_error_message

        raise CliError(import_error_message(exc)) from None
    return run_selftest()


# ---------------------------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tomoguide",
        description="A guided wizard for cryo-electron tomography: from tilt-series movies to a subtomogram "
                    "average. Without a command, opens the wizard.")
    p.add_argument("--version", action="version", version=f"tomoguide {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more (to stderr)")
    p.add_argument("--selftest", action="store_true",
                   help="open the wizard on a tiny simulated data set, run the import step and exit (0 = works)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("new", help="create a project on a folder of movies and .mdoc files (or at another entry "
                                   "point: tilt series, an existing alignment, particles)")
    s.add_argument("project", metavar="PROJECT_DIR")
    s.add_argument("--entry", choices=list(CLI_ENTRIES), default="movies",
                   help="where the project starts: movies = raw movies + .mdoc (the whole workflow); tilt-series "
                        "= motion-corrected stacks with .rawtlt/.tlt or their mdoc (X-ray erasing computes first); "
                        "alignment = stacks with an alignment (--alignment) and CTF (--ctf) made elsewhere "
                        "(reconstruction computes first); particles = a RELION 5 / WarpTools particles STAR "
                        "(--particles; the averaging steps compute)")
    s.add_argument("--movies", metavar="DIR", help="folder with the .mdoc files and movies (entry movies)")
    s.add_argument("--data", metavar="DIR", help="the data folder: movies and .mdoc files, or the tilt-series stacks")
    s.add_argument("--alignment", metavar="DIR", help="folder with IMOD .xf/.tlt, AreTomo .aln, Warp .xml or RELION 5 "
                                                      "per-tilt-series .star files (entry alignment)")
    s.add_argument("--ctf", metavar="DIR", help="folder with CTFFIND, ctfplotter .defocus, Warp .xml or RELION 5 .star "
                                                "CTF files (entry alignment; default: the alignment folder)")
    s.add_argument("--particles", metavar="FILE", help="RELION 5 / WarpTools optimisation set or particles STAR "
                                                       "(entry particles)")
    s.add_argument("--set", action="append", metavar="[import_movies.]PARAM=VALUE",
                   help="set a parameter (repeatable); an empty VALUE means 'read it from the mdoc'")
    s.set_defaults(func=cmd_new)

    s = sub.add_parser("run", help="run the workflow's steps (skipping those that are up to date)")
    s.add_argument("project", metavar="PROJECT_DIR")
    s.add_argument("--until", metavar="STEP", help="stop after this step")
    s.add_argument("--only", metavar="STEP", help="run only this step")
    s.add_argument("--set", action="append", metavar="STEP.PARAM=VALUE", help="set a parameter (repeatable)")
    s.add_argument("--force", action="store_true", help="run steps again even when up to date")
    s.add_argument("--cluster", choices=["local", "slurm", "inline"], default=None,
                   help="where the steps' units (movies, tilt series, particle batches) run: local = one worker "
                        "process per core of this machine, slurm = Dask workers in SLURM jobs (settings in "
                        "cluster.json), inline = this process only (default: $TOMOGUIDE_CLUSTER, else the "
                        "settings, else local)")
    s.add_argument("--item", action="append", metavar="SERIES",
                   help="with --only: run the step for this tilt series only (repeatable) and merge the result into "
                        "the step's current run (e.g. one SLURM array task per series)")
    s.add_argument("--use-backup", action="store_true",
                   help="open the project from its backup (project.json.bak) when project.json is damaged; the "
                        "backup becomes the project's state")
    s.add_argument("--break-lock", action="store_true",
                   help="take over a lock left on another machine (or by a program that is not tomoguide); "
                        "never one that a running tomoguide on this machine holds")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="steps, their status, outputs and metrics")
    s.add_argument("project", metavar="PROJECT_DIR")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--use-backup", action="store_true",
                   help="show the state saved in the backup (project.json.bak) when project.json is damaged")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("relocate", help="the project's data moved: tell it the new folder (checked: same mdocs)")
    s.add_argument("project", metavar="PROJECT_DIR")
    s.add_argument("--data", required=True, metavar="DIR", help="the folder the data (movies, mdocs) are in now")
    s.add_argument("--param", metavar="STEP.PARAM", default=None,
                   help="which data path (default: the missing one, else import_movies.files_dir)")
    s.add_argument("--force", action="store_true",
                   help="use the folder even when its mdocs differ (the steps that read them will run again)")
    s.add_argument("--break-lock", action="store_true", help="as for run")
    s.set_defaults(func=cmd_relocate)

    s = sub.add_parser("export", help="write the project's tilt series, alignment, CTF, particles and maps for "
                                      "RELION 5, IMOD or Warp (with a README stating the conventions)")
    s.add_argument("project", metavar="PROJECT_DIR")
    s.add_argument("--to", required=True, choices=["relion5", "imod", "warp"], help="the format")
    s.add_argument("dir", metavar="DIR",
                   help="the folder to write, e.g. PROJECT_DIR/export/FORMAT (new, empty, or an earlier export's: "
                        "its files are replaced); paths in the files are relative to it")
    s.add_argument("--force", action="store_true",
                   help="write into a folder that is not empty and was not made by an earlier export")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("inspect", help="what tomoguide reads from mdoc, MRC, STAR, IMOD, AreTomo and "
                                       "coordinate files")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--permissive", action="store_true",
                   help="describe damaged files as far as possible instead of stopping at the first problem")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("simulate", help="write a synthetic apoferritin acquisition with its ground truth")
    s.add_argument("--preset", choices=["tiny", "small", "full"], default=None,
                   help="tiny, small (default) or full (8 tilt series of 41 tilts: for scaling measurements)")
    s.add_argument("--scenario", default=None, metavar="NAME",
                   help="a session with other conventions and planted problems (listed by --list)")
    s.add_argument("--out", default="tomoguide-sim", metavar="DIR")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--set", action="append", metavar="PARAM=VALUE",
                   help="override a simulation parameter (see `tomoguide simulate --list`)")
    s.add_argument("--list", action="store_true",
                   help="list every simulation parameter (sizes, dose, defocus, error magnitudes) with its unit, "
                        "the scenarios and the challenges")
    s.add_argument("--challenge", default=None, metavar="NAME", nargs="?", const="",
                   help="a trainer's session: a data set with a planted problem to find and its answer key "
                        "(truth/answer_key.json); --preset tiny for the quick size; with --list: the challenges")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("score", help="training mode: every step's results against the simulator's truth, graded")
    s.add_argument("project", nargs="?", metavar="PROJECT_DIR")
    s.add_argument("--truth", metavar="DIR", help="the truth folder (default: truth/ beside the data folder)")
    s.add_argument("--step", action="append", metavar="STEP", help="score only this step (repeatable)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--html", metavar="FILE", help="also write the score as one self-contained HTML file")
    s.add_argument("--brief", action="store_true", help="without the meaning of each figure")
    s.add_argument("--thresholds", action="store_true", help="print the table of grades (thresholds)")
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("class-report", help="several trainees' scores side by side in one HTML file with figures")
    s.add_argument("projects", nargs="+", metavar="PROJECT_DIR")
    s.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write (self-contained)")
    s.add_argument("--truth", metavar="DIR", help="the truth folder of all projects (default: each one's own)")
    s.add_argument("--names", metavar="A,B,...", help="trainees' names, one per project, in order")
    s.add_argument("--title", default="tomoguide class report", help="the report's title")
    s.set_defaults(func=cmd_class_report)

    s = sub.add_parser("demo", help="simulate the demo data, create its project and run it (or open the wizard)")
    s.add_argument("--preset", choices=["tiny", "small"], default="small")
    s.add_argument("--out", default="tomoguide-demo", metavar="DIR")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--no-gui", action="store_true", help="run the steps headless instead of opening the wizard")
    s.add_argument("--until", metavar="STEP", help="with --no-gui: stop after this step")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("screenshots", help="render every page of the wizard for a project to PNG files")
    s.add_argument("project", metavar="PROJECT_DIR")
    s.add_argument("--out", required=True, metavar="DIR")
    s.set_defaults(func=cmd_screenshots)

    s = sub.add_parser("gui", help="open the wizard (optionally on a project)")
    s.add_argument("project", nargs="?", metavar="PROJECT_DIR")
    s.set_defaults(func=cmd_gui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.selftest:
        try:
            return cmd_selftest()
        except CliError as exc:
            print(f"tomoguide: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command is None:
        return _gui(None)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"tomoguide: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tomoguide: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a program that stopped reading (e.g. `| head`)
        return 0
