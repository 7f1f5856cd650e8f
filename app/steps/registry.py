"""The workflow: the registered steps in wizard order (workflow.md), and their dependencies.

A step is registered by adding its class to ``_WORKFLOW`` below, in the order of the wizard. Everything else
(the GUI's pages, the command line's ``--set``/``--until``/``--only``, the project file) is derived from it.
"""

from __future__ import annotations

import functools

from tomoguide.steps.base import ParamsOf, Step


@functools.lru_cache(maxsize=1)
def workflow() -> tuple[type[Step], ...]:
    """The step classes in wizard order (imported lazily, so importing the registry is cheap)."""
    from tomoguide.steps.align import Align, AssignAlignment
    from tomoguide.steps.ctf_correct import CtfCorrect
    from tomoguide.steps.ctf_estimate import CtfEstimate
    from tomoguide.steps.exclude import Exclude
    from tomoguide.steps.extract import Extract, ExtractFine
    from tomoguide.steps.import_movies import ImportMovies
    from tomoguide.steps.initial_model import InitialModel
    from tomoguide.steps.motion_ctf import MotionCtf
    from tomoguide.steps.pick import Pick
    from tomoguide.steps.preprocess import PreprocessForAlignment, PreprocessForReconstruction
    from tomoguide.steps.reconstruct import Reconstruct
    from tomoguide.steps.reconstruct_particle import ReconstructParticle
    from tomoguide.steps.refine import Refine, RefineFine
    from tomoguide.steps.xray_erase import XrayErase

    return (ImportMovies, MotionCtf, XrayErase, PreprocessForAlignment, Align, AssignAlignment, CtfEstimate,
            Exclude, CtfCorrect, PreprocessForReconstruction, Reconstruct, Pick, Extract, InitialModel, Refine,
            ExtractFine, ReconstructParticle, RefineFine)


def ids() -> list[str]:
    return [s.id for s in workflow()]


def get(step_id: str) -> type[Step]:
    """The step class with this id; ``KeyError`` naming the known ids otherwise."""
    for s in workflow():
        if s.id == step_id:
            return s
    raise KeyError(f"unknown step {step_id!r}; the steps are: {', '.join(ids())}")


def inputs_of(step_id: str, params_of: ParamsOf | None = None) -> tuple[str, ...]:
    """The steps ``step_id`` needs directly: its :meth:`Step.inputs_for` with the parameters ``params_of`` gives
    (a step id -> its current parameters, None when unknown or invalid), else its declared ``inputs``.

    Ids that are not among the declared ``inputs`` are refused (``ValueError``): a source may drop needs, never
    add one (the workflow order and the pages rely on the declared graph)."""
    cls = get(step_id)
    if params_of is None:
        return cls.inputs
    params = params_of(step_id)
    if params is None:
        return cls.inputs
    needs = tuple(cls.inputs_for(params, params_of))
    extra = [i for i in needs if i not in cls.inputs]
    if extra:
        raise ValueError(f"{step_id}.inputs_for returned {extra}, which are not among its declared inputs "
                         f"{list(cls.inputs)}")
    return needs


def downstream(step_id: str, params_of: ParamsOf | None = None) -> list[str]:
    """Ids of the steps that depend on ``step_id`` directly or indirectly, in workflow order (with
    ``params_of``: as the steps' current parameters need them, see :func:`inputs_of`)."""
    get(step_id)
    affected = {step_id}
    out = []
    for s in workflow():
        if s.id != step_id and any(i in affected for i in inputs_of(s.id, params_of)):
            affected.add(s.id)
            out.append(s.id)
    return out


def upstream(step_id: str, params_of: ParamsOf | None = None) -> list[str]:
    """Ids of the steps ``step_id`` needs, directly or indirectly, in workflow order (with ``params_of``: as the
    steps' current parameters need them, see :func:`inputs_of`)."""
    need: set[str] = set()
    stack = list(inputs_of(step_id, params_of))
    while stack:
        sid = stack.pop()
        if sid not in need:
            need.add(sid)
            stack.extend(inputs_of(sid, params_of))
    return [s for s in ids() if s in need]


def applicable(params_of: ParamsOf | None = None) -> list[str]:
    """The steps that can run with the current parameters, in workflow order: a step applies when its
    :meth:`Step.applies` says so and every step it needs (:func:`inputs_of`) applies."""
    ok: list[str] = []
    for s in workflow():
        params = params_of(s.id) if params_of is not None else None
        if params is not None and not s.applies(params, params_of):
            continue
        if all(i in ok for i in inputs_of(s.id, params_of)):
            ok.append(s.id)
    return ok


def needed(params_of: ParamsOf | None = None) -> list[str]:
    """The steps the last applicable step needs, and that step, in workflow order: with every source at its
    default that is every step; an entry further on (particles read from files) leaves out the steps nothing
    needs any more and the steps that cannot run there (re-extraction without tilt series: the project ends at
    the refinement)."""
    ok = applicable(params_of)
    last = ok[-1] if ok else workflow()[-1].id
    return [*upstream(last, params_of), last]
