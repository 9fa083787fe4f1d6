"""The run registry: ids that cannot escape it, atomic files, liveness, listing and deleting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from xray_core import fileio, runs


@pytest.mark.parametrize(
    "bad",
    ["", " ", "..", ".", "../x", "a/../../b", "/etc", "/tmp/run", "a/b", "a\\b", "..\\x",
     ".hidden", "C:", "a b", "x" * 200, "run\x00", None, 3],
)
def test_run_ids_that_could_escape_are_refused(bad, tmp_path):
    with pytest.raises(runs.InvalidRunId):
        runs.validate_run_id(bad)
    if isinstance(bad, str):
        with pytest.raises(runs.InvalidRunId):
            runs.load_run(bad, root=tmp_path)
        with pytest.raises(runs.InvalidRunId):
            runs.delete_run(bad, root=tmp_path)


@pytest.mark.parametrize("good", ["default", "20261125-221503-baseline-3f2a", "my_run.v2"])
def test_plain_run_ids_are_accepted(good):
    assert runs.validate_run_id(good) == good


def test_escape_refusal_leaves_outside_folders_alone(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    root = tmp_path / "registry"
    root.mkdir()
    with pytest.raises(runs.InvalidRunId):
        runs.delete_run("../outside", root=root)
    assert (outside / "config.json").exists()


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "status.json"
    fileio.atomic_write_json(target, {"a": 1, "x": np.float32(0.5), "nan": float("nan"), "arr": np.arange(3)})
    assert json.loads(target.read_text()) == {"a": 1, "x": 0.5, "nan": None, "arr": [0, 1, 2]}
    fileio.atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["status.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    fileio.atomic_write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        fileio.atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_concurrent_writers_never_leave_half_a_file(tmp_path):
    """Readers parse the file while two threads rewrite it: every read is complete JSON."""
    target = tmp_path / "status.json"
    fileio.atomic_write_json(target, {"n": -1, "pad": ""})
    stop = threading.Event()

    def writer(offset):
        i = 0
        while not stop.is_set():
            fileio.atomic_write_json(target, {"n": offset + i, "pad": "x" * (i % 5000)})
            i += 1

    threads = [threading.Thread(target=writer, args=(k * 10**6,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            assert "n" in json.loads(target.read_text())
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_new_run_ids_are_unique_under_concurrency(tmp_path):
    ids: list[str] = []
    lock = threading.Lock()

    def make():
        for _ in range(25):
            run_id = runs.new_run_id("baseline", root=tmp_path)
            with lock:
                ids.append(run_id)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == len(set(ids)) == 100
    assert all((tmp_path / i).is_dir() for i in ids)
    assert all("-baseline-" in i for i in ids)


def test_create_run_dir_refuses_an_existing_run(tmp_path):
    runs.create_run_dir("mine", root=tmp_path)
    with pytest.raises(runs.InvalidRunId, match="already exists"):
        runs.create_run_dir("mine", root=tmp_path)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_running_status_with_dead_pid_reads_as_interrupted(tmp_path):
    folder = tmp_path / "r1"
    folder.mkdir()
    fileio.atomic_write_json(folder / "config.json", {"arch": "baseline"})
    fileio.atomic_write_json(folder / "status.json", {"state": "running", "pid": _dead_pid(), "updated": runs.now_iso()})
    (info,) = runs.list_runs(tmp_path)
    assert info.state == "interrupted"
    assert info.status["recorded_state"] == "running"
    assert runs.load_run("r1", root=tmp_path).status["state"] == "interrupted"


def test_running_status_of_live_process_stays_running(tmp_path):
    folder = tmp_path / "r1"
    writer = runs.StatusWriter(folder)
    writer.update(state="running", epoch=1)
    assert runs.list_runs(tmp_path)[0].state == "running"


def test_reused_pid_is_not_taken_for_the_training(tmp_path):
    folder = tmp_path / "r1"
    folder.mkdir()
    me = runs.process_identity()
    if me["pid_started"] is None:
        pytest.skip("no /proc on this system: start times cannot be compared")
    status = {"state": "running", "pid": me["pid"], "pid_started": "1", "host": me["host"]}
    fileio.atomic_write_json(folder / "status.json", status)
    assert runs.list_runs(tmp_path)[0].state == "interrupted"


def test_stale_heartbeat_from_another_host_reads_as_interrupted(tmp_path):
    folder = tmp_path / "r1"
    folder.mkdir()
    status = {"state": "running", "pid": 1, "host": "elsewhere", "updated": "2020-01-01T00:00:00+00:00"}
    fileio.atomic_write_json(folder / "status.json", status)
    assert runs.list_runs(tmp_path)[0].state == "interrupted"
    status["updated"] = runs.now_iso()
    fileio.atomic_write_json(folder / "status.json", status)
    assert runs.list_runs(tmp_path)[0].state == "running"


def test_status_writer_throttles_and_heartbeat_refreshes(tmp_path):
    writer = runs.StatusWriter(tmp_path, min_interval=60)
    assert writer.update(state="running", batch=1)
    assert not writer.update(force=False, batch=2)
    assert json.loads((tmp_path / "status.json").read_text())["batch"] == 1
    first = json.loads((tmp_path / "status.json").read_text())["updated"]
    writer.start_heartbeat(interval=0.05)
    try:
        for _ in range(100):
            data = json.loads((tmp_path / "status.json").read_text())
            if data["updated"] != first:
                break
            threading.Event().wait(0.02)
    finally:
        writer.stop_heartbeat()
    assert data["updated"] != first
    assert data["batch"] == 2  # the heartbeat writes the latest merged fields
    assert data["pid"] == os.getpid()


def test_list_runs_skips_hidden_and_junk_and_survives_damaged_files(tmp_path):
    assert runs.list_runs(tmp_path / "missing") == []
    (tmp_path / ".deleting-x").mkdir()
    (tmp_path / ".deleting-x" / "config.json").write_text("{}")
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "README.md").write_text("hi")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"arch": "base')
    bundled = tmp_path / "default"
    bundled.mkdir()
    (bundled / "model.keras").write_bytes(b"")
    listed = {r.run_id: r for r in runs.list_runs(tmp_path)}
    assert sorted(listed) == ["broken", "default"]
    assert listed["broken"].config == {}
    assert "config.json could not be read" in listed["broken"].problems[0]
    assert listed["default"].state == "completed"


def test_load_run_of_missing_run_says_what_to_do(tmp_path):
    with pytest.raises(runs.RunNotFound, match="xray_core runs"):
        runs.load_run("nope", root=tmp_path)


def test_delete_run_removes_folder_and_refuses_live_training_and_default(tmp_path):
    writer = runs.StatusWriter(tmp_path / "live")
    writer.update(state="running")
    with pytest.raises(runs.RunBusy, match="STOP"):
        runs.delete_run("live", root=tmp_path)
    done = tmp_path / "done"
    done.mkdir()
    fileio.atomic_write_json(done / "status.json", {"state": "completed"})
    runs.delete_run("done", root=tmp_path)
    assert not done.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "model.keras").write_bytes(b"")
    with pytest.raises(runs.RunBusy):
        runs.delete_run("default", root=tmp_path)
    with pytest.raises(runs.RunNotFound):
        runs.delete_run("done", root=tmp_path)


def test_runs_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_MODELS_DIR", str(tmp_path))
    assert runs.runs_root() == tmp_path
    assert runs.runs_root("/x") == Path("/x")


def test_importing_runs_does_not_import_tensorflow():
    code = "import sys, xray_core.runs; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"



def test_safe_mode_refuses_lambda_layers(tmp_path):
    import keras

    folder = tmp_path / "evil"
    folder.mkdir()
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2, name="code")(inputs)
    keras.Model(inputs, outputs).save(folder / "model.keras")
    fileio.atomic_write_json(folder / "config.json", {"image_size": 2, "channels": 1})
    from xray_core.model import load_model

    with pytest.raises(ValueError, match="(?i)safe_mode|lambda"):
        load_model("evil", root=tmp_path).members
