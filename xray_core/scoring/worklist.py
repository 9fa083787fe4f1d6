"""The Worklist page's jobs: each scoring job as its own detached process, queued and resumable.

A folder per job under <models>/.worklists/<job id>/ holds job.json (run, input, state queued
until launched), status.json (written by the scoring process), scores.csv and log.txt. Uploaded
films go to a private temporary folder that `uploads` creates and removes when the job ends (see
SECURITY.md), never into the job's folder. Each job runs as its own detached process (never in
the Streamlit server), so a reload or a closed browser loses nothing; when it ends it launches
the next queued job. A job whose process died is "interrupted" and resumes from its scores.csv.
How many run and wait at once is the administrator's (jobs.check_capacity).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from xray_core import fileio, runs
from xray_core.scoring.inputs import ScoreError, input_kind
from xray_core.scoring.job import score

WORKLISTS_DIR = ".worklists"
JOB_FILE, JOB_STATUS, JOB_SCORES, JOB_LOG = "job.json", "status.json", "scores.csv", "log.txt"
LAUNCH_GRACE = 60.0  # seconds a launched job may take to write its first status.json


def worklists_root(models_root: str | os.PathLike) -> Path:
    return Path(models_root) / WORKLISTS_DIR


def new_job_dir(models_root: str | os.PathLike) -> Path:
    """A new, empty job folder (named by time and a random suffix)."""
    import secrets

    root = worklists_root(models_root)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        job_dir = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            job_dir.mkdir()
            return job_dir
        except FileExistsError:
            continue


def save_uploads(job_dir: str | os.PathLike, files: list[tuple[str, bytes]]) -> Path:
    """Write uploaded films into `job_dir` (the private upload folder `jobs` made for the job; a
    single zip is kept as input.zip) and return what to score. File names are reduced to their base name; duplicates get a suffix."""
    job_dir = Path(job_dir)
    if not files:
        raise ScoreError("No file was uploaded. Add films (or one zip of films) and start again.")
    zips = [f for f in files if f[1][:4] in (b"PK\x03\x04", b"PK\x05\x06")]
    if zips and len(files) > 1:
        raise ScoreError("Upload either one zip or image files, not a zip among other files: unpack the zip "
                         "or upload it alone.")
    if zips:
        target = job_dir / "input.zip"
        fileio.atomic_write_bytes(target, zips[0][1])
        return target
    folder = job_dir / "input"
    folder.mkdir(parents=True, exist_ok=True)
    used: set = set()
    for name, raw in files:
        base = fileio.upload_file_name(name, "upload")
        stem, suffix, k = Path(base).stem, Path(base).suffix, 1
        while base in used:
            k += 1
            base = f"{stem}-{k}{suffix}"
        used.add(base)
        fileio.atomic_write_bytes(folder / base, raw)
    return folder


def submit_job(models_root: str | os.PathLike, run_id: str, source: str | os.PathLike, *,
               job_dir: str | os.PathLike | None = None, label: str = "", start: bool = True) -> str:
    """Queue a worklist job (refused with a sentence when the server's limits are reached, and
    in viewer mode: settings.ViewerModeError) and start it if a slot is free; returns the job id
    at once."""
    from xray_core import jobs, settings

    settings.refuse_writes("score")
    models_root = Path(models_root)
    source = Path(source)
    input_kind(source)
    running, queued = worklist_load(models_root)
    jobs.check_capacity("worklist", running=running, queued=queued)
    job_dir = Path(job_dir) if job_dir is not None else new_job_dir(models_root)
    job = {"job_id": job_dir.name, "run_id": run_id, "input": str(source.absolute()), "label": label or source.name,
           "submitted": runs.now_iso(), "state": "queued"}
    fileio.atomic_write_json(job_dir / JOB_FILE, job)
    if start:
        advance_jobs(models_root)
    return job_dir.name


def job_info(job_dir: str | os.PathLike) -> dict:
    """job.json and status.json merged, with `state`: queued, starting, running, completed,
    failed, cancelled or interrupted (its process died: resume it)."""
    job_dir = Path(job_dir)
    job = fileio.read_json_object(job_dir / JOB_FILE)
    status = fileio.read_json_object(job_dir / JOB_STATUS)
    info = {**job, **{k: v for k, v in status.items() if k != "state"}, "path": str(job_dir),
            "job_id": job_dir.name}
    state = status.get("state")
    if state == "running" and not runs.pid_alive(status.get("pid"), status.get("pid_started")):
        state = "interrupted"
    if state is None:
        if job.get("state") == "launched":
            launched = job.get("launched_at", 0.0)
            state = "starting" if time.time() - float(launched) < LAUNCH_GRACE else "interrupted"
        else:
            state = job.get("state", "queued")
    info["state"] = state
    return info


def list_jobs(models_root: str | os.PathLike) -> list[dict]:
    """Every worklist job, newest first."""
    root = worklists_root(models_root)
    if not root.is_dir():
        return []
    infos = [job_info(d) for d in root.iterdir() if d.is_dir() and (d / JOB_FILE).is_file()]
    return sorted(infos, key=lambda j: j.get("submitted", ""), reverse=True)


def worklist_load(models_root: str | os.PathLike) -> tuple[int, int]:
    """(running, waiting) worklist jobs under `models_root`."""
    infos = list_jobs(models_root)
    return (sum(j["state"] in ("running", "starting") for j in infos),
            sum(j["state"] == "queued" for j in infos))


def advance_jobs(models_root: str | os.PathLike) -> list[str]:
    """Launch queued jobs, oldest first, while fewer than the running limit run; their ids."""
    import fcntl

    from xray_core import settings

    models_root = Path(models_root)
    root = worklists_root(models_root)
    root.mkdir(parents=True, exist_ok=True)
    started = []
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one launcher at a time: two pages cannot both fill a slot
        infos = list_jobs(models_root)
        running = sum(j["state"] in ("running", "starting") for j in infos)
        free = settings.limit("running_worklists") - running
        for job in sorted((j for j in infos if j["state"] == "queued"), key=lambda j: j.get("submitted", "")):
            if free <= 0:
                break
            _launch(Path(job["path"]))
            started.append(job["job_id"])
            free -= 1
    return started


def resume_job(models_root: str | os.PathLike, job_id: str) -> None:
    """Queue an interrupted or failed job again; it goes on from its scores.csv. Refused in
    viewer mode (settings.ViewerModeError)."""
    from xray_core import settings

    settings.refuse_writes("score")
    job_dir = worklists_root(models_root) / runs.validate_run_id(job_id)
    job = fileio.read_json_object(job_dir / JOB_FILE)
    if not job:
        raise ScoreError(f"There is no worklist job {job_id!r}. Start a new one.")
    (job_dir / JOB_STATUS).unlink(missing_ok=True)
    fileio.atomic_write_json(job_dir / JOB_FILE, {**job, "state": "queued"})
    advance_jobs(models_root)


_SPAWNED: list = []  # job processes started here, reaped once they end (no zombies in a long-lived server)


def _launch(job_dir: Path) -> None:
    _SPAWNED[:] = [p for p in _SPAWNED if p.poll() is None]
    job = fileio.read_json_object(job_dir / JOB_FILE)
    fileio.atomic_write_json(job_dir / JOB_FILE, {**job, "state": "launched", "launched_at": time.time()})
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    with open(job_dir / JOB_LOG, "ab") as log:
        _SPAWNED.append(subprocess.Popen([sys.executable, "-c", "import sys; from xray_core.scoring.worklist import _job_main; "
                          "sys.exit(_job_main(sys.argv[1]))", str(job_dir.absolute())],
                         cwd=package_parent, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, env=env))


def _job_main(job_dir: str) -> int:
    """The detached process of one job: score, then hand the slot to the next queued job."""
    job_dir = Path(job_dir)
    models_root = job_dir.parents[1]
    job = fileio.read_json_object(job_dir / JOB_FILE)
    status = job_dir / JOB_STATUS
    try:
        score(job["run_id"], job["input"], job_dir / JOB_SCORES, root=models_root, progress=False,
              status_path=status)
        code = 0
    except (ValueError, OSError) as exc:  # a sentence for the page (ScoreError, RunNotFound, ...)
        fileio.atomic_write_json(status, {**fileio.read_json_object(status), "state": "failed", "error": str(exc),
                                        "updated": runs.now_iso()})
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    advance_jobs(models_root)
    return code
