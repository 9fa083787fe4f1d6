"""The command line: `xray COMMAND` or `python -m xray_core COMMAND`.

Every command's arguments are defined here, in one place. The code a command runs (its
handler) lives beside the library code it drives and is named by a "module:function" string,
imported only when that command runs: `--help` never imports TensorFlow.

A library error meant for the user (a missing dataset, an unknown run, an unreadable image...)
is printed as its one sentence with exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from xray_core import __version__, settings

# The commands' own matrix work is small (an input gate's distances, a ridge fit of LIME), where
# OpenBLAS's worker threads only spin against the network's threads: one thread, unless the user
# says otherwise. Set before NumPy loads (no command has imported it yet).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

PROG = "xray"  # the console script (pyproject.toml); `python -m xray_core` when run as a module

# The library's error classes whose message is a sentence for the user, by module. A class is
# looked up only when its module has been imported: an error of a module that never ran cannot
# have been raised, and the lookup must not import TensorFlow.
USER_ERRORS = {
    "xray_core.comparison": ("NotComparable",),
    "xray_core.data": ("DatasetLayoutError",),
    "xray_core.distributed": ("DistributedError",),
    "xray_core.download": ("DownloadError",),
    "xray_core.evaluation": ("EvaluationError",),
    "xray_core.explain": ("ExplainError",),
    "xray_core.export": ("ExportError",),
    "xray_core.fileio": ("PathNotAllowed",),
    "xray_core.gate": ("GateError",),
    "xray_core.imaging": ("ImageDecodeError",),
    "xray_core.jobs": ("CapacityError",),
    "xray_core.litert": ("BackendError",),
    "xray_core.metrics": ("MetricsInputError",),
    "xray_core.model": ("ModelError",),
    "xray_core.report": ("ReportError",),
    "xray_core.runs": ("InvalidRunId", "RunNotFound", "RunBusy", "RegistryReadOnly"),
    "xray_core.scoring": ("ScoreError",),
    "xray_core.scoring.uploads": ("UploadRecordError",),
    "xray_core.settings": ("SettingsError",),
    "xray_core.site_labels": ("SiteError",),
    "xray_core.training": ("TrainingDataError",),
    "xray_core.uncertainty": ("UncertaintyError",),
}


class UsageError(ValueError):
    """Arguments that cannot go together, found after parsing (printed like an argparse error)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes `main` prints as one sentence (see USER_ERRORS)."""
    found: list[type[BaseException]] = [UsageError, FileNotFoundError, PermissionError]
    for module_name, names in USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None:
            found += [getattr(module, name) for name in names]
    return tuple(found)


# --------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {text}")
    return value


def _architecture(name: str) -> str:
    # Imported here, not at the top: the registry imports Keras, which `--help` must not.
    from xray_core import architectures

    if name not in architectures.ARCHITECTURES:
        raise argparse.ArgumentTypeError(
            f"unknown architecture {name!r}; choose one of: {', '.join(architectures.ARCHITECTURES)}")
    return name


def _http_url(text: str) -> str:
    from urllib.parse import urlsplit

    if urlsplit(text).scheme.lower() not in ("http", "https"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a web address: give the full http:// or https:// address of the file")
    return text


def _hex_digest(length: int, name: str):
    def parse(text: str) -> str:
        value = text.strip().lower()
        if len(value) != length or any(ch not in "0123456789abcdef" for ch in value):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an {name} checksum ({length} hexadecimal digits); copy it exactly as published")
        return value
    parse.__name__ = name  # argparse names the type in its messages
    return parse


# --------------------------------------------------------------------------- the parser


def _add_data(p: argparse.ArgumentParser, *, help_default: str = "$XRAY_DATA_DIR") -> None:
    """The dataset folder, given the same way to every command: --data, else $XRAY_DATA_DIR."""
    p.add_argument("--data", type=Path, metavar="DIR",
                   default=Path(os.environ["XRAY_DATA_DIR"]) if os.environ.get("XRAY_DATA_DIR") else None, help=f"dataset folder in the Kermany layout (default: {help_default})")


def _add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON, one object per line")


def _add_runs_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, metavar="DIR",
                   help="run registry folder (default: $XRAY_MODELS_DIR, else a clone's trained_models/, "
                        "else the runs installed with the package)")


def _command(sub, name: str, handler: str, common: argparse.ArgumentParser, **texts) -> argparse.ArgumentParser:
    p = sub.add_parser(name, parents=[common], **texts)
    p.set_defaults(handler=handler)
    return p


def _add_dataset(sub, common) -> None:
    p = _command(
        sub, "dataset", "xray_core.commands:_dataset", common,
        help="statistics of a dataset folder (counts, patients, image sizes, unreadable files)",
        description="Index a dataset in the Kermany layout (train/val/test x NORMAL/PNEUMONIA) and print "
                    "its statistics without decoding pixels. Unreadable files are listed.",
    )
    _add_data(p)
    _add_json(p, "the statistics")


def _add_train(sub, common) -> None:
    p = _command(
        sub, "train", "xray_core.commands:_train", common,
        help="train a model into a new run folder (progress on stderr)",
        description="Train one architecture on a dataset. The run folder (trained_models/<run id>/ "
                    "unless --runs-dir) receives config.json, status.json, history.csv, checkpoints, "
                    "model.keras and metrics.json. Create a file named STOP in the run folder to stop "
                    "after the current batch; --resume continues an interrupted run from its last epoch.",
    )
    p.add_argument("--arch", default="baseline", type=_architecture,
                   help="architecture: baseline, model2, model3, model4, pneumonet (default baseline)")
    _add_data(p, help_default="$XRAY_DATA_DIR; required unless --resume")
    p.add_argument("--epochs", type=_positive_int, help="epochs (default: the architecture's own setting)")
    p.add_argument("--batch-size", type=_positive_int,
                   help="batch size (default: the architecture's own setting)")
    p.add_argument("--image-size", type=_positive_int,
                   help="square input size in pixels (default: the architecture's own setting)")
    p.add_argument("--channels", type=int, choices=(1, 3),
                   help="1 gray (default) or 3 (the original study's copies of the gray)")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default 0.001)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, shuffling and weights (default 0)")
    p.add_argument("--split", choices=("patient", "image"), default="patient",
                   help="train/validation split by patient (default) or by image (the original study's, leaky)")
    p.add_argument("--val-fraction", type=_fraction,
                   help="validation share (default 0.2; 0.25 for --split image)")
    p.add_argument("--class-weight", choices=("balanced", "none"), default="none",
                   help="weight classes inversely to their frequency (default none)")
    p.add_argument("--preset", choices=("default",),
                   help="a named recipe: 'default' trains the bundled model's ensemble (3 members, then "
                        "assembled into --run-id, default 'default-retrain'; a shipped run is never replaced); "
                        "run the same command again to continue")
    p.add_argument("--members", type=_positive_int, help="ensemble members of --preset (default: the preset's)")
    p.add_argument("--widths", type=_positive_int, nargs=4, metavar="N",
                   help="pneumonet's widths: stem and blocks 1-3 (default 16 48 96 192; the default model uses "
                        "24 64 128 256)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="learning rate: constant (default) or cosine decay over the run's epochs")
    p.add_argument("--augment", nargs="?", const="mild", default="none", choices=("none", "mild", "strong"),
                   help="augmentation, never flips: mild (small rotations, shifts, zoom, brightness/contrast; "
                        "the bare flag) or strong (independent height/width zoom, shifts, rotation, gamma, "
                        "contrast, noise, resolution: framing carries no information)")
    p.add_argument("--early-stopping", type=_positive_int, metavar="N",
                   help="stop after N epochs without a better selection score; keep the best weights")
    p.add_argument("--selection", choices=("stress", "plain"), default="stress",
                   help="what early stopping watches: the pooled shift-stress validation (default) or the "
                        "plain validation AUC")
    p.add_argument("--threshold-method", choices=("sensitivity", "youden"), default="sensitivity",
                   help="operating threshold: highest specificity with sensitivity >= 0.95 (default) or Youden's J")
    p.add_argument("--run-id", help="name of the run folder (default: time-arch-random)")
    _add_runs_dir(p)
    p.add_argument("--resume", metavar="RUN", help="continue this interrupted run from its last checkpoint")
    p.add_argument("--distributed", action="store_true",
                   help="one worker of a multi-worker training (MultiWorkerMirroredStrategy; TF_CONFIG names "
                        "the workers; the chief writes the run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_json(p, "the finished run's summary")


def _check_train(args: argparse.Namespace) -> None:
    if args.widths and args.arch != "pneumonet":
        raise UsageError(f"--widths sets pneumonet's widths; {args.arch} has the original study's fixed layers.")
    if args.preset and args.resume:
        raise UsageError("--preset continues by itself when run again; do not combine it with --resume.")
    if args.resume is None and args.data is None:
        raise UsageError("train needs a dataset folder: add --data DIR or set XRAY_DATA_DIR (or --resume RUN to "
                         "continue a run).")
    if args.image_size is not None:
        from xray_core import architectures

        min_size = architectures.ARCHITECTURES[args.arch].min_size
        if args.image_size < min_size:
            raise UsageError(f"{args.arch} needs images of at least {min_size} pixels; got --image-size "
                             f"{args.image_size}. Use a larger image size.")


def _add_runs(sub, common) -> None:
    p = _command(sub, "runs", "xray_core.commands:_runs", common, help="list the runs in the registry",
                 description="List training runs: state, progress and validation metrics.")
    _add_runs_dir(p)
    _add_json(p, "each run")


def _add_evaluate(sub, common) -> None:
    p = _command(
        sub, "evaluate", "xray_core.commands:_evaluate", common,
        help="metrics of a run on a split, at its operating threshold",
        description="Evaluate a run on its own validation split (the list stored in the run), the test folder or "
                    "the official 16-image val folder. Results are cached in the run's metrics.json.",
    )
    p.add_argument("run", help="run id (or a path to a run folder)")
    _add_data(p, help_default="$XRAY_DATA_DIR, else the one the run trained on")
    p.add_argument("--split", choices=("val", "test", "official_val"), default="val",
                   help="which images (default val: the run's own validation split)")
    _add_runs_dir(p)
    p.add_argument("--refresh", action="store_true", help="recompute even if metrics.json has the result")
    p.add_argument("--stress", action="store_true",
                   help="score the run's validation films plain and under every shift-stress change, refit "
                        "its calibration and threshold on them, and write the figures into the run (not for "
                        "the runs that ship with the project)")
    _add_json(p, "the metrics")


def _add_predict(sub, common) -> None:
    p = _command(
        sub, "predict", "xray_core.commands:_predict", common,
        help="pneumonia probability of images (PNG, JPEG, BMP, TIFF, DICOM)",
        description="Classify images with a run's model at its operating threshold. "
                    "`default` is the bundled model.",
    )
    p.add_argument("run", help="run id (e.g. default) or a path to a run folder")
    p.add_argument("images", nargs="+", type=Path, help="image files")
    _add_runs_dir(p)
    _add_json(p, "each image's answer")


def _add_explain(sub, common) -> None:
    p = _command(
        sub, "explain", "xray_core.explain.folder:_cmd_explain", common,
        help="LIME panels, Grad-CAM and trust figures for one image",
        description="Explain one chest X-ray with a trained run: writes the four LIME panels, "
                    "a Grad-CAM overlay and explanation.json (weights, prediction, timings, "
                    "deletion areas and stability).",
    )
    p.add_argument("run", metavar="RUN", help="run id in the registry (see `xray runs`)")
    p.add_argument("image", metavar="IMAGE", help="PNG, JPEG, BMP, TIFF or DICOM file")
    p.add_argument("--out-dir", required=True, type=Path, metavar="DIR",
                   help="folder to write the PNGs and explanation.json into")
    from xray_core.explain import lime as recipes  # its constants only (no TensorFlow, no lime)

    p.add_argument("--recipe", choices=list(recipes.RECIPES), default="dashboard",
                   help="LIME's settings: the dashboard's (default; as Diagnose and report explain) or the "
                        "original study's (quickshift, 1,000 random samples, black fill, the probability fitted)")
    p.add_argument("--samples", type=_positive_int, default=None,
                   help=f"LIME samples (default: the recipe's, {recipes.DEFAULT_LIME['num_samples']} for the "
                        "dashboard's, whose design takes a power of two; 1,000 for the original study's)")
    p.add_argument("--segmentation", choices=recipes.SEGMENTATIONS, default=None,
                   help=f"superpixel method (default: the recipe's, {recipes.DEFAULT_LIME['segmentation']} for the "
                        "dashboard's, quickshift for the original study's)")
    p.add_argument("--seed", type=int, default=0, help="seed for LIME sampling and segmentation")
    p.add_argument("--label", choices=("NORMAL", "PNEUMONIA"), default=None,
                   help="class to explain (default: PNEUMONIA, whatever the verdict)")
    p.add_argument("--stability-seeds", type=_positive_int, default=5,
                   help="LIME runs for the stability figure (default 5)")
    _add_runs_dir(p)
    _add_json(p, "what was written, the prediction and the trust figures")


def _add_fit_gate(sub, common) -> None:
    p = _command(
        sub, "fit-gate", "xray_core.gate_fit:_cmd_fit_gate", common,
        help="fit a run's input gate (is this a chest film the model can read?)",
        description="Fit the run's input gate on its own training films and set its thresholds on its "
                    "validation films (the split rebuilt from the run's config). Writes gate.npz, gate.json "
                    "and seen_hashes.txt into the run folder.",
    )
    p.add_argument("run", metavar="RUN", help="run id (e.g. default)")
    _add_data(p, help_default="$XRAY_DATA_DIR; the folder the run was trained on")
    _add_runs_dir(p)
    _add_json(p, "the fitted gate's figures")


def _add_report(sub, common) -> None:
    p = _command(
        sub, "report", "xray_core.report:_cmd_report", common,
        help="one film as a PDF case report (gate, verdict, uncertainty, explanations)",
        description="Assess and explain one image with a run and write a one-page PDF: the image, the "
                    "input gate's result, verdict, probability, threshold, prediction set, LIME and "
                    "Grad-CAM of P(pneumonia), the run's validation figures. Research use only.",
    )
    p.add_argument("run", metavar="RUN", help="run id (e.g. default) or a path to a run folder")
    p.add_argument("image", metavar="IMAGE", type=Path, help="PNG, JPEG, BMP, TIFF or DICOM file")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="the PDF file to write")
    _add_json(p, "what was written")
    from xray_core.explain import lime as recipes  # its constants only (no TensorFlow, no lime)

    p.add_argument("--samples", type=_positive_int, default=None,
                   help=f"LIME samples, a power of two (default: the dashboard's, {recipes.DEFAULT_LIME['num_samples']})")
    p.add_argument("--seed", type=int, default=0, help="seed for LIME")
    p.add_argument("--show-anyway", action="store_true",
                   help="include the verdict and explanations even when the gate refuses the image")
    _add_runs_dir(p)


def _add_download(sub, common) -> None:
    from xray_core import download  # standard library only: cheap, and the catalogue is its data

    p = _command(
        sub, "download", "xray_core.download:_run", common,
        help="download a public dataset and unpack it in the Kermany folder layout",
        description=("Download, verify and unpack a public pediatric chest X-ray dataset. "
                     "Interrupted downloads resume when the same command is run again. "
                     "Sources: " + "; ".join(f"{k}: {v['title']} ({v['approx_size']}, {v['licence']})"
                                              for k, v in download.SOURCES.items()) + "."),
    )
    p.add_argument("--source", choices=list(download.SOURCES), default="kermany",
                   help="which dataset (default: kermany, the original 1.2 GB archive)")
    p.add_argument("--dest", type=Path, default=Path("data"), help="folder to download into (default: ./data)")
    p.add_argument("--url", type=_http_url, help="fetch from this address instead (e.g. an institutional mirror)")
    p.add_argument("--size", type=int, choices=sorted(download.PNEUMONIAMNIST_FILES),
                   help=f"pneumoniamnist image size in px (default {download.DEFAULT_PNEUMONIAMNIST_SIZE})")
    p.add_argument("--md5", type=_hex_digest(32, "MD5"), help="expected MD5 of the file (overrides the published one)")
    p.add_argument("--sha256", type=_hex_digest(64, "SHA-256"), help="expected SHA-256 of the file")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip/npz after unpacking")
    p.add_argument("--timeout", type=_positive_float, default=60.0,
                   help="seconds to wait for the server before giving up (default 60)")
    _add_json(p, "where the dataset landed")


def _check_fit_gate(args: argparse.Namespace) -> None:
    if args.data is None:
        raise UsageError("fit-gate needs the dataset folder the run was trained on: add --data DIR or set "
                         "XRAY_DATA_DIR.")


def _check_dataset(args: argparse.Namespace) -> None:
    if args.data is None:
        raise UsageError("dataset needs a dataset folder: add --data DIR or set XRAY_DATA_DIR.")


def _check_download(args: argparse.Namespace) -> None:
    if args.size is not None and args.source != "pneumoniamnist":
        raise UsageError(f"The {args.source} source has one image size; --size applies only to "
                         f"pneumoniamnist. Leave --size out.")


def _add_score(sub, common) -> None:
    p = _command(
        sub, "score", "xray_core.scoring:_cmd_score", common,
        help="score every film of a folder, zip or list of paths into a CSV or Parquet file (resumable)",
        description="Batch-score an archive with a run's model: one row per file (path, size, hash, "
                    "probability, verdict, threshold, input gate, prediction set, error). Rerunning the "
                    "same command resumes: files already in --out are skipped, and a kill loses at most "
                    "the chunk being written. Research software, not a medical device.",
    )
    p.add_argument("run", help="run id (e.g. default) or a path to a run folder")
    p.add_argument("input", type=Path, help="a folder (recursive), a .zip, or a text/CSV file listing paths")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file: .csv, or .parquet for Parquet")
    _add_runs_dir(p)
    p.add_argument("--workers", type=int, help="decoding processes (default: the CPUs available; 0: none)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="files per batch and per write (default 64)")
    p.add_argument("--no-draft", action="store_true",
                   help="decode JPEGs at full resolution before resizing, as `predict` does (slower)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray Data: alone, a local Ray; `auto` or ray://host:port joins a cluster")
    p.add_argument("--status", type=Path, help=argparse.SUPPRESS)  # the Worklist page's progress file
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_json(p, "the summary")


def _add_export(sub, common) -> None:
    p = _command(
        sub, "export", "xray_core.export:_cmd_export", common,
        help="write a run as one ONNX or LiteRT file (members, mean and calibration in the graph)",
        description="Export a run for other platforms (ONNX Runtime, Triton, a LiteRT app): one file whose "
                    "input is float32 [N, H, W, C] gray levels 0..255 at the run's size and whose output is "
                    "the calibrated P(pneumonia), [N]; plus model.json (threshold, policy, input, provenance). "
                    "The file is checked against the model before it is kept. Research use only.",
    )
    p.add_argument("run", help="run id (e.g. default) or a path to a run folder")
    p.add_argument("--format", choices=("onnx", "litert"), required=True, help="onnx (model.onnx) or litert (model.tflite)")
    p.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                   help="folder to write the model file and model.json into")
    _add_runs_dir(p)
    _add_json(p, "what was written")


def _add_validate(sub, common) -> None:
    p = _command(
        sub, "validate", "xray_core.site:_cmd_validate", common,
        help="how a run does on your own labelled films (figures with 95 %% intervals over patients)",
        description="Every film of a label list through the product's assessment at the run's threshold: accuracy, "
                    "sensitivity, specificity, PPV, NPV, ROC AUC, calibration error (15 bins) and Brier score, each "
                    "with a 95 % bootstrap interval over patients, the input check's refusals and the prediction "
                    "sets' coverage. LABELS: a folder (or zip) with NORMAL/ and PNEUMONIA/ folders at any depth, or a "
                    "CSV path,label[,patient] (NORMAL/PNEUMONIA; paths relative to the CSV). Research software, not "
                    "a medical device.",
    )
    p.add_argument("run", help="run id (e.g. default) or a path to a run folder")
    p.add_argument("labels", type=Path, help="the labelled films: a folder, a zip or a CSV")
    p.add_argument("--out-dir", type=Path, metavar="DIR",
                   help="report folder to write (validation.json, films.csv, PNG figures, report.pdf); without it "
                        "the summary is only printed")
    p.add_argument("--exclude-seen", action="store_true",
                   help="leave out films the run saw (its training, validation or site-calibration films)")
    _add_site_options(p)
    _add_json(p, "the report")


def _add_site_options(p: argparse.ArgumentParser) -> None:
    _add_runs_dir(p)
    p.add_argument("--workers", type=int, help="decoding processes (default: the CPUs available; 0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_site(args: argparse.Namespace) -> None:
    if getattr(args, "out_dir", None) is not None and settings.viewer_mode():
        raise settings.ViewerModeError(
            "`validate --out-dir` writes a report folder, and this installation is in viewer mode, where nothing "
            "is written. Leave --out-dir out to print the figures only, or run it where writing is allowed.")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers is 0 or more, got {args.workers}.")


def _add_recalibrate(sub, common) -> None:
    p = _command(
        sub, "recalibrate", "xray_core.site:_cmd_recalibrate", common,
        help="fit a run's calibration, threshold and prediction sets to your site's films (no retraining)",
        description="Fit Platt scaling (temperature and bias), the operating threshold and the conformal sets on a "
                    "site's labelled films, and write a derived run that uses the parent's networks without copying "
                    "them. Its figures are cross-fitted: folds by patient, each measured with what was fitted on the "
                    "others. Refused with fewer than 20 films of either class. Research software, not a medical device.",
    )
    p.add_argument("run", help="run id (e.g. default) or a path to a run folder")
    p.add_argument("labels", type=Path, help="the labelled films: a folder, a zip or a CSV (as for validate)")
    p.add_argument("--out", required=True, metavar="NEW_RUN",
                   help="the new run: a run id (made in the registry) or a path to a new run")
    p.add_argument("--sensitivity", type=_fraction, default=0.95,
                   help="the threshold keeps at least this sensitivity on the site's films (default 0.95)")
    p.add_argument("--policy", choices=("sensitivity", "youden"), default="sensitivity",
                   help="threshold: highest specificity at --sensitivity (default) or Youden's J")
    p.add_argument("--folds", type=_positive_int, default=5, help="cross-fitting folds by patient (default 5)")
    _add_site_options(p)
    _add_json(p, "the new run's figures")


# Checks of argument combinations, run after parsing and before the handler, by command.
_CHECKS = {"train": _check_train, "download": _check_download, "fit-gate": _check_fit_gate,
           "dataset": _check_dataset, "validate": _check_site, "recalibrate": _check_site}

# Subcommands in the order `--help` lists them.
_SUBCOMMANDS = (_add_dataset, _add_train, _add_runs, _add_evaluate, _add_predict, _add_explain, _add_download,
                _add_score, _add_fit_gate, _add_report, _add_export, _add_validate, _add_recalibrate)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show TensorFlow, absl and CUDA log lines (hidden by default)")
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Pediatric chest X-ray pneumonia models: data, training, evaluation, explanations. "
                    "Research software, not a medical device.",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow, absl and CUDA log lines (hidden by default)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub, common)
    return parser


def resolve_handler(ref: str):
    """The function named by a "package.module:function" handler reference."""
    module_name, _, function = ref.partition(":")
    return getattr(importlib.import_module(module_name), function)


def configure_logging(verbose: bool) -> None:
    """Let TensorFlow's, absl's and CUDA's log lines through (`--verbose`) or keep them hidden.

    xray_core/__init__.py hides them by default before TensorFlow can be imported; `--verbose`
    undoes that, which works because no handler has imported TensorFlow yet.
    """
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        import logging

        for name in ("absl", "tensorflow", "keras"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def main(argv: list[str] | None = None, *, prog: str = PROG) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose)
    try:
        settings.refuse_writes(args.command)  # viewer mode: no command that writes (SECURITY.md)
        check = _CHECKS.get(args.command)
        if check is not None:
            check(args)
        return int(resolve_handler(args.handler)(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except user_errors() as exc:  # evaluated when an exception arrives, after the handler's imports
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # a package of an optional extra (pyproject.toml): say which extra
        extra = {"tensorflow": "train", "keras": "train", "ray": "ray", "tf2onnx": "export", "onnx": "export",
                 "onnxruntime": "export"}.get(str(exc.name).split(".")[0])
        if extra is None:
            raise
        print(f"error: `{prog} {args.command}` needs {exc.name}, which is not installed: pip install "
              f"'xray-core[{extra}]' (or pip install -r requirements.txt).", file=sys.stderr)
        return 1
