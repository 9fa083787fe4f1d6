"""The dashboard's training queue: jobs on disk and the detached worker that runs them; the
server's limits on jobs; and the Worklist's uploads, kept privately and only while their job runs.

A library module (no Streamlit) so the queue works, and is tested, without any page open; the
Train page only submits, lists and cancels. TensorFlow is never imported here: each training
is its own `python -m xray_core train` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


def training_load(root: str | Path) -> tuple[int, int]:
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


def submit_training(root: str | Path, options: dict, *, start: bool = True,
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


def queued_jobs(root: str | Path) -> list[dict]:
    """Jobs waiting to start, oldest first (a corrupt job file is left out: see queue_problems)."""
    return _read_queue(root)[0]


def queue_problems(root: str | Path) -> list[str]:
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


def starting_job(root: str | Path) -> dict | None:
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


def cancel_queued(root: str | Path, run_id: str) -> bool:
    """Take a job off the queue before it starts; False if it has already started."""
    try:
        (_queue(root) / f"{runs.validate_run_id(run_id)}.json").unlink()
    except FileNotFoundError:
        return False
    return True


def request_stop(run_path: str | Path) -> None:
    """Ask a running training to stop after its current batch (it keeps the model)."""
    fileio.atomic_write_text(Path(run_path) / runs.STOP_FILE, "stop requested from the dashboard\n")


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


_SPAWNED: list[subprocess.Popen] = []  # workers started by this process, reaped when they end


def ensure_worker(root: str | Path) -> bool:
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
                    start_new_session=True, env=_child_env(root), pass_fds=(lock.fileno(),),
                ))
            started += 1
    return started > 0


def _child_env(root: Path) -> dict:
    env = dict(os.environ)
    env["XRAY_MODELS_DIR"] = str(root.absolute())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def work_queue(root: str | Path, lock_fd: int | None = None, slot: int = 0) -> int:
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
                                   stderr=subprocess.STDOUT, env=_child_env(root))
        fileio.atomic_write_json(queue / "logs" / f"{run_id}.exit.json",
                               {"returncode": code, "ended": runs.now_iso()})
        _current(root, slot).unlink(missing_ok=True)


# ----------------------------------------------------------------------- worklist uploads
#
# Films uploaded for a worklist are patients' films. They are written only to a private
# temporary folder (mode 0700, made by tempfile.mkdtemp under TMPDIR), never into the models
# folder, and removed as soon as their scoring job ends (completed, failed or cancelled): a small
# detached watcher per upload job (`python -m xray_core.jobs discard-uploads JOB_DIR`) removes
# them within a second of the end, and the Worklist page sweeps as well (sweep_uploads), for a
# watcher that did not survive a restart. An interrupted job (its process died) keeps its films
# for INTERRUPTED_KEEP seconds, so that it can be resumed, then they are removed too. The job
# folder keeps the scores (hashes and probabilities, no pixels) and uploads.json, which names
# the temporary folder and when it was removed.

UPLOADS_FILE = "uploads.json"
UPLOAD_PREFIX = "xray-worklist-"
ENDED = ("completed", "failed", "cancelled")
INTERRUPTED_KEEP = 3600.0  # seconds an interrupted upload job keeps its films for a resume


def worklist_load(models_root: str | Path) -> tuple[int, int]:
    """(running, waiting) worklist jobs under `models_root`."""
    from xray_core import scoring

    infos = scoring.list_jobs(models_root)
    return (sum(j["state"] in ("running", "starting") for j in infos),
            sum(j["state"] == "queued" for j in infos))


def check_upload_count(n: int) -> None:
    """Raise CapacityError if `n` films are more than one upload may hold (settings.limit("upload_files"))."""
    most = settings.limit("upload_files")
    if most == 0:
        raise CapacityError("Uploading films for a worklist is switched off on this server (its limit of "
                            "uploaded files is 0). Score a folder on the server instead, or ask the administrator.")
    if n > most:
        raise CapacityError(
            f"This upload holds {n} films; this server scores at most {most} uploaded films per worklist. "
            f"Upload at most {most} (in several worklists if need be), or ask the administrator to put the "
            f"films in a folder on the server and score that folder.")


def submit_worklist_uploads(models_root: str | Path, run_id: str, files: list[tuple[str, bytes]], *,
                            start: bool = True) -> str:
    """Queue a worklist job over uploaded films ((name, bytes) pairs, or a single zip); its job id.

    The films go to a private temporary folder, removed when the job ends by a watcher started
    here (see above).
    Refused with a sentence, before anything is written, in viewer mode (ViewerModeError) and
    when the worklist limits are reached (CapacityError: too many jobs, or more films than
    settings.limit("upload_files")); a refused zip is removed at once."""
    import shutil
    import tempfile

    from xray_core import scoring

    settings.refuse_writes("score")
    if not files:
        raise scoring.ScoreError("No file was uploaded. Add films (or one zip of films) and press the button again.")
    running, queued = worklist_load(models_root)
    check_capacity("worklist", running=running, queued=queued)
    check_upload_count(len(files))
    folder = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX))  # 0700: only the server's account reads it
    job_dir = None
    submitted = False
    try:
        target = scoring.save_uploads(folder, files)
        n = scoring.count_items(target) if target.is_file() else len(files)  # a zip: its films
        check_upload_count(n)
        job_dir = scoring.new_job_dir(models_root)
        fileio.atomic_write_json(job_dir / UPLOADS_FILE, {"folder": str(folder), "files": n, "removed": None})
        job_id = scoring.submit_job(models_root, run_id, target, job_dir=job_dir, start=start,
                                    label=f"{n} uploaded film{'s' if n != 1 else ''}")
        submitted = True
    finally:
        if not submitted:  # refused or failed: keep nothing
            shutil.rmtree(folder)
            if job_dir is not None:
                shutil.rmtree(job_dir)
    if start:  # (start=False, for tests: queued, never launched, nothing to watch)
        _watch_uploads(job_dir)
    return job_id


class UploadRecordError(ValueError):
    """A job's uploads.json cannot be read, so whether its uploads were removed is unknown."""


def upload_record(job_dir: str | Path) -> dict | None:
    """uploads.json of an upload job ({"folder", "files", "removed"}), or None for a folder job.
    Raises UploadRecordError (a sentence) when the file is damaged."""
    path = Path(job_dir) / UPLOADS_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UploadRecordError(f"{path} cannot be read ({exc}), so this job's uploaded films may still be in a "
                                f"{UPLOAD_PREFIX}* folder of the server's temporary folder. Remove that folder "
                                "and this job's folder by hand.") from exc
    if not isinstance(record, dict) or "folder" not in record:
        raise UploadRecordError(f"{path} was not written by the dashboard (no folder named), so this job's "
                                f"uploaded films may still be in a {UPLOAD_PREFIX}* folder of the server's "
                                "temporary folder. Remove that folder and this job's folder by hand.")
    return record


def _remove_upload_folder(folder: str, record: Path) -> None:
    """Remove `folder` if it is one this module made (named xray-worklist-*, a real folder owned by
    this account); a damaged or edited uploads.json can never make the server remove anything else."""
    import shutil

    path = Path(folder)
    if not path.exists() and not path.is_symlink():
        return  # already gone (a restart may empty the temporary folder)
    if (not path.name.startswith(UPLOAD_PREFIX) or path.is_symlink() or not path.is_dir()
            or path.stat().st_uid != os.getuid()):
        raise UploadRecordError(f"{record} names {path}, which is not a folder the dashboard made for uploads, "
                                "so nothing was removed. Someone edited that file: check the job and remove the "
                                "uploads by hand.")
    shutil.rmtree(path)


def discard_uploads(job_dir: str | Path, reason: str) -> bool:
    """Remove an upload job's temporary folder now and note it in uploads.json; True if removed."""
    job_dir = Path(job_dir)
    record = upload_record(job_dir)
    if record is None or record.get("removed"):
        return False
    _remove_upload_folder(str(record.get("folder", "")), job_dir / UPLOADS_FILE)
    fileio.atomic_write_json(job_dir / UPLOADS_FILE, {**record, "removed": runs.now_iso(), "reason": reason})
    print(f"{runs.now_iso()} the {record.get('files', '?')} uploaded films were removed ({reason})",
          flush=True)  # into the job's log.txt; no file names (they may name a patient)
    return True


def _discard_reason(job_dir: Path, interrupted_since: float | None,
                    keep_interrupted: float) -> tuple[str | None, float | None]:
    """(why the uploads go now, or None; since when the job has been seen interrupted)."""
    from xray_core import scoring

    if not job_dir.is_dir():
        return "its job was removed", None
    state = scoring.job_info(job_dir)["state"]
    if state in ENDED:
        return f"job {state}", None
    if state != "interrupted":
        return None, None  # queued, starting or running (again, after a resume)
    since = interrupted_since if interrupted_since is not None else time.monotonic()
    if time.monotonic() - since >= keep_interrupted:
        return f"job interrupted for over {keep_interrupted:g} s", since
    return None, since


def discard_when_ended(job_dir: str | Path, *, poll: float = 0.5,
                       keep_interrupted: float = INTERRUPTED_KEEP) -> int:
    """The watcher: wait until the job ends (or has stayed interrupted keep_interrupted seconds),
    then remove its uploads."""
    job_dir = Path(job_dir)
    record = upload_record(job_dir)
    if record is None:
        return 0  # not an upload job: nothing to remove
    reason, since = _discard_reason(job_dir, None, keep_interrupted)
    while reason is None:
        time.sleep(poll)
        reason, since = _discard_reason(job_dir, since, keep_interrupted)
    try:
        if job_dir.is_dir():
            discard_uploads(job_dir, reason)
        else:  # the job folder was deleted: no record to update, the films go all the same
            _remove_upload_folder(str(record.get("folder", "")), job_dir / UPLOADS_FILE)
    except UploadRecordError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)  # the job's log.txt; the page's sweep says it too
        return 1
    return 0


def sweep_uploads(models_root: str | Path) -> list[str]:
    """Remove the uploads of every ended job under `models_root` (a watcher that died leaves them);
    one sentence per job whose uploads.json cannot be read (reported, never skipped silently)."""
    from xray_core import scoring

    problems = []
    for job in scoring.list_jobs(models_root):
        try:
            record = upload_record(job["path"])
            if record is not None and not record.get("removed") and job["state"] in ENDED:
                discard_uploads(job["path"], f"job {job['state']}; found by a sweep")
        except UploadRecordError as exc:
            problems.append(str(exc))
    return problems


_WATCHERS: list[subprocess.Popen] = []  # watchers started by this process, reaped once they end


def _watch_uploads(job_dir: Path) -> None:
    from xray_core import scoring

    _WATCHERS[:] = [p for p in _WATCHERS if p.poll() is None]
    with open(job_dir / scoring.JOB_LOG, "ab") as log:
        _WATCHERS.append(subprocess.Popen(
            [sys.executable, "-m", "xray_core.jobs", "discard-uploads", str(job_dir.absolute())],
            cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=_child_env(job_dir.parents[1])))


def main(argv: list[str] | None = None) -> int:
    """`python -m xray_core.jobs work MODELS_DIR [LOCK_FD [SLOT]]`: the entry point `ensure_worker` starts;
    `python -m xray_core.jobs discard-uploads JOB_DIR`: the watcher that removes a worklist's uploads."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) in (2, 3, 4) and argv[0] == "work":
        return work_queue(argv[1], int(argv[2]) if len(argv) >= 3 else None,
                          int(argv[3]) if len(argv) == 4 else 0)
    if len(argv) == 2 and argv[0] == "discard-uploads":
        return discard_when_ended(argv[1])
    print("usage: python -m xray_core.jobs work MODELS_DIR [LOCK_FD [SLOT]]  (the dashboard's training-queue worker)\n"
          "       python -m xray_core.jobs discard-uploads JOB_DIR  (removes a worklist's uploads when it ends)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
