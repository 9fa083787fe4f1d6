"""`train --distributed`: two real worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from xray_core import distributed, runs

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_workers_make_one_run_that_loads_and_beats_chance(synthetic_dataset, tmp_path):
    from sklearn.metrics import roc_auc_score

    from xray_core import data, imaging
    from xray_core.model import load_model

    models = tmp_path / "models"
    configs = distributed.local_tf_configs(2)
    procs = []
    for i, tf_config in enumerate(configs):
        env = dict(os.environ, TF_CONFIG=tf_config, XRAY_CACHE_DIR=str(tmp_path / f"cache{i}"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "xray_core", "train", "--arch", "baseline", "--data", str(synthetic_dataset),
             "--epochs", "1", "--batch-size", "16", "--image-size", "16", "--seed", "0", "--run-id", "two-workers",
             "--runs-dir", str(models), "--distributed", "--quiet"],
            cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=900))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]

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
