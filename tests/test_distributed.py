"""`train --distributed`: two real worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from xray_core import distributed, runs

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _workers(args, tmp_path, models) -> list[subprocess.Popen]:
    """Two `train --distributed` workers on 127.0.0.1 with `args`, each with its own cache."""
    procs = []
    for i, tf_config in enumerate(distributed.local_tf_configs(2)):
        env = dict(os.environ, TF_CONFIG=tf_config, XRAY_CACHE_DIR=str(tmp_path / f"cache{i}"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "xray_core", "train", *args, "--runs-dir", str(models), "--distributed", "--quiet"],
            cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout=900) -> None:
    """Wait for every worker (a worker still running after `timeout` is killed); each must succeed."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    failed = [f"worker {i} exited {proc.returncode}:\n{err[-2000:]}"
              for i, (proc, (_out, err)) in enumerate(zip(procs, outputs)) if proc.returncode != 0]
    assert not failed, "\n\n".join(failed)  # every worker's own error: the first to fail may be either


@pytest.mark.slow
def test_two_workers_make_one_run_that_loads_and_beats_chance(synthetic_dataset, tmp_path):
    from sklearn.metrics import roc_auc_score

    from xray_core import data, imaging
    from xray_core.model import load_model

    models = tmp_path / "models"
    _finish(_workers(["--arch", "baseline", "--data", str(synthetic_dataset), "--epochs", "1", "--batch-size", "16",
                      "--image-size", "16", "--seed", "0", "--run-id", "two-workers"], tmp_path, models))

    # one run folder, written by the chief alone; the other worker left nothing behind
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == ["two-workers"]
    run = runs.load_run("two-workers", root=models)
    assert run.status["state"] == "completed"
    assert run.config["distributed"] == {"workers": 2, "strategy": "MultiWorkerMirroredStrategy"}
    history = run.history
    assert len(history) == 1 and np.isfinite(history["loss"]).all()

    model = load_model("two-workers", root=models)
    index = data.index_dataset(synthetic_dataset)
    test = index[index["split"] == "test"]
    proba = model.predict_proba([imaging.decode(p) for p in test["path"]])
    assert roc_auc_score(test["label"].to_numpy(), proba) > 0.7


def test_bad_tf_config_is_a_sentence():
    with pytest.raises(distributed.DistributedError, match="TF_CONFIG environment variable"):
        distributed.cluster_spec({})
    with pytest.raises(distributed.DistributedError, match="not valid JSON"):
        distributed.cluster_spec({"TF_CONFIG": "{workers"})
    bad_index = json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}})
    with pytest.raises(distributed.DistributedError, match="0..1"):
        distributed.cluster_spec({"TF_CONFIG": bad_index})


def test_chief_is_worker_zero_unless_a_chief_is_named():
    two = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}
    assert distributed.is_chief(two)
    assert not distributed.is_chief({**two, "task": {"type": "worker", "index": 1}})
    with_chief = {"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    assert not distributed.is_chief(with_chief)
    assert distributed.is_chief({**with_chief, "task": {"type": "chief", "index": 0}})
    assert distributed.n_workers(with_chief) == 2


def test_a_worker_without_the_run_to_resume_is_told_how_to_give_it_one(tmp_path):
    second = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(runs.RunNotFound, match="worker 1: .* holds no checkpoint.*copy the chief's run folder"):
        distributed.worker_runs_root(second, tmp_path, resume="gone")
    first = {**second, "task": {"type": "worker", "index": 0}}
    assert distributed.worker_runs_root(first, tmp_path, resume="gone") == tmp_path  # the chief checks in _resolve


def test_a_resuming_worker_copies_the_run_without_the_chiefs_writes_in_progress(tmp_path):
    """The chief resumes the shared folder while the others copy it: its status, STOP and the
    temporary files of its atomic writes (which vanish when renamed) stay out of the copy."""
    source = tmp_path / "shared-run"
    for name in (runs.CHECKPOINT_FILE, runs.CONFIG_FILE, runs.STATUS_FILE, runs.STOP_FILE,
                 f".{runs.STATUS_FILE}.k2j4.tmp", f".{runs.CONFIG_FILE}.x9.tmp"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(name)
    second = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    root = distributed.worker_runs_root(second, tmp_path, resume="shared-run")
    assert root != tmp_path
    copied = sorted(p.name for p in (root / "shared-run").iterdir())
    assert copied == sorted([runs.CHECKPOINT_FILE, runs.CONFIG_FILE])
    assert (root / "shared-run" / runs.CONFIG_FILE).read_text() == runs.CONFIG_FILE


@pytest.mark.slow
def test_stop_on_the_chief_stops_every_worker_and_the_run_resumes_across_workers(synthetic_dataset, tmp_path):
    """STOP in the chief's run folder (the dashboard's Cancel) ends both workers after the batch,
    with a resumable run; `--resume` with the same workers continues it from its last epoch."""
    models = tmp_path / "models"
    run_dir = models / "stopped"
    procs = _workers(["--arch", "baseline", "--data", str(synthetic_dataset), "--epochs", "40", "--batch-size", "16",
                      "--image-size", "16", "--seed", "0", "--run-id", "stopped"], tmp_path, models)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            if (run_dir / runs.CHECKPOINT_META_FILE).is_file():
                break
            time.sleep(0.1)
        assert all(p.poll() is None for p in procs), "a worker ended before the first epoch was saved"
        (run_dir / runs.STOP_FILE).write_text("stop\n")
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    _finish(procs, timeout=300)
    run = runs.load_run("stopped", root=models)
    stopped_at = len(run.history)
    assert run.status["state"] == "cancelled" and 1 <= stopped_at < 40  # Cancel: a run that can resume

    _finish(_workers(["--resume", "stopped", "--epochs", str(stopped_at + 1)], tmp_path, models))
    run = runs.load_run("stopped", root=models)
    assert run.status["state"] == "completed"
    assert list(run.history["epoch"]) == list(range(1, stopped_at + 2))
    assert run.config["resumed"][0]["from_epoch"] == stopped_at
