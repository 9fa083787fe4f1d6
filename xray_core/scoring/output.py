"""Where scores go: an append-only CSV, or Parquet part files merged at the end; both resumable.

CSV: rows are appended in chunks, each written, flushed and fsync'ed before the next is scored; on
open, a torn last line left by a kill in the middle of a write is cut off first, and the
(path, size, mtime) keys already present are the files a rerun skips.

Parquet (`--out x.parquet`): Parquet files cannot be appended to, so each chunk is written
atomically as a part file in `x.parquet.parts/`; at close the parts and any earlier `x.parquet`
are merged into a new `x.parquet` (temporary name, then rename) and the parts folder is removed.
A killed run leaves its parts; the rerun counts them as done and merges them.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from xray_core import fileio
from xray_core.scoring.inputs import ScoreError

#: Columns of the output, in order.
COLUMNS = ["path", "size", "mtime_ns", "sha256", "probability", "verdict", "threshold", "in_distribution",
           "ood_score", "warnings", "prediction_set", "error", "run_id"]


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

    def abandon(self) -> None:
        """Stop without finishing: every row is on disk already, so only the file is closed."""
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
        fileio.atomic_write_bytes(self.parts / f"part-{self._next:07d}.parquet", buf.getvalue().to_pybytes())
        self._next += 1

    def abandon(self) -> None:
        """Stop without finishing: the parts stay for the next run to merge (nothing is held open)."""

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
        fileio.atomic_write_bytes(self.path, buf.getvalue().to_pybytes())
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
