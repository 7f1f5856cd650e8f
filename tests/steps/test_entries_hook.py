"""The entry mechanism: ``Step.inputs_for(params, params_of)`` lets a step whose source brings its results from
elsewhere need fewer steps; the registry, the project (identities, staleness, first step to do), the runner and
the status follow it. ``Step.origin_for`` labels steps whose results come from elsewhere.

The particles entry (extraction reading RELION 5 particles) is simulated here by patching ``Extract.inputs_for``
to drop picking when ``dimensionality`` is "2D" (any parameter would do: what is tested is that the graph follows
the parameters)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tomoguide.project import Project
from tomoguide.runner import StepRun
from tomoguide.steps import registry
from tomoguide.steps.extract import Extract, ExtractParams

#: what extraction needs in the patched "particles from files" mode, and what it then leaves unneeded
_DROPPED = ["ctf_correct", "preprocess_for_reconstruction", "reconstruct", "pick"]


@pytest.fixture
def particles_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def inputs_for(cls, params, params_of=None):  # noqa: ANN001 - the hook's signature
        return ("exclude",) if params.dimensionality == "2D" else cls.inputs

    def origin_for(cls, params, params_of=None):  # noqa: ANN001
        return "from files" if params.dimensionality == "2D" else None

    monkeypatch.setattr(Extract, "inputs_for", classmethod(inputs_for))
    monkeypatch.setattr(Extract, "origin_for", classmethod(origin_for))


def test_registry_follows_the_parameters(particles_entry: None) -> None:
    declared = registry.upstream("extract")
    assert "pick" in declared and "reconstruct" in declared
    assert registry.needed() == registry.ids()  # every source at its default: every step is needed

    two_d = ExtractParams(dimensionality="2D")
    params_of = {"extract": two_d}.get
    assert registry.inputs_of("extract", params_of) == ("exclude",)
    up = registry.upstream("extract", params_of)
    assert up == [s for s in registry.ids()[: registry.ids().index("exclude") + 1]]
    assert not set(_DROPPED) & set(up)
    assert "extract" not in registry.downstream("pick", params_of)
    assert "extract" in registry.downstream("pick")  # the declared graph is unchanged
    assert "extract" in registry.downstream("exclude", params_of)
    needed = registry.needed(params_of)
    assert [s for s in registry.ids() if s not in needed] == _DROPPED
    # with the default value the declared inputs apply again
    assert registry.inputs_of("extract", {"extract": ExtractParams()}.get) == Extract.inputs


def test_a_source_cannot_add_a_need(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Extract, "inputs_for", classmethod(lambda cls, p, po=None: ("import_movies",)))
    with pytest.raises(ValueError, match="extract.inputs_for returned \\['import_movies'\\]"):
        registry.inputs_of("extract", {"extract": ExtractParams()}.get)


def test_project_runner_and_status_follow_the_entry(particles_entry: None, tmp_path: Path) -> None:
    with Project.create(tmp_path / "p", params={"extract": {"dimensionality": "2D"}}) as proj:
        assert proj.inputs_of("extract") == ("exclude",)
        assert "pick" not in proj.input_hashes("extract")
        assert "exclude" in proj.input_hashes("extract")
        assert [s for s in registry.ids() if not proj.is_needed(s)] == _DROPPED
        assert proj.downstream("pick") == []
        assert proj.origin("extract") == "from files" and proj.origin("pick") is None
        status = {s["id"]: s for s in proj.status_dict()["steps"]}
        assert status["pick"]["needed"] is False and status["extract"]["needed"] is True
        assert status["extract"]["origin"] == "from files"
        # the runner asks for the steps extraction needs now, not for picking
        issues = [i.message for i in StepRun(proj, "extract").input_issues(save=False)]
        assert any("Exclude" in m or "exclu" in m.lower() for m in issues), issues
        assert not any(registry.get("pick").title in m for m in issues), issues
        # back to the default: picking is needed again, and the identity of extraction changes with it
        before = proj.step_hash("extract")
        proj.set_params("extract", {"dimensionality": "3D"})
        assert proj.inputs_of("extract") == Extract.inputs
        assert proj.is_needed("pick") and proj.origin("extract") is None
        assert "pick" in proj.input_hashes("extract") and proj.step_hash("extract") != before
