"""The cluster settings dialog and the workers' table (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tomoguide.cluster import ClusterSettings, DaskExecutor, InlineExecutor, load_settings, session_executor

pytestmark = pytest.mark.gui


def test_the_dialog_saves_the_choice_and_the_slurm_settings(qtbot, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from tomoguide.pages.settings_cluster import ClusterSettingsDialog

    monkeypatch.setenv("TOMOGUIDE_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("TOMOGUIDE_CLUSTER", raising=False)
    dialog = ClusterSettingsDialog(executor=InlineExecutor())
    qtbot.addWidget(dialog)
    assert dialog.kind.currentData() == "local" and not dialog.slurm_box.isEnabled()
    dialog.kind.setCurrentIndex(dialog.kind.findData("slurm"))
    assert dialog.slurm_box.isEnabled() and not dialog.workers.isEnabled()
    dialog.queue.setText("gpu")
    dialog.cores.setValue(4)
    dialog.memory.setText("32GB")
    dialog.extra.setText("--gres=gpu:1; --constraint=a100")
    dialog.max_jobs.setValue(10)
    dialog.retries.setValue(1)
    dialog.accept()
    s = load_settings()
    assert s.kind == "slurm" and s.retries == 1
    assert (s.slurm.queue, s.slurm.cores, s.slurm.memory, s.slurm.max_jobs) == ("gpu", 4, "32GB", 10)
    assert s.slurm.job_extra_directives == ["--gres=gpu:1", "--constraint=a100"]
    # the wizard's executor follows the saved choice
    assert session_executor().kind == "slurm" and not session_executor().started
    # the dialog shows the saved values when opened again
    again = ClusterSettingsDialog()
    qtbot.addWidget(again)
    assert again.settings() == s


def test_the_workers_table_shows_every_worker_and_its_state(qtbot) -> None:
    from tomoguide.widgets.cluster_status import ClusterStatus

    inline = ClusterStatus(InlineExecutor())
    qtbot.addWidget(inline)
    assert inline.table.rowCount() == 1 and inline.table.item(0, 2).text() == "inline"
    with DaskExecutor("local", ClusterSettings(workers=2)) as ex:
        status = ClusterStatus(ex, interval_ms=100)
        qtbot.addWidget(status)
        assert status.table.rowCount() == 2
        assert {status.table.item(r, 2).text() for r in range(2)} == {"idle"}
        assert {status.table.item(r, 3).text() for r in range(2)} == {"1"}
        assert "local (2 worker processes)" in status.summary.text()
        status.timer.stop()
