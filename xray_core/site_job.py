"""The Validate page's jobs: each site validation as its own detached process, polled by the page.

A folder per job under $XRAY_CACHE_DIR/validations/<job id>/ holds job.json (run, models folder,
label list), status.json (written by the job's process: films done of all, state, the error
sentence if it failed), log.txt and, once completed, report/ (`site_report`'s folder). These are
derived results, like Compare's test-split scores: no run folder is written, so a viewer-mode
server runs them too (it only cannot save a recalibrated run). A zip uploaded on the page waits
in a private temporary folder (mode 0700), never in the cache; the job's process removes it when
it ends, and the page removes it for a job whose process died (`sweep_uploads`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from xray_core import fileio, runs, settings

VALIDATIONS_DIR = "validations"
JOB_FILE, JOB_STATUS, JOB_LOG, REPORT_DIR = "job.json", "status.json", "log.txt", "report"
UPLOAD_PREFIX = "xray-validate-"
ACTIVE = ("starting", "running")
LAUNCH_GRACE = 60.0  # seconds a launched job may take to write its first status.json
STATUS_INTERVAL = 0.5


def jobs_root() -> Path:
    return fileio.default_cache_dir() / VALIDATIONS_DIR


def job_info(job_dir: str | os.PathLike) -> dict:
    """job.json and status.json merged, with `state`: starting, running, completed, failed or
    interrupted (its process died)."""
    job_dir = Path(job_dir)
    job, status = fileio.read_json_object(job_dir / JOB_FILE), fileio.read_json_object(job_dir / JOB_STATUS)
    info = {**job, **status, "path": str(job_dir), "job_id": job_dir.name}
    state = status.get("state")
    if state == "running" and not runs.pid_alive(status.get("pid"), status.get("pid_started")):
        state = "interrupted"
    if state is None:
        state = "starting" if time.time() - float(job.get("launched_at", 0.0)) < LAUNCH_GRACE else "interrupted"
    info["state"] = state
    return info


def list_jobs() -> list[dict]:
    """Every validation job of this server, newest first."""
    root = jobs_root()
    if not root.is_dir():
        return []
    infos = [job_info(d) for d in root.iterdir() if d.is_dir() and (d / JOB_FILE).is_file()]
    return sorted(infos, key=lambda j: j.get("submitted", ""), reverse=True)


def sweep_uploads() -> list[str]:
    """Remove the uploaded zips of jobs that no longer run (a process that died cannot); their ids."""
    swept = []
    for job in list_jobs():
        folder = job.get("upload_folder")
        if folder and job["state"] not in ACTIVE and Path(folder).exists():
            shutil.rmtree(folder, ignore_errors=True)  # another session may be sweeping it too
            swept.append(job["job_id"])
    return swept


def submit(run_id: str, models_root: str | os.PathLike, labels: str | os.PathLike | None = None, *,
           upload: bytes | None = None, upload_name: str = "upload.zip", exclude_seen: bool = False) -> str:
    """Start a validation of `run_id` on a label list on the server (`labels`) or an uploaded zip
    (`upload`, refused in viewer mode); its job id. The list is read first, so a list without
    labelled films is refused at once, with a sentence."""
    from xray_core.site import SiteError, read_labels

    running = sum(j["state"] in ACTIVE for j in list_jobs())
    most = settings.limit("running_worklists")
    if running >= most:
        raise SiteError(f"This server runs at most {most} validation{'s' if most != 1 else ''} at a time, and "
                        f"{running} {'is' if running == 1 else 'are'} running. Start this one when it has ended.")
    folder = None
    if upload is not None:
        if settings.viewer_mode():
            raise SiteError("Uploading films is switched off on this server (viewer mode): nothing is written "
                            "there. Choose a folder on the server instead.")
        if upload[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise SiteError(f"{upload_name} is not a zip file. Upload one zip holding NORMAL/ and PNEUMONIA/ folders.")
        folder = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX))  # 0700: only the server's account reads it
        labels = folder / fileio.upload_file_name(upload_name, "upload.zip")  # the report names the user's zip
        fileio.atomic_write_bytes(labels, upload)
    try:
        if labels is None:
            raise SiteError("Choose a labelled folder on the server or upload a zip of one.")
        found = read_labels(labels)
        root = jobs_root()
        root.mkdir(parents=True, exist_ok=True)
        job_dir = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        job_dir.mkdir()
        job = {"run_id": run_id, "models_root": str(Path(models_root).absolute()), "labels": str(labels),
               "label": upload_name if upload is not None else Path(labels).name, "films": len(found),
               "exclude_seen": bool(exclude_seen), "upload_folder": str(folder) if folder else None,
               "submitted": runs.now_iso(), "launched_at": time.time()}
        fileio.atomic_write_json(job_dir / JOB_FILE, job)
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder)
        raise
    _launch(job_dir)
    return job_dir.name


_SPAWNED: list = []  # job processes started here, reaped once they end


def _launch(job_dir: Path) -> None:
    _SPAWNED[:] = [p for p in _SPAWNED if p.poll() is None]
    package_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    with open(job_dir / JOB_LOG, "ab") as log:
        _SPAWNED.append(subprocess.Popen(
            [sys.executable, "-c", "import sys; from xray_core.site_job import _job_main; sys.exit(_job_main(sys.argv[1]))",
             str(job_dir.absolute())], cwd=package_parent, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env=env))


def _job_main(job_dir: str) -> int:
    """The detached process of one validation: assess every film, write the report, remove the upload."""
    from xray_core import site
    from xray_core.scoring.decoding import default_workers

    job_dir = Path(job_dir)
    job = fileio.read_json_object(job_dir / JOB_FILE)
    path = job_dir / JOB_STATUS
    base = {"state": "running", "pid": os.getpid(), **runs.process_identity(), "done": 0, "total": job.get("films"),
            "started": runs.now_iso()}
    last = [0.0]

    def write(**fields) -> None:
        base.update(fields, updated=runs.now_iso())
        fileio.atomic_write_json(path, base)

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= STATUS_INTERVAL or done == total:
            last[0] = time.monotonic()
            write(done=done, total=total)

    write()
    try:
        site.validate(job["run_id"], job["labels"], root=job["models_root"], out=job_dir / REPORT_DIR,
                      exclude_seen=job.get("exclude_seen", False), workers=min(2, default_workers()),
                      progress=progress)
        outcome = {"state": "completed"}
    except (ValueError, OSError) as exc:  # a sentence for the page (SiteError, RunNotFound, ...)
        outcome = {"state": "failed", "error": str(exc)}
        print(f"error: {exc}", file=sys.stderr)
    except Exception:  # a bug: its traceback goes to the job's log.txt, the page says the job failed
        traceback.print_exc()
        outcome = {"state": "failed", "error": "The validation stopped on an unexpected error; the job's log.txt "
                                               "holds the details. Report it with that file."}
    finally:
        if job.get("upload_folder") and Path(job["upload_folder"]).exists():
            shutil.rmtree(job["upload_folder"])
    # The final state is written after the upload is gone: a reader that sees "completed" or
    # "failed" can rely on the patient films having been removed.
    write(**outcome)
    return 0 if outcome["state"] == "completed" else 1
