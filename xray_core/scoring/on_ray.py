"""The same scoring job on Ray Data: a dataset of paths, `map_batches` over a pool of actors that
each load the model once; the driver writes the same output and resumes the same way."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from xray_core.scoring.decoding import decode_items
from xray_core.scoring.inputs import Item
from xray_core.scoring.job import DEFAULT_BATCH, ScoreJob
from xray_core.scoring.output import COLUMNS
from xray_core.scoring.rows import rows_for_batch, trust_rules


class _RayScorer:
    """A Ray Data actor: loads the model once, then decodes and scores batches of items."""

    def __init__(self, run_path: str, draft: bool):
        from xray_core.model import load_model

        self.model = load_model(Path(run_path))
        self.rules = trust_rules(self.model)
        self.draft = draft

    def __call__(self, batch: dict) -> dict:
        items = [Item(str(p), int(s), int(m), str(x)) for p, s, m, x in
                 zip(batch["path"], batch["size"], batch["mtime_ns"], batch["missing"])]
        rows = rows_for_batch(self.model, decode_items(items, self.model.input_size, self.draft), rules=self.rules)
        return {c: [r[c] for r in rows] for c in COLUMNS}


def _rows_of(batch: dict) -> list[dict]:
    """A numpy batch of Ray Data back to output rows."""
    ints = ("size", "mtime_ns")
    return [{c: (int(batch[c][i]) if c in ints else str(batch[c][i])) for c in COLUMNS}
            for i in range(len(batch["path"]))]


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

    job = ScoreJob(run, Path(source).absolute(), out, root=root, batch_size=batch_size, progress=progress,
                   status_path=status_path, extra={"ray": address or "local"})
    pending = [{"path": i.path, "size": i.size, "mtime_ns": i.mtime_ns, "missing": i.missing}
               for i in job.pending()]
    started_here = not ray.is_initialized()
    if started_here:
        package = str(Path(__file__).resolve().parents[1])
        init = dict(runtime_env={"py_modules": [package]}, log_to_driver=False, include_dashboard=False,
                    logging_level=logging.WARNING)
        if address is None:
            init["num_cpus"] = num_cpus
        ray.init(address=address, **init)

    def batches():
        if not pending:
            return
        n_actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours is the tqdm bar
        blocks = max(n_actors, -(-len(pending) // batch_size))
        ds = ray.data.from_items(pending, override_num_blocks=blocks).map_batches(
            _RayScorer, fn_constructor_kwargs={"run_path": str(job.model.path.absolute()), "draft": draft},
            batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=1)
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield _rows_of(batch)

    try:
        return job.run(batches(), desc=f"scoring with {job.model.run_id} on Ray")
    finally:
        if started_here:
            ray.shutdown()
