"""AppTest of the Compare page on a copy of the tiny run (the page evaluates it on test once)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.apptest_helpers import open_page
from xray_core import runs, ui


@pytest.fixture
def models(tiny_run, tmp_path):
    runs_root, run_id = tiny_run
    folder = tmp_path / "models"
    shutil.copytree(runs_root / run_id, folder / run_id)
    shutil.copytree(runs_root / run_id, folder / "second")  # a second run to compare against
    metrics = runs.read_json(folder / "second" / "metrics.json")
    metrics["validation"]["sensitivity"] = 0.0  # so the best sensitivity is the first run's
    metrics["train_seconds"] = metrics["train_seconds"] + 100
    runs.atomic_write_json(folder / "second" / "metrics.json", metrics)
    return folder, run_id


def table_with(at: AppTest, column: str, nth: int = 0) -> pd.DataFrame:
    frames = [f.value for f in at.dataframe if column in getattr(f.value, "columns", [])]
    return frames[nth]


def test_compare_shows_metrics_on_validation_and_test_with_best_marked(monkeypatch, synthetic_dataset, models):
    folder, run_id = models
    at = open_page(monkeypatch, synthetic_dataset, folder, "pages/compare.py", timeout=180)
    assert sorted(at.multiselect(key="compare_runs").value) == sorted([run_id, "second"])

    saved = runs.read_json(folder / run_id / "metrics.json")
    validation = table_with(at, "sensitivity", 0).set_index("run")
    for column, key in (("sensitivity", "sensitivity"), ("specificity", "specificity"),
                        ("ROC AUC", "roc_auc"), ("operating threshold", "threshold")):
        assert validation.loc[run_id, column] == pytest.approx(saved["validation"][key])
    assert validation.loc[run_id, "seed micro-averaged recall"] == pytest.approx(saved["seed_micro_recall"])
    assert validation.loc[run_id, "parameters"] == saved["params"]
    assert validation.loc[run_id, "epochs"] == saved["epochs_run"]
    assert ui.best_rows(validation.reset_index())["sensitivity"] == [list(validation.index).index(run_id)]
    assert ui.best_rows(validation.reset_index())["training time (s)"] == [list(validation.index).index(run_id)]

    # The synthetic dataset has a test split: each run was evaluated once and the result cached.
    test = table_with(at, "sensitivity", 1).set_index("run")
    cached = runs.read_json(folder / run_id / "metrics.json")["test"]
    assert cached["n"] == 16 and test.loc[run_id, "images"] == 16
    assert test.loc[run_id, "specificity"] == pytest.approx(cached["specificity"])
    stamp = (folder / run_id / "metrics.json").stat().st_mtime_ns
    at.run()
    assert (folder / run_id / "metrics.json").stat().st_mtime_ns == stamp  # not evaluated again
    assert len(at.get("download_button")) == 2  # CSV of each table

    # Fewer runs selected: fewer rows.
    at.multiselect(key="compare_runs").set_value([run_id]).run()
    assert table_with(at, "sensitivity", 0)["run"].tolist() == [run_id]
    assert not at.exception


def test_learning_curve_figure_has_dashed_train_and_solid_validation(tiny_run):
    runs_root, run_id = tiny_run
    history = runs.load_run(run_id, root=runs_root).history
    fig = ui.learning_curves_figure({"a": history, "b": history}, "loss")
    dashes = {(t.name, t.line.dash) for t in fig.data}
    assert dashes == {("a (train)", "dash"), ("a (validation)", "solid"),
                      ("b (train)", "dash"), ("b (validation)", "solid")}
    colours = {t.legendgroup: t.line.color for t in fig.data}
    assert colours["a"] != colours["b"]
