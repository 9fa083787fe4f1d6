"""Handlers of the core CLI commands: dataset, train, runs, evaluate, predict (arguments: cli.py).

Handlers import the heavy parts (TensorFlow through training/runs models) only when they run,
so `python -m xray_core --help` stays fast.
"""

from __future__ import annotations

import signal
import sys

from xray_core.console import fmt, json_line, run_ref, table


class ProgressBar:
    """Training progress on stderr with tqdm: a bar while images load, then one bar per epoch."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        self.key = None

    def __call__(self, info: dict) -> None:
        from tqdm import tqdm

        phase = info.get("phase")
        if phase == "loading":
            key, total, done = ("loading", info.get("what")), info.get("total") or 0, info.get("done", 0)
            desc, unit = f"loading {info.get('what') or 'images'}", " images"
        elif phase in ("evaluating", "done"):
            if self.key != phase:
                self.close()
                tqdm.write("evaluating on validation..." if phase == "evaluating" else "done", file=self.stream)
                self.key = phase
            return
        else:
            key, total, done = ("epoch", info.get("epoch")), info.get("batches") or 0, info.get("batch") or 0
            desc, unit = f"epoch {info.get('epoch')}/{info.get('epochs')}", " batches"
        if key != self.key:
            self.close()
            self.bar = tqdm(total=total or None, desc=desc, unit=unit, file=self.stream, mininterval=0.5,
                            dynamic_ncols=True, leave=True)
            self.key = key
        if phase != "loading" and info.get("images_per_second"):
            self.bar.set_postfix_str(f"{info['images_per_second']:.0f} img/s", refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------- handlers


def _dataset(args) -> int:
    from xray_core import data

    root = data.find_dataset(args.data)
    df = data.index_dataset(root)
    stats = data.dataset_stats(df)
    if args.json:
        json_line(dict(stats, root=str(root)))
        return 0
    print(f"dataset: {root}  ({stats['n_images']} images)")
    rows = []
    for split, counts in stats["counts"].items():
        pats = stats["patients_by_split"].get(split, {})
        total = sum(counts.values())
        rows.append([split, counts.get("NORMAL", 0), counts.get("PNEUMONIA", 0), total,
                     pats.get("NORMAL", 0), pats.get("PNEUMONIA", 0)])
    print(table(["split", "NORMAL", "PNEUMONIA", "total", "patients N", "patients P"], rows))
    sizes = stats["image_sizes"]
    w, h = sizes["width"], sizes["height"]
    print(f"image width  min {w['min']} median {w['median']} max {w['max']}")
    print(f"image height min {h['min']} median {h['median']} max {h['max']}  ({sizes['distinct']} distinct sizes)")
    pathogens = ", ".join(f"{s}: " + " ".join(f"{k} {v}" for k, v in p.items()) for s, p in stats["pathogens"].items())
    print(f"pathogens    {pathogens}")
    print(f"unreadable   {stats['n_unreadable']}")
    for item in stats["unreadable"]:
        print(f"  {item['path']}: {item['reason']}")
    return 0


def _train(args) -> int:
    from xray_core import training

    preset = getattr(args, "preset", None)
    if preset:
        return _train_preset(args, preset)
    config = training.TrainConfig(
        arch=args.arch,
        data_root=args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        channels=args.channels,
        learning_rate=args.lr,
        seed=args.seed,
        split_method=args.split,
        val_fraction=args.val_fraction,
        class_weight=None if args.class_weight == "none" else args.class_weight,
        augment=args.augment,
        early_stopping=args.early_stopping,
        selection=getattr(args, "selection", "stress"),
        arch_options={"widths": list(args.widths)} if getattr(args, "widths", None) else None,
        lr_schedule=None if getattr(args, "lr_schedule", "constant") == "constant" else args.lr_schedule,
        threshold_method=args.threshold_method,
        runs_root=args.runs_dir,
        run_id=args.run_id,
        resume=args.resume,
        distributed=args.distributed,
    )

    def on_sigterm(_signum, _frame):
        # A terminate request (e.g. from a process manager) ends like Ctrl-C: state cancelled.
        raise KeyboardInterrupt

    from xray_core import fileio, health, runs

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        run_dir = training.train(config, progress=None if args.quiet else ProgressBar())
    except health.TrainingHealthError as exc:  # NaN or infinite loss: the run is marked failed
        print(f"error: training stopped: {exc}", file=sys.stderr)
        return 3
    finally:
        signal.signal(signal.SIGTERM, previous)
    _print_run_summary(run_dir, as_json=args.json)
    for warning in health.from_status(fileio.read_json(run_dir / runs.STATUS_FILE)):
        print(f"warning: {warning.text}", file=sys.stderr)
    return 0


def _train_preset(args, preset: str) -> int:
    """`train --preset NAME`: every member, then the assembled (ensemble) run; resumable by
    running the same command again."""
    from xray_core import ensemble

    if args.data is None:
        raise ValueError("train --preset needs the dataset folder: add --data DIR.")
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "image_size": args.image_size}
    run_dir = ensemble.train_preset(preset, args.data, run_id=args.run_id or f"{preset}-retrain", runs_root=args.runs_dir,
                                    progress=None if args.quiet else ProgressBar(),
                                    members=getattr(args, "members", None), seed=args.seed, **overrides)
    _print_run_summary(run_dir, as_json=args.json)
    return 0


def _print_run_summary(run_dir, *, as_json: bool = False) -> None:
    from xray_core import runs

    info = next((r for r in runs.list_runs(run_dir.parent) if r.path == run_dir), None)
    metrics = (info.metrics if info else None) or {}
    val = metrics.get("validation") or {}
    summary = ((metrics.get("stress") or {}).get("summary") or {})
    if as_json:
        json_line({"run_id": run_dir.name, "path": str(run_dir), "state": info.state if info else None,
                   "epochs_run": metrics.get("epochs_run"), "train_seconds": metrics.get("train_seconds"),
                   "threshold": metrics.get("threshold"), "validation": val,
                   "stress_summary": summary or None})
        return
    print(run_dir.name)
    print(f"state {info.state if info else '?'}  epochs {metrics.get('epochs_run')}  "
          f"train {fmt(metrics.get('train_seconds'), 1)} s  threshold {fmt(metrics.get('threshold'))}  "
          f"validation: AUC {fmt(val.get('roc_auc'))} sensitivity {fmt(val.get('sensitivity'))} "
          f"specificity {fmt(val.get('specificity'))} (n={val.get('n')})", file=sys.stderr)
    if summary:
        print(f"stress validation: worst AUC {fmt(summary['roc_auc']['worst'])}, worst specificity "
              f"{fmt(summary['specificity']['worst'])} ({summary['specificity']['worst_change']}), "
              f"worst sensitivity {fmt(summary['sensitivity']['worst'])}", file=sys.stderr)
    print(f"run folder: {run_dir}", file=sys.stderr)


def _runs(args) -> int:
    from xray_core import runs

    items = runs.list_runs(args.runs_dir)
    if args.json:
        for r in items:
            json_line({"run_id": r.run_id, "path": str(r.path), "status": r.status, "config": r.config,
                       "metrics": r.metrics, "problems": r.problems})
        return 0
    if not items:
        print(f"no runs in {runs.runs_root(args.runs_dir)}")
        return 0
    rows = []
    for r in items:
        val = (r.metrics or {}).get("validation") or {}
        st = r.status
        planned = st.get("epochs") or r.config.get("epochs")
        if isinstance(planned, list):  # an ensemble: its members' epochs
            progress = "+".join(str(e) for e in planned)
        else:
            progress = f"{st.get('epoch') or 0}/{planned or '?'}"
        rows.append([r.run_id, r.config.get("arch", "-"), r.state, progress,
                     fmt(val.get("roc_auc")), fmt(val.get("sensitivity")), fmt(val.get("specificity")),
                     fmt((r.metrics or {}).get("threshold")), (r.config.get("created") or "")[:19]])
    print(table(["run", "arch", "state", "epoch", "val AUC", "sens", "spec", "threshold", "created"], rows))
    return 0


def _evaluate(args) -> int:
    from xray_core import evaluation, runs

    run = runs.load_run(run_ref(args.run), root=args.runs_dir)
    if getattr(args, "stress", False):
        if evaluation.is_bundled(run.path):
            raise ValueError(f"The run {run.run_id!r} ships with the project; its figures are not recomputed "
                             "in place. Copy its folder to a run of your own first.")
        result = evaluation.finalize_run(run.path, data_root=args.data)
        if args.json:
            json_line({"run": run.run_id, **{k: result.get(k) for k in ("validation", "stress", "calibration",
                                                                         "threshold")}})
            return 0
        summary = result["stress"]["summary"]
        print(f"run {run.run_id}: threshold {fmt(result['threshold'])} (stress policy), temperature "
              f"{fmt(result['calibration']['temperature'])}, ECE {fmt(result['calibration']['ece'])}")
        rows = [[name, fmt(c["roc_auc"]), fmt(c["sensitivity"]), fmt(c["specificity"])]
                for name, c in result["stress"]["changes"].items()]
        print(table(["change", "AUC", "sensitivity", "specificity"], rows))
        print(f"worst specificity {fmt(summary['specificity']['worst'])} ({summary['specificity']['worst_change']})")
        return 0
    result = evaluation.evaluate_run(run, args.data, split=args.split, refresh=args.refresh)
    if args.json:
        json_line({"run": run.run_id, "split": args.split, **result})
        return 0
    print(f"run {run.run_id} on {args.split} ({result.get('n')} images, threshold {fmt(result.get('threshold'))})")
    keys = ["sensitivity", "specificity", "precision", "npv", "accuracy", "f1", "roc_auc", "pr_auc"]
    print(table(["metric", "value"], [[k, fmt(result.get(k))] for k in keys if k in result]))
    print(f"confusion: tn {result.get('tn')} fp {result.get('fp')} fn {result.get('fn')} tp {result.get('tp')}")
    return 0


def _predict(args) -> int:
    """Every file gets an answer: the gate's (in_distribution, ood_score, warnings), the verdict,
    the probability and the conformal prediction set; an unreadable file its reason."""
    from xray_core import case, imaging
    from xray_core.cli import UsageError
    from xray_core.model import load_model

    model = load_model(run_ref(args.run), root=args.runs_dir)
    read, failures = {}, 0
    for path in args.images:
        if path.is_dir():
            raise UsageError(f"{path} is a folder: `predict` takes image files. To score every film in a "
                                    f"folder, use `xray score {args.run} {path} --out scores.csv`.")
        try:
            read[path] = case.read(path)
        except (imaging.ImageDecodeError, OSError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            read[path] = case.refused(str(path), model.run_id, str(exc))
            failures += 1
    films = [v for v in read.values() if isinstance(v, case.Film)]
    assessed = iter(case.assess_films(model, films))
    rows = []
    for path, value in read.items():
        if isinstance(value, dict):
            if args.json:
                json_line(value)
            continue
        a = next(assessed)
        if args.json:
            json_line(a.to_json())
            continue
        check = "ok" if a.in_distribution else "NOT A READABLE CHEST FILM"
        rows.append([str(path), a.verdict, f"{a.probability:.4f}", f"{a.threshold:.4f}",
                     a.uncertainty.label, check])
        for warning in a.gate.warnings:
            print(f"warning: {path}: {warning}", file=sys.stderr)
    if rows:
        print(table(["image", "label", "pneumonia probability", "threshold", "90% set", "input check"], rows))
    return 1 if failures else 0
