"""The run registry on disk: `trained_models/<run_id>/`, one folder per training run.

Every file is written to a temporary name in the same folder, flushed to disk and renamed into
place, so a reader (the dashboard polling a training, or a crash halfway through a write) only
ever sees the old file or the new one, never half of one. A run folder is the whole truth about
a run: a training process writes it, everything else only reads it.

No TensorFlow at import time: the dashboard lists runs without loading any model.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from xray_core.fileio import atomic_write_json, atomic_write_text, read_json

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The bundled runs (default and the seed's four) are in trained_models/ of a source checkout (a
# clone, or `pip install -e .`), and installed inside the package by `pip install .`
# (pyproject.toml's package data). runs_root() says which folder is the registry.
CHECKOUT_RUNS_DIR = PROJECT_ROOT / "trained_models"
PACKAGED_RUNS_DIR = Path(__file__).resolve().parent / "bundled_runs"

STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
# A running training rewrites status.json at least this often (a heartbeat thread), so a status
# older than this whose process we cannot check is taken for a dead training.
STALE_SECONDS = 300.0

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
CHECKPOINT_FILE = "checkpoint.keras"
CHECKPOINT_META_FILE = "checkpoint.json"
SKIPPED_FILE = "skipped_files.json"
STOP_FILE = "STOP"
PREDICTIONS_FILE = "predictions_{split}.csv"  # split: validation, test, official_val

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidRunId(ValueError):
    """A run id that is empty, hidden, or could name a folder outside the runs folder."""


class RunNotFound(ValueError):
    """No run folder of that name (or it holds no run)."""


class RunBusy(ValueError):
    """The run is still training; the operation would break it."""


class RegistryReadOnly(ValueError):
    """The registry is the copy of the bundled runs inside the installed package: nothing is written there."""



def predictions_path(run_dir: str | os.PathLike, split: str) -> Path:
    return Path(run_dir) / PREDICTIONS_FILE.format(split=split)


def write_predictions(run_dir: str | os.PathLike, split: str, paths, labels, scores,
                      data_root: str | os.PathLike | None = None) -> Path:
    """Keep a split's per-image scores beside the model (path, label, score), so ROC curves and
    any other threshold-free figure never need the images or the model again.

    Paths are written relative to data_root where they lie under it, so the file survives the
    dataset moving; the others stay absolute.
    """
    import csv
    import io

    base = Path(data_root).absolute() if data_root is not None else None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "score"])
    for path, label, score in zip(paths, labels, scores):
        path = Path(path)
        if base is not None and path.is_absolute() and path.is_relative_to(base):
            path = path.relative_to(base)
        writer.writerow([path.as_posix(), int(label), repr(float(score))])
    return atomic_write_text(predictions_path(run_dir, split), buffer.getvalue())


def read_predictions(run_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(y_true, y_score) from predictions_<split>.csv, or None when the run has no such file."""
    import csv

    path = predictions_path(run_dir, split)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return (np.array([int(r["label"]) for r in rows], dtype=int),
            np.array([float(r["score"]) for r in rows], dtype=np.float64))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- ids and folders


def runs_root(root: str | os.PathLike | None = None) -> Path:
    """The registry folder, the first of:

    1. root, when given (the command line's --runs-dir, the dashboard's models folder);
    2. $XRAY_MODELS_DIR, read now;
    3. trained_models/ of the source checkout this package runs from (a clone, `pip install -e .`);
    4. the bundled runs installed inside the package (`pip install .`): read-only, so new runs
       need 1 or 2 (`RegistryReadOnly` says so).
    """
    if root is not None:
        return Path(root)
    env = os.environ.get("XRAY_MODELS_DIR")
    if env:
        return Path(env)
    return CHECKOUT_RUNS_DIR if CHECKOUT_RUNS_DIR.is_dir() else PACKAGED_RUNS_DIR


DEFAULT_RUNS_DIR = runs_root()  # the registry as found at import: the benchmarks' default folder


def writable_root(root: str | os.PathLike | None = None) -> Path:
    """runs_root(root), refused with a sentence when it is the installed package's own copy."""
    base = runs_root(root)
    if base.resolve() == PACKAGED_RUNS_DIR:
        raise RegistryReadOnly(
            f"The runs folder is the copy of the bundled runs inside the installed package ({base}), which is "
            "not written to. Give a folder for your runs: --runs-dir DIR, or set XRAY_MODELS_DIR=DIR."
        )
    return base


def validate_run_id(run_id: Any) -> str:
    """Return run_id if it names a plain folder directly inside the runs folder; else raise.

    Refuses empty ids, `.`/`..`, separators (`/`, `\\`), absolute paths, drive letters, hidden
    names (a leading dot: temporary and deleted folders use those) and anything beyond letters,
    digits, `.`, `_` and `-`, so an id can never reach outside the registry.
    """
    if not isinstance(run_id, str) or not run_id.strip():
        raise InvalidRunId("The run id is empty. Give the name of a run folder (see `python -m xray_core runs`).")
    if "/" in run_id or "\\" in run_id or os.path.isabs(run_id) or ".." in run_id:
        raise InvalidRunId(
            f"The run id {run_id!r} contains a path (a slash, a backslash or '..'). "
            "Give only the run's folder name, as `python -m xray_core runs` lists it."
        )
    if run_id.startswith("."):
        raise InvalidRunId(f"The run id {run_id!r} starts with a dot; run ids are plain, visible folder names.")
    if not _RUN_ID_RE.match(run_id):
        raise InvalidRunId(
            f"The run id {run_id!r} has characters other than letters, digits, '.', '_' and '-' "
            "(at most 128). Choose a simpler name."
        )
    return run_id


def run_path(run_id: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of run_id inside the registry (validated, so it cannot escape it)."""
    return runs_root(root) / validate_run_id(run_id)


def new_run_id(arch: str, root: str | os.PathLike | None = None, *, create: bool = True) -> str:
    """A fresh id like `20261125-221503-baseline-3f2a`; with create, its folder is made too.

    The folder is created with exist_ok=False, so two trainings started in the same second
    can never share one: the loser of the race simply draws another suffix.
    """
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", str(arch)).strip("-") or "run"
    base = writable_root(root)
    for _ in range(100):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_id = validate_run_id(f"{stamp}-{slug}-{secrets.token_hex(2)}")
        if not create:
            if not (base / run_id).exists():
                return run_id
            continue
        base.mkdir(parents=True, exist_ok=True)
        try:
            (base / run_id).mkdir(exist_ok=False)
        except FileExistsError:
            continue
        return run_id
    raise RuntimeError(f"Could not create a new run folder in {base} after 100 attempts.")


def create_run_dir(run_id: str, root: str | os.PathLike | None = None) -> Path:
    """Create the folder of a user-chosen run id; refuse one that already exists."""
    path = writable_root(root) / validate_run_id(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(exist_ok=False)
    except FileExistsError:
        raise InvalidRunId(
            f"A run named {run_id!r} already exists in {path.parent}. Choose another --run-id, "
            "or continue it with --resume."
        ) from None
    return path


# --------------------------------------------------------------------------- liveness


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of pid (Linux), which tells a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _proc_is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    return bool(fields) and fields[0] in ("Z", "X")


def process_identity() -> dict:
    """What status.json records so that readers can tell whether this process still lives."""
    pid = os.getpid()
    return {"pid": pid, "pid_started": _proc_start_time(pid), "host": socket.gethostname()}


def _pid_exists(pid: int) -> bool:
    """Probe with signal 0: PermissionError means the process exists but belongs to someone else."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:  # ProcessLookupError and the like: no such process
        return False
    return True


def pid_alive(pid: Any, started: str | None = None) -> bool:
    """Whether pid is a live (not zombie) process, and the same one if its start time is known."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    if not _pid_exists(pid) or _proc_is_zombie(pid):
        return False
    if started is not None:
        current = _proc_start_time(pid)
        if current is not None and current != started:
            return False  # the pid was reused by another process
    return True


def _age_seconds(updated: Any) -> float | None:
    if not updated:
        return None
    try:
        when = datetime.fromisoformat(str(updated))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - when).total_seconds()


def effective_status(status: dict | None) -> dict:
    """status.json as it should be read now: a 'running' run whose process died is 'interrupted'.

    The process is checked by pid (and its start time, against pid reuse) when it ran on this
    machine; from another machine only the heartbeat's age can tell.
    """
    status = dict(status or {})
    state = status.get("state")
    if state not in ACTIVE_STATES:
        return status
    pid = status.get("pid")
    if pid is None:
        return status  # queued by a launcher that has not started the process yet
    same_host = status.get("host") in (None, socket.gethostname())
    if same_host:
        dead = not pid_alive(pid, status.get("pid_started"))
    else:
        age = _age_seconds(status.get("updated"))
        dead = age is not None and age > STALE_SECONDS
    if dead:
        status["recorded_state"] = state
        status["state"] = "interrupted"
        status.setdefault("error", None)
        if not status.get("error"):
            status["error"] = "The training process stopped without finishing (killed or crashed)."
    return status


# --------------------------------------------------------------------------- reading runs


def _read_json_or_note(path: Path) -> tuple[Any, str | None]:
    """Read a JSON file; a missing file is None, a broken one is None plus a reason (never a crash)."""
    if not path.is_file():
        return None, None
    try:
        return read_json(path), None
    except (OSError, ValueError) as exc:
        return None, f"{path.name} could not be read: {exc}"


def _current_status(path: Path, status: Any) -> dict:
    """A run folder's status.json content as it should be read now (see effective_status)."""
    if status is None:
        # A bundled model (default/) has no training process behind it: it is simply complete.
        status = {"state": "completed" if (path / MODEL_FILE).is_file() else "unknown"}
    return effective_status(status if isinstance(status, dict) else {})


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in (CONFIG_FILE, STATUS_FILE, MODEL_FILE))


@dataclass
class RunInfo:
    """A run as the registry lists it: no model, no history, cheap to build for every run."""

    run_id: str
    path: Path
    status: dict
    config: dict
    metrics: dict | None
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return str(self.status.get("state") or "unknown")


def read_run_info(path: str | os.PathLike) -> RunInfo:
    """A run folder's files as a RunInfo (what list_runs gives per folder), with the problems found."""
    path = Path(path)
    problems = []
    config, note = _read_json_or_note(path / CONFIG_FILE)
    problems += [note] if note else []
    status, note = _read_json_or_note(path / STATUS_FILE)
    problems += [note] if note else []
    metrics, note = _read_json_or_note(path / METRICS_FILE)
    problems += [note] if note else []
    return RunInfo(
        run_id=path.name,
        path=path,
        status=_current_status(path, status),
        config=config if isinstance(config, dict) else {},
        metrics=metrics if isinstance(metrics, dict) else None,
        problems=problems,
    )


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """Every run folder in the registry, sorted by id (ids start with their UTC start time).

    Hidden folders (deletions in progress) and names that are not valid run ids are skipped;
    a run with a damaged file is still listed, with the damage in `problems`.
    """
    base = runs_root(root)
    if not base.is_dir():
        return []
    out = []
    for path in sorted(base.iterdir(), key=lambda p: p.name):
        if path.name.startswith(".") or not _RUN_ID_RE.match(path.name) or not _is_run_folder(path):
            continue
        out.append(read_run_info(path))
    return out


class Run:
    """One run folder's files (config, status, metrics, history). Its model is
    `xray_core.model.load_model(run)`: the one object that scores films."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.run_id = self.path.name

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, state={self.status.get('state')!r})"

    # Files are re-read on every access: a training process may be rewriting them.
    @property
    def config(self) -> dict:
        config, _ = _read_json_or_note(self.path / CONFIG_FILE)
        return config if isinstance(config, dict) else {}

    @property
    def status(self) -> dict:
        status, _ = _read_json_or_note(self.path / STATUS_FILE)
        return _current_status(self.path, status)

    @property
    def metrics(self) -> dict | None:
        metrics, _ = _read_json_or_note(self.path / METRICS_FILE)
        return metrics if isinstance(metrics, dict) else None

    @property
    def history(self):
        """history.csv as a DataFrame (empty when no epoch has finished yet)."""
        import pandas as pd

        path = self.path / HISTORY_FILE
        if not path.is_file():
            return pd.DataFrame()
        return pd.read_csv(path)


def load_run(run_id_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Run:
    """A Run from a run id (validated against the registry) or a path to a run folder: a
    PathLike, or a str holding a path separator (`runs/default`, `./my-run`)."""
    if isinstance(run_id_or_path, os.PathLike):
        path = Path(run_id_or_path)
    elif isinstance(run_id_or_path, str) and ("/" in run_id_or_path or os.sep in run_id_or_path):
        path = Path(run_id_or_path)
        if not _is_run_folder(path):
            # Neither a run id (those have no separators) nor a folder holding a run.
            raise InvalidRunId(
                f"{run_id_or_path!r} is neither a run id nor a run folder (a folder with config.json, "
                "status.json or model.keras). Give a run id as `python -m xray_core runs` lists it, or the "
                "path of a run folder."
            )
    else:
        path = run_path(run_id_or_path, root)
    if not _is_run_folder(path):
        raise RunNotFound(
            f"There is no run {path.name!r} in {path.parent}. "
            "List the runs with `python -m xray_core runs` (add --runs-dir if they live elsewhere)."
        )
    return Run(path)


def delete_run(run_id: str, root: str | os.PathLike | None = None, *, allow_default: bool = False) -> None:
    """Remove a run folder. A training still in progress, and the bundled default, are refused.

    The folder is first renamed to a hidden name (atomic), so it vanishes from listings at
    once even if removing its files takes a while or fails halfway.
    """
    path = writable_root(root) / validate_run_id(run_id)
    if not path.is_dir():
        raise RunNotFound(f"There is no run {run_id!r} in {path.parent}; nothing was deleted.")
    if run_id == "default" and not allow_default:
        raise RunBusy("The run 'default' is the bundled model the dashboard uses; it is not deleted.")
    status = read_run_info(path).status
    if status.get("state") in ACTIVE_STATES and status.get("pid") is not None:
        raise RunBusy(
            f"The run {run_id!r} is still training (pid {status.get('pid')}). Stop it first "
            f"(create the file {path / STOP_FILE}), then delete it."
        )
    trash = path.parent / f".deleting-{run_id}-{secrets.token_hex(4)}"
    os.replace(path, trash)
    shutil.rmtree(trash)


# --------------------------------------------------------------------------- status writing


class StatusWriter:
    """Writes status.json for a training process: merges fields, stamps pid and time, throttles.

    One lock serialises writers (the Keras callback and the heartbeat thread), and every write
    is atomic. `beat()` rewrites the current status with a fresh `updated` time so readers on
    other machines can tell a live training from a dead one.
    """

    def __init__(self, run_dir: str | Path, min_interval: float = 0.5):
        self.path = Path(run_dir) / STATUS_FILE
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._state: dict = {
            "state": "queued",
            "epoch": 0,
            "epochs": None,
            "batch": 0,
            "batches": None,
            "fraction": 0.0,
            "images_per_second": None,
            "eta_seconds": None,
            "error": None,
        }
        self._heartbeat: threading.Thread | None = None
        self._stop_beat = threading.Event()

    @property
    def current(self) -> dict:
        with self._lock:
            return dict(self._state)

    def update(self, force: bool = True, **fields: Any) -> bool:
        """Merge fields and write; with force=False skip the write if the last was too recent."""
        with self._lock:
            self._state.update(fields)
            now = time.monotonic()
            if not force and now - self._last_write < self.min_interval:
                return False
            self._write_locked(now)
            return True

    def _write_locked(self, now: float) -> None:
        self._state.update(process_identity())
        self._state["updated"] = now_iso()
        atomic_write_json(self.path, self._state)
        self._last_write = now

    def beat(self) -> None:
        with self._lock:
            self._write_locked(time.monotonic())

    def start_heartbeat(self, interval: float = 15.0) -> None:
        def loop():
            while not self._stop_beat.wait(interval):
                self.beat()

        self._stop_beat.clear()
        self._heartbeat = threading.Thread(target=loop, name="xray-status-heartbeat", daemon=True)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._stop_beat.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
