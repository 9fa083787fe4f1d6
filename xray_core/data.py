"""Find a Kermany-layout chest X-ray dataset, index it, split it by patient, and load it as arrays.

A split of images at random puts one patient's radiographs on both sides of a validation split,
which flatters every figure measured on it. Here the unit of splitting is the patient (parsed from
the file name), and loading is fast enough to repeat: JPEG draft decoding, all cores, and a persistent cache that a
second load of the same files reads without decoding anything.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import threading
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from xray_core import fileio, imaging
from xray_core.model import CLASSES

__all__ = [
    "CLASSES",
    "SPLITS",
    "IMAGE_EXTENSIONS",
    "CACHE_VERSION",
    "DatasetLayoutError",
    "LoadResult",
    "find_dataset",
    "parse_filename",
    "index_dataset",
    "split_train",
    "load_images",
    "dataset_stats",
]

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
#: Bump when the cached pixels would change for the same files (decoder, resize, layout).
CACHE_VERSION = 1
_MAX_CACHE_ENTRIES = 12
_MAX_CACHE_BYTES = 4 * 1024**3

EXPECTED_LAYOUT = (
    "ROOT/train/NORMAL and ROOT/train/PNEUMONIA (required), optionally ROOT/val/... and "
    "ROOT/test/... with the same two class folders, holding .jpeg, .jpg or .png files "
    "(folder names in any case), as in the Kermany chest_xray download"
)

INDEX_COLUMNS = ["path", "filename", "split", "label", "class_name", "patient_id", "pathogen"]


class DatasetLayoutError(ValueError):
    """The folder is not a chest X-ray dataset in the layout this project reads."""


# ------------------------------------------------------------------------------------- finding


def _children(folder: Path) -> dict[str, Path]:
    """Sub-folders by lower-case name, hidden ones ignored."""
    return {p.name.lower(): p for p in sorted(folder.iterdir())
            if p.is_dir() and not p.name.startswith(".")}


def _layout_problem(root: Path) -> str | None:
    """Why root is not a dataset root, or None when it is one."""
    dirs = _children(root)
    if "train" not in dirs:
        return f"it has no train folder (it holds: {', '.join(sorted(dirs)) or 'no folders'})"
    for split in SPLITS:
        if split not in dirs:
            continue
        classes = _children(dirs[split])
        missing = [c for c in CLASSES if c.lower() not in classes]
        if missing:
            return f"{dirs[split]} has no {' or '.join(missing)} folder"
    return None


def find_dataset(root: str | os.PathLike) -> Path:
    """Return the dataset root (the folder holding train/), accepting a parent of `chest_xray/`.

    Raises DatasetLayoutError naming the path and the layout expected.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetLayoutError(f"The dataset folder {root} does not exist. Give the folder that "
                                 f"contains train/ (expected layout: {EXPECTED_LAYOUT}).")
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is a file, not a folder. Give the dataset folder "
                                 f"(expected layout: {EXPECTED_LAYOUT}).")
    problem = _layout_problem(root)
    if problem is None:
        return root.resolve()
    for name, child in _children(root).items():
        if name == "chest_xray" and _layout_problem(child) is None:
            return child.resolve()
    raise DatasetLayoutError(f"{root} is not a chest X-ray dataset folder: {problem}. Expected "
                             f"{EXPECTED_LAYOUT}.")


# ------------------------------------------------------------------------------------- indexing

_NORMAL2 = re.compile(r"^NORMAL2-IM-(\d+)(?:-\d+)+$", re.IGNORECASE)
_IM = re.compile(r"^IM-(\d+)(?:-\d+)+$", re.IGNORECASE)
_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)?", re.IGNORECASE)


def parse_filename(filename: str) -> tuple[str, str]:
    """(patient_id, pathogen) from a Kermany file name.

    `IM-0115-0001` and `IM-0429-0001-0002` (a patient's second film of a study) -> ("0115", "none")
    and ("0429", "none"); `NORMAL2-IM-1427-0001` -> ("NORMAL2-1427", "none"), a
    separate numbering; `person1946_bacteria_4874` -> ("person1946", "bacteria"). A name in no
    known form is its own patient (its stem), so it can never join two sides of a split.
    """
    stem = Path(filename).stem
    low = stem.lower()
    pathogen = "bacteria" if "bacteria" in low else "virus" if "virus" in low else "none"
    if m := _NORMAL2.match(stem):
        return f"NORMAL2-{m.group(1)}", pathogen
    if m := _IM.match(stem):
        return m.group(1), pathogen
    if m := _PERSON.match(stem):
        return m.group(1).lower(), pathogen
    return stem, pathogen


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def index_dataset(root: str | os.PathLike) -> pd.DataFrame:
    """One row per image: path, filename, split, label, class_name, patient_id, pathogen.

    Hidden files, `.DS_Store` and non-image files are ignored. Rows are ordered by split
    (train, val, test), class and file name, so the index is the same on every machine.
    """
    root = find_dataset(root)
    dirs = _children(root)
    rows = []
    for split in SPLITS:
        if split not in dirs:
            continue
        classes = _children(dirs[split])
        for label, class_name in enumerate(CLASSES):
            for path in _image_files(classes[class_name.lower()]):
                patient_id, pathogen = parse_filename(path.name)
                rows.append((str(path), path.name, split, label, class_name, patient_id, pathogen))
    df = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    df["label"] = df["label"].astype(int)
    if not (df["split"] == "train").any():
        raise DatasetLayoutError(f"{root / 'train'} holds no .jpeg, .jpg or .png images. Expected "
                                 f"{EXPECTED_LAYOUT}.")
    return df


# ------------------------------------------------------------------------------------ splitting


def split_train(df: pd.DataFrame, *, method: str = "patient", val_fraction: float | None = None,
                seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the train rows into (train, validation), reproducibly for a given seed.

    method="patient" (default, val_fraction 0.2): whole patients go to one side, chosen per
    class so that each class keeps about val_fraction of its images on the validation side.
    method="image" (val_fraction 0.25): the seed study's image-level, unstratified split, for
    reproducing its figures; patients leak across it.
    """
    if method not in ("patient", "image"):
        raise ValueError(f"method must be 'patient' or 'image', got {method!r}")
    if val_fraction is None:
        val_fraction = 0.2 if method == "patient" else 0.25
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    train = df[df["split"] == "train"].sort_values("path", kind="stable")
    if len(train) < 2:
        raise ValueError(f"Splitting needs at least 2 train images, got {len(train)}. Check the "
                         "dataset folder.")
    rng = np.random.default_rng(seed)

    if method == "image":
        order = rng.permutation(len(train))
        n_val = max(1, int(round(len(train) * val_fraction)))
        val_mask = np.zeros(len(train), dtype=bool)
        val_mask[order[:n_val]] = True
    else:
        # A patient's class is its majority label (in Kermany each patient has one class).
        per_patient = train.groupby("patient_id", sort=True)["label"].agg(["size", "mean"])
        per_patient["label"] = (per_patient["mean"] >= 0.5).astype(int)
        val_patients: list[str] = []
        for label in sorted(per_patient["label"].unique()):
            group = per_patient[per_patient["label"] == label]
            ids = group.index.to_numpy()[rng.permutation(len(group))]
            counts = group.loc[ids, "size"].to_numpy()
            target = counts.sum() * val_fraction
            cumulative = np.cumsum(counts)
            k = int(np.argmin(np.abs(cumulative - target))) + 1
            k = min(max(k, 1), len(ids) - 1) if len(ids) > 1 else 0
            val_patients.extend(ids[:k].tolist())
        val_mask = train["patient_id"].isin(set(val_patients)).to_numpy()
    return train[~val_mask].reset_index(drop=True), train[val_mask].reset_index(drop=True)


# -------------------------------------------------------------------------------------- loading


@dataclass
class LoadResult:
    """Images of the files that decoded, and which did not.

    images: float32 (N_ok, h, w, channels) in 0..255, in the order of the input paths.
    ok: bool mask over the input paths. failed: (path, reason) per unreadable file.
    n_decoded: files decoded by this call (0 when the cache answered).
    """

    images: np.ndarray
    ok: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)
    n_decoded: int = 0
    cache_path: Path | None = None


def _cache_key(paths: list[str], size: tuple[int, int], method: str) -> str:
    """Hash of the sorted files with their sizes and mtimes, the target size, method and version.

    Channels are not part of the key: the cache holds gray pixels and channels are copies.
    """
    files = []
    for p in paths:
        try:
            st = os.stat(p)
            files.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((p, -1, -1))
    blob = json.dumps({"version": CACHE_VERSION, "files": files, "size": list(size),
                       "method": method}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _decode_chunk(paths: list[str], size: tuple[int, int], method: str):
    """Decode a chunk; returns (uint8 (n, h, w) with zeros where failed, failure reasons)."""
    out = np.zeros((len(paths), *size), dtype=np.uint8)
    reasons: list[str | None] = []
    for i, p in enumerate(paths):
        try:
            out[i] = imaging.decode_resized(p, size, method=method)
            reasons.append(None)
        except imaging.ImageDecodeError as exc:
            reasons.append(str(exc))
    return out, reasons


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    """Streamed through fileio.atomic_writer (no second copy of the array in memory)."""
    with fileio.atomic_writer(path) as fh:
        np.save(fh, arr, allow_pickle=False)


def _read_cache(npy: Path, meta_path: Path, n: int, size: tuple[int, int]):
    """(ok_sorted, reasons_sorted, pixels) or None when absent or inconsistent."""
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        pixels = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    ok = np.asarray(meta.get("ok", []), dtype=bool)
    if (meta.get("version") != CACHE_VERSION or len(ok) != n or pixels.dtype != np.uint8
            or pixels.shape != (int(ok.sum()), *size)):
        return None
    return ok, meta.get("reasons", {}), pixels


def _prune_cache(folder: Path, keep: Path) -> None:
    """Drop the least recently used entries beyond _MAX_CACHE_ENTRIES or _MAX_CACHE_BYTES."""
    entries = sorted(folder.glob("images-*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for i, entry in enumerate(entries):
        total += entry.stat().st_size
        if entry != keep and (i >= _MAX_CACHE_ENTRIES or total > _MAX_CACHE_BYTES):
            entry.with_suffix(".json").unlink(missing_ok=True)
            entry.unlink(missing_ok=True)


def load_images(paths: Iterable[str | os.PathLike], *, size=(100, 100), channels: int = 1,
                method: str = "bilinear", cache_dir: str | os.PathLike | None = None,
                progress: Callable[[int, int], None] | None = None,
                workers: int | None = None, use_cache: bool = True, pool: str = "auto") -> LoadResult:
    """Decode and resize images to float32 (N_ok, h, w, channels) in 0..255, cached on disk.

    The cache entry is keyed by the sorted file list with sizes and mtimes, the size, the method
    and CACHE_VERSION, so any change to a file (or to the request) decodes again, and a repeat
    decodes nothing. Unreadable files are reported in `.failed`, never dropped in silence.
    JPEGs decode at a reduced DCT scale no smaller than the target (Pillow's draft mode).

    workers: how many cores decode (default: the cores not already busy, by the load average).
    pool: "process" (forked workers: decoding is partly Python, so threads share one core),
    "thread", or "auto" (processes when forking is safe: Linux and no other Python thread
    running, as in the CLI; threads otherwise, as inside the Streamlit server).
    """
    size = imaging.check_size(size)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    imaging.check_method(method)
    if pool not in ("auto", "process", "thread"):
        raise ValueError(f"pool must be 'auto', 'process' or 'thread', got {pool!r}")
    paths = [os.path.abspath(os.fspath(p)) for p in paths]
    n = len(paths)
    order = sorted(range(n), key=paths.__getitem__)  # input index of each sorted position
    sorted_paths = [paths[i] for i in order]

    cached = None
    npy = meta_path = None
    if use_cache and n:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else fileio.default_cache_dir()
        key = _cache_key(sorted_paths, size, method)
        npy = folder / f"images-{key}.npy"
        meta_path = npy.with_suffix(".json")
        cached = _read_cache(npy, meta_path, n, size)

    n_decoded = 0
    if cached is not None:
        ok_sorted, reasons, pixels = cached
        try:
            os.utime(npy)  # mark as recently used, so pruning keeps it
        except OSError as exc:
            warnings.warn(f"Could not update the cache entry {npy} ({exc.strerror}); it may be pruned "
                          "early.", RuntimeWarning, stacklevel=2)
        reasons = {int(k): v for k, v in reasons.items()}
        if progress is not None:
            progress(n, n)
    else:
        pixels_all = np.zeros((n, *size), dtype=np.uint8)
        reasons = {}
        done = 0
        for s, arr, why in _decode_all(sorted_paths, size, method, workers, pool):
            pixels_all[s:s + len(arr)] = arr
            for j, r in enumerate(why):
                if r is not None:
                    reasons[s + j] = r
            done += len(arr)
            if progress is not None:
                progress(done, n)
        n_decoded = n
        ok_sorted = np.ones(n, dtype=bool)
        ok_sorted[list(reasons)] = False
        pixels = pixels_all[ok_sorted] if reasons else pixels_all
        if npy is not None:
            try:
                npy.parent.mkdir(parents=True, exist_ok=True)
                _atomic_save_npy(npy, pixels)
                fileio.atomic_write_json(meta_path, {"version": CACHE_VERSION, "size": list(size),
                                                   "method": method, "ok": ok_sorted.tolist(),
                                                   "reasons": {str(k): v for k, v in reasons.items()}})
                _prune_cache(npy.parent, keep=npy)
            except OSError as exc:
                warnings.warn(f"The image cache in {npy.parent} could not be written ({exc.strerror or exc}); "
                              "the images loaded, but the next load will decode them again. Set "
                              "XRAY_CACHE_DIR to a writable folder to cache them.", RuntimeWarning,
                              stacklevel=2)
                npy = None

    # Map sorted positions back to the caller's order.
    order_arr = np.asarray(order, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    ok[order_arr] = ok_sorted
    row_of_sorted = np.cumsum(ok_sorted) - 1
    sorted_pos = np.empty(n, dtype=np.int64)
    sorted_pos[order_arr] = np.arange(n)
    rows = row_of_sorted[sorted_pos[ok]]
    images = np.empty((len(rows), *size, channels), dtype=np.float32)
    gray = pixels if np.array_equal(rows, np.arange(len(rows))) else pixels[rows]
    if channels == 1:
        images[..., 0] = gray
    else:
        images[...] = gray[..., None]
    failed = [(sorted_paths[k], reasons[k]) for k in sorted(reasons, key=lambda k: order[k])]
    return LoadResult(images=images, ok=ok, failed=failed, n_decoded=n_decoded,
                      cache_path=npy)


_CHUNK = 64


def _fork_is_safe() -> bool:
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def _decode_all(paths: list[str], size: tuple[int, int], method: str, workers: int | None,
                pool: str):
    """Yield (start, uint8 chunk, reasons) in order, decoding on `workers` cores."""
    starts = list(range(0, len(paths), _CHUNK))
    n_workers = max(1, min(workers or _idle_workers(), len(starts)))
    if n_workers == 1:
        for s in starts:
            yield (s, *_decode_chunk(paths[s:s + _CHUNK], size, method))
        return
    use_processes = pool == "process" or (pool == "auto" and _fork_is_safe())
    if use_processes and "fork" in multiprocessing.get_all_start_methods():
        executor = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork"))
    else:
        executor = ThreadPoolExecutor(n_workers)
    with executor:
        futures = [(s, executor.submit(_decode_chunk, paths[s:s + _CHUNK], size, method))
                   for s in starts]
        for s, fut in futures:
            yield (s, *fut.result())


def _idle_workers() -> int:
    """Cores not already busy (1-minute load average), at least 1: a worker on a core that another
    process holds only competes with it, and makes the load slower than decoding in one process."""
    cores = _cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not available on this platform
        return cores
    return max(1, min(cores, int(cores - load) + 1))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------ statistics


def _header_size(path: str) -> tuple[int, int] | str:
    """(width, height) from the file header only, or the reason it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        return "the file has disappeared since the dataset was indexed"
    except UnidentifiedImageError:
        try:
            empty = os.path.getsize(path) == 0
        except OSError:
            empty = False
        return ("the file is empty (0 bytes)" if empty
                else "the file is not a readable image (damaged, or another format renamed)")
    except (OSError, SyntaxError, ValueError) as exc:
        return f"the image header cannot be read ({type(exc).__name__})"


def dataset_stats(df: pd.DataFrame, workers: int | None = None) -> dict:
    """Summarise an index without decoding pixels (sizes come from the image headers).

    Returns a JSON-ready dict: n_images; counts {split: {class: n}}; patients {class: n} and
    patients_by_split {split: {class: n}}; pathogens {split: {pathogen: n}}; image_sizes
    {width: {min, median, max}, height: {...}, distinct, most_common: [[w, h, n], ...]};
    n_unreadable and unreadable [{path, reason}].
    """
    splits = [s for s in SPLITS if (df["split"] == s).any()]
    counts = {s: {c: int(((df["split"] == s) & (df["class_name"] == c)).sum()) for c in CLASSES}
              for s in splits}
    patients = {c: int(df.loc[df["class_name"] == c, "patient_id"].nunique()) for c in CLASSES}
    patients_by_split = {
        s: {c: int(df.loc[(df["split"] == s) & (df["class_name"] == c), "patient_id"].nunique())
            for c in CLASSES} for s in splits}
    pathogens = {s: {k: int(v) for k, v in
                     df.loc[df["split"] == s, "pathogen"].value_counts().sort_index().items()}
                 for s in splits}

    paths = df["path"].tolist()
    with ThreadPoolExecutor(max_workers=max(1, workers or _cpu_count())) as pool:
        results = list(pool.map(_header_size, paths, chunksize=64))
    sizes = [r for r in results if isinstance(r, tuple)]
    unreadable = [{"path": p, "reason": r} for p, r in zip(paths, results) if isinstance(r, str)]

    def summary(values: list[int]) -> dict:
        if not values:
            return {"min": None, "median": None, "max": None}
        return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}

    common = Counter(sizes).most_common(10)
    return {
        "n_images": int(len(df)),
        "counts": counts,
        "patients": patients,
        "patients_by_split": patients_by_split,
        "pathogens": pathogens,
        "image_sizes": {
            "width": summary([w for w, _ in sizes]),
            "height": summary([h for _, h in sizes]),
            "distinct": len(set(sizes)),
            "most_common": [[int(w), int(h), int(k)] for (w, h), k in common],
        },
        "n_unreadable": len(unreadable),
        "unreadable": unreadable,
    }
