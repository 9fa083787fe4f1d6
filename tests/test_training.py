"""Training runs end to end on tiny synthetic images, and the run folder under faults.

Real processes are started and killed here (SIGKILL mid-epoch, two trainings at once): the
registry's guarantees are about processes, so a thread or a mock would not test them.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras

import numpy as np
import pytest

from tests.synthetic import make_synthetic_dataset
from xray_core import architectures, augment, callbacks, ensemble, evaluation, fileio, runs, training
from xray_core.model import load_model, load_network

PROJECT = Path(__file__).resolve().parents[1]

CONFIG_KEYS = {"run_id", "arch", "data_root", "image_size", "channels", "epochs", "batch_size",
               "learning_rate", "seed", "split", "class_weight", "augment", "early_stopping",
               "versions", "created"}
STATUS_KEYS = {"state", "epoch", "epochs", "batch", "batches", "fraction", "images_per_second",
               "eta_seconds", "error", "pid", "updated"}
RUN_FILES = {"config.json", "status.json", "history.csv", "model.keras", "checkpoint.keras",
             "checkpoint.json", "metrics.json", "skipped_files.json"}


def _size(arch: str) -> int:
    """The smallest input each architecture accepts, but at least 16 px."""
    return max(16, architectures.ARCHITECTURES[arch].min_size)


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(architectures.ARCHITECTURES))
def test_every_architecture_trains_a_complete_run_folder(arch, synthetic_dataset, tmp_path):
    run_dir = training.train(training.TrainConfig(
        arch=arch, data_root=synthetic_dataset, epochs=1, batch_size=16, image_size=_size(arch),
        runs_root=tmp_path, seed=1))
    assert run_dir.parent == tmp_path and arch in run_dir.name
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp") or p.name == "STOP"]

    config = json.loads((run_dir / "config.json").read_text())
    assert CONFIG_KEYS <= set(config)
    assert config["arch"] == arch and config["image_size"] == _size(arch) and config["channels"] == 1
    assert config["split"] == {"method": "patient", "val_fraction": 0.2, "seed": 1}
    assert config["versions"]["keras"] == keras.__version__

    status = json.loads((run_dir / "status.json").read_text())
    assert STATUS_KEYS <= set(status)
    assert status["state"] == "completed" and status["fraction"] == 1.0 and status["error"] is None

    (row,) = _history(run_dir)
    assert list(row)[: len(callbacks.HISTORY_COLUMNS)] == callbacks.HISTORY_COLUMNS
    assert row["epoch"] == "1" and float(row["seconds"]) > 0 and float(row["images_per_second"]) > 0

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("validation", "test", "official_val", "threshold", "seed_micro_recall", "train_seconds",
                "params", "epochs_run"):
        assert key in metrics, key
    assert metrics["epochs_run"] == 1 and metrics["params"] > 0
    assert metrics["validation"]["n"] == config["counts"]["validation"]["n"] > 0
    assert metrics["test"]["n"] == 16 and metrics["official_val"]["n"] == 8
    assert metrics["validation"]["threshold"] == metrics["threshold"]
    assert json.loads((run_dir / "checkpoint.json").read_text())["epoch"] == 1
    assert json.loads((run_dir / "skipped_files.json").read_text()) == []

    loaded = load_model(run_dir.name, root=tmp_path)
    assert loaded.input_size == (_size(arch), _size(arch)) and loaded.threshold == metrics["threshold"]
    assert loaded.predict_proba(np.full((3, _size(arch), _size(arch), 1), 120, np.float32)).shape == (3,)
    assert "stress" in metrics and "calibration" in metrics  # every run is reported under shift stress


@pytest.mark.slow
def test_stop_file_cancels_after_the_current_batch_and_keeps_the_model(synthetic_dataset, tmp_path):
    seen = []

    def progress(info):
        if info.get("phase") == "training" and info.get("epoch") == 2 and info.get("batch") == 1:
            (tmp_path / "stopme" / "STOP").touch()
        seen.append((info.get("phase"), info.get("epoch"), info.get("batch")))

    run_dir = training.train(training.TrainConfig(
        data_root=synthetic_dataset, epochs=5, batch_size=8, image_size=16, runs_root=tmp_path,
        run_id="stopme"), progress=progress)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "cancelled"
    # STOP appeared during batch 2 (created while batch 1 was reported): training ends after it.
    assert status["epoch"] == 2 and status["batch"] == 2
    assert ("training", 2, 3) not in seen
    assert [r["epoch"] for r in _history(run_dir)] == ["1"]  # the partial epoch leaves no row
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["cancelled"] is True and metrics["epochs_run"] == 1
    assert (run_dir / "model.keras").is_file() and not (run_dir / "STOP").exists()
    assert runs.list_runs(tmp_path)[0].state == "cancelled"


@pytest.mark.slow
def test_options_and_unreadable_files(tmp_path):
    """Class weights, augmentation, early stopping, image split, Youden; a broken file is skipped."""
    data_root = make_synthetic_dataset(tmp_path / "broken", n_val=(0, 0), n_test=(0, 0), size=16)
    bad = data_root / "train" / "NORMAL" / "IM-9999-0001.jpeg"
    bad.write_bytes(b"this is not a jpeg")
    run_dir = training.train(training.TrainConfig(
        data_root=data_root, epochs=4, batch_size=16, image_size=16, runs_root=tmp_path / "runs",
        class_weight="balanced", augment=True, early_stopping=1, split_method="image",
        threshold_method="youden"))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["class_weight"] == "balanced" and config["augment"] == "mild"
    assert config["early_stopping"] == {"patience": 1} and config["selection"] == "stress"
    assert config["split"] == {"method": "image", "val_fraction": 0.25, "seed": 0}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 1 <= metrics["epochs_run"] <= 4 and metrics["threshold_method"] == "youden"
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"]
    history = _history(run_dir)
    assert len(history) == metrics["epochs_run"]
    # Early stopping watched the stress validation: its figures are in every epoch's row.
    best = max(history, key=lambda r: float(r["stress_score"]))
    assert int(best["epoch"]) == metrics["best_epoch"]
    skipped = json.loads((run_dir / "skipped_files.json").read_text())
    assert [Path(s["path"]).name for s in skipped] == [bad.name] and skipped[0]["reason"]
    assert config["counts"]["skipped"] == 1
    assert "test" not in metrics and "official_val" not in metrics


def test_balanced_class_weights_equalise_the_classes():
    weights = training.balanced_class_weights(np.array([0, 1, 1, 1]))
    assert weights == {0: 2.0, 1: pytest.approx(4 / 6)}
    assert 1 * weights[0] == pytest.approx(3 * weights[1])


def test_augmentation_keeps_left_and_right():
    """No flips: a bright blob on the image's right stays on the right after augmentation."""
    img = np.full((8, 32, 32, 1), 40.0, np.float32)
    img[:, 10:22, 22:30, :] = 220.0
    out = np.asarray(augment.mild_layers(3)(img, training=True))
    assert out.shape == img.shape
    assert not np.allclose(out, img)
    right, left = out[:, :, 16:, :].mean(axis=(1, 2, 3)), out[:, :, :16, :].mean(axis=(1, 2, 3))
    assert np.all(right > left + 10)  # a mirrored image would have right < left
    assert out.min() >= 0 and out.max() <= 255.001
    names = [layer.__class__.__name__ for layer in augment.mild_layers(0).layers]
    assert "RandomFlip" not in names


def test_strong_augmentation_changes_framing_but_never_mirrors():
    """The strong level zooms height and width independently and shifts, with no flips: the bright
    blob stays on the right, and its vertical and horizontal extents vary independently."""
    import tensorflow as tf

    from xray_core import augment

    img = np.full((64, 48, 48, 1), 40.0, np.float32)
    img[:, 14:34, 30:42, :] = 220.0
    out = augment.strong(img, tf.constant([5, 6], tf.int64)).numpy()
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 255.0
    right, left = out[:, :, 24:, :].mean(axis=(1, 2, 3)), out[:, :, :24, :].mean(axis=(1, 2, 3))
    assert np.all(right > left)
    mask = out[..., 0] > 130
    heights = mask.any(axis=2).sum(axis=1)
    widths = mask.any(axis=1).sum(axis=1)
    assert heights.std() > 1 and widths.std() > 1
    assert abs(np.corrcoef(heights, widths)[0, 1]) < 0.8  # independent zooms, not one scale
    # Seeded: the same seed gives the same batch.
    again = augment.strong(img, tf.constant([5, 6], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)


def test_failure_is_recorded_and_reraised(tmp_path):
    data_root = make_synthetic_dataset(tmp_path / "one_class", n_train=(0, 12), n_val=(0, 0), n_test=(0, 0),
                                       size=16)
    (data_root / "train" / "NORMAL").mkdir(exist_ok=True)
    with pytest.raises(training.TrainingDataError, match="only one class"):
        training.train(training.TrainConfig(data_root=data_root, epochs=1, image_size=16,
                                            runs_root=tmp_path / "runs", run_id="doomed"))
    status = json.loads((tmp_path / "runs" / "doomed" / "status.json").read_text())
    assert status["state"] == "failed" and "only one class" in status["error"]
    assert runs.list_runs(tmp_path / "runs")[0].state == "failed"


def test_bad_settings_fail_before_a_run_folder_exists(synthetic_dataset, tmp_path):
    with pytest.raises(ValueError, match="Unknown architecture"):
        training.train(training.TrainConfig(arch="resnet9000", data_root=synthetic_dataset, runs_root=tmp_path))
    with pytest.raises(ValueError, match="at least"):
        training.train(training.TrainConfig(arch="model4", data_root=synthetic_dataset, image_size=8,
                                            runs_root=tmp_path))
    with pytest.raises(runs.InvalidRunId):
        training.train(training.TrainConfig(data_root=synthetic_dataset, run_id="../escape", runs_root=tmp_path))
    with pytest.raises(runs.InvalidRunId):
        training.train(training.TrainConfig(resume="../../etc", runs_root=tmp_path))
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_save_run_makes_a_completed_run_of_a_network_never_fitted(tiny_run, synthetic_dataset, tmp_path):
    """The session's tiny run comes from save_run (conftest.py): the files and fields a training
    writes, read back through the registry and the model like any run."""
    runs_root, run_id = tiny_run
    run_dir = runs_root / run_id
    assert (RUN_FILES - {"checkpoint.keras", "checkpoint.json"}) | {"model.json", "validation.csv",
                                                                     "predictions_validation.csv"} <= {
        p.name for p in run_dir.iterdir()}
    config = json.loads((run_dir / "config.json").read_text())
    assert CONFIG_KEYS <= set(config) and config["given_network"] and config["epochs"] == 2
    assert config["counts"]["train"]["n"] + config["counts"]["validation"]["n"] == 60
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["error"] is None and status["fraction"] == 1.0
    assert [row["epoch"] for row in _history(run_dir)] == ["1", "2"]
    info = runs.list_runs(runs_root)[0]
    assert info.run_id == run_id and info.state == "completed"
    assert info.metrics["epochs_run"] == 2 and info.metrics["selection"] == "given network"
    assert info.metrics["validation"]["n"] == config["counts"]["validation"]["n"]
    assert info.metrics["test"]["n"] == 16 and info.metrics["official_val"]["n"] == 8
    assert load_model(run_id, root=runs_root).threshold == info.metrics["threshold"]
    # A network built for another input is refused with a sentence, and the run says it failed.
    network = architectures.build("baseline", input_shape=(24, 24, 1))
    with pytest.raises(ValueError, match=r"inputs of shape \(24, 24, 1\), not the 16 px, 1 channel"):
        training.save_run(network, training.TrainConfig(data_root=synthetic_dataset, image_size=16, channels=1,
                                                        runs_root=tmp_path, run_id="mismatch"))
    assert runs.load_run("mismatch", root=tmp_path).status["state"] == "failed"


def test_evaluate_run_caches_into_metrics(tiny_run, synthetic_dataset, tmp_path):
    root, run_id = tiny_run
    # Work on a copy: the session's tiny run must stay as it is for other tests.
    import shutil

    shutil.copytree(root / run_id, tmp_path / run_id)
    run = runs.load_run(run_id, root=tmp_path)
    trained = run.metrics["validation"]
    assert evaluation.evaluate_run(run, synthetic_dataset, split="val") == trained  # cached
    # Recomputed from scratch: the same patients (split rebuilt from the seed), the same scores.
    fresh = evaluation.evaluate_run(run, synthetic_dataset, split="val", refresh=True)
    for key in ("n", "tp", "fp", "tn", "fn", "threshold"):
        assert fresh[key] == trained[key], key
    assert fresh["roc_auc"] == pytest.approx(trained["roc_auc"], abs=1e-6)
    (tmp_path / run_id / "metrics.json").unlink()
    (tmp_path / run_id / "predictions_test.csv").unlink()
    test = evaluation.evaluate_run(run, synthetic_dataset, split="test")
    assert (tmp_path / run_id / "predictions_test.csv").is_file()  # kept for the ROC curve
    # The threshold lives with the model (model.json), not in metrics.json.
    assert test["n"] == 16 and test["threshold"] == json.loads((tmp_path / run_id / "model.json").read_text())["threshold"]
    assert json.loads((tmp_path / run_id / "metrics.json").read_text())["test"] == test
    with pytest.raises(ValueError, match="split"):
        evaluation.evaluate_run(run, synthetic_dataset, split="holdout")


def test_training_keeps_validation_scores_that_reproduce_its_auc(tiny_run, synthetic_dataset, tmp_path):
    from xray_core import metrics

    root, run_id = tiny_run
    saved = root / run_id / "predictions_validation.csv"
    with open(saved, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "score"]
    assert not Path(rows[0]["path"]).is_absolute()  # relative to the data root
    assert (Path(synthetic_dataset) / rows[0]["path"]).is_file()
    run = runs.load_run(run_id, root=root)
    y, scores = evaluation.split_scores(run, "validation")
    part = run.metrics["validation"]
    assert len(y) == part["n"]
    assert metrics.binary_metrics(y, scores, threshold=part["threshold"])["roc_auc"] == pytest.approx(
        part["roc_auc"], abs=1e-9)
    assert (root / run_id / "predictions_test.csv").is_file()

    # A run without the file: scored now from its stored validation list, nothing written.
    import shutil

    shutil.copytree(root / run_id, tmp_path / run_id)
    (tmp_path / run_id / "predictions_validation.csv").unlink()
    before = sorted((p.name, p.read_bytes()) for p in (tmp_path / run_id).iterdir() if p.is_file())
    y2, scores2 = evaluation.split_scores(run_id, "val", data_root=synthetic_dataset, root=tmp_path)
    assert sorted((p.name, p.read_bytes()) for p in (tmp_path / run_id).iterdir() if p.is_file()) == before
    assert np.array_equal(y2, y) and np.allclose(scores2, scores, atol=1e-6)


# --------------------------------------------------------------------------- real processes


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env["XRAY_MODELS_DIR"] = str(tmp_path / "unused_models")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _train_cmd(data_root: Path, runs_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xray_core", "train", "--arch", "baseline", "--data", str(data_root),
            "--runs-dir", str(runs_dir), *extra]


def _read_json_if_any(path: Path):
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return json.loads(text)  # a half-written file would raise here


def _check_complete_files(runs_dir: Path) -> int:
    """Parse every status.json/history.csv now; return how many files were read."""
    n = 0
    for folder in runs_dir.iterdir():
        if folder.name.startswith("."):
            continue
        status = _read_json_if_any(folder / "status.json")
        if status is not None:
            assert status["state"] in runs.STATES
            n += 1
        try:
            text = (folder / "history.csv").read_text()
        except FileNotFoundError:
            continue
        rows = list(csv.DictReader(text.splitlines()))
        assert text.endswith("\n") and all(len(r) == len(rows[0]) and None not in r.values() for r in rows)
        n += 1
    return n


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    data_root = make_synthetic_dataset(tmp_path / "data", n_train=(60, 90), n_val=(0, 0), n_test=(0, 0),
                                       size=32, images_per_patient=3)
    runs_dir = tmp_path / "runs"
    # Epochs must last well over the status writer's 0.5 s throttle, or no mid-epoch status is ever
    # written on a fast machine: 96 px keeps an epoch at a few seconds even on a quiet one.
    proc = subprocess.Popen(_train_cmd(data_root, runs_dir, "--epochs", "200", "--batch-size", "2",
                                       "--image-size", "96", "--run-id", "victim"),
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_dir = runs_dir / "victim"
    killed_at = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            checkpoint = _read_json_if_any(run_dir / "checkpoint.json")
            status = _read_json_if_any(run_dir / "status.json")
            if (checkpoint and checkpoint["epoch"] >= 1 and status and status["epoch"] > checkpoint["epoch"]
                    and 0 < status["batch"] < status["batches"]):
                killed_at = (checkpoint["epoch"], status["epoch"], status["batch"])
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert killed_at is not None, f"training never reached a mid-epoch point: {err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL

    listed = {r.run_id: r for r in runs.list_runs(runs_dir)}
    assert listed["victim"].state == "interrupted"
    assert listed["victim"].status["recorded_state"] == "running"
    done_epochs = json.loads((run_dir / "checkpoint.json").read_text())["epoch"]
    assert done_epochs >= killed_at[0]
    model = load_network(run_dir / "checkpoint.keras")
    assert model.count_params() > 0
    rows_before = _history(run_dir)
    assert len(rows_before) >= done_epochs  # history may hold one row more than the checkpoint

    resumed = subprocess.run(
        [sys.executable, "-m", "xray_core", "train", "--resume", "victim", "--runs-dir", str(runs_dir),
         "--epochs", str(done_epochs + 1)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1] == "victim"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed"
    rows = _history(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, done_epochs + 2))
    assert rows[:done_epochs] == rows_before[:done_epochs]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == done_epochs + 1
    assert not list(run_dir.glob(".*.tmp*"))  # leftovers of the killed writes are cleaned up


@pytest.mark.slow
def test_two_trainings_at_once_complete_in_separate_folders_and_files_are_always_whole(synthetic_dataset,
                                                                                          tmp_path):
    runs_dir = tmp_path / "runs"
    cmd = _train_cmd(synthetic_dataset, runs_dir, "--epochs", "2", "--batch-size", "8", "--image-size", "16")
    procs = [subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    reads = 0
    try:
        while any(p.poll() is None for p in procs):
            if runs_dir.is_dir():
                reads += _check_complete_files(runs_dir)
            time.sleep(0.02)
    finally:
        outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err.decode()[-3000:]
    ids = [out.decode().strip().splitlines()[-1] for out, _ in outputs]
    assert len(set(ids)) == 2
    listed = {r.run_id: r for r in runs.list_runs(runs_dir)}
    assert set(listed) == set(ids)
    assert all(listed[i].state == "completed" and listed[i].metrics["epochs_run"] == 2 for i in ids)
    assert reads > 20  # the files were really read while being written


@pytest.mark.slow
def test_preset_trains_members_and_assembles_one_calibrated_ensemble(synthetic_dataset, tmp_path):
    """--preset: k member runs sharing one validation split, then one run folder whose model
    averages them, calibrated and thresholded on the pooled stress validation; a rerun reuses the
    completed members."""
    out = ensemble.train_preset("default", synthetic_dataset, run_id="ens", runs_root=tmp_path, members=2,
                                epochs=1, image_size=32, early_stopping=1, arch_options={"widths": [4, 8, 8, 8]})
    members = [tmp_path / "ens-member0", tmp_path / "ens-member1"]
    splits = [json.loads((p / "config.json").read_text())["split"] for p in members]
    assert splits[0] == splits[1] and [json.loads((p / "config.json").read_text())["seed"] for p in members] == [0, 1]
    assert (members[0] / "validation.csv").read_text() == (out / "validation.csv").read_text()
    assert json.loads((out / "config.json").read_text())["epochs"] == [1, 1]  # each member's, not member 0's
    m = load_model(out)
    assert m.n_members == 2 and m.input_size == (32, 32)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold"] == m.threshold and metrics["calibration"]["temperature"] == m.temperature
    assert metrics["calibration"]["bias"] == m.bias
    assert set(metrics["stress"]["changes"]) >= {"plain", "crop_top_bottom_10", "zoom_out_10", "taller_15"}
    # The ensemble's probability is the calibrated mean of its members' probabilities.
    x = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 1)).astype(np.float32)
    singles = [load_model(p).forward(x).raw[:, 0] for p in members]
    from xray_core.model import calibrate

    np.testing.assert_allclose(m.predict_proba(x), calibrate(np.mean(singles, axis=0), m.temperature, m.bias),
                               atol=1e-6)
    before = (members[0] / "model.keras").stat().st_mtime_ns
    ensemble.train_preset("default", synthetic_dataset, run_id="ens", runs_root=tmp_path, members=2,
                          epochs=1, image_size=32, early_stopping=1, arch_options={"widths": [4, 8, 8, 8]})
    assert (members[0] / "model.keras").stat().st_mtime_ns == before  # reused, not retrained


def test_an_ensemble_is_never_assembled_over_a_shipped_run(tmp_path):
    shipped = tmp_path / "default"
    shipped.mkdir()
    fileio.atomic_write_json(shipped / "model.json", {"members": ["model.keras"], "bundled": True})
    with pytest.raises(ValueError, match="ships with the project"):
        ensemble.assemble_ensemble([], run_id="default", runs_root=tmp_path)
    assert sorted(p.name for p in shipped.iterdir()) == ["model.json"]
