"""Files on disk: atomic writes, and the folders the dashboard may read and write.

Every file the project writes goes to a temporary name in the same folder, is flushed to disk and
renamed into place, so a reader (the dashboard polling a training, or a crash halfway through a
write) only ever sees the old file or the new one, never half of one.

A served dashboard takes folder names from whoever can open it (the sidebar's dataset and models
folders, the Dataset page's download folder). `check_allowed` resolves such a path (symlinks
included) and refuses it unless it lies under one of `allowed_roots()`, before anything is read
or written there.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import numpy as np

from xray_core import settings

PROJECT_ROOT = settings.PROJECT_ROOT


# --------------------------------------------------------------------------- atomic writes


#: Names of the temporary files of writes in progress (atomic_writer's ".NAME.*.tmp", the
#: checkpoint callback's ".NAME.PID.tmp.keras"): left over by a killed writer, never the real file.
TEMP_GLOB = ".*.tmp*"


def default_cache_dir() -> Path:
    """`$XRAY_CACHE_DIR`, else `~/.cache/xray_core`: derived files (converted programs, decoded
    datasets, Compare's scores), never the project's own."""
    env = os.environ.get("XRAY_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xray_core"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces `path` only if the block ends without error.

    For writers that stream (numpy.save of a large array) instead of holding the bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # The temporary file is ours and unfinished: remove it, then let the error travel on.
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write data to path so that readers see either the old file or the complete new one."""
    with atomic_writer(path) as fh:
        fh.write(data)
    return Path(path)


MAX_NAME_BYTES = 200  # an uploaded file's name as written: within every file system's 255 bytes


def upload_file_name(name: str, default: str) -> str:
    """The name a browser sent with an upload, as a file name in a private upload folder: its last
    part (after either slash), without leading dots or NUL, at most MAX_NAME_BYTES of UTF-8 (its
    end kept, so the suffix stays); `default` when nothing is left (".." or "")."""
    base = Path(str(name).replace("\\", "/").replace("\0", "")).name.lstrip(".")
    return base.encode()[-MAX_NAME_BYTES:].decode(errors="ignore") or default


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX only; a no-op where folders cannot be opened)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, Paths and NaN -> plain JSON (NaN becomes null: JSON has no NaN).

    The one sanitiser for everything the project writes as JSON (run files, the Diagnose zip)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_json_object(path: str | os.PathLike) -> dict:
    """A status or job file that may be missing, mid-write by another process or damaged: its JSON
    object, or {} (the caller treats it as not there yet)."""
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------- allowed roots


class PathNotAllowed(ValueError):
    """A folder outside the allowed roots (directly, through `..`, or through a symlink)."""


def allowed_roots() -> tuple[Path, ...]:
    """The folders (resolved) under which the dashboard may read and write.

    Defaults: the project's `data/` and `trained_models/`, and `../shared/data` beside the
    project when it exists. The administrator adds more with the environment variable
    `XRAY_ALLOWED_ROOTS` (folders separated by os.pathsep) or the `allowed_roots` list of the
    `[xray]` table in `.streamlit/secrets.toml`; the folders named by `XRAY_DATA_DIR` and
    `XRAY_MODELS_DIR` are allowed too (set on the server, so chosen by the administrator).
    Relative entries are taken from the project folder.
    """
    roots = [PROJECT_ROOT / "data", PROJECT_ROOT / "trained_models"]
    shared = PROJECT_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        roots.append(shared)
    roots += settings.configured_roots()
    out: list[Path] = []
    for root in roots:
        root = Path(root).expanduser()
        resolved = (root if root.is_absolute() else PROJECT_ROOT / root).resolve()
        if resolved not in out:
            out.append(resolved)
    return tuple(out)


def check_allowed(path: str | os.PathLike, *, what: str,
                  roots: Sequence[str | os.PathLike] | None = None) -> Path:
    """`path` resolved (symlinks followed, `..` collapsed), if it lies under an allowed root.

    what: the words for the folder in the message ("dataset folder", "download folder").
    Relative paths are taken from the project folder (as the sidebar's defaults are). Raises
    PathNotAllowed, naming the allowed folders, for anything else; nothing is touched before.
    """
    text = os.fspath(path).strip()
    if not text:
        raise PathNotAllowed(f"The {what} is empty. Type a folder under one of the allowed "
                             f"folders: {_list(roots or allowed_roots())}.")
    if "\x00" in text:
        raise PathNotAllowed(f"The {what} {text!r} contains a NUL character. Type a plain folder name.")
    raw = Path(text).expanduser()
    absolute = raw if raw.is_absolute() else PROJECT_ROOT / raw
    resolved = absolute.resolve()
    roots = allowed_roots() if roots is None else tuple(Path(r).resolve() for r in roots)
    if any(resolved == root or root in resolved.parents for root in roots):
        return resolved
    if ".." in raw.parts:
        why = "climbs out of the allowed folders with '..'"
    elif _through_symlink(absolute):
        why = f"leads through a symbolic link to {resolved}, outside the allowed folders"
    else:
        why = "is outside the allowed folders"
    raise PathNotAllowed(
        f"The {what} {text!r} {why}, so nothing was read or written there. Choose a folder under "
        f"{_list(roots)}, or ask the administrator to add one (XRAY_ALLOWED_ROOTS, or "
        f"allowed_roots in the [xray] table of .streamlit/secrets.toml).")


def _through_symlink(path: Path) -> bool:
    """Whether some existing component of `path` is a symbolic link."""
    current = Path(path.anchor)
    for part in path.parts[1:]:
        current = current / part
        if current.is_symlink():
            return True
        if not current.exists():
            return False
    return False


def _list(roots) -> str:
    return ", ".join(str(r) for r in roots) or "(none configured)"
