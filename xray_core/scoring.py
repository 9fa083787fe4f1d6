"""Score a whole archive: every film in a folder, a zip or a list of paths, one row per file.

The job a PACS administrator runs over a night's worklist: streaming (memory stays flat whatever
the archive size), decoding in parallel worker processes straight to the model's input size
(`imaging.decode_resized`: Pillow's JPEG draft mode, DICOM through pydicom), batched inference
through the one model object (`model.load_model(run).predict_proba`), and resumable.

Resuming. Rows are appended in chunks (one chunk per decoded batch); each chunk is written,
flushed and fsync'ed before the next is scored. On a rerun of the same command the files already
in the output (same path, size and modification time) are skipped, and a torn last line left by
a kill in the middle of a write is cut off first, so a SIGKILL at any moment loses at most the
chunk in flight and never duplicates or corrupts a row. A file that changed since it was scored
(other size or time) is scored again and gets a new row; `read_scores` keeps the newest row per
path.

Parquet (`--out x.parquet`): Parquet files cannot be appended to, so each chunk is written
atomically as a part file in `x.parquet.parts/`; when the run ends the parts and any earlier
`x.parquet` are merged into a new `x.parquet` (temporary name, then rename) and the parts
folder is removed. A killed run leaves its parts; the rerun counts them as done and merges them.

A bad file (unreadable, not an image, truncated, missing) gets its reason in the `error` column
and never stops the run.

Research software, not a medical device.
"""

from __future__ import annotations

import calendar
import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
import warnings
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from xray_core import imaging, runs

__all__ = ["COLUMNS", "Item", "ScoreError", "iter_items", "count_items", "read_item_bytes", "read_scores",
           "score", "open_output", "decode_items", "rows_for_batch"]

#: Columns of the output, in order.
COLUMNS = ["path", "size", "mtime_ns", "sha256", "probability", "verdict", "threshold", "in_distribution",
           "ood_score", "warnings", "prediction_set", "error", "run_id"]

#: Files a folder or a zip contributes: the image formats `imaging.decode` reads, plus files with
#: no suffix at all (DICOM exports often have none). Anything else (reports, spreadsheets) is
#: not a film and is left out; hidden files too.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".dic"}

#: Separator between a zip archive and a member in the `path` column: `night.zip!CR/0001.dcm`.
ZIP_SEP = "!"

DEFAULT_BATCH = 64
STATUS_INTERVAL = 0.5  # seconds between status.json rewrites


class ScoreError(ValueError):
    """The job itself cannot run (bad input, an output written by another model); says what to do."""


# --------------------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Item:
    """One file to score. size/mtime_ns are -1 when the file could not be stat'ed (then `missing`)."""

    path: str
    size: int
    mtime_ns: int
    missing: str = ""

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.path, self.size, self.mtime_ns)


def _is_film_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if not base or base.startswith("."):
        return False
    suffix = os.path.splitext(base)[1].lower()
    return suffix in IMAGE_SUFFIXES or suffix == ""


def _input_kind(source: Path) -> str:
    if source.is_dir():
        return "folder"
    if not source.exists():
        raise ScoreError(f"{source} does not exist. Give a folder of images, a .zip, or a text/CSV "
                         "file listing image paths.")
    if zipfile.is_zipfile(source):
        return "zip"
    return "list"


def _file_item(path: Path, shown: str | None = None) -> Item:
    shown = shown or str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return Item(shown, -1, -1, f"{shown} does not exist. Check the path in the list and run again.")
    except OSError as exc:
        return Item(shown, -1, -1, f"{shown} cannot be read ({exc.strerror}). Check its permissions.")
    if not path.is_file():
        return Item(shown, -1, -1, f"{shown} is not a regular file (a folder?). List image files only.")
    return Item(shown, int(st.st_size), int(st.st_mtime_ns))


def _walk_folder(root: Path) -> Iterator[Item]:
    """Files under root, recursively, in a stable (sorted) order; hidden folders are skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _is_film_name(name):
                yield _file_item(Path(dirpath) / name)


def _zip_mtime_ns(info: zipfile.ZipInfo) -> int:
    return calendar.timegm((*info.date_time, 0, 0, 0)) * 1_000_000_000


def _walk_zip(archive: Path) -> Iterator[Item]:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ScoreError(f"{archive} is not a readable zip archive ({exc}). Check the file or unpack it "
                         "and score the folder.") from None
    for info in sorted(infos, key=lambda i: i.filename):
        name = info.filename
        if name.startswith("__MACOSX/") or not _is_film_name(name):
            continue
        yield Item(f"{archive}{ZIP_SEP}{name}", int(info.file_size), _zip_mtime_ns(info))


def _walk_list(listing: Path) -> Iterator[Item]:
    """A text file (one path a line; blank lines and # comments ignored) or a CSV with a `path`
    column (else its first column). Relative paths are relative to the list's folder."""
    base = listing.parent
    try:
        text = listing.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ScoreError(f"{listing} is neither a folder, a zip, nor a text list of paths (it is not "
                         "UTF-8 text). Give a folder of images, a .zip, or a list of paths.") from None
    if listing.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return
        header = [h.strip().lower() for h in rows[0]]
        if "path" in header:
            column, rows = header.index("path"), rows[1:]
        else:
            column = 0
        entries = [r[column].strip() for r in rows if len(r) > column and r[column].strip()]
    else:
        entries = [line.strip() for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    for entry in entries:
        path = Path(entry)
        if not path.is_absolute():
            path = base / path
        yield _file_item(path, str(path))


def iter_items(source: str | os.PathLike) -> Iterator[Item]:
    """The files of an input (a folder, recursively; a zip; a text or CSV list of paths), streamed."""
    source = Path(source)
    kind = _input_kind(source)
    if kind == "folder":
        return _walk_folder(source)
    if kind == "zip":
        return _walk_zip(source)
    return _walk_list(source)


def count_items(source: str | os.PathLike) -> int:
    """How many files `iter_items` yields (a listing pass without keeping the list)."""
    return sum(1 for _ in iter_items(source))


def _split_zip_path(path: str) -> tuple[Path, str] | None:
    """(archive, member) for an `archive.zip!member` path, or None for a plain file path."""
    if ZIP_SEP not in path or Path(path).exists():
        return None
    archive, member = path.split(ZIP_SEP, 1)
    return Path(archive), member


_ZIPS: dict[str, zipfile.ZipFile] = {}  # open archives of this process (a worker keeps its own)


def read_item_bytes(path: str, max_bytes: int = imaging.MAX_UPLOAD_BYTES) -> bytes:
    """The raw bytes of a scored file (a plain path or an `archive.zip!member`), within max_bytes."""
    parts = _split_zip_path(path)
    if parts is None:
        p = Path(path)
        size = p.stat().st_size
        if size > max_bytes:
            raise imaging.ImageDecodeError(
                f"{path} is {size / 1024 / 1024:.1f} MB, over the {max_bytes / 1024 / 1024:g} MB limit. "
                "Export a smaller version and score that.")
        return p.read_bytes()
    archive, member = parts
    zf = _ZIPS.get(str(archive))
    if zf is None:
        zf = _ZIPS[str(archive)] = zipfile.ZipFile(archive)
    info = zf.getinfo(member)
    if info.file_size > max_bytes:
        raise imaging.ImageDecodeError(
            f"{path} is {info.file_size / 1024 / 1024:.1f} MB unpacked, over the {max_bytes / 1024 / 1024:g} MB "
            "limit. Export a smaller version and score that.")
    with zf.open(info) as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:  # the header lied about the size: a zip bomb
        raise imaging.ImageDecodeError(f"{path} unpacks to more than its declared size; the archive is "
                                       "damaged or malicious. Check where it came from.")
    return raw


# ------------------------------------------------------------------------------------- decoding


@dataclass
class DecodedChunk:
    """What a worker returns for a chunk of items: per item the hash, error, warnings and facts the
    input gate reads (original shape, colour share, DICOM header facts), and the decoded images
    (model size, uint8) of the items without an error, stacked in item order."""

    items: list
    sha256: list
    errors: list
    warnings: list
    images: np.ndarray  # (n_ok, h, w) uint8
    shapes: list  # per decoded image: (height, width) of the original
    saturations: list  # per decoded image: share of coloured pixels, or None
    dicoms: list  # per decoded image: imaging.dicom_facts, or None


def _original_shape(raw: bytes, name: str) -> tuple[int, int] | None:
    """(height, width) of a Pillow-readable image from its header alone (no pixel decode)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            return im.size[1], im.size[0]
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _decode_one(raw: bytes, name: str, size: tuple[int, int], draft: bool):
    """(image at `size`, original shape, colour share, DICOM facts) of one file's bytes."""
    facts = None
    if imaging._is_dicom(raw):
        full = imaging.decode(raw, filename=name)
        img, shape = imaging.resize(full, size), full.shape
        if hasattr(imaging, "dicom_facts"):
            facts = imaging.dicom_facts(raw, filename=name)
    else:
        if draft:
            img = imaging.decode_resized(raw, size, filename=name)
            shape = _original_shape(raw, name)
        else:
            full = imaging.decode(raw, filename=name)
            img, shape = imaging.resize(full, size), full.shape
    saturation = imaging.colour_saturation(raw, filename=name) if hasattr(imaging, "colour_saturation") else None
    return img, shape, saturation, facts


def decode_items(items: list, size: tuple[int, int], draft: bool = True) -> DecodedChunk:
    """Read, hash and decode each item to `size` (what one worker does for one chunk).

    `draft=False` decodes at full resolution and then resizes, as `predict` does; `draft=True`
    (default) lets a large JPEG decode at a reduced DCT scale first, as training does.
    """
    h, w = size
    shas, errors, notes, images, shapes, sats, dicoms = [], [], [], [], [], [], []
    for item in items:
        sha, error, note = "", "", ""
        if item.missing:
            error = item.missing
        else:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    raw = read_item_bytes(item.path)
                    sha = hashlib.sha256(raw).hexdigest()
                    name = item.path.rsplit(ZIP_SEP, 1)[-1].rsplit("/", 1)[-1]
                    img, shape, saturation, facts = _decode_one(raw, name, (h, w), draft)
                note = "; ".join(dict.fromkeys(str(c.message) for c in caught))
                images.append(img)
                shapes.append(shape)
                sats.append(saturation)
                dicoms.append(facts)
            except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
                error = str(exc) or type(exc).__name__
            except Exception as exc:  # noqa: BLE001 - recorded, not hidden: one odd file must not end a night's job
                traceback.print_exc(file=sys.stderr)
                error = (f"internal error while reading this file ({type(exc).__name__}: {exc}); "
                         "this is a bug, please report it with the file's details")
        shas.append(sha)
        errors.append(_one_line(error))
        notes.append(_one_line(note))
    stacked = np.stack(images) if images else np.zeros((0, h, w), np.uint8)
    return DecodedChunk(list(items), shas, errors, notes, stacked, shapes, sats, dicoms)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------------ inference


def _trust_hooks(model):
    """The input gate (xray_core.gate) and prediction sets (xray_core.uncertainty), when those
    modules exist; each hook maps (decoded chunk, prepared batch, probabilities) to per-image values."""
    import importlib.util

    gate_fn = set_fn = None
    if importlib.util.find_spec("xray_core.gate") is not None:
        from xray_core import gate

        fitted = gate.load_gate(model.path)  # once per job, not per chunk

        def gate_fn(chunk, prepared, proba):
            return gate.check_batch(model, x=prepared, shapes=chunk.shapes, saturations=chunk.saturations,
                                    dicoms=chunk.dicoms, gate=fitted)
    if importlib.util.find_spec("xray_core.uncertainty") is not None:
        from xray_core import uncertainty

        set_fn = _set_hook(uncertainty, model)
    return gate_fn, set_fn


def _set_hook(uncertainty, model):
    """Conformal prediction sets from the run's calibration (loaded once), as "NORMAL|PNEUMONIA";
    None (an empty column) when the run has not been calibrated."""
    conf = uncertainty.load_conformal(model.path)
    if conf is None:
        return None
    threshold = float(model.threshold)

    def run(chunk, prepared, proba):
        return ["|".join(conf.prediction_set(float(p), threshold)) for p in proba]
    return run


def _gate_fields(result) -> tuple[str, str, str]:
    if result is None:
        return "", "", ""
    get = (lambda k: result.get(k)) if isinstance(result, dict) else (lambda k: getattr(result, k, None))
    ind = get("in_distribution")
    score = get("ood_score")
    if score is None:
        score = get("score")
    notes = get("warnings") or get("reasons") or []
    notes = notes if isinstance(notes, str) else "; ".join(map(str, notes))
    return ("" if ind is None else str(bool(ind)), "" if score is None else f"{float(score):.6g}", notes)


def rows_for_batch(model, chunk: DecodedChunk, hooks=(None, None), batch_size: int = 256) -> list[dict]:
    """Score a decoded chunk through `model.predict_proba` and return its output rows."""
    from xray_core.data import CLASSES

    gate_fn, set_fn = hooks
    ok = [i for i, e in enumerate(chunk.errors) if not e]
    proba = np.zeros(0)
    gates, sets = [None] * len(ok), [""] * len(ok)
    if ok:
        prepared = model.prepare_batch(list(chunk.images))
        proba = model.predict_proba(prepared, batch_size=batch_size)
        if gate_fn is not None:
            gates = gate_fn(chunk, prepared, proba)
        if set_fn is not None:
            sets = set_fn(chunk, prepared, proba)
    threshold = float(model.threshold)
    rows, k = [], 0
    for i, item in enumerate(chunk.items):
        row = {"path": item.path, "size": item.size, "mtime_ns": item.mtime_ns, "sha256": chunk.sha256[i],
               "probability": "", "verdict": "", "threshold": repr(threshold), "in_distribution": "",
               "ood_score": "", "warnings": chunk.warnings[i], "prediction_set": "", "error": chunk.errors[i],
               "run_id": model.run_id}
        if not chunk.errors[i]:
            p = float(proba[k])
            ind, ood, notes = _gate_fields(gates[k])
            # repr: the exact float, so that probability >= threshold reads as the verdict did
            row.update(probability=repr(p), verdict=CLASSES[int(p >= threshold)], in_distribution=ind,
                       ood_score=ood, prediction_set=sets[k],
                       warnings="; ".join(filter(None, [chunk.warnings[i], _one_line(notes)])))
            k += 1
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------- output


class _CsvOutput:
    """Append-only CSV, one fsync per chunk; on open, a torn last line is cut off."""

    def __init__(self, path: Path, run_id: str):
        self.path = path
        self.done: set = set()
        self.rows_before = 0
        if path.exists() and path.stat().st_size > 0:
            self._repair()
            self._read_done(run_id)
        new = not path.exists() or path.stat().st_size == 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8", newline="")
        if new:
            self._write_text(",".join(COLUMNS) + "\n")

    def _repair(self) -> None:
        with open(self.path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            pos = end
            while pos > 0:
                step = min(65536, pos)
                fh.seek(pos - step)
                block = fh.read(step)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    pos = pos - step + nl + 1
                    break
                pos -= step
            if pos != end:  # a row cut in the middle by a kill: drop it, it is scored again
                fh.truncate(pos)
                fh.flush()
                os.fsync(fh.fileno())

    def _read_done(self, run_id: str) -> None:
        with open(self.path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return
            if header != COLUMNS:
                raise ScoreError(f"{self.path} exists but is not a score file of this version (its columns are "
                                 f"{', '.join(header[:6])}...). Choose another --out, or move the file away.")
            ip, isz, imt, irun = (COLUMNS.index(c) for c in ("path", "size", "mtime_ns", "run_id"))
            for row in reader:
                if len(row) != len(COLUMNS):
                    continue
                if row[irun] != run_id:
                    raise ScoreError(f"{self.path} holds scores of the run {row[irun]!r}, not {run_id!r}. "
                                     "Write to another --out (one file per model), or move it away.")
                self.done.add((row[ip], int(row[isz]), int(row[imt])))
                self.rows_before += 1

    def _write_text(self, text: str) -> None:
        self._fh.write(text)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writerows(rows)
        self._write_text(buf.getvalue())

    def close(self) -> None:
        self._fh.close()


def _arrow_schema():
    import pyarrow as pa

    ints = {"size", "mtime_ns"}
    return pa.schema([(c, pa.int64() if c in ints else pa.string()) for c in COLUMNS])


class _ParquetOutput:
    """Part files written atomically per chunk, merged into one Parquet file at close."""

    def __init__(self, path: Path, run_id: str):
        import pyarrow.parquet as pq

        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        self.done: set = set()
        self.rows_before = 0
        self._next = 0
        sources = ([path] if path.exists() else []) + self._part_files()
        for src in sources:
            table = pq.read_table(src, columns=["path", "size", "mtime_ns", "run_id"])
            for p, s, m, r in zip(*(table.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "run_id"))):
                if r != run_id:
                    raise ScoreError(f"{src} holds scores of the run {r!r}, not {run_id!r}. Write to another "
                                     "--out (one file per model), or move it away.")
                self.done.add((p, int(s), int(m)))
                self.rows_before += 1
        existing = self._part_files()
        if existing:
            self._next = int(existing[-1].stem.split("-")[1]) + 1
        for tmp in self.parts.glob(".*.tmp") if self.parts.is_dir() else ():
            tmp.unlink()  # a part cut short by a kill: its rows are scored again

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def append(self, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=_arrow_schema())
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        runs.atomic_write_bytes(self.parts / f"part-{self._next:07d}.parquet", buf.getvalue().to_pybytes())
        self._next += 1

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = self._part_files()
        if not parts:
            return
        tables = ([pq.read_table(self.path)] if self.path.exists() else []) + [pq.read_table(p) for p in parts]
        table = pa.concat_tables([t.cast(_arrow_schema()) for t in tables])
        # A kill between the merge and the removal of the parts leaves rows in both: keep one.
        keys = [f"{p}\0{s}\0{m}" for p, s, m in zip(*(table.column(c).to_pylist() for c in ("path", "size", "mtime_ns")))]
        seen, keep = set(), []
        for i, k in enumerate(keys):
            if k not in seen:
                seen.add(k)
                keep.append(i)
        table = table.take(pa.array(keep)) if len(keep) != len(keys) else table
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        runs.atomic_write_bytes(self.path, buf.getvalue().to_pybytes())
        for p in parts:
            p.unlink()
        self.parts.rmdir()


def open_output(path: str | os.PathLike, run_id: str):
    """The output for `run_id`'s scores: Parquet when the name ends in .parquet, else CSV.
    `.done` holds the (path, size, mtime_ns) keys already scored."""
    path = Path(path)
    if path.is_dir():
        raise ScoreError(f"--out {path} is a folder; give a file name such as scores.csv or scores.parquet.")
    if path.suffix.lower() == ".parquet":
        return _ParquetOutput(path, run_id)
    return _CsvOutput(path, run_id)


def read_scores(path: str | os.PathLike):
    """A score file (CSV or Parquet, including unmerged parts) as a DataFrame, newest row per path."""
    import pandas as pd

    path = Path(path)
    dtype = {c: str for c in COLUMNS if c not in ("size", "mtime_ns")}
    if path.suffix.lower() == ".parquet":
        parts = sorted(path.with_name(path.name + ".parts").glob("part-*.parquet"))
        frames = ([pd.read_parquet(path)] if path.exists() else []) + [pd.read_parquet(p) for p in parts]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    elif path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            data = fh.read()
        cut = data.rfind(b"\n") + 1  # a row being written right now is not read
        df = pd.read_csv(io.BytesIO(data[:cut]), dtype=dtype, keep_default_na=False)
    else:
        df = pd.DataFrame(columns=COLUMNS)
    df = df.drop_duplicates("path", keep="last").reset_index(drop=True)
    df["probability"] = pd.to_numeric(df["probability"], errors="coerce")
    df["ood_score"] = pd.to_numeric(df["ood_score"], errors="coerce")
    return df


# ----------------------------------------------------------------------------------- the job


class _Status:
    """Progress in a JSON file (for the Worklist page), rewritten atomically at most twice a second."""

    def __init__(self, path: Path | None, base: dict):
        self.path = Path(path) if path else None
        self.base = dict(base)
        self._last = 0.0

    def write(self, force: bool = False, **fields) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last < STATUS_INTERVAL:
            return
        self._last = now
        self.base.update(fields, updated=runs.now_iso())
        runs.atomic_write_json(self.path, self.base)


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_paths(source: Path, out: Path) -> None:
    _input_kind(source)
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise ScoreError(f"--out {out} is the input itself; write the scores to another file, such as "
                         "scores.csv.")


def _pending(source, done: set, stats: dict) -> Iterator[Item]:
    seen = set()
    for item in iter_items(source):
        if item.key in done or item.key in seen:
            stats["skipped"] += 1
            continue
        seen.add(item.key)
        yield item


def _decoded_chunks(chunks: Iterator[list[Item]], size, draft: bool, workers: int) -> Iterator[DecodedChunk]:
    """Decoded chunks in input order; at most 2 per worker in flight, so memory stays bounded."""
    if workers <= 0:
        for chunk in chunks:
            yield decode_items(chunk, size, draft)
        return
    # spawn: the parent may hold TensorFlow's threads, which a fork would copy half-alive.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        inflight: deque = deque()
        for chunk in chunks:
            inflight.append(pool.apply_async(decode_items, (chunk, size, draft)))
            if len(inflight) >= 2 * workers:
                yield inflight.popleft().get()
        while inflight:
            yield inflight.popleft().get()


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def score(run, source: str | os.PathLike, out: str | os.PathLike, *, root: str | os.PathLike | None = None,
          workers: int | None = None, batch_size: int = DEFAULT_BATCH, draft: bool = True,
          progress: bool = True, status_path: str | os.PathLike | None = None,
          on_chunk: Callable[[dict], None] | None = None) -> dict:
    """Score every file of `source` with `run`'s model into `out`; return the summary.

    workers: decoding processes (default: the CPUs available; 0 decodes in this process).
    batch_size: files per chunk, which is also the unit of writing (a kill loses at most one).
    """
    from xray_core.model import load_model

    if batch_size < 1:
        raise ScoreError(f"--batch-size must be at least 1, got {batch_size}.")
    source = Path(source)
    _check_paths(source, Path(out))  # clear errors before any model loads
    model = load_model(run, root=root)
    output = open_output(out, model.run_id)
    workers = default_workers() if workers is None else int(workers)
    stats = {"skipped": 0}
    total_files = count_items(source)
    todo = sum(1 for item in iter_items(source) if item.key not in output.done)
    status = _Status(status_path, {"state": "running", "pid": os.getpid(), **runs.process_identity(),
                                   "run_id": model.run_id, "input": str(source), "out": str(out),
                                   "total": total_files, "done": len(output.done), "started": runs.now_iso()})
    status.write(force=True)
    summary = {"run_id": model.run_id, "input": str(source), "out": str(out), "total": total_files,
               "already_scored": 0, "scored": 0, "errors": 0, "flagged": 0, "uncertain": 0,
               "out_of_distribution": 0}
    hooks = _trust_hooks(model)
    from tqdm import tqdm

    bar = tqdm(total=todo, unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True,
               desc=f"scoring with {model.run_id}")
    started = time.perf_counter()
    state = "failed"
    try:
        chunks = _chunks(_pending(source, output.done, stats), batch_size)
        for decoded in _decoded_chunks(chunks, model.input_size, draft, workers):
            rows = rows_for_batch(model, decoded, hooks)
            output.append(rows)
            _tally(summary, rows)
            bar.update(len(rows))
            elapsed = time.perf_counter() - started
            status.write(done=len(output.done) + summary["scored"], errors=summary["errors"],
                         flagged=summary["flagged"], images_per_second=summary["scored"] / max(elapsed, 1e-9))
            if on_chunk is not None:
                on_chunk(dict(summary))
        output.close()
        state = "completed"
    except KeyboardInterrupt:
        state = "cancelled"
        raise
    finally:
        bar.close()
        elapsed = time.perf_counter() - started
        summary["already_scored"] = stats["skipped"]
        summary["seconds"] = round(elapsed, 3)
        summary["images_per_second"] = round(summary["scored"] / elapsed, 1) if elapsed > 0 else None
        status.write(force=True, state=state, done=len(output.done) + summary["scored"],
                     errors=summary["errors"], flagged=summary["flagged"],
                     images_per_second=summary["images_per_second"], summary=summary)
    return summary


def _tally(summary: dict, rows: list[dict]) -> None:
    for row in rows:
        summary["scored"] += 1
        if row["error"]:
            summary["errors"] += 1
            continue
        if row["verdict"] == "PNEUMONIA":
            summary["flagged"] += 1
        if "|" in row["prediction_set"]:
            summary["uncertain"] += 1
        if row["in_distribution"] == "False":
            summary["out_of_distribution"] += 1


# -------------------------------------------------------------------------------------- Ray


class _RayScorer:
    """A Ray Data actor: loads the model once, then decodes and scores batches of items."""

    def __init__(self, run_path: str, draft: bool):
        from xray_core.model import load_model

        self.model = load_model(Path(run_path))
        self.hooks = _trust_hooks(self.model)
        self.draft = draft

    def __call__(self, batch: dict) -> dict:
        items = [Item(str(p), int(s), int(m), str(x)) for p, s, m, x in
                 zip(batch["path"], batch["size"], batch["mtime_ns"], batch["missing"])]
        rows = rows_for_batch(self.model, decode_items(items, self.model.input_size, self.draft), self.hooks)
        return {c: [r[c] for r in rows] for c in COLUMNS}


def score_ray(run, source: str | os.PathLike, out: str | os.PathLike, *, address: str | None = None,
              root: str | os.PathLike | None = None, batch_size: int = DEFAULT_BATCH, draft: bool = True,
              progress: bool = True, status_path: str | os.PathLike | None = None,
              actors: int | None = None, num_cpus: int | None = None) -> dict:
    """`score` on Ray Data: a dataset of paths, `map_batches` over a pool of actors that each load
    the model once; the driver writes the same output (and resumes the same way).

    address None starts a local Ray (num_cpus CPUs, default all); "auto" or "ray://host:port"
    joins a running cluster. The input files and the run folder must be at the same paths on
    every node (a shared filesystem); the xray_core package is shipped to the workers.
    """
    import ray

    from xray_core.model import load_model

    if batch_size < 1:
        raise ScoreError(f"--batch-size must be at least 1, got {batch_size}.")
    source = Path(source).absolute()
    _check_paths(source, Path(out))
    model = load_model(run, root=root)
    output = open_output(out, model.run_id)
    stats = {"skipped": 0}
    pending = [{"path": i.path, "size": i.size, "mtime_ns": i.mtime_ns, "missing": i.missing}
               for i in _pending(source, output.done, stats)]
    total_files = len(pending) + stats["skipped"]
    summary = {"run_id": model.run_id, "input": str(source), "out": str(out), "total": total_files,
               "already_scored": stats["skipped"], "scored": 0, "errors": 0, "flagged": 0, "uncertain": 0,
               "out_of_distribution": 0, "ray": address or "local"}
    status = _Status(status_path, {"state": "running", "pid": os.getpid(), **runs.process_identity(),
                                   "run_id": model.run_id, "input": str(source), "out": str(out),
                                   "total": total_files, "done": len(output.done), "started": runs.now_iso()})
    status.write(force=True)
    started_here = not ray.is_initialized()
    if started_here:
        package = str(Path(__file__).resolve().parent)
        init = dict(runtime_env={"py_modules": [package]}, log_to_driver=False, include_dashboard=False,
                    logging_level=logging.WARNING)
        if address is None:
            init["num_cpus"] = num_cpus
        ray.init(address=address, **init)
    from tqdm import tqdm

    bar = tqdm(total=len(pending), unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True,
               desc=f"scoring with {model.run_id} on Ray")
    started = time.perf_counter()
    state = "failed"
    try:
        if pending:
            n_actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # ours is the tqdm bar above
            blocks = max(n_actors, -(-len(pending) // batch_size))
            ds = ray.data.from_items(pending, override_num_blocks=blocks).map_batches(
                _RayScorer, fn_constructor_kwargs={"run_path": str(model.path.absolute()), "draft": draft},
                batch_size=batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=1)
            for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
                n = len(batch["path"])
                rows = [{c: (int(batch[c][i]) if c in ("size", "mtime_ns") else str(batch[c][i])) for c in COLUMNS}
                        for i in range(n)]
                output.append(rows)
                _tally(summary, rows)
                bar.update(n)
                status.write(done=len(output.done) + summary["scored"], errors=summary["errors"],
                             flagged=summary["flagged"])
        output.close()
        state = "completed"
    except KeyboardInterrupt:
        state = "cancelled"
        raise
    finally:
        bar.close()
        elapsed = time.perf_counter() - started
        summary["seconds"] = round(elapsed, 3)
        summary["images_per_second"] = round(summary["scored"] / elapsed, 1) if elapsed > 0 else None
        status.write(force=True, state=state, done=len(output.done) + summary["scored"],
                     errors=summary["errors"], flagged=summary["flagged"],
                     images_per_second=summary["images_per_second"], summary=summary)
        if started_here:
            ray.shutdown()
    return summary


# ------------------------------------------------------------------------- worklist jobs
#
# The Worklist page's jobs: a folder per job under <models>/.worklists/<job id>/ holding job.json
# (run, input, state queued until launched), status.json (written by the scoring process),
# scores.csv, log.txt and, for uploads, input/. Each job runs as its own detached process (never
# in the Streamlit server), so a reload or a closed browser loses nothing; when it ends it
# launches the next queued job. A job whose process died is "interrupted" and resumes from its
# scores.csv. How many run and wait at once is the administrator's (jobs.check_capacity).

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
    """Write uploaded films into the job's input/ folder (a single zip is kept as input.zip) and
    return what to score. File names are reduced to their base name; duplicates get a suffix."""
    job_dir = Path(job_dir)
    if not files:
        raise ScoreError("No file was uploaded. Add films (or one zip of films) and start again.")
    zips = [f for f in files if f[1][:4] in (b"PK\x03\x04", b"PK\x05\x06")]
    if zips and len(files) > 1:
        raise ScoreError("Upload either one zip or image files, not a zip among other files: unpack the zip "
                         "or upload it alone.")
    if zips:
        target = job_dir / "input.zip"
        runs.atomic_write_bytes(target, zips[0][1])
        return target
    folder = job_dir / "input"
    folder.mkdir(parents=True, exist_ok=True)
    used: set = set()
    for name, raw in files:
        base = Path(str(name).replace("\\", "/")).name.lstrip(".") or "upload"
        stem, suffix, k = Path(base).stem, Path(base).suffix, 1
        while base in used:
            k += 1
            base = f"{stem}-{k}{suffix}"
        used.add(base)
        runs.atomic_write_bytes(folder / base, raw)
    return folder


def submit_job(models_root: str | os.PathLike, run_id: str, source: str | os.PathLike, *,
               job_dir: str | os.PathLike | None = None, label: str = "", start: bool = True) -> str:
    """Queue a worklist job (refused with a sentence when the server's limits are reached) and
    start it if a slot is free; returns the job id at once."""
    from xray_core import jobs

    models_root = Path(models_root)
    source = Path(source)
    _input_kind(source)
    running, queued = _job_counts(models_root)
    jobs.check_capacity("worklist", running=running, queued=queued)
    job_dir = Path(job_dir) if job_dir is not None else new_job_dir(models_root)
    job = {"job_id": job_dir.name, "run_id": run_id, "input": str(source.absolute()), "label": label or source.name,
           "submitted": runs.now_iso(), "state": "queued"}
    runs.atomic_write_json(job_dir / JOB_FILE, job)
    if start:
        advance_jobs(models_root)
    return job_dir.name


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def job_info(job_dir: str | os.PathLike) -> dict:
    """job.json and status.json merged, with `state`: queued, starting, running, completed,
    failed, cancelled or interrupted (its process died: resume it)."""
    job_dir = Path(job_dir)
    job = _read_json(job_dir / JOB_FILE)
    status = _read_json(job_dir / JOB_STATUS)
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


def _job_counts(models_root: Path) -> tuple[int, int]:
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
    """Queue an interrupted or failed job again; it goes on from its scores.csv."""
    job_dir = worklists_root(models_root) / runs.validate_run_id(job_id)
    job = _read_json(job_dir / JOB_FILE)
    if not job:
        raise ScoreError(f"There is no worklist job {job_id!r}. Start a new one.")
    (job_dir / JOB_STATUS).unlink(missing_ok=True)
    runs.atomic_write_json(job_dir / JOB_FILE, {**job, "state": "queued"})
    advance_jobs(models_root)


_SPAWNED: list = []  # job processes started here, reaped once they end (no zombies in a long-lived server)


def _launch(job_dir: Path) -> None:
    _SPAWNED[:] = [p for p in _SPAWNED if p.poll() is None]
    job = _read_json(job_dir / JOB_FILE)
    runs.atomic_write_json(job_dir / JOB_FILE, {**job, "state": "launched", "launched_at": time.time()})
    package_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    with open(job_dir / JOB_LOG, "ab") as log:
        _SPAWNED.append(subprocess.Popen([sys.executable, "-c", "import sys; from xray_core.scoring import _job_main; "
                          "sys.exit(_job_main(sys.argv[1]))", str(job_dir.absolute())],
                         cwd=package_parent, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, env=env))


def _job_main(job_dir: str) -> int:
    """The detached process of one job: score, then hand the slot to the next queued job."""
    job_dir = Path(job_dir)
    models_root = job_dir.parents[1]
    job = _read_json(job_dir / JOB_FILE)
    status = job_dir / JOB_STATUS
    try:
        score(job["run_id"], job["input"], job_dir / JOB_SCORES, root=models_root, progress=False,
              status_path=status)
        code = 0
    except (ValueError, OSError) as exc:  # a sentence for the page (ScoreError, RunNotFound, ...)
        runs.atomic_write_json(status, {**_read_json(status), "state": "failed", "error": str(exc),
                                        "updated": runs.now_iso()})
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    advance_jobs(models_root)
    return code


# -------------------------------------------------------------------------------------- CLI


def _cmd_score(args) -> int:
    from xray_core.commands import _run_ref

    kwargs = dict(root=args.runs_dir, batch_size=args.batch_size, draft=not args.no_draft,
                  progress=not args.quiet, status_path=args.status)
    if args.ray:
        summary = score_ray(_run_ref(args.run), args.input, args.out,
                            address=None if args.ray == "local" else args.ray, **kwargs)
    else:
        summary = score(_run_ref(args.run), args.input, args.out, workers=args.workers, **kwargs)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['scored']} scored ({summary['already_scored']} already in {summary['out']}), "
              f"{summary['flagged']} PNEUMONIA, {summary['errors']} errors, "
              f"{summary['images_per_second']} images/s", file=sys.stderr)
    return 0
