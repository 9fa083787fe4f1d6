"""The Worklist's uploaded films: kept in a private temporary folder only while their job runs.

Films uploaded for a worklist are patients' films. They are written only to a private temporary
folder (mode 0700, made by tempfile.mkdtemp under TMPDIR), never into the models folder, and
removed as soon as their scoring job ends (completed, failed or cancelled): a small detached
watcher per upload job (`python -m xray_core.scoring.uploads JOB_DIR`) removes them within a
second of the end, and the Worklist page sweeps as well (sweep_uploads), for a watcher that did
not survive a restart. An interrupted job (its process died) keeps its films for
INTERRUPTED_KEEP seconds, so that it can be resumed, then they are removed too. The job folder
keeps the scores (hashes and probabilities, no pixels) and uploads.json, which names the
temporary folder and when it was removed. How many upload jobs and films a server takes is the
administrator's (settings.limit; jobs.check_capacity).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xray_core import fileio, jobs, runs, settings
from xray_core.jobs import CapacityError
from xray_core.scoring.inputs import ScoreError, count_items
from xray_core.scoring.worklist import (JOB_LOG, job_info, list_jobs, new_job_dir, save_uploads, submit_job,
                                        worklist_load)

UPLOADS_FILE = "uploads.json"
UPLOAD_PREFIX = "xray-worklist-"
ENDED = ("completed", "failed", "cancelled")
INTERRUPTED_KEEP = 3600.0  # seconds an interrupted upload job keeps its films for a resume


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


def submit_worklist_uploads(models_root: str | os.PathLike, run_id: str, files: list[tuple[str, bytes]], *,
                            start: bool = True) -> str:
    """Queue a worklist job over uploaded films ((name, bytes) pairs, or a single zip); its job id.

    The films go to a private temporary folder, removed when the job ends by a watcher started
    here (see the module's docstring).
    Refused with a sentence, before anything is written, in viewer mode (ViewerModeError) and
    when the worklist limits are reached (CapacityError: too many jobs, or more films than
    settings.limit("upload_files")); a refused zip is removed at once."""
    settings.refuse_writes("score")
    if not files:
        raise ScoreError("No file was uploaded. Add films (or one zip of films) and press the button again.")
    running, queued = worklist_load(models_root)
    jobs.check_capacity("worklist", running=running, queued=queued)
    check_upload_count(len(files))
    folder = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX))  # 0700: only the server's account reads it
    job_dir = None
    submitted = False
    try:
        target = save_uploads(folder, files)
        n = count_items(target) if target.is_file() else len(files)  # a zip: its films
        check_upload_count(n)
        job_dir = new_job_dir(models_root)
        fileio.atomic_write_json(job_dir / UPLOADS_FILE, {"folder": str(folder), "files": n, "removed": None})
        job_id = submit_job(models_root, run_id, target, job_dir=job_dir, start=start,
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


def upload_record(job_dir: str | os.PathLike) -> dict | None:
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
    path = Path(folder)
    if not path.exists() and not path.is_symlink():
        return  # already gone (a restart may empty the temporary folder)
    if (not path.name.startswith(UPLOAD_PREFIX) or path.is_symlink() or not path.is_dir()
            or path.stat().st_uid != os.getuid()):
        raise UploadRecordError(f"{record} names {path}, which is not a folder the dashboard made for uploads, "
                                "so nothing was removed. Someone edited that file: check the job and remove the "
                                "uploads by hand.")
    shutil.rmtree(path)


def discard_uploads(job_dir: str | os.PathLike, reason: str) -> bool:
    """Remove an upload job's temporary folder now and note it in uploads.json; True if removed."""
    job_dir = Path(job_dir)
    record = upload_record(job_dir)
    if record is None or record.get("removed"):
        return False
    _remove_upload_folder(str(record.get("folder", "")), job_dir / UPLOADS_FILE)
    fileio.atomic_write_json(job_dir / UPLOADS_FILE, {**record, "removed": runs.now_iso(), "reason": reason})
    # Into the job's log.txt, whoever removed them (the watcher, or a page's sweep in the server
    # process); no file names (they may name a patient).
    with open(job_dir / JOB_LOG, "a", encoding="utf-8") as log:
        log.write(f"{runs.now_iso()} the {record.get('files', '?')} uploaded films were removed ({reason})\n")
    return True


def _discard_reason(job_dir: Path, interrupted_since: float | None,
                    keep_interrupted: float) -> tuple[str | None, float | None]:
    """(why the uploads go now, or None; since when the job has been seen interrupted)."""
    if not job_dir.is_dir():
        return "its job was removed", None
    state = job_info(job_dir)["state"]
    if state in ENDED:
        return f"job {state}", None
    if state != "interrupted":
        return None, None  # queued, starting or running (again, after a resume)
    since = interrupted_since if interrupted_since is not None else time.monotonic()
    if time.monotonic() - since >= keep_interrupted:
        return f"job interrupted for over {keep_interrupted:g} s", since
    return None, since


def discard_when_ended(job_dir: str | os.PathLike, *, poll: float = 0.5,
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


def sweep_uploads(models_root: str | os.PathLike) -> list[str]:
    """Remove the uploads of every ended job under `models_root` (a watcher that died leaves them);
    one sentence per job whose uploads.json cannot be read (reported, never skipped silently)."""
    problems = []
    for job in list_jobs(models_root):
        try:
            record = upload_record(job["path"])
            if record is not None and not record.get("removed") and job["state"] in ENDED:
                discard_uploads(job["path"], f"job {job['state']}; found by a sweep")
        except UploadRecordError as exc:
            problems.append(str(exc))
    return problems


_WATCHERS: list[subprocess.Popen] = []  # watchers started by this process, reaped once they end


def _watch_uploads(job_dir: Path) -> None:
    _WATCHERS[:] = [p for p in _WATCHERS if p.poll() is None]
    with open(job_dir / JOB_LOG, "ab") as log:
        _WATCHERS.append(subprocess.Popen(
            [sys.executable, "-m", "xray_core.scoring.uploads", str(job_dir.absolute())],
            cwd=jobs.PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=jobs.child_env(job_dir.parents[1])))


if __name__ == "__main__":  # the watcher `_watch_uploads` starts
    if len(sys.argv) != 2:
        sys.exit("usage: python -m xray_core.scoring.uploads JOB_DIR  (removes a worklist's uploads when it ends)")
    sys.exit(discard_when_ended(sys.argv[1]))
