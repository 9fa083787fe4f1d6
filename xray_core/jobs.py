"""The dashboard's training queue: jobs on disk and the detached worker that runs them.

A library module (no Streamlit) so the queue works, and is tested, without any page open; the
Train page only submits, lists and cancels. TensorFlow is never imported here: each training
is its own `python -m xray_core train` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from xray_core import runs

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Trainings started from the dashboard run one at a time. A queued training is a small JSON file
# in <models>/.queue/ (hidden, so the run registry does not list it) holding the `train` command;
# one detached worker process (`python -m xray_core.jobs work <models>`), which holds an flock on
# .queue/worker.lock while it lives, starts them in order, each as `python -m xray_core train`.
# Everything is on disk, so a reload, a second tab or a closed browser sees the same jobs, and
# the queue goes on without any page open.

QUEUE_DIR = ".queue"


def _queue(root: str | Path) -> Path:
    return Path(root) / QUEUE_DIR


def train_argv(options: dict) -> list[str]:
    """`python -m xray_core train` arguments from the Train page's settings."""
    argv = ["--arch", str(options["arch"]), "--data", str(options["data"]),
            "--epochs", str(int(options["epochs"])), "--batch-size", str(int(options["batch_size"])),
            "--image-size", str(int(options["image_size"])), "--channels", str(int(options["channels"])),
            "--lr", repr(float(options["learning_rate"])), "--seed", str(int(options["seed"])),
            "--split", options.get("split", "patient"),
            "--class-weight", "balanced" if options.get("class_weight") else "none",
            "--threshold-method", options.get("threshold_method", "sensitivity")]
    if options.get("val_fraction") is not None:
        argv += ["--val-fraction", repr(float(options["val_fraction"]))]
    if options.get("augment"):
        argv.append("--augment")
    if options.get("early_stopping"):
        argv += ["--early-stopping", str(int(options["early_stopping"]))]
    return argv


def submit_training(root: str | Path, options: dict, *, start: bool = True) -> str:
    """Queue one training and make sure a worker runs the queue; returns its run id at once."""
    root = Path(root)
    queue = _queue(root)
    (queue / "logs").mkdir(parents=True, exist_ok=True)
    run_id = runs.new_run_id(options["arch"], root, create=False)
    while (queue / f"{run_id}.json").exists():
        run_id = runs.new_run_id(options["arch"], root, create=False)
    job = {"run_id": run_id, "argv": train_argv(options), "options": options, "submitted": runs.now_iso()}
    runs.atomic_write_json(queue / f"{run_id}.json", job)
    if start:
        ensure_worker(root)
    return run_id


def queued_jobs(root: str | Path) -> list[dict]:
    """Jobs waiting to start, oldest first."""
    queue = _queue(root)
    if not queue.is_dir():
        return []
    jobs = []
    for path in queue.glob("*.json"):
        if path.name == "current.json":
            continue
        try:
            jobs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being written or just removed: it is listed on the next poll
    return sorted(jobs, key=lambda j: (j.get("submitted", ""), j.get("run_id", "")))


def starting_job(root: str | Path) -> dict | None:
    """The job the worker has launched, until its training process has written status.json."""
    path = _queue(root) / "current.json"
    try:
        job = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (Path(root) / job.get("run_id", "") / "status.json").is_file():
        return None
    return job


def cancel_queued(root: str | Path, run_id: str) -> bool:
    """Take a job off the queue before it starts; False if it has already started."""
    try:
        (_queue(root) / f"{runs.validate_run_id(run_id)}.json").unlink()
    except FileNotFoundError:
        return False
    return True


def request_stop(run_path: str | Path) -> None:
    """Ask a running training to stop after its current batch (it keeps the model)."""
    runs.atomic_write_text(Path(run_path) / runs.STOP_FILE, "stop requested from the dashboard\n")


def launch_failure(root: str | Path, run_id: str) -> str | None:
    """Why a job ended before creating its run folder (the tail of its log), or None."""
    logs = _queue(root) / "logs"
    exit_file = logs / f"{run_id}.exit.json"
    if not exit_file.is_file() or (Path(root) / run_id / "status.json").is_file():
        return None
    try:
        code = json.loads(exit_file.read_text()).get("returncode")
        tail = (logs / f"{run_id}.log").read_text(errors="replace").strip().splitlines()[-3:]
    except (OSError, ValueError):
        return None
    return f"exit code {code}: " + " ".join(tail) if code else None


def failed_launches(root: str | Path, limit: int = 5) -> list[tuple[str, str]]:
    """(run id, reason) of the latest jobs that failed before their run folder existed.

    Such a job leaves no run to list (a bad option, a missing Python package), so without this
    the user would see it vanish from the queue and nothing else.
    """
    logs = _queue(root) / "logs"
    if not logs.is_dir():
        return []
    exits = sorted(logs.glob("*.exit.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    failures = []
    for path in exits:
        run_id = path.name[: -len(".exit.json")]
        reason = launch_failure(root, run_id)
        if reason:
            failures.append((run_id, reason))
        if len(failures) >= limit:
            break
    return failures


def worker_alive(root: str | Path) -> bool:
    """Whether a queue worker holds the lock (checked with flock, so a dead one never counts)."""
    import fcntl

    lock_path = _queue(root) / "worker.lock"
    if not lock_path.exists():
        return False
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


_SPAWNED: list[subprocess.Popen] = []  # workers started by this process, reaped when they end


def ensure_worker(root: str | Path) -> bool:
    """Start a detached worker if jobs wait and none runs; True if one was started.

    The lock is taken here and handed to the worker (an inherited descriptor shares the flock),
    so two pages polling at once can never both start one.
    """
    import fcntl

    _SPAWNED[:] = [p for p in _SPAWNED if p.poll() is None]
    root = Path(root)
    if not queued_jobs(root):
        return False
    logs = _queue(root) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(_queue(root) / "worker.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a worker is running the queue
        with open(logs / "worker.log", "ab") as log:
            _SPAWNED.append(subprocess.Popen(
                [sys.executable, "-m", "xray_core.jobs", "work", str(root.absolute()), str(lock.fileno())],
                cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=_child_env(root), pass_fds=(lock.fileno(),),
            ))
    return True


def _child_env(root: Path) -> dict:
    env = dict(os.environ)
    env["XRAY_MODELS_DIR"] = str(root.absolute())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def work_queue(root: str | Path, lock_fd: int | None = None) -> int:
    """The worker: run queued trainings one after another until the queue is empty.

    lock_fd: the already locked worker.lock inherited from `ensure_worker`; without it the
    worker takes the lock itself (and leaves at once if another worker holds it).
    """
    import fcntl

    root = Path(root)
    queue = _queue(root)
    queue.mkdir(parents=True, exist_ok=True)
    if lock_fd is not None:
        lock = os.fdopen(lock_fd, "a")
    else:
        lock = open(queue / "worker.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return 0  # another worker is running the queue
    while True:
        jobs = queued_jobs(root)
        if not jobs:
            # Release, then look once more: a job submitted while we held the lock saw a live
            # worker and started none, so we must not leave it behind.
            fcntl.flock(lock, fcntl.LOCK_UN)
            if not queued_jobs(root):
                lock.close()
                return 0
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                return 0
            continue
        job = jobs[0]
        run_id = job["run_id"]
        try:
            (queue / f"{run_id}.json").unlink()
        except FileNotFoundError:
            continue  # cancelled meanwhile
        runs.atomic_write_json(queue / "current.json", dict(job, started=runs.now_iso()))
        argv = [sys.executable, "-m", "xray_core", "train", *job["argv"],
                "--run-id", run_id, "--runs-dir", str(root.absolute()), "--quiet"]
        with open(queue / "logs" / f"{run_id}.log", "ab") as log:
            code = subprocess.call(argv, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=_child_env(root))
        runs.atomic_write_json(queue / "logs" / f"{run_id}.exit.json",
                               {"returncode": code, "ended": runs.now_iso()})
        (queue / "current.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m xray_core.jobs work MODELS_DIR [LOCK_FD]`: the entry point `ensure_worker` starts."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) in (2, 3) and argv[0] == "work":
        return work_queue(argv[1], int(argv[2]) if len(argv) == 3 else None)
    print("usage: python -m xray_core.jobs work MODELS_DIR [LOCK_FD]  (the dashboard's training-queue worker)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
