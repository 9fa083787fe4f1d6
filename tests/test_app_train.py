"""AppTest of the Train page: settings, a real background training, the queue, cancel; queue unit tests."""

from __future__ import annotations

import fcntl
import json
import shutil
import time

import pytest

from tests.apptest_helpers import open_page, wait_for
from xray_core import fileio, jobs, runs


@pytest.fixture
def train_page(monkeypatch, synthetic_dataset, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    at = open_page(monkeypatch, synthetic_dataset, models, "pages/train.py", timeout=120)
    return at, models



def test_settings_show_layer_table_and_parameter_count(train_page):
    at, _ = train_page
    assert at.selectbox(key="train_arch").value == "baseline"
    assert at.number_input(key="train_epochs_baseline").value == 5  # the seed's setting
    at.number_input(key="train_size_baseline").set_value(100)
    at.selectbox(key="train_channels_baseline").set_value(3).run()
    # The seed's baseline at 100x100x3 has exactly 1,282,482 parameters (shared/seed/NOTES.md).
    assert any("1,282,482 parameters" in e.label for e in at.expander)
    at.selectbox(key="train_arch").set_value("model2").run()
    assert at.number_input(key="train_batch_model2").value == 32
    assert not at.exception


@pytest.mark.slow
def test_start_runs_in_background_queues_the_second_and_both_complete(train_page):
    at, models = train_page
    at.number_input(key="train_epochs_baseline").set_value(1)
    at.number_input(key="train_batch_baseline").set_value(16)
    at.number_input(key="train_size_baseline").set_value(16).run()
    started = time.monotonic()
    at.button(key="train_start").click().run()
    assert time.monotonic() - started < 10, "Start must return at once"
    assert at.success and "Queued" in at.success[0].value
    first = at.success[0].value.split()[1].rstrip(";")
    at.number_input(key="train_seed").set_value(1).run()
    at.button(key="train_start").click().run()
    second = at.success[0].value.split()[1].rstrip(";")
    # The second one waits, visibly, while the first starts.
    text = " ".join(m.value for m in at.markdown)
    assert "Queued" in text and second in text

    def both_done():
        states = {r.run_id: r.state for r in runs.list_runs(models)}
        return states.get(first) == "completed" and states.get(second) == "completed"

    wait_for(both_done, 240)
    at.run()
    assert not at.exception
    recent = at.table[0].value
    assert recent.loc[[first, second], "state"].tolist() == ["completed", "completed"]
    # One at a time: the second started after the first had finished.
    a, b = runs.load_run(first, root=models), runs.load_run(second, root=models)
    assert b.config["created"] >= a.status["updated"]
    assert json.loads((models / ".queue" / "logs" / f"{first}.exit.json").read_text())["returncode"] == 0
    # Completed runs give this machine's epoch time for that setup.
    at.run()
    assert any("an epoch has taken about" in c.value for c in at.caption)


def test_cancel_button_writes_stop_file_and_queue_can_be_emptied(train_page, tiny_run):
    at, models = train_page
    runs_root, run_id = tiny_run
    # A run that reads as running (this test process's pid keeps it alive) shows Cancel.
    shutil.copytree(runs_root / run_id, models / "live")
    status = dict(fileio.read_json(models / "live" / "status.json"), state="running", epoch=1, epochs=3,
                  batch=2, batches=4, fraction=0.5, images_per_second=123.0, eta_seconds=65,
                  **runs.process_identity())
    fileio.atomic_write_json(models / "live" / "status.json", status)
    # Hold the worker lock, as a worker busy with another training does, so the job stays queued.
    (models / jobs.QUEUE_DIR).mkdir()
    lock = open(models / jobs.QUEUE_DIR / "worker.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    job = jobs.submit_training(models, {"arch": "baseline", "data": "/nowhere", "epochs": 1, "batch_size": 8,
                                        "image_size": 16, "channels": 1, "learning_rate": 1e-3, "seed": 0},
                               start=False)
    at.run()
    assert [p.value for p in at.progress] == [50]
    assert next(m.value for m in at.metric if m.label == "Time left") == "1 min 05 s"
    assert any(job in m.value for m in at.markdown)
    at.button(key="train_cancel_live").click().run()
    assert (models / "live" / runs.STOP_FILE).is_file()
    at.button(key=f"train_unqueue_{job}").click().run()
    assert jobs.queued_jobs(models) == []
    lock.close()


@pytest.mark.slow
def test_launch_that_fails_before_its_run_folder_is_shown(train_page):
    at, models = train_page
    # An option the train command refuses: it exits in argparse, before any run folder exists.
    job = jobs.submit_training(models, {"arch": "baseline", "data": "/nowhere", "epochs": 1, "batch_size": 8,
                                        "image_size": 16, "channels": 1, "learning_rate": 1e-3, "seed": 0,
                                        "split": "bogus"}, start=False)
    assert jobs.work_queue(models) == 0  # the worker, in-process: runs the one job and leaves
    assert not (models / job).exists()
    assert "invalid choice" in jobs.launch_failure(models, job)
    at.run()
    assert not at.exception
    assert any(job in e.value and "did not start" in e.value for e in at.error)
