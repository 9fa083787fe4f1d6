"""The dashboard's training queue: jobs on disk and the detached worker that runs them; and the
server's limits on jobs (trainings and worklists). The Worklist's uploaded films are kept by
`scoring.uploads`.

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

from xray_core import fileio, runs, settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A queued training is a small JSON file in <models>/.queue/ (hidden, so the run registry does
# not list it) holding the `train` command. Detached worker processes (`python -m xray_core.jobs
# work <models>`) start them in order, each as `python -m xray_core train`; there are as many
# worker slots as trainings may run at once (settings.limit("running_trainings"), default 1),
# and a worker holds an flock on its slot's lock file (.queue/worker.lock, worker-1.lock, ...)
# while it lives. Everything is on disk, so a reload, a second tab or a closed browser sees the
# same jobs, and the queue goes on without any page open.

QUEUE_DIR = ".queue"
KINDS = ("training", "worklist")


class CapacityError(ValueError):
    """The server's limit on running and waiting jobs of one kind is reached; the message says so."""


def check_capacity(kind: str, *, running: int, queued: int) -> None:
    """Raise CapacityError unless one more job of `kind` ("training" or "worklist") may be accepted.

    running, queued: the jobs of that kind running now and waiting now. A new job is accepted if
    it can start at once (fewer running than the running limit) or wait (fewer waiting than the
    queue limit, counted after the free slots are filled). Limits: settings.limit(
    "running_<kind>s" / "queued_<kind>s"), default 1 running and 3 waiting.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown job kind {kind!r}; one of {', '.join(KINDS)}.")
    max_running = settings.limit(f"running_{kind}s")
    max_queued = settings.limit(f"queued_{kind}s")
    if max_running == 0:
        raise CapacityError(f"Starting a {kind} is switched off on this server (its limit of running "
                            f"{kind}s is 0). Ask the administrator.")
    free = max(0, max_running - running)
    if queued < max_queued + free:
        return
    raise CapacityError(
        f"This server runs at most {max_running} {kind}{'s' if max_running != 1 else ''} at a time "
        f"with {max_queued} waiting, and that is reached ({running} running, {queued} waiting). "
        f"Wait for one to finish, or remove a waiting one, then start it again.")


def _slot_lock(root: str | Path, slot: int) -> Path:
    return _queue(root) / ("worker.lock" if slot == 0 else f"worker-{slot}.lock")


def _current(root: str | Path, slot: int) -> Path:
    return _queue(root) / ("current.json" if slot == 0 else f"current-{slot}.json")


def _slot_busy(root: str | Path, slot: int) -> bool:
    """Whether a worker holds this slot's lock (checked with flock, so a dead one never counts)."""
    import fcntl

    path = _slot_lock(root, slot)
    if not path.exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def training_load(root: str | os.PathLike) -> tuple[int, int]:
    """(running, waiting) trainings of the queue in `root`: busy worker slots and queued jobs."""
    slots = max(1, settings.limit("running_trainings"))
    return sum(_slot_busy(root, i) for i in range(slots)), len(queued_jobs(root))


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


def submit_training(root: str | os.PathLike, options: dict, *, start: bool = True,
                    submitted_by: str | None = None) -> str:
    """Queue one training and make sure a worker runs the queue; returns its run id at once.

    submitted_by: who asked (the signed-in user's e-mail on a served dashboard), kept in the
    job file and the worker's log for the audit trail.
    Raises CapacityError (nothing written) when the server's training limit is reached, and
    settings.ViewerModeError in viewer mode."""
    import fcntl

    settings.refuse_writes("train")
    root = Path(root)
    queue = _queue(root)
    (queue / "logs").mkdir(parents=True, exist_ok=True)
    # Count and write under one lock, so two clicks at once cannot both take the last place.
    with open(queue / "submit.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running, waiting = training_load(root)
        check_capacity("training", running=running, queued=waiting)
        run_id = runs.new_run_id(options["arch"], root, create=False)
        while (queue / f"{run_id}.json").exists():
            run_id = runs.new_run_id(options["arch"], root, create=False)
        job = {"run_id": run_id, "argv": train_argv(options), "options": options,
               "submitted": runs.now_iso(), "submitted_by": submitted_by}
        fileio.atomic_write_json(queue / f"{run_id}.json", job)
    if start:
        ensure_worker(root)
    return run_id


def queued_jobs(root: str | os.PathLike) -> list[dict]:
    """Jobs waiting to start, oldest first (a corrupt job file is left out: see queue_problems)."""
    return _read_queue(root)[0]


def queue_problems(root: str | os.PathLike) -> list[str]:
    """One sentence per queued job file that cannot be read (it will never start)."""
    return _read_queue(root)[1]


def _read_queue(root: str | Path) -> tuple[list[dict], list[str]]:
    queue = _queue(root)
    if not queue.is_dir():
        return [], []
    jobs, problems = [], []
    for path in queue.glob("*.json"):
        if path.name.startswith("current"):
            continue
        try:
            job = json.loads(path.read_text())
        except FileNotFoundError:
            continue  # started or removed between the listing and the read
        except (OSError, ValueError) as exc:
            problems.append(f"The queued job file {path} cannot be read ({exc}), so that job will "
                            f"never start. Remove the file and start the training again.")
            continue
        if not isinstance(job, dict) or not isinstance(job.get("argv"), list) or "run_id" not in job:
            problems.append(f"The queued job file {path} is not a job written by the dashboard (no "
                            f"run id or command), so it will never start. Remove the file.")
            continue
        jobs.append(job)
    return sorted(jobs, key=lambda j: (j.get("submitted", ""), j.get("run_id", ""))), problems


def starting_job(root: str | os.PathLike) -> dict | None:
    """A job a worker has launched, until its training process has written status.json."""
    for path in sorted(_queue(root).glob("current*.json")):
        try:
            job = json.loads(path.read_text())
        except FileNotFoundError:
            continue  # finished meanwhile
        except ValueError:
            continue  # written atomically, so never half: a foreign file, not ours to report here
        if not (Path(root) / str(job.get("run_id", "")) / "status.json").is_file():
            return job
    return None


def cancel_queued(root: str | os.PathLike, run_id: str) -> bool:
    """Take a job off the queue before it starts; False if it has already started."""
    try:
        (_queue(root) / f"{runs.validate_run_id(run_id)}.json").unlink()
    except FileNotFoundError:
        return False
    return True


def request_stop(run_path: str | os.PathLike) -> None:
    """Ask a running training to stop after its current batch (it keeps the model)."""
    fileio.atomic_write_text(Path(run_path) / runs.STOP_FILE, "stop requested from the dashboard\n")


def launch_failure(root: str | os.PathLike, run_id: str) -> str | None:
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


def failed_launches(root: str | os.PathLike, limit: int = 5) -> list[tuple[str, str]]:
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


_SPAWNED: list[subprocess.Popen] = []  # workers started by this process, reaped when they end


def ensure_worker(root: str | os.PathLike) -> bool:
    """Start a detached worker in each free slot while jobs wait; True if one was started.

    A slot's lock is taken here and handed to its worker (an inherited descriptor shares the
    flock), so two pages polling at once can never both start one in the same slot.
    """
    import fcntl

    _SPAWNED[:] = [p for p in _SPAWNED if p.poll() is None]
    root = Path(root)
    waiting = len(queued_jobs(root))
    if not waiting:
        return False
    logs = _queue(root) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = 0
    for slot in range(max(1, settings.limit("running_trainings"))):
        if started >= waiting:
            break
        with open(_slot_lock(root, slot), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a worker is running in this slot
            with open(logs / "worker.log", "ab") as log:
                _SPAWNED.append(subprocess.Popen(
                    [sys.executable, "-m", "xray_core.jobs", "work", str(root.absolute()),
                     str(lock.fileno()), str(slot)],
                    cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, env=child_env(root), pass_fds=(lock.fileno(),),
                ))
            started += 1
    return started > 0


def child_env(root: str | os.PathLike) -> dict:
    """The environment of a detached child process: this models folder, and this project importable."""
    env = dict(os.environ)
    env["XRAY_MODELS_DIR"] = str(Path(root).absolute())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def work_queue(root: str | os.PathLike, lock_fd: int | None = None, *, slot: int = 0) -> int:
    """The worker: run queued trainings one after another until the queue is empty.

    lock_fd: the already locked slot lock inherited from `ensure_worker`; without it the
    worker takes its slot's lock itself (and leaves at once if another worker holds it).
    """
    import fcntl

    root = Path(root)
    queue = _queue(root)
    queue.mkdir(parents=True, exist_ok=True)
    if lock_fd is not None:
        lock = os.fdopen(lock_fd, "a")
    else:
        lock = open(_slot_lock(root, slot), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return 0  # another worker is running the queue
    for problem in queue_problems(root):
        print(problem, file=sys.stderr, flush=True)  # into worker.log; the Train page shows them too
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
        fileio.atomic_write_json(_current(root, slot), dict(job, started=runs.now_iso()))
        print(f"{runs.now_iso()} slot {slot}: starting {run_id}, queued {job.get('submitted')}"
              f" by {job.get('submitted_by') or 'an unnamed user'}", flush=True)  # worker.log
        argv = [sys.executable, "-m", "xray_core", "train", *job["argv"],
                "--run-id", run_id, "--runs-dir", str(root.absolute()), "--quiet"]
        with open(queue / "logs" / f"{run_id}.log", "ab") as log:
            code = subprocess.call(argv, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=child_env(root))
        fileio.atomic_write_json(queue / "logs" / f"{run_id}.exit.json",
                               {"returncode": code, "ended": runs.now_iso()})
        _current(root, slot).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m xray_core.jobs work MODELS_DIR [LOCK_FD [SLOT]]`: the entry point `ensure_worker` starts."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) in (2, 3, 4) and argv[0] == "work":
        return work_queue(argv[1], int(argv[2]) if len(argv) >= 3 else None,
                          slot=int(argv[3]) if len(argv) == 4 else 0)
    print("usage: python -m xray_core.jobs work MODELS_DIR [LOCK_FD [SLOT]]  (the dashboard's training-queue worker)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
