"""The administrator's settings for a served dashboard: mode, allowed folders, download hosts, limits.

Each setting comes from an environment variable or, when that is unset, from the `[xray]` table
of the Streamlit secrets file (`.streamlit/secrets.toml` in the folder the app is started from,
else `~/.streamlit/secrets.toml`; the places Streamlit itself reads; `XRAY_SECRETS_FILE` names
another). Both are set on the server, never by a user of the page. Read afresh on each call (a
small file), so a change applies without a restart.

    [xray]
    mode = "viewer"                              # or "full" (the default)
    allowed_roots = ["/srv/xray/data", "/srv/xray/models"]
    download_hosts = ["mirror.hospital.example"]
    download_private_networks = ["10.20.0.0/16"] # a mirror inside the hospital network
    [xray.limits]
    running_trainings = 1
    queued_trainings = 3
    running_worklists = 1
    queued_worklists = 3
    upload_files = 500                           # films in one Worklist upload (or in its zip)
    explain_workers = 1                          # Diagnose's explanation processes (0: no explanations)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODES = ("full", "viewer")
DEFAULT_LIMITS = {"running_trainings": 1, "queued_trainings": 3,
                  "running_worklists": 1, "queued_worklists": 3,
                  "upload_files": 500,
                  # Diagnose's explanations run in this many worker processes, one film at a time
                  # each, at a lower CPU priority than the verdicts; 0 switches explanations off.
                  "explain_workers": 1}


class SettingsError(ValueError):
    """A setting the administrator wrote cannot be used; the message says which and how to fix it."""


def secrets_file() -> Path | None:
    """The secrets file in force, or None."""
    named = os.environ.get("XRAY_SECRETS_FILE")
    if named:
        return Path(named)
    for candidate in (Path.cwd() / ".streamlit" / "secrets.toml",
                      Path.home() / ".streamlit" / "secrets.toml"):
        if candidate.is_file():
            return candidate
    return None


def secrets_table() -> dict[str, Any]:
    """The `[xray]` table of the secrets file ({} when there is none)."""
    import tomllib

    path = secrets_file()
    if path is None or not path.is_file():
        return {}
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh).get("xray", {})
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML ({exc}). Fix the file, then reload.") from exc
    if not isinstance(table, dict):
        raise SettingsError(f"In {path}, xray must be a table ([xray]), not {type(table).__name__}.")
    return table


def _list_setting(env: str, key: str, sep: str) -> list[str]:
    value = os.environ.get(env)
    if value is not None:
        return [v.strip() for v in value.split(sep) if v.strip()]
    value = secrets_table().get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{key} in the [xray] table of the secrets file must be a list of "
                            f"strings, not {value!r}.")
    return [v.strip() for v in value if v.strip()]


def mode() -> str:
    """"full" (default) or "viewer" (nothing that writes): XRAY_MODE or `mode` in [xray]."""
    value = os.environ.get("XRAY_MODE") or secrets_table().get("mode") or "full"
    value = str(value).strip().lower()
    if value not in MODES:
        raise SettingsError(f"XRAY_MODE (or mode in [xray]) is {value!r}; it must be one of "
                            f"{', '.join(MODES)}.")
    return value


def viewer_mode() -> bool:
    return mode() == "viewer"


def configured_roots() -> list[Path]:
    """Folders the administrator allows besides the defaults (see fileio.allowed_roots)."""
    roots = [Path(r) for r in _list_setting("XRAY_ALLOWED_ROOTS", "allowed_roots", os.pathsep)]
    for env in ("XRAY_DATA_DIR", "XRAY_MODELS_DIR"):
        if os.environ.get(env):
            roots.append(Path(os.environ[env]))
    return roots


def download_hosts() -> list[str]:
    """Hosts added to the catalogue's for mirror URLs typed in the app (XRAY_DOWNLOAD_HOSTS, comma-separated)."""
    return [h.lower() for h in _list_setting("XRAY_DOWNLOAD_HOSTS", "download_hosts", ",")]


def download_private_networks() -> list[str]:
    """Private/loopback networks (CIDR) a mirror may live in (XRAY_DOWNLOAD_PRIVATE_NETWORKS)."""
    return _list_setting("XRAY_DOWNLOAD_PRIVATE_NETWORKS", "download_private_networks", ",")


def limit(name: str) -> int:
    """One of DEFAULT_LIMITS: env XRAY_MAX_<NAME> (e.g. XRAY_MAX_RUNNING_TRAININGS), else
    [xray.limits] in the secrets file, else the default."""
    if name not in DEFAULT_LIMITS:
        raise KeyError(f"unknown limit {name!r}; known: {', '.join(DEFAULT_LIMITS)}")
    env = f"XRAY_MAX_{name.upper()}"
    raw: Any = os.environ.get(env)
    where = env
    if raw is None:
        limits = secrets_table().get("limits", {})
        raw = limits.get(name, DEFAULT_LIMITS[name]) if isinstance(limits, dict) else DEFAULT_LIMITS[name]
        where = f"limits.{name} in [xray]"
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{where} is {raw!r}; it must be a whole number (0 or more).") from None
    if value < 0:
        raise SettingsError(f"{where} is {value}; it must be 0 or more.")
    return value


# What each command writes: refused in viewer mode (the CLI calls refuse_writes before running one).
WRITING_COMMANDS = {
    "train": "trains a model into the runs folder",
    "download": "downloads and unpacks a dataset",
    "evaluate": "writes metrics and per-image scores into the run folder",
    "fit-gate": "writes the input gate and the seen-file list into the run folder",
    "score": "writes a table of scores",
    "report": "writes a PDF report",
    "explain": "writes explanation images",
    "recalibrate": "writes a site-calibrated run into the models folder",
    "export": "writes the model's files for other platforms",
}


class ViewerModeError(SettingsError):
    """A command that writes, asked for on a server in viewer mode."""


def refuse_writes(command: str | None) -> None:
    """Raise ViewerModeError if `command` writes (WRITING_COMMANDS) and the server is in viewer mode."""
    if command in WRITING_COMMANDS and viewer_mode():
        raise ViewerModeError(
            f"`{command}` {WRITING_COMMANDS[command]}, and this installation is in viewer mode "
            f"(XRAY_MODE=viewer, or mode = \"viewer\" in the [xray] table of the secrets file), "
            f"where nothing is written. Run it where writing is allowed, or ask the administrator.")
