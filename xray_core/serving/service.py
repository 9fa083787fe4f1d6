"""Explanations for a served dashboard: a few worker processes, so a verdict never waits for one.

A verdict (decode, gate, probability, set) takes milliseconds and runs where it is asked for, in
the server process. An explanation (LIME, Grad-CAM, the drawn panels) takes about a second of
every core, so it is a job for a small pool of worker processes (`serving.worker`), started on
first use as fresh interpreters, each at a lower CPU priority (nice) and with its own copy of
each model it is asked for. The server process itself never imports TensorFlow, Keras or lime.

`serving.scheduler` keeps the jobs (arrival order; a newer job of the same owner, one browser
session, cancels its older one; a job nobody asked about for a few seconds is dropped; results
kept by film hash, model fingerprint and options). `ExplainService` adds the processes: one
thread per worker takes the next job, sends it, relays its progress and answer, and restarts a
worker that died. A running job is cancelled by a message its worker reads between batches of
LIME samples. `shared(workers=n)` is the server's one service.

The workers are `python -c ...` processes talking over a socket pair with
`multiprocessing.connection`, not `multiprocessing.Process`: its "spawn" start re-runs the
parent's `__main__` in the child, and inside Streamlit `__main__` is the app script itself.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from xray_core.serving import worker as worker_mod
from xray_core.serving.scheduler import KEEP_RESULTS, STALE_AFTER, JobKey, Scheduler, Status

__all__ = ["ExplainService", "JobKey", "Scheduler", "Status", "WORKER_NICE", "existing", "shared"]

WORKER_NICE = 10  # the workers' CPU priority below the server's (a verdict gets the cores first)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where `xray_core` is imported from
_WORKER_CODE = f"from {worker_mod.__name__} import {worker_mod.main_cli.__name__}; {worker_mod.main_cli.__name__}()"


class Worker:
    """One worker process and the server's end of its connection."""

    def __init__(self, *, nice: int = WORKER_NICE):
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [_PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
        with theirs:
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-c", _WORKER_CODE, str(theirs.fileno()), str(int(nice))],
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
            except BaseException:
                ours.close()
                raise
        self.conn = Connection(ours.detach())
        self._send_lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, message) -> bool:
        """False when the worker cannot be reached (it has died)."""
        try:
            with self._send_lock:
                self.conn.send(message)
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.send(None)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        self.conn.close()


class _Slot:
    """A place for one worker: its process (started when first needed) and its thread."""

    def __init__(self):
        self.worker: Worker | None = None
        self.retired = False
        self.warmed: set[str] = set()
        self.thread: threading.Thread | None = None

    def cancel(self, ticket: int) -> None:
        if self.worker is not None:
            self.worker.send(("cancel", ticket))


class ExplainService:
    """The scheduler with `workers` worker processes behind it (see the module's docstring)."""

    def __init__(self, *, workers: int = 1, nice: int = WORKER_NICE, stale_after: float = STALE_AFTER,
                 keep_results: int = KEEP_RESULTS):
        self.scheduler = Scheduler(stale_after=stale_after, keep_results=keep_results)
        self.nice = int(nice)
        self._slots: list[_Slot] = []
        self._warm: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        self.resize(workers)
        atexit.register(self.close)

    def submit(self, owner: str, key: JobKey, run_path: str | os.PathLike, image, options: dict, *,
               retry: bool = False) -> int:
        """A ticket for the explanation of `image` (the decoded 2-D film whose bytes hash to
        `key.film`) by the model in `run_path` (fingerprint `key.model`) with `options`
        (explain_film's num_samples, segmentation, seed)."""
        return self.scheduler.submit(owner, key, (os.fspath(run_path), image, dict(options)), retry=retry)

    def status(self, ticket: int, *, owner: str | None = None) -> Status:
        return self.scheduler.status(ticket, owner=owner)

    def drop(self, owner: str) -> None:
        self.scheduler.drop(owner)

    def warm(self, run_path: str | os.PathLike) -> None:
        """Have idle workers load this run and what explaining needs (lime, TensorFlow, Grad-CAM's
        graph) before the first film comes; at their low priority. Only the latest run asked for is
        warmed (a worker keeps at most `model.CACHED_MODELS` runs loaded)."""
        with self._lock:
            self._warm = [os.fspath(run_path)]

    def resize(self, workers: int) -> None:
        """Keep `workers` workers (one beyond that ends after its current job)."""
        with self._lock:
            if self._closed:
                return
            live = [s for s in self._slots if not s.retired]
            for slot in live[max(int(workers), 0):]:
                slot.retired = True
            for _ in range(int(workers) - len(live)):
                slot = _Slot()
                slot.thread = threading.Thread(target=self._serve, args=(slot,), daemon=True,
                                               name=f"xray-explain-{len(self._slots)}")
                self._slots.append(slot)
                slot.thread.start()
            self._slots = [s for s in self._slots if not s.retired or (s.thread and s.thread.is_alive())]

    def worker_pids(self) -> list[int]:
        return [s.worker.pid for s in list(self._slots) if s.worker is not None and s.worker.alive()]

    def close(self, timeout: float = 3.0) -> None:
        """Cancel what runs, stop the workers and their threads (idempotent); a worker that has
        not ended within `timeout` seconds (it holds nothing to save) is killed."""
        with self._lock:
            self._closed = True
            slots = list(self._slots)
        for slot in slots:
            if slot.worker is not None:
                slot.worker.send(None)  # a running job stops at its next batch, then the worker exits
        self.scheduler.wake()
        for slot in slots:
            if slot.thread is not None and slot.thread is not threading.current_thread():
                slot.thread.join(timeout)
            self._stop(slot, timeout)

    # ------------------------------------------------------------------ a worker's thread

    def _serve(self, slot: _Slot) -> None:
        while not (self._closed or slot.retired):
            taken = self.scheduler.take(slot.cancel, timeout=0.5)
            if taken is None:
                self._warm_idle(slot)
                continue
            ticket, key, (run_path, image, options) = taken
            if self._closed:
                self.scheduler.finish(ticket, "cancelled")
                break
            if not self._send(slot, ("explain", ticket, key, run_path, image, options)):
                self.scheduler.finish(ticket, "failed", message=self._lost_sentence(slot))
                continue
            self._follow(slot, ticket)
        self._stop(slot)

    def _warm_idle(self, slot: _Slot) -> None:
        with self._lock:
            run = next((r for r in self._warm if r not in slot.warmed), None)
        if run is None or self._closed or not self._send(slot, ("warm", run)):
            return
        self._follow(slot, None)
        slot.warmed.add(run)  # also when it failed: the first job says why, once

    def _send(self, slot: _Slot, message) -> bool:
        """Send to the slot's worker, starting it first if needed; False if it could not be reached."""
        if slot.worker is None or not slot.worker.alive():
            self._stop(slot)
            try:
                slot.worker, slot.warmed = Worker(nice=self.nice), set()
            except OSError as exc:  # no process could be started (memory, process limit)
                print(f"xray_core: cannot start an explanation worker: {exc}", file=sys.stderr)
                return False
        return slot.worker.send(message)

    def _follow(self, slot: _Slot, ticket: int | None) -> None:
        """Relay the worker's messages until its answer to the last request (a job, or a warm-up)."""
        worker = slot.worker
        conn = worker.conn
        while True:
            try:
                if not conn.poll(0.2):
                    self.scheduler.sweep()
                    if worker.alive():
                        continue
                    raise EOFError
                message = conn.recv()
            except (EOFError, OSError):
                if ticket is not None:
                    self.scheduler.finish(ticket, "failed", message=self._lost_sentence(slot))
                self._stop(slot)
                return
            kind = message[0]
            if kind == "progress":
                self.scheduler.progress(message[1], message[2], message[3])
            elif kind == "done":
                self.scheduler.finish(message[1], "done", result=message[2])
            elif kind == "cancelled":
                self.scheduler.finish(message[1], "cancelled")
            elif kind == "failed":
                self.scheduler.finish(message[1], "failed", message=message[2])
            if kind in ("done", "cancelled", "failed", "warmed", "warm_failed"):
                return

    def _lost_sentence(self, slot: _Slot) -> str:
        code = None
        if slot.worker is not None:
            try:
                code = slot.worker.process.wait(5)  # its end of the socket closed as it died
            except subprocess.TimeoutExpired:
                code = "none yet"
        return (f"The explanation process stopped unexpectedly (exit code {code}). Press Try again; "
                "if it happens again, the server's log says why.")

    def _stop(self, slot: _Slot, timeout: float = 10.0) -> None:
        worker, slot.worker = slot.worker, None
        if worker is not None:
            worker.stop(timeout)


_SHARED: ExplainService | None = None
_SHARED_LOCK = threading.Lock()


def shared(*, workers: int) -> ExplainService | None:
    """This process's one service (the dashboard's), created on first use, kept at `workers`; None
    while `workers` is 0 (explanations switched off: a running service's workers end after their job)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is not None:
            _SHARED.resize(workers)
        elif workers > 0:
            _SHARED = ExplainService(workers=workers)
        return _SHARED if workers > 0 else None


def existing() -> ExplainService | None:
    """The shared service if it was started (dropping a job needs no workers started)."""
    return _SHARED
