"""Score a whole archive: every film in a folder, a zip or a list of paths, one row per file.

The job a PACS administrator runs over a night's worklist: streaming (memory stays flat whatever
the archive size), decoding in parallel worker processes straight to the model's input size
(`imaging.decode_resized`: Pillow's JPEG draft mode, DICOM through pydicom), batched inference
through the one model object (one forward pass gives the probabilities and the input gate's
features), and resumable: rerunning the same command skips the files already in the output (same
path, size and modification time), and a SIGKILL at any moment loses only the chunks not yet
written (scored again on the rerun), never duplicating or corrupting a row. A file that changed
since it was scored is scored again and gets a new row; `read_scores` keeps the newest row per
path. A bad file (unreadable, not an image, truncated, missing) gets its reason in the `error`
column and never stops the run.

One job per module:

- `inputs`: the files of a folder, zip or list, and their bytes;
- `decoding`: read, hash and decode chunks in worker processes, ahead of the network;
- `rows`: a decoded chunk through the model, the input gate and the prediction sets to rows
  (the network on the next chunks, one per core, while this one's rows are made);
- `output`: the resumable CSV / Parquet writer and `read_scores`;
- `job`: what every job shares (summary, status, progress) and the local pipeline `score`;
- `on_ray`: the same job on Ray Data (`score_ray`);
- `worklist`: the Worklist page's detached, queued, resumable jobs.
- `uploads`: the Worklist's uploaded films, kept privately only while their job runs.

Research software, not a medical device.
"""

from __future__ import annotations

import json
import sys

from xray_core.scoring.decoding import DecodedChunk, decode_items
from xray_core.scoring.inputs import ZIP_SEP, Item, ScoreError, count_items, iter_items, read_item_bytes
from xray_core.scoring.job import score
from xray_core.scoring.on_ray import score_ray
from xray_core.scoring.output import COLUMNS, open_output, read_scores
from xray_core.scoring.rows import rows_for_batch
from xray_core.scoring.worklist import (JOB_LOG, JOB_SCORES, JOB_STATUS, WORKLISTS_DIR, advance_jobs,
                                        job_info, list_jobs, new_job_dir, resume_job, save_uploads, submit_job,
                                        worklists_root)

__all__ = ["COLUMNS", "DecodedChunk", "Item", "JOB_LOG", "JOB_SCORES", "JOB_STATUS", "ScoreError", "WORKLISTS_DIR",
           "ZIP_SEP", "advance_jobs", "count_items", "decode_items", "iter_items", "job_info",
           "list_jobs", "new_job_dir", "open_output", "read_item_bytes", "read_scores", "resume_job",
           "rows_for_batch", "save_uploads", "score", "score_ray", "submit_job", "worklists_root"]


def _cmd_score(args) -> int:
    """The `score` command (see cli.py for its options)."""
    from xray_core.console import run_ref

    kwargs = dict(root=args.runs_dir, batch_size=args.batch_size, draft=not args.no_draft,
                  progress=not args.quiet, status_path=args.status)
    if args.ray:
        summary = score_ray(run_ref(args.run), args.input, args.out,
                            address=None if args.ray == "local" else args.ray, **kwargs)
    else:
        summary = score(run_ref(args.run), args.input, args.out, workers=args.workers, **kwargs)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['scored']} scored ({summary['already_scored']} already in {summary['out']}), "
              f"{summary['flagged']} PNEUMONIA, {summary['errors']} errors, "
              f"{summary['images_per_second']} images/s", file=sys.stderr)
    return 0
