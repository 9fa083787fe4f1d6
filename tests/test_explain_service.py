"""The explanation workers for real (xray_core.serving.service): real processes, the bundled
default model, real threads. A cancelled explanation stops within one batch of samples; a verdict
asked for while an explanation runs comes back before it ends; a newer film cancels the older;
a job whose owner stopped asking is dropped; a worker that dies is said and replaced; the
process that asks never imports TensorFlow, Keras or lime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xray_core import case
from xray_core.explain import PANEL_NAMES
from xray_core.explain.lime import BATCH_SIZE
from xray_core.serving import JobKey
from xray_core.serving import worker as worker_mod
from xray_core.serving.service import ExplainService, Worker
from xray_core.model import load_model

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT = PROJECT / "trained_models" / "default"
LONG = {"num_samples": 4096, "segmentation": "slic", "seed": 0}  # 128 batches: seconds of work
SHORT = {"num_samples": 512, "segmentation": "slic", "seed": 0}


def film(seed: int) -> case.Film:
    """A gray film of its own bytes (the gate's verdict on it does not matter here)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    image = np.clip(worker_mod.warm_film(320).astype(int) + rng.integers(-20, 20, (320, 320)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="PNG")
    return case.read(buffer.getvalue(), f"film-{seed}.png")


def key(f: case.Film, options: dict) -> JobKey:
    return JobKey.of(f.sha256, load_model(DEFAULT).fingerprint, options)


def wait_for(svc: ExplainService, ticket: int, states: tuple, *, owner: str | None = None, timeout: float = 240,
             until=None):
    deadline = time.monotonic() + timeout
    while True:
        status = svc.status(ticket, owner=owner)
        if status.state in states and (until is None or until(status)):
            return status
        assert time.monotonic() < deadline, f"still {status} after {timeout:g} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def service():
    svc = ExplainService(workers=1)
    svc.warm(DEFAULT)
    yield svc
    svc.close()


def test_a_cancelled_explanation_stops_within_one_batch_of_samples():
    worker = Worker()
    try:
        f = film(1)
        worker.send(("explain", 7, key(f, LONG), str(DEFAULT), f.image, LONG))
        progress, cancelled_at, answer = [], None, None
        while answer is None:
            assert worker.conn.poll(240), "the worker said nothing for 240 s"
            message = worker.conn.recv()
            if message[0] == "progress":
                progress.append(message)
                if len(progress) == 3 and cancelled_at is None:
                    cancelled_at = time.monotonic()
                    worker.send(("cancel", 7))
            else:
                answer = message
        assert answer[0] == "cancelled", answer
        after = [p for p in progress if p[4] > cancelled_at]  # batches the worker finished after the cancel
        assert len(after) <= 1, after
        before = max(p[2] for p in progress if p[4] <= cancelled_at)
        assert answer[2] - before <= BATCH_SIZE  # samples scored after the cancel: at most one batch
        assert answer[2] < LONG["num_samples"]
        assert worker.alive()  # and it takes the next job
        worker.send(("explain", 8, key(f, SHORT), str(DEFAULT), f.image, SHORT))
        while (message := worker.conn.recv())[0] == "progress":
            pass
        assert message[0] == "done" and message[2].key == key(f, SHORT)
    finally:
        worker.stop()


def test_a_verdict_asked_for_while_an_explanation_runs_returns_before_it_ends(service):
    model = load_model(DEFAULT)
    busy, other = film(2), film(3)
    ticket = service.submit("ann", key(busy, LONG), DEFAULT, busy.image, LONG)
    wait_for(service, ticket, ("running",), owner="ann", until=lambda s: s.done >= 2 * BATCH_SIZE)
    (verdict,) = case.assess_films(model, [other])
    during = service.status(ticket, owner="ann")
    assert during.state == "running" and during.done < during.total, during  # the explanation is not over
    assert verdict.probability == pytest.approx(float(model.predict_proba([other.image])[0]), abs=1e-9)
    service.drop("ann")
    wait_for(service, ticket, ("cancelled",))


def test_a_newer_film_cancels_the_older_explanation_and_gets_its_own(service):
    older, newer = film(4), film(5)
    first = service.submit("bob", key(older, LONG), DEFAULT, older.image, LONG)
    wait_for(service, first, ("running",), owner="bob", until=lambda s: s.done > 0)
    second = service.submit("bob", key(newer, SHORT), DEFAULT, newer.image, SHORT)
    wait_for(service, first, ("cancelled",), timeout=10)
    done = wait_for(service, second, ("done",), owner="bob")
    assert done.result.key == key(newer, SHORT)  # the newer film's own panels
    assert done.result.key.film == newer.sha256 and sorted(done.result.panels) == sorted(PANEL_NAMES)
    assert all(png.startswith(b"\x89PNG") for png in done.result.panels.values())


def test_the_job_of_an_owner_that_stopped_asking_is_dropped():
    svc = ExplainService(workers=1, stale_after=1.0)
    try:
        left, stays = film(6), film(7)
        gone = svc.submit("left-the-page", key(left, LONG), DEFAULT, left.image, LONG)
        wait_for(svc, gone, ("running",), owner="left-the-page", until=lambda s: s.done > 0)
        ticket = svc.submit("still-here", key(stays, SHORT), DEFAULT, stays.image, SHORT)
        assert svc.status(ticket, owner="still-here").state == "queued"
        # only still-here keeps asking: the other job is cancelled about a second later
        status = wait_for(svc, ticket, ("done",), owner="still-here", timeout=60)
        assert status.result.key.film == stays.sha256
        assert svc.status(gone).state == "cancelled"
    finally:
        svc.close()


def test_a_worker_that_dies_is_said_and_the_next_job_gets_a_new_one(service):
    f = film(8)
    ticket = service.submit("cy", key(f, LONG), DEFAULT, f.image, LONG)
    wait_for(service, ticket, ("running",), owner="cy", until=lambda s: s.done > 0)
    (pid,) = service.worker_pids()
    assert _nice(pid) - os.nice(0) == 10  # below the process that asks
    os.kill(pid, signal.SIGKILL)
    failed = wait_for(service, ticket, ("failed",), owner="cy", timeout=30)
    assert "stopped unexpectedly" in failed.message and "-9" in failed.message
    assert service.submit("cy", key(f, LONG), DEFAULT, f.image, LONG) == ticket  # said once, not looped
    again = service.submit("cy", key(f, SHORT), DEFAULT, f.image, SHORT)
    assert wait_for(service, again, ("done",), owner="cy").result.key == key(f, SHORT)
    assert service.worker_pids() and service.worker_pids() != [pid]


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


ASKER = """
import sys, time
from pathlib import Path
from xray_core import case
from xray_core.serving import JobKey
from xray_core.serving.service import ExplainService
from xray_core.model import load_model

if __name__ == "__main__":
    run = Path(sys.argv[1])
    model = load_model(run)
    film = case.read(Path(sys.argv[2]).read_bytes(), "film.png")
    (verdict,) = case.assess_films(model, [film])
    svc = ExplainService(workers=1)
    options = {"num_samples": 128, "segmentation": "slic", "seed": 0}
    ticket = svc.submit("me", JobKey.of(film.sha256, model.fingerprint, options), run, film.image, options)
    while (status := svc.status(ticket, owner="me")).state not in ("done", "failed"):
        time.sleep(0.05)
    assert status.state == "done", status.message
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "lime"))
    print("explained", len(status.result.panels), "heavy", heavy)
    svc.close()
"""


def test_the_process_that_asks_imports_neither_tensorflow_nor_keras_nor_lime(tmp_path):
    f = film(9)
    path = tmp_path / "film.png"
    from PIL import Image

    Image.fromarray(f.image).save(path)
    script = tmp_path / "asker.py"
    script.write_text(ASKER)
    proc = subprocess.run([sys.executable, str(script), str(DEFAULT), str(path)], cwd=PROJECT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(PROJECT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "explained 5 heavy []" in proc.stdout, proc.stdout
