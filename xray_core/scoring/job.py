"""The scoring job on this machine, and the bookkeeping every scoring job shares.

`ScoreJob` holds what the local pipeline and the Ray path have in common: refusals before any
model loads, the model, the output and the files it already holds, the summary, the status file
(for the Worklist page) and the progress bar. `score` is the local pipeline: the input streamed
in chunks, decoded ahead by worker processes (`decoding.decoded_chunks`) while the network
scores the next chunks, one per core (`rows.overlapped_rows`), and this chunk's rows are made;
each chunk is written as soon as its rows are.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from xray_core import fileio, runs
from xray_core.scoring.decoding import decoded_chunks, default_workers
from xray_core.scoring.inputs import Item, ScoreError, check_paths, iter_items
from xray_core.scoring.output import open_output
from xray_core.scoring.rows import overlapped_rows, trust_rules

DEFAULT_BATCH = 64
STATUS_INTERVAL = 0.5  # seconds between status.json rewrites


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
        fileio.atomic_write_json(self.path, self.base)


class ScoreJob:
    """One scoring job's model, output, summary, status file and progress bar.

    Built before any scoring: it refuses a missing input, an output over the input or an output
    of another run with a sentence, and counts the files (one listing pass) for the progress bar.
    """

    def __init__(self, run, source: str | os.PathLike, out: str | os.PathLike, *,
                 root: str | os.PathLike | None, batch_size: int, progress: bool,
                 status_path: str | os.PathLike | None, extra: dict | None = None):
        from xray_core.model import load_model

        if batch_size < 1:
            raise ScoreError(f"--batch-size must be at least 1, got {batch_size}.")
        self.source = Path(source)
        check_paths(self.source, Path(out))  # clear errors before any model loads
        self.model = load_model(run, root=root)
        self.output = open_output(out, self.model.run_id)
        self.skipped = 0
        total = todo = 0
        for item in iter_items(self.source):
            total += 1
            todo += item.key not in self.output.done
        self.summary = {"run_id": self.model.run_id, "input": str(self.source), "out": str(out), "total": total,
                        "already_scored": 0, "scored": 0, "errors": 0, "flagged": 0, "uncertain": 0,
                        "out_of_distribution": 0, **(extra or {})}
        self.status = _Status(status_path, {"state": "running", "pid": os.getpid(), **runs.process_identity(),
                                            "run_id": self.model.run_id, "input": str(self.source),
                                            "out": str(out), "total": total, "done": len(self.output.done),
                                            "started": runs.now_iso()})
        self.status.write(force=True)
        self.todo = todo
        self.progress = progress
        self._started = time.perf_counter()

    def pending(self) -> Iterator[Item]:
        """The input's files not in the output yet (each once), streamed; counts the others."""
        seen = set()
        for item in iter_items(self.source):
            if item.key in self.output.done or item.key in seen:
                self.skipped += 1
                continue
            seen.add(item.key)
            yield item

    def run(self, batches: Iterable[list[dict]], *, desc: str,
            on_chunk: Callable[[dict], None] | None = None) -> dict:
        """Write each batch of rows as it comes (one chunk each); the summary at the end, also
        when the job fails or is interrupted (then the status file says so)."""
        from tqdm import tqdm

        summary = self.summary
        bar = tqdm(total=self.todo, unit="img", file=sys.stderr, disable=not self.progress, dynamic_ncols=True,
                   desc=desc)
        self._started = time.perf_counter()
        first = None  # (time, files) when the first chunk was written: the pipeline is full from there
        state = "failed"
        try:
            for rows in batches:
                self.output.append(rows)
                _tally(summary, rows)
                if first is None:
                    first = (time.perf_counter(), summary["scored"])
                bar.update(len(rows))
                self.status.write(done=len(self.output.done) + summary["scored"], errors=summary["errors"],
                                  flagged=summary["flagged"], images_per_second=summary["scored"] / self._elapsed())
                if on_chunk is not None:
                    on_chunk(dict(summary))
            self.output.close()
            state = "completed"
        except KeyboardInterrupt:
            state = "cancelled"
            raise
        finally:
            if state != "completed":
                self.output.abandon()  # the rows written so far stay, for the next run to go on from
            bar.close()
            elapsed = self._elapsed()
            summary["already_scored"] = self.skipped
            summary["seconds"] = round(elapsed, 3)
            summary["images_per_second"] = round(summary["scored"] / elapsed, 1) if elapsed > 0 else None
            if first is not None and summary["scored"] > first[1]:
                # the rate once decoding workers run and the first chunk is out (start-up left out)
                summary["steady_images_per_second"] = round(
                    (summary["scored"] - first[1]) / max(time.perf_counter() - first[0], 1e-9), 1)
            self.status.write(force=True, state=state, done=len(self.output.done) + summary["scored"],
                              errors=summary["errors"], flagged=summary["flagged"],
                              images_per_second=summary["images_per_second"], summary=summary)
        return summary

    def _elapsed(self) -> float:
        return max(time.perf_counter() - self._started, 1e-9)


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


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score(run, source: str | os.PathLike, out: str | os.PathLike, *, root: str | os.PathLike | None = None,
          workers: int | None = None, batch_size: int = DEFAULT_BATCH, draft: bool = True,
          progress: bool = True, status_path: str | os.PathLike | None = None,
          on_chunk: Callable[[dict], None] | None = None) -> dict:
    """Score every file of `source` with `run`'s model into `out`; return the summary.

    workers: decoding processes (default: the CPUs available; 0 decodes in this process).
    batch_size: files per chunk, which is also the unit of writing (a kill loses only the chunks
    not yet written: those being scored, one per core, and the one whose rows are being made).
    """
    job = ScoreJob(run, source, out, root=root, batch_size=batch_size, progress=progress, status_path=status_path)
    model = job.model
    rules = trust_rules(model)
    workers = default_workers() if workers is None else int(workers)
    decoded = decoded_chunks(_chunks(job.pending(), batch_size), model.input_size, draft, workers)
    return job.run(overlapped_rows(model, decoded, rules), desc=f"scoring with {model.run_id}", on_chunk=on_chunk)
