"""Training across workers: `train ... --distributed` with tf.distribute.MultiWorkerMirroredStrategy.

Each worker is one `python -m xray_core train ... --distributed` process, on one machine or on
several, told about the others by the standard `TF_CONFIG` environment variable:

    TF_CONFIG='{"cluster": {"worker": ["hostA:12345", "hostB:12345"]}, "task": {"type": "worker", "index": 0}}'

Every worker holds a full copy of the model; each step splits the global batch between them and
averages the gradients (all-reduce over gRPC), so the result is one model, as if trained on one
machine with the same global batch. The chief (task "chief", else worker 0) writes the run folder;
the others write to a temporary folder that is removed at the end. Every worker needs the
dataset at the same path (or a copy at the path given by --data).

Why not Ray Train: its TensorFlow trainer builds this same strategy from the same TF_CONFIG; going
through it would add a second cluster manager to a training that needs none, and the run folder,
status and resume logic would have to be re-plumbed into Ray's checkpoints.

TensorFlow is imported only inside the functions that need it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["DistributedError", "cluster_spec", "is_chief", "n_workers", "strategy", "worker_runs_root",
           "local_tf_configs", "fit"]


class DistributedError(ValueError):
    """TF_CONFIG is missing or malformed; the message says how to write it."""


_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["hostA:12345", "hostB:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\'')


def cluster_spec(environ=None) -> dict:
    """TF_CONFIG, parsed and checked: {"cluster": {...}, "task": {"type", "index"}}."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise DistributedError("--distributed needs the TF_CONFIG environment variable on every worker, "
                               f"naming all workers and this one, for example {_EXAMPLE}.")
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise DistributedError(f"TF_CONFIG is not valid JSON ({exc}). Write it like {_EXAMPLE}.") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise DistributedError(f"TF_CONFIG needs a \"cluster\" and a \"task\" object. Write it like {_EXAMPLE}.")
    kind, index = task.get("type"), task.get("index")
    members = cluster.get(kind)
    if kind not in ("worker", "chief") or not isinstance(members, list):
        raise DistributedError(f"TF_CONFIG's task type {kind!r} is not a worker or chief listed in its "
                               f"cluster ({', '.join(cluster)}). Write it like {_EXAMPLE}.")
    if not isinstance(index, int) or not 0 <= index < len(members):
        raise DistributedError(f"TF_CONFIG's task index {index!r} is not one of 0..{len(members) - 1} "
                               f"for the {len(members)} {kind}(s) listed.")
    return config


def n_workers(config: dict) -> int:
    cluster = config["cluster"]
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def is_chief(config: dict) -> bool:
    """The chief writes the run: the "chief" task if the cluster has one, else worker 0."""
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def strategy():
    """The MultiWorkerMirroredStrategy of this TF_CONFIG. Create it before any other TensorFlow
    work in the process (TensorFlow's rule); it waits until every worker has joined."""
    import tensorflow as tf

    cluster_spec()  # a clear sentence instead of TensorFlow's error on a bad TF_CONFIG
    return tf.distribute.MultiWorkerMirroredStrategy()


def worker_runs_root(config: dict, runs_root, resume: str | None = None):
    """Where this worker writes its run: the registry for the chief; for the others a temporary
    folder, removed when the process exits (their copy of the run is identical and not kept).
    To `resume`, a worker other than the chief starts from a copy of the run in its own
    `runs_root` (a shared filesystem, or the chief's folder copied there beforehand)."""
    if is_chief(config):
        return runs_root
    tmp = Path(tempfile.mkdtemp(prefix="xray-worker-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    if resume:
        from xray_core import fileio, runs

        source = runs.run_path(resume, runs_root)
        if not (source / runs.CHECKPOINT_FILE).is_file():
            raise runs.RunNotFound(
                f"Cannot resume {resume!r} on worker {config['task']['index']}: {source} holds no checkpoint. "
                "Every worker needs the run to continue it: keep --runs-dir on a filesystem all workers "
                "share, or copy the chief's run folder into each worker's --runs-dir first.")
        # Its status names the chief's process, which would make this copy look busy; the chief may
        # be resuming the same folder meanwhile, so the temporary files of its writes in progress
        # (fileio.TEMP_GLOB, gone once renamed) are left out too.
        shutil.copytree(source, tmp / source.name,
                        ignore=shutil.ignore_patterns(runs.STATUS_FILE, runs.STOP_FILE, fileio.TEMP_GLOB))
    return tmp


def free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def local_tf_configs(n: int, host: str = "127.0.0.1") -> list[str]:
    """TF_CONFIG values for n workers on this machine (free ports): for tests and a dry run."""
    workers = [f"{host}:{p}" for p in free_ports(n)]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}) for i in range(n)]


def fit(model, train_ds, val_ds, *, strategy, batch_size: int, epochs: int, initial_epoch: int = 0,
        callbacks=(), pneumonia_column: int = 0) -> None:
    """`model.fit` for MultiWorkerMirroredStrategy: a custom loop, because Keras 3's fit fails
    under this strategy (keras-team/keras#20585: "Attempt to convert a value (PerReplica...)").

    model: built and compiled inside `strategy.scope()`. train_ds: batches of the GLOBAL batch
    size (x, y) or (x, y, sample weight), split between the workers by element (DATA sharding).
    Every worker must see the same number of batches, so train_ds must drop its last partial
    batch. val_ds is evaluated by each worker on its own (no communication), so every worker
    computes the same logs and the same early-stopping decision; a stop asked on one worker
    (a STOP file on the chief) is agreed on by all at the end of each batch.

    Callbacks get on_train_begin/end, on_epoch_begin/end and on_train_batch_end as under
    model.fit; the epoch logs hold loss, val_loss and val_auc.
    """
    import keras
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from xray_core.model import network_outputs

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dist_ds = strategy.experimental_distribute_dataset(train_ds.with_options(options))
    loss_config = dict(model.loss.get_config(), reduction=None)
    per_example_loss = type(model.loss).from_config(loss_config)
    optimizer = model.optimizer
    replicas = strategy.num_replicas_in_sync

    def replica_step(batch):
        x, y, *w = batch
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            losses = per_example_loss(y, pred)
            if w:
                losses = losses * tf.cast(w[0], losses.dtype)
            loss = tf.nn.compute_average_loss(losses, global_batch_size=batch_size)
            if model.losses:
                loss += tf.add_n(model.losses) / replicas
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(batch):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(batch,)), axis=None)

    @tf.function
    def any_worker_stops(flag):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None)

    bce = keras.losses.BinaryCrossentropy()

    def validation_logs() -> dict:
        ys, ps = [], []
        for x, y, *_ in val_ds:
            ps.append(network_outputs(model, np.asarray(x)))
            ys.append(np.asarray(y))
        y, p = np.concatenate(ys), np.concatenate(ps)
        logs = {"val_loss": float(bce(y, p))}
        truth = y[:, pneumonia_column] if y.ndim == 2 else y
        if len(np.unique(truth)) == 2:
            logs["val_auc"] = float(roc_auc_score(truth, p[:, pneumonia_column]))
        return logs

    callbacks = list(callbacks)
    for cb in callbacks:
        cb.set_model(model)
    model.stop_training = False
    for cb in callbacks:
        cb.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        total, steps = 0.0, 0
        for step, batch in enumerate(dist_ds):
            total += float(train_step(batch))
            steps += 1
            for cb in callbacks:
                cb.on_train_batch_end(step, {"loss": total / steps})
            if float(any_worker_stops(tf.constant(1.0 if model.stop_training else 0.0))) > 0:
                model.stop_training = True
                break
        logs = {"loss": total / max(steps, 1), **validation_logs()}
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end()


def describe(config: dict) -> str:
    task = config["task"]
    return (f"{task['type']} {task['index']} of {n_workers(config)} "
            f"({'chief: writes the run' if is_chief(config) else 'writes to a temporary folder'})")


if __name__ == "__main__":  # pragma: no cover - a helper for people, not for the library
    print("\n".join(local_tf_configs(int(sys.argv[1]) if len(sys.argv) > 1 else 2)))
