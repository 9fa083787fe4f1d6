"""What several pages share: the sidebar's folders, the dataset filters, run pickers, formats.

Page-side code (the library, `xray_core`, returns data; this words and shapes it). No Streamlit here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from xray_core.model import SPEC_FILE
from xray_core.runs import MODEL_FILE

PROJECT_ROOT = Path(__file__).resolve().parents[1]

CLASS_COLOURS = {"NORMAL": "#2E86AB", "PNEUMONIA": "#E4572E"}
SPLIT_ORDER = ["train", "val", "test"]


def resolve_folder(text: str | Path) -> Path:
    """A folder typed in the sidebar: relative paths are taken from the project folder, so the
    defaults work whatever directory `streamlit run` was started from."""
    path = Path(str(text).strip()).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def filter_index(df: pd.DataFrame, split: str = "all", class_name: str = "all",
                 pathogen: str = "all") -> pd.DataFrame:
    """The rows of an index that match the sample grid's filters ("all" keeps everything)."""
    keep = pd.Series(True, index=df.index)
    if split != "all":
        keep &= df["split"] == split
    if class_name != "all":
        keep &= df["class_name"] == class_name
    if pathogen != "all":
        keep &= df["pathogen"] == pathogen
    return df[keep]


def present(values: Iterable[str], order: Iterable[str]) -> list[str]:
    """The items of order that occur in values, in order (e.g. the splits a dataset has)."""
    seen = set(values)
    return [v for v in order if v in seen]


def format_seconds(seconds: float | None) -> str:
    """12 s, 3 min 05 s, 1 h 02 min: how long, readably ("–" when unknown)."""
    from xray_core.download import format_duration

    if seconds is None or not np.isfinite(seconds):
        return "–"
    return format_duration(float(seconds))


def has_networks(path: str | Path) -> bool:
    """Whether a run folder holds its model file, or names (model.json's "parent", a site-calibrated
    run) a folder that does."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return True
    spec = path / SPEC_FILE
    try:
        parent = json.loads(spec.read_text()).get("parent") if spec.is_file() else None
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(parent, str) and (path / parent / MODEL_FILE).is_file()


def usable_runs(infos: Iterable[Any]) -> list:
    """Completed runs that have a model file (or a parent's): `default` first, then the newest first."""
    done = [r for r in infos if r.state == "completed" and has_networks(r.path)]
    done.sort(key=lambda r: str((r.config or {}).get("created") or r.run_id), reverse=True)
    done.sort(key=lambda r: r.run_id != "default")
    return done


#: What the original study (the notebook this project reproduces) called its architectures.
ORIGINAL_STUDY_MODELS = {"baseline": "baseline model", "model2": "model 2", "model3": "model 3",
                         "model4": "model 4"}


def _spec_of(info: Any) -> dict:
    path = getattr(info, "path", None)
    try:
        spec = json.loads((Path(path) / SPEC_FILE).read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return spec if isinstance(spec, dict) else {}


def run_description(info: Any) -> str:
    """What a run is, in a few words: its model and where it comes from, never a figure (a
    training-hospital AUC beside a new patient's verdict reads as a promise about that patient)."""
    config, spec = info.config or {}, _spec_of(info)
    derived = config.get("derived_from") if isinstance(config.get("derived_from"), dict) else None
    if derived or spec.get("parent"):
        parent = (derived or {}).get("run") or Path(str(spec.get("parent"))).name
        films = (spec.get("provenance") or {}).get("films")
        n = sum(v for v in films.values() if isinstance(v, int)) if isinstance(films, dict) else None
        return f"{parent} recalibrated on {n} films of a site" if n else f"{parent} recalibrated for a site"
    arch = config.get("arch")
    members = config.get("members")
    if isinstance(members, list) and len(members) > 1 and arch:
        what = f"ensemble of {len(members)} {arch}"
    elif arch in ORIGINAL_STUDY_MODELS:
        what = f"the original study's {ORIGINAL_STUDY_MODELS[arch]}"
    else:
        what = str(arch or "")
    if spec.get("bundled"):
        return f"{what}, the bundled model" if info.run_id == "default" else what
    created = str(config.get("created") or "")[:10]
    return f"{what}, trained {created}" if what and created else what


def run_label(info: Any) -> str:
    """`run id — what it is` for the model pickers (see `run_description`)."""
    what = run_description(info)
    return f"{info.run_id} — {what}" if what else info.run_id


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)
