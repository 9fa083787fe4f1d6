"""An explanation worker process: it answers the server's requests for `explain.explain_film`.

`serving.service` starts each worker as a fresh interpreter (`main_cli`: nothing of the server's
state is inherited) and talks to it over a `multiprocessing.connection` on a socket. A worker
lowers its own CPU priority first, so the server's verdicts take the cores when they need them;
then it loads each model it is asked for once (`load_model`'s cache: one copy per worker) and
answers one request at a time:

    ("explain", job_id, key, run_path, image, options)
        -> ("progress", job_id, done, total, time) after each batch of LIME samples, then
           ("done", job_id, Explained) | ("cancelled", job_id, done) | ("failed", job_id, sentence)
    ("warm", run_path) -> ("warmed", run_path, seconds) | ("warm_failed", run_path, sentence)
    None -> the worker exits (as it does when the server's end of the connection closes)

While a job runs, the server sends nothing but ("cancel", job_id) or None, and the worker looks
for them between LIME's batches of samples (and before Grad-CAM and before drawing): a cancelled
job stops within one batch. `time` is `time.monotonic()`, one clock for every process of the
machine, so a test can count the batches finished after a cancel.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback

import numpy as np

from xray_core.explain import ExplainCancelled, ExplainError, explain_film

WARM_SAMPLES = 128  # a small explanation of a synthetic film loads lime, TensorFlow and Grad-CAM's graph


def warm_film(size: int = 256) -> np.ndarray:
    """A synthetic gray film with some structure (slic finds its usual ~36 regions on it)."""
    y, x = np.mgrid[0:size, 0:size] / size
    return np.clip(128 + 60 * np.sin(9 * x) * np.cos(7 * y) + 40 * x, 0, 255).astype(np.uint8)


class _Inbox:
    """What the server said while a job ran: a cancel of this job, or stop (None)."""

    def __init__(self, conn, job_id: int):
        self.conn, self.job_id = conn, job_id
        self.cancelled = self.stop = False

    def __call__(self) -> bool:
        """True once the job is to stop (LIME's `cancel` callable)."""
        while not self.cancelled and self.conn.poll(0):
            message = self.conn.recv()
            if message is None:
                self.cancelled = self.stop = True
            elif message[0] == "cancel" and message[1] == self.job_id:
                self.cancelled = True
        return self.cancelled


def _explain(conn, job_id: int, key, run_path: str, image: np.ndarray, options: dict) -> bool:
    """Answer one job; False when the server asked the worker to stop meanwhile."""
    from xray_core import runs
    from xray_core.model import ModelError, load_model

    inbox = _Inbox(conn, job_id)
    scored = [0]

    def progress(done: int, total: int) -> None:
        scored[0] = done
        conn.send(("progress", job_id, int(done), int(total), time.monotonic()))

    try:
        model = load_model(run_path)
        if model.fingerprint != key.model:
            conn.send(("failed", job_id, f"The model {model.run_id!r} changed on disk after this film was "
                                         "assessed. Choose the model again to see the new one's answer."))
            return not inbox.stop
        result = explain_film(model, image, progress=progress, cancel=inbox, key=key, **options)
    except ExplainCancelled:
        conn.send(("cancelled", job_id, scored[0]))
    except (ExplainError, ModelError, runs.RunNotFound) as exc:
        conn.send(("failed", job_id, str(exc)))
    except Exception as exc:  # a bug: its traceback goes to the server's log, the page says one sentence
        traceback.print_exc(file=sys.stderr)
        conn.send(("failed", job_id, f"The explanation failed ({type(exc).__name__}: {exc}); the server's "
                                     "log has the details."))
    else:
        conn.send(("done", job_id, result))
    return not inbox.stop


def _warm(conn, run_path: str) -> None:
    from xray_core.model import load_model

    t0 = time.perf_counter()
    try:
        model = load_model(run_path)
        explain_film(model, warm_film(), num_samples=WARM_SAMPLES)
    except Exception as exc:  # warming is an optimisation: the real job reports its own failure
        traceback.print_exc(file=sys.stderr)
        conn.send(("warm_failed", run_path, f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("warmed", run_path, time.perf_counter() - t0))


def main(conn, *, nice: int = 0) -> None:
    """The worker's loop: answer the server's requests until it says stop or goes away."""
    if nice:
        os.nice(nice)  # before any library starts its threads: they inherit it
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server is gone
        if message is None:
            return
        kind = message[0]
        if kind == "explain":
            if not _explain(conn, *message[1:]):
                return
        elif kind == "warm":
            _warm(conn, message[1])
        elif kind != "cancel":  # a cancel that came after its job ended
            raise ValueError(f"unknown request {kind!r} for an explanation worker")


def main_cli() -> None:
    """`python -c "from xray_core.serving.worker import main_cli; main_cli()" FD NICE`, as the
    service starts a worker: FD is this process's end of the socket pair."""
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the server's terminal stops the server, then us
    fd, nice = int(sys.argv[1]), int(sys.argv[2])
    main(Connection(fd), nice=nice)
