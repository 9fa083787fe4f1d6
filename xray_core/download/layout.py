"""Whether a folder holds a dataset in the Kermany layout (train/{NORMAL,PNEUMONIA} ...)."""

from __future__ import annotations

import os
from pathlib import Path

from xray_core.download.errors import ArchiveContentError
from xray_core.model import CLASSES



def layout_root(folder: str | os.PathLike, depth: int = 3) -> Path | None:
    """The shallowest folder holding train/{NORMAL,PNEUMONIA} (any case), or None."""
    level = [Path(folder)]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            subdirs = {p.name.lower(): p for p in d.iterdir() if p.is_dir()
                       and not p.name.startswith(".") and p.name != "__MACOSX"}
            train = subdirs.get("train")
            if train is not None:
                classes = {p.name.lower() for p in train.iterdir() if p.is_dir()}
                if all(c.lower() in classes for c in CLASSES):
                    return d
            nxt.extend(sorted(subdirs.values()))
        level = nxt
    return None


def validate_layout(root: str | os.PathLike, *, existing: bool = False) -> None:
    """Check with the project's own reader (xray_core.data) that `root` is a usable dataset."""
    from xray_core.data import find_dataset  # pandas: imported only once a dataset is on disk

    root = Path(root)
    problem = None
    try:
        found = find_dataset(root)
        if found != root.resolve():
            problem = f"the dataset was found at {found} instead"
    except ValueError as exc:
        problem = str(exc)
    if problem is None:
        train = next(p for p in root.iterdir() if p.name.lower() == "train")
        if not any(f.is_file() for c in train.iterdir() if c.is_dir() for f in c.iterdir()):
            problem = f"{train} holds no images"
    if problem is None:
        return
    if existing:
        raise ArchiveContentError(
            f"{root} already exists but is not a complete dataset ({problem}). Remove or rename "
            f"that folder, or choose another destination (--dest), then download again.")
    raise ArchiveContentError(f"The downloaded archive does not hold the expected dataset "
                              f"({problem}).")

