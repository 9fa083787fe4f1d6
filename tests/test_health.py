"""Training health: each condition provoked by a real (tiny) Keras training, plus the rules on
hand-written histories at their boundaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xray_core import fileio, health, runs


# ----------------------------------------------------------------------------- pure rules


def rows(*losses_and_vals):
    return [{"epoch": i + 1, "loss": l, "val_loss": v} for i, (l, v) in enumerate(losses_and_vals)]


def test_nan_and_infinite_loss_are_stop_warnings_naming_the_epoch():
    found = health.check_finite_loss(rows((0.6, 0.5), (float("nan"), 0.4)))
    assert [(w.code, w.severity, w.epoch) for w in found] == [("nan_loss", "stop", 2)]
    assert "NaN" in found[0].message and "learning rate" in found[0].suggestion
    inf = health.check_finite_loss(rows((0.6, float("inf"))))
    assert inf[0].epoch == 1 and "infinite" in inf[0].message and "validation" in inf[0].message
    assert health.check_finite_loss(rows((0.6, 0.5), (0.4, 0.3))) == []
    # A NaN hides every other finding: the other figures mean nothing after it.
    assert [w.code for w in health.assess(rows((0.5, 0.5), (0.5, 0.5), (float("nan"), 0.5)))] == ["nan_loss"]


def test_collapse_from_sensitivity_and_specificity_uses_the_class_counts():
    # 300 pneumonia, 100 normal: sens 1.0, spec 0.03 -> (300 + 97) / 400 = 99.25 % called PNEUMONIA.
    hist = [{"epoch": 4, "val_sensitivity": 1.0, "val_specificity": 0.03, "val_auc": 0.5}]
    found = health.check_collapse(hist, n_pneumonia=300, n_normal=100)
    assert [(w.code, w.epoch) for w in found] == [("collapsed", 4)]
    assert "99.2% of the validation images PNEUMONIA" in found[0].message
    assert "does not rank them either" in found[0].message
    # spec 0.05 -> 98.75 %: below the 99 % line, no warning.
    hist[0]["val_specificity"] = 0.05
    assert health.check_collapse(hist, n_pneumonia=300, n_normal=100) == []
    # All NORMAL is a collapse too, and a good ranking is said so.
    allnormal = [{"epoch": 2, "val_sensitivity": 0.0, "val_specificity": 1.0, "val_auc": 0.97}]
    found = health.check_collapse(allnormal, n_pneumonia=10, n_normal=10)
    assert "100.0% of the validation images NORMAL" in found[0].message
    assert "still ranks" in found[0].message
    with pytest.raises(ValueError, match="class counts"):
        health.check_collapse(allnormal, n_pneumonia=0, n_normal=0)


def test_collapse_from_scores():
    scores = np.r_[np.full(995, 0.7), np.full(5, 0.2)]
    found = health.check_collapse_scores(scores)
    assert found and "99.5% of the validation images PNEUMONIA" in found[0].message
    assert health.check_collapse_scores(np.r_[np.full(985, 0.7), np.full(15, 0.2)]) == []
    # At a higher threshold the same scores are all NORMAL.
    assert "NORMAL" in health.check_collapse_scores(scores, threshold=0.8)[0].message
    with pytest.raises(ValueError, match="at least one"):
        health.predicted_share([])


def test_chance_auc_only_after_three_epochs():
    hist = [{"epoch": e, "val_auc": 0.52} for e in (1, 2)]
    assert health.check_chance_auc(hist) == []
    hist.append({"epoch": 3, "val_auc": 0.55})
    found = health.check_chance_auc(hist)
    assert [(w.code, w.epoch) for w in found] == [("chance_auc", 3)] and "0.550" in found[0].message
    hist[-1]["val_auc"] = 0.56
    assert health.check_chance_auc(hist) == []


def test_flat_loss_needs_a_one_percent_drop_over_three_epochs():
    assert [w.code for w in health.check_loss_flat(rows((0.50, 0), (0.51, 0), (0.497, 0)))] == ["loss_flat"]
    assert health.check_loss_flat(rows((0.50, 0), (0.51, 0), (0.494, 0))) == []
    assert health.check_loss_flat(rows((0.50, 0), (0.60, 0))) == []  # too few epochs to say


def test_diverging_needs_validation_up_twice_while_training_falls():
    found = health.check_diverging(rows((0.5, 0.40), (0.4, 0.45), (0.3, 0.50)))
    assert [(w.code, w.epoch) for w in found] == [("diverging", 3)] and "overfitting" in found[0].message
    assert health.check_diverging(rows((0.5, 0.40), (0.4, 0.45), (0.3, 0.44))) == []  # one rise only
    assert health.check_diverging(rows((0.3, 0.40), (0.4, 0.45), (0.5, 0.50))) == []  # both rising


def test_history_from_a_dataframe_and_status_round_trip(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(rows((0.5, 0.40), (0.4, 0.45), (0.3, 0.50)))
    found = health.assess(frame)
    assert [w.code for w in found] == ["diverging"]
    writer = runs.StatusWriter(tmp_path)
    writer.update(health=[w.to_dict() for w in found])
    back = health.from_status(json.loads((tmp_path / runs.STATUS_FILE).read_text()))
    assert back == found
    assert health.from_status({"health": [{"severity": "bogus"}, "text"]}) == []


# ----------------------------------------------------------------------------- real trainings


def _tiny_model(lr: float, units: int = 1):
    import keras

    from xray_core import architectures

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    x = keras.layers.Dense(64, activation="relu")(inputs)
    out = keras.layers.Dense(units, activation="sigmoid")(x)
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy",
                  metrics=architectures.compile_metrics(units))
    return model


def _fit(model, x, y, xv, yv, epochs, tmp_path, **kw):
    writer = runs.StatusWriter(tmp_path)
    cb = health.make_callback(writer, n_pneumonia=int(yv.sum()), n_normal=int(len(yv) - yv.sum()), **kw)
    model.fit(x, y, validation_data=(xv, yv), epochs=epochs, batch_size=16, verbose=0, callbacks=[cb])
    status = json.loads((tmp_path / runs.STATUS_FILE).read_text())
    return cb, status


@pytest.mark.slow
def test_a_nan_loss_stops_the_training_and_is_written_to_status(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype("float32")
    x[40, 3] = np.inf  # one corrupt input: its forward pass makes the loss NaN
    y = (rng.random(64) < 0.5).astype("float32")
    model = _tiny_model(1e-3)
    writer = runs.StatusWriter(tmp_path)
    cb = health.make_callback(writer, n_pneumonia=int(y.sum()), n_normal=int(64 - y.sum()))
    with pytest.raises(health.TrainingHealthError, match="NaN|infinite") as info:
        model.fit(x, y, validation_data=(x[:8], y[:8]), epochs=3, batch_size=64, shuffle=False,
                  verbose=0, callbacks=[cb])
    assert "Epoch 1, batch 1" in str(info.value)
    status = json.loads((tmp_path / runs.STATUS_FILE).read_text())
    assert [(h["code"], h["severity"]) for h in status["health"]] == [("nan_loss", "stop")]


@pytest.mark.slow
def test_a_model_that_cannot_learn_is_collapsed_at_chance_and_flat(tmp_path):
    # Identical (all-zero) images and a learning rate of ~0: every output is the same number.
    rng = np.random.default_rng(1)
    x = np.zeros((96, 16), "float32")
    y = (rng.random(96) < 0.75).astype("float32")
    model = _tiny_model(1e-9)
    cb, status = _fit(model, x, y, x[:48], y[:48], 3, tmp_path)
    codes = {h["code"] for h in status["health"]}
    assert {"collapsed", "chance_auc", "loss_flat"} <= codes, status["health"]
    assert [w.code for w in cb.warnings] == [h["code"] for h in status["health"]]
    assert all(h["suggestion"] for h in status["health"])


@pytest.mark.slow
def test_a_learning_model_is_healthy(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = (x[:, 0] + 0.3 * rng.normal(size=256) > 0).astype("float32")
    model = _tiny_model(1e-2)
    cb, status = _fit(model, x[:192], y[:192], x[192:], y[192:], 4, tmp_path)
    assert status["health"] == [] and cb.warnings == []


@pytest.mark.slow
def test_memorising_noise_diverges(tmp_path):
    # Random labels on random inputs: a wide layer memorises the training set, validation worsens.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 16)).astype("float32")
    y = (rng.random(64) < 0.5).astype("float32")
    xv = rng.normal(size=(64, 16)).astype("float32")
    yv = (rng.random(64) < 0.5).astype("float32")
    model = _tiny_model(3e-2)
    seen = []
    cb, status = _fit(model, x, y, xv, yv, 8, tmp_path, on_warnings=lambda ws: seen.append([w.code for w in ws]))
    assert any("diverging" in codes for codes in seen), seen
    assert len(seen) == 8  # published after every epoch
    assert math.isfinite(float(cb.rows[-1]["val_loss"]))


def test_train_page_shows_the_running_runs_health_warnings(monkeypatch, synthetic_dataset, tiny_run, tmp_path):
    import fcntl
    import shutil

    from tests.apptest_helpers import open_page
    from xray_core import jobs

    runs_root, run_id = tiny_run
    models = tmp_path / "models"
    shutil.copytree(runs_root / run_id, models / "live")
    found = health.check_chance_auc([{"epoch": 3, "val_auc": 0.5}])
    # A run that reads as running (this test process's pid keeps it alive), with a warning.
    status = dict(fileio.read_json(models / "live" / "status.json"), state="running", epoch=4, epochs=5,
                  batch=1, batches=4, fraction=0.6, health=[w.to_dict() for w in found],
                  **runs.process_identity())
    fileio.atomic_write_json(models / "live" / "status.json", status)
    (models / jobs.QUEUE_DIR).mkdir()
    with open(models / jobs.QUEUE_DIR / "worker.lock", "a") as lock:  # no worker starts meanwhile
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        at = open_page(monkeypatch, synthetic_dataset, models, "pages/train.py", timeout=120)
        shown = [w.value for w in at.warning]
    assert any("After 3 epochs the validation ROC AUC is 0.500" in text and "class weights" in text
               for text in shown), shown


@pytest.mark.slow
def test_cli_train_stops_on_a_nan_loss_and_exits_non_zero(synthetic_dataset, tmp_path):
    import os
    import subprocess
    import sys

    # A learning rate of 1e30 blows the weights up within two batches: the loss becomes NaN.
    result = subprocess.run(
        [sys.executable, "-m", "xray_core", "train", "--arch", "baseline", "--data", str(synthetic_dataset),
         "--epochs", "2", "--batch-size", "16", "--image-size", "16", "--lr", "1e30",
         "--runs-dir", str(tmp_path), "--run-id", "blown", "--quiet"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ),
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert result.returncode == 3, result.stderr
    assert "error: training stopped: Epoch 1" in result.stderr and "Lower the learning rate" in result.stderr
    assert "Traceback" not in result.stderr
    status = json.loads((tmp_path / "blown" / runs.STATUS_FILE).read_text())
    assert status["state"] == "failed" and "NaN" in status["error"]
    assert [h["code"] for h in status["health"]] == ["nan_loss"]
    assert not (tmp_path / "blown" / runs.MODEL_FILE).exists()  # no model saved from NaN weights
