"""The Compare page (AppTest) on copies of the tiny run, its view helpers, and the shipped runs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app import compare_view as view
from tests.apptest_helpers import open_page
from xray_core import comparison, fileio, runs

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "trained_models"
SEED_RUNS = ("seed-baseline", "seed-model2", "seed-model3", "seed-model4")


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def models(tiny_run, tmp_path):
    runs_root, run_id = tiny_run
    folder = tmp_path / "models"
    shutil.copytree(runs_root / run_id, folder / run_id)
    shutil.copytree(runs_root / run_id, folder / "second")  # a second run to compare against
    metrics = fileio.read_json(folder / "second" / "metrics.json")
    metrics["validation"]["sensitivity"] = 0.0  # so the best sensitivity is the first run's
    metrics["train_seconds"] = metrics["train_seconds"] + 100
    fileio.atomic_write_json(folder / "second" / "metrics.json", metrics)
    return folder, run_id


def table_with(at: AppTest, column: str, nth: int = 0) -> pd.DataFrame:
    frames = [f.value for f in at.dataframe if column in getattr(f.value, "columns", [])]
    return frames[nth]


def text_of(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "warning", "info", "success")
                     for e in getattr(at, kind))


def test_compare_shows_metrics_on_validation_and_test_without_writing_the_runs(
        monkeypatch, synthetic_dataset, models, tmp_path):
    folder, run_id = models
    cache = tmp_path / "cache"
    monkeypatch.setenv("XRAY_CACHE_DIR", str(cache))
    before = folder_digest(folder)
    at = open_page(monkeypatch, synthetic_dataset, folder, "pages/compare.py", timeout=180)
    assert sorted(at.multiselect(key="compare_runs").value) == sorted([run_id, "second"])

    saved = fileio.read_json(folder / run_id / "metrics.json")
    validation = table_with(at, "sensitivity", 0).set_index("run")
    for column, key in (("sensitivity", "sensitivity"), ("specificity", "specificity"),
                        ("ROC AUC", "roc_auc"), ("operating threshold", "threshold")):
        assert validation.loc[run_id, column] == pytest.approx(saved["validation"][key])
    assert validation.loc[run_id, "original study's recall (micro-averaged)"] == pytest.approx(saved["seed_micro_recall"])
    assert validation.loc[run_id, "parameters"] == saved["params"]
    assert validation.loc[run_id, "epochs"] == str(saved["epochs_run"])
    assert view.best_rows(validation.reset_index())["sensitivity"] == [list(validation.index).index(run_id)]
    assert view.best_rows(validation.reset_index())["training time (s)"] == [list(validation.index).index(run_id)]

    # The synthetic dataset has a test split: not scored until asked, then once per model into the
    # cache, not the run.
    assert not (cache / "compare").exists() or not list((cache / "compare").glob(f"{run_id}-test-*.csv"))
    assert len(at.get("download_button")) == 1  # the validation table only
    at.toggle(key="compare_show_test").set_value(True).run()
    test = table_with(at, "sensitivity", 1).set_index("run")
    assert test.loc[run_id, "images"] == 16
    cached = sorted((cache / "compare").glob(f"{run_id}-test-*.csv"))
    assert len(cached) == 1
    frame = pd.read_csv(cached[0])
    from xray_core import metrics

    expected = metrics.binary_metrics(frame["label"], frame["score"], threshold=saved["threshold"])
    assert test.loc[run_id, "specificity"] == pytest.approx(expected["specificity"])
    assert not any(Path(p).is_absolute() for p in frame["path"])
    stamp = cached[0].stat().st_mtime_ns
    at.run()
    assert cached[0].stat().st_mtime_ns == stamp  # not scored again
    assert folder_digest(folder) == before  # nothing written into the run folders
    assert len(at.get("download_button")) == 2  # CSV of each table

    # Identical copies: the paired tests find no difference, and say so in words.
    pair = table_with(at, "figure")
    assert pair["figure"].tolist()[0] == "ROC AUC" and pair["p-value"].iloc[0] == pytest.approx(1.0)
    assert any(f"No evidence that {x} and {y} differ in AUC" in text_of(at)
               for x, y in ((run_id, "second"), ("second", run_id)))

    # Fewer runs selected: fewer rows.
    at.multiselect(key="compare_runs").set_value([run_id]).run()
    assert table_with(at, "sensitivity", 0)["run"].tolist() == [run_id]
    assert not at.exception


def test_health_stress_calibration_and_seed_figures_are_shown(monkeypatch, synthetic_dataset, models):
    folder, run_id = models
    # A collapse warning written by a training into status.json.
    status = fileio.read_json(folder / "second" / runs.STATUS_FILE)
    status["health"] = [{"code": "collapsed", "severity": "warning", "epoch": 3,
                         "message": "The model calls 100.0% of the validation images PNEUMONIA.",
                         "suggestion": "Use class weights."}]
    fileio.atomic_write_json(folder / "second" / runs.STATUS_FILE, status)
    # A stress block and a calibration block as the lead's evaluation writes them.
    m = fileio.read_json(folder / run_id / "metrics.json")
    m["stress"] = {"threshold": m["threshold"], "n_films": 10,
                   "pooled": {"roc_auc": 0.812, "sensitivity": 0.9, "specificity": 0.6, "accuracy": 0.8, "n": 160},
                   "pooled_ci95": {"roc_auc": {"low": 0.7, "high": 0.9},
                                   "sensitivity": {"low": 0.8, "high": 0.95},
                                   "specificity": {"low": 0.4, "high": 0.75}},
                   "summary": {"specificity": {"worst": 0.31, "worst_change": "zoom_in_25", "mean": 0.6}}}
    m["calibration"] = {"ece": 0.123, "temperature": 1.4,
                        "bins": [{"lo": 0.0, "hi": 0.5, "mean_pred": 0.2, "frac_pos": 0.3, "n": 5},
                                 {"lo": 0.5, "hi": 1.0, "mean_pred": 0.8, "frac_pos": 0.7, "n": 5}]}
    fileio.atomic_write_json(folder / run_id / "metrics.json", m)
    other = fileio.read_json(folder / "second" / "metrics.json")
    other.pop("stress", None)  # a run evaluated before the stress validation existed
    fileio.atomic_write_json(folder / "second" / "metrics.json", other)

    at = open_page(monkeypatch, synthetic_dataset, folder, "pages/compare.py", timeout=180)
    health = table_with(at, "finding")
    second = health[health["run"] == "second"]
    assert second["epoch"].tolist() == [3] and second["finding"].str.contains("100.0%").all()
    stress = table_with(at, "stress AUC").set_index("run")
    assert stress.loc[run_id, "stress AUC"] == "0.812 (0.700-0.900)"
    assert stress.loc[run_id, "stress worst specificity"] == "0.310 (zoom_in_25)"
    assert stress.loc["second", "stress AUC"] == "–"
    assert "No stress validation yet for second" in text_of(at)
    plain = stress.loc[run_id, "plain AUC"]
    assert plain.startswith(f"{m['validation']['roc_auc']:.3f} (")  # with its bootstrap interval
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    reliability = [c for c in charts if "Reliability" in json.dumps(c.get("layout", {}).get("title", ""))]
    assert reliability and any("ECE 0.123" in (t.get("name") or "") for t in reliability[0]["data"])
    seed = table_with(at, "the study's 'recall' (micro-averaged, 0.5)").set_index("run")
    assert seed.loc[run_id, "the study's 'recall' (micro-averaged, 0.5)"] == pytest.approx(m["seed_micro_recall"])
    assert seed.loc[run_id, "as the study printed: validation 'recall'"] == pytest.approx(0.9702)  # baseline's
    assert not at.exception


def test_runs_validated_on_different_images_are_refused_with_a_sentence(monkeypatch, synthetic_dataset, models):
    folder, run_id = models
    path = runs.predictions_path(folder / "second", "validation")
    frame = pd.read_csv(path)
    frame.loc[0, "path"] = "train/NORMAL/another-patient.jpeg"
    frame.to_csv(path, index=False)
    at = open_page(monkeypatch, synthetic_dataset, folder, "pages/compare.py", timeout=180)
    assert "were validated on different images" in text_of(at)
    assert not [f for f in at.dataframe if "figure" in getattr(f.value, "columns", [])]


def test_pair_rows_and_health_rows_from_real_statistics(tiny_run):
    runs_root, run_id = tiny_run
    info = runs.load_run(run_id, root=runs_root)
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.6).astype(int)
    a, b = y + rng.normal(size=300), 0.2 * y + rng.normal(size=300)
    result = comparison.compare(y, a, b, threshold_a=0.5, threshold_b=0.1, n_boot=200)
    table = view.pair_rows(result, name_a="A", name_b="B")
    assert table["figure"].tolist() == ["ROC AUC", "sensitivity at own threshold",
                                        "specificity at own threshold", "mistakes at own threshold"]
    assert table.loc[0, "p-value"] == pytest.approx(result["delong"]["p_value"])
    assert table.loc[3, "test"].startswith("McNemar, chi-square")
    assert table.loc[0, "A minus B (95 % CI)"].startswith(f"{result['bootstrap']['roc_auc']['difference']['estimate']:+.3f}")
    # A finished run without health warnings in its status is checked from its files.
    collapsed = view.health_rows([info], {run_id: (y, np.full(300, 0.9))})
    assert collapsed["finding"].str.contains("100.0% of the validation images PNEUMONIA").any()


def test_learning_curves_are_one_figure_with_one_legend(tiny_run):
    """A colour per run, training dashed and validation solid, in every panel; the legend lists each
    run once and the two line styles once, whatever the number of panels."""
    runs_root, run_id = tiny_run
    history = runs.load_run(run_id, root=runs_root).history
    fig = view.learning_curves_figure({"a": history, "b": history})
    panels = {t.xaxis for t in fig.data if t.name in ("a", "b")}
    assert len(panels) == len([m for m in view.CURVE_METRICS if m in history])  # every metric drawn
    assert sorted(t.name for t in fig.data if t.showlegend is not False) == ["a", "b", "training", "validation"]
    assert {(t.name, t.line.dash) for t in fig.data if t.name in ("a", "b")} == {
        ("a", "dash"), ("a", "solid"), ("b", "dash"), ("b", "solid")}
    colours = {t.name: t.line.color for t in fig.data if t.name in ("a", "b")}
    assert colours["a"] != colours["b"]


@pytest.mark.skipif(not all((SHIPPED / r / runs.MODEL_FILE).is_file() for r in SEED_RUNS),
                    reason="the seed runs are not in trained_models/ (they ship with the repository)")
def test_a_fresh_clone_shows_five_runs_on_compare_quickly(monkeypatch, tmp_path):
    # No dataset: what a fresh clone has. The shipped runs must show without training or scoring.
    monkeypatch.setenv("XRAY_CACHE_DIR", str(tmp_path / "cache"))
    before = {r: folder_digest(SHIPPED / r) for r in SEED_RUNS}
    monkeypatch.setenv("XRAY_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("XRAY_MODELS_DIR", str(SHIPPED))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    shown = set(table_with(at, "sensitivity", 0)["run"])
    assert {"default", *SEED_RUNS} <= shown
    # The seed runs are healthy (no collapse) and scored on the same patients: a paired table shows.
    health = [f.value for f in at.dataframe if "finding" in getattr(f.value, "columns", [])]
    assert not health or not set(health[0]["run"]) & set(SEED_RUNS), health
    assert {r: folder_digest(SHIPPED / r) for r in SEED_RUNS} == before
