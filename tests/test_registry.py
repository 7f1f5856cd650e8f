"""Every registered step is complete: defaults validate, every field has help and a unit, conditions are sound."""

from __future__ import annotations

import typing

import pytest

from tomoguide.steps import registry
from tomoguide.steps.base import Step, StepParams

STEPS = registry.workflow()


def test_ids_unique_and_inputs_known() -> None:
    ids = registry.ids()
    assert len(ids) == len(set(ids))
    for i, s in enumerate(STEPS):
        for need in s.inputs:
            assert need in ids[:i], f"{s.id} needs {need}, which must come earlier in the workflow"


@pytest.mark.parametrize("step_cls", STEPS, ids=lambda s: s.id)
def test_step_declaration_is_complete(step_cls: type[Step]) -> None:
    assert issubclass(step_cls.Params, StepParams)
    assert step_cls.title and step_cls.summary
    assert len(step_cls.help) > 200, "the help must tell a novice what, why, a good result, what to check"
    params = step_cls.default_params()
    params.model_validate(params.model_dump())
    meta = step_cls.Params.meta()
    assert meta, "a step has parameters"
    for name, m in meta.items():
        assert len(m.help) > 20, f"{step_cls.id}.{name}: help text missing"
        assert m.title and m.title != name, f"{step_cls.id}.{name}: title missing"
        base = m.annotation
        if m.optional:
            base = next(a for a in typing.get_args(base) if a is not type(None))
        if base in (int, float):
            assert m.unit, f"{step_cls.id}.{name}: a number needs a unit ('1' when dimensionless)"
        for other, op, _ in m.enabled_if:
            assert other in meta, f"{step_cls.id}.{name}: condition names unknown field {other!r}"
            assert op in ("=", "!=", "in", "not in", "set", "unset")
        lo, hi = m.hard
        slo, shi = m.suggest
        if m.default is not None and isinstance(m.default, (int, float)) and not isinstance(m.default, bool):
            assert lo is None or m.default >= lo
            assert hi is None or m.default <= hi
            assert slo is None or m.default >= slo, f"{step_cls.id}.{name}: default outside suggested range"
            assert shi is None or m.default <= shi, f"{step_cls.id}.{name}: default outside suggested range"
        if m.optional and m.default is None:
            assert m.empty_means, f"{step_cls.id}.{name}: say what an empty field means"


def test_downstream_and_upstream_are_consistent() -> None:
    for s in STEPS:
        for d in registry.downstream(s.id):
            assert s.id in registry.upstream(d)
    with pytest.raises(KeyError) as err:
        registry.get("no_such_step")
    assert "import_movies" in str(err.value)
