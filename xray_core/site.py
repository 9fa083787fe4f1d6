"""Your own films: validate a run on a site's labelled films, and recalibrate it for the site.

A hospital asks first how the model does on its own children, then whether it can be set up for
its own machines. `validate` takes every listed film through the one assessment (`case`), at the
run's threshold, and measures it with intervals over patients (`metrics.site_figures`).
`recalibrate` fits, on the site's films and without retraining, Platt scaling (temperature and
bias of the networks' mean), the operating threshold and the conformal sets, and writes a
derived run that uses the parent's networks (`site_run`). Its figures are cross-fitted: the
films are split by patient into folds, and each fold is measured with what was fitted on the
others, never on itself, since figures on the fitting films flatter. The label lists are
`site_labels`'; the report folder and the printed summaries `site_report`'s; the two commands'
handlers are here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from xray_core import metrics, settings
from xray_core.model import CLASSES
from xray_core.site_labels import LabelList, SiteError, read_labels
from xray_core.site_run import SITE_TOKEN

MIN_PER_CLASS = 20  # fewer films of a class than this: recalibration is refused
WIDE_BELOW = 50  # fewer films of a class than this: the intervals are said to be wide
DEFAULT_FOLDS = 5
CHUNK = 32  # films per call of case.assess_films
TABLE_COLUMNS = ["path", "sha256", "label", "patient", "error", "probability", "uncalibrated", "verdict",
                 "threshold", "in_distribution", "gate_warnings", "prediction_set", "seen_in", "included",
                 "excluded_because"]

Progress = Callable[[int, int], None]  # (films done, films in all)


# ------------------------------------------------------------------------------ scoring


def assess_label_list(model, found: LabelList, *, workers: int = 0, progress: Progress | None = None) -> pd.DataFrame:
    """Every film of a label list through `case.assess_films`, CHUNK films a call (decoded ahead
    by `workers` processes): one row per film, TABLE_COLUMNS (without `included`)."""
    from xray_core import case
    from xray_core.scoring.decoding import decoded_chunks
    from xray_core.scoring.rows import forward, trust_rules

    rules = trust_rules(model)
    chunks = (found.items[i: i + CHUNK] for i in range(0, len(found), CHUNK))
    rows, done = [], 0
    for chunk in decoded_chunks(chunks, model.input_size, False, workers):
        ok = [i for i, error in enumerate(chunk.errors) if not error]
        films = [case.Film(name=chunk.items[i].path, sha256=chunk.sha256[i], shape=chunk.shapes[k],
                           coloured_share=chunk.saturations[k], dicom=chunk.dicoms[k]) for k, i in enumerate(ok)]
        forwarded = forward(model, chunk)
        assessed = iter(case.assess_films(model, films, x=forwarded[0], scores=forwarded[1], gate=rules[0],
                                          conformal=rules[1]) if forwarded else [])
        for i, item in enumerate(chunk.items):
            k = done + i
            row = {"path": item.path, "sha256": chunk.sha256[i], "label": found.labels[k],
                   "patient": found.patients[k] or "", "error": chunk.errors[i], "probability": np.nan,
                   "uncalibrated": np.nan, "verdict": "", "threshold": float(model.threshold),
                   "in_distribution": False, "gate_warnings": "", "prediction_set": "", "seen_in": ""}
            if not chunk.errors[i]:
                a = next(assessed)
                shown = a.uncertainty.prediction_set
                row.update(probability=a.probability, uncalibrated=a.uncalibrated, verdict=a.verdict,
                           in_distribution=bool(a.gate.in_distribution), gate_warnings="; ".join(a.gate.warnings),
                           prediction_set="|".join(shown) if shown is not None else "", seen_in=a.seen_in or "")
            rows.append(row)
        done += len(chunk.items)
        if progress is not None:
            progress(done, len(found))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS[:-2])


def mark_included(table: pd.DataFrame, *, exclude_seen: tuple[str, ...] = ()) -> pd.DataFrame:
    """`included` (the film counts in the figures) and why not: unreadable, refused by the input
    check, the same file as an earlier row, or seen by the run (`exclude_seen`: seen_in values)."""
    table = table.copy()
    why = pd.Series("", index=table.index, dtype=object)
    why[table["sha256"].ne("") & table["sha256"].duplicated()] = "the same file as an earlier film"
    why[table["seen_in"].isin(exclude_seen)] = "seen by the run (" + table["seen_in"] + ")"
    why[~table["in_distribution"].astype(bool)] = "refused by the input check"
    why[table["error"].ne("")] = "unreadable"
    table["included"] = why.eq("")
    table["excluded_because"] = why
    return table


def labels_digest(table: pd.DataFrame) -> str:
    """sha256 of the label list by content: each readable film's hash with its label and patient."""
    lines = sorted(f"{s} {int(y)} {p or ''}" for s, y, p in zip(table["sha256"], table["label"], table["patient"]) if s)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ------------------------------------------------------------------------------ figures


def counts_of(table: pd.DataFrame) -> dict:
    """Films by class: listed, unreadable, refused by the input check, seen by the run, counted."""
    out = {}
    for label, name in enumerate(CLASSES):
        rows = table[table["label"] == label]
        out[name] = {"listed": int(len(rows)), "unreadable": int(rows["error"].ne("").sum()),
                     "gate_refused": int((rows["error"].eq("") & ~rows["in_distribution"].astype(bool)).sum()),
                     "seen": int(rows["seen_in"].ne("").sum()), "included": int(rows["included"].sum())}
    return out


def _clusters(table: pd.DataFrame) -> np.ndarray:
    """A patient id per row; a row without one is its own patient."""
    return np.array([p if isinstance(p, str) and p else f"film:{i}" for i, p in zip(table.index, table["patient"])],
                    dtype=object)


def prediction_set_figures(y: np.ndarray, sets: pd.Series) -> dict | None:
    """Coverage, mean size and share needing review of the shown prediction sets (None: the run has none)."""
    if sets.eq("").all():
        return None
    members = [s.split("|") for s in sets]
    return {"coverage": float(np.mean([CLASSES[int(t)] in m for t, m in zip(y, members)])),
            "mean_size": float(np.mean([len(m) for m in members])),
            "needs_review": float(np.mean([len(m) > 1 for m in members]))}


def figures(table: pd.DataFrame, *, probability: str = "probability", threshold=None, sets: str = "prediction_set",
            n_boot: int = 1000, seed: int = 0) -> dict:
    """The figures of the included films: SITE_FIGURES with 95 % intervals over patients, the
    confusion counts, the ROC curve's points, the reliability diagram's bins and the prediction
    sets. `threshold`: one number or one per film (default: the table's threshold column)."""
    from xray_core import stress

    rows = table[table["included"]]
    y = rows["label"].to_numpy(int)
    p = rows[probability].to_numpy(np.float64)
    t = rows["threshold"].to_numpy(np.float64) if threshold is None else np.broadcast_to(
        np.asarray(threshold, np.float64), y.shape)
    if len(y) == 0:
        raise SiteError("No film counts in the figures: every film was unreadable or refused by the input check. "
                        "Check the films' format (PNG, JPEG, BMP, TIFF or DICOM of a frontal chest X-ray).")
    patients_known = bool(rows["patient"].astype(bool).any())
    found = metrics.site_figures(y, p, threshold=t, groups=_clusters(rows) if patients_known else None,
                                 n_boot=n_boot, seed=seed)
    pred = p >= t
    out = {"figures": {k: found[k] for k in metrics.SITE_FIGURES}, "n": found["n"], "clusters": found["clusters"],
           "n_clusters": found["n_clusters"],
           "confusion": {"tn": int((~pred & (y == 0)).sum()), "fp": int((pred & (y == 0)).sum()),
                         "fn": int((~pred & (y == 1)).sum()), "tp": int((pred & (y == 1)).sum())},
           "roc": None, "reliability": stress.expected_calibration_error(y, p, n_bins=15)[1],
           "prediction_sets": prediction_set_figures(y, rows[sets])}
    if 0 < y.sum() < len(y):
        roc = metrics.roc_points(y, p)
        out["roc"] = {"fpr": roc["fpr"].tolist(), "tpr": roc["tpr"].tolist()}
    return out


def _were(n: int) -> str:
    return f"{n} of these films {'was' if n == 1 else 'were'}"


def _warnings(table: pd.DataFrame, counts: dict, *, run_id: str, fitting: bool = False) -> list[str]:
    """What a reader must know before reading the figures, as sentences (`fitting`: for a recalibration)."""
    out = []
    included = {name: c["included"] for name, c in counts.items()}
    missing = [name for name, n in included.items() if n == 0]
    if missing:
        out.append(f"No {missing[0]} film counts in the figures, so "
                   f"{'specificity and NPV' if missing[0] == 'NORMAL' else 'sensitivity and PPV'} and the ROC AUC "
                   "cannot be measured. Add films of both classes.")
    elif min(included.values()) < WIDE_BELOW:
        few = min(included, key=included.get)
        out.append(f"Only {included[few]} {few} films count in the figures (fewer than {WIDE_BELOW} of a class): the "
                   "95 % intervals are wide. Read the intervals, not the single figures.")
    seen = table[table["seen_in"].ne("")]["seen_in"].value_counts()
    for where, n in seen.items():
        if fitting:
            if where == "training":
                out.append(f"{_were(n)} among the films the networks were trained on; they were left out of the fit.")
            continue
        what = {SITE_TOKEN: "used to fit this run's site calibration, so figures on them are optimistic",
                "training": "among the films the run's networks were trained on, so figures on them are not a test",
                "validation": "the run's own validation films, on which its threshold and calibration were chosen"}
        out.append(f"{_were(n)} {what.get(where, where)}. Measure on other patients' films, or leave out the "
                   "films the run has seen to see the difference.")
    refused = {name: c["gate_refused"] for name, c in counts.items() if c["gate_refused"]}
    if refused:
        out.append("The input check refused " + " and ".join(f"{n} {name}" for name, n in refused.items()) +
                   f" film(s) as not a chest X-ray {run_id} can read; the product gives no verdict for them, so "
                   f"they are left out of the {'fit' if fitting else 'figures'}.")
    unreadable = sum(c["unreadable"] for c in counts.values())
    if unreadable:
        out.append(f"{unreadable} film(s) could not be read (see the error column of films.csv).")
    return out


# ------------------------------------------------------------------------------ validate


def validate(run, labels: str | os.PathLike, *, root: str | os.PathLike | None = None,
             out: str | os.PathLike | None = None, exclude_seen: bool = False, n_boot: int = 1000, seed: int = 0,
             workers: int = 0, progress: Progress | None = None) -> dict:
    """Validate `run` on a site's labelled films: every film through `case.assess_films`, at the
    run's threshold, measured with 95 % intervals over patients.

    Parameters
    ----------
    run : str, os.PathLike, runs.Run or model.Model
        The run (an id in the models folder `root`, or a folder).
    labels : str or os.PathLike
        A folder or zip with NORMAL/ and PNEUMONIA/ folders, or a CSV `path,label[,patient]`.
    out : str or os.PathLike, optional
        Also write the report folder (validation.json, films.csv, PNG figures, report.pdf).
    exclude_seen : bool
        Leave out the films the run was trained, validated or site-calibrated on.

    Returns
    -------
    dict
        The report, ready for JSON: counts, figures, warnings, ROC points, reliability bins.

    Raises
    ------
    SiteError
        For a label list it cannot use, or when no film can count in the figures.
    """
    from xray_core import __version__, runs
    from xray_core.model import load_model

    found = read_labels(labels)
    model = load_model(run, root=root)
    table = mark_included(assess_label_list(model, found, workers=workers, progress=progress),
                          exclude_seen=("training", "validation", SITE_TOKEN) if exclude_seen else ())
    report = {"kind": "validation", "run": model.run_id, "parent": model.spec.get("parent"),
              "labels": Path(found.source).name, "labels_sha256": labels_digest(table), "date": runs.now_iso(),
              "xray_core": __version__, "threshold": float(model.threshold),
              "threshold_policy": model.threshold_policy, "temperature": model.temperature, "bias": model.bias,
              "patients_from": found.patients_from, "counts": counts_of(table), "exclude_seen": bool(exclude_seen)}
    report["warnings"] = _warnings(table, report["counts"], run_id=model.run_id)
    if not table["included"].any():
        reasons = table["excluded_because"].value_counts()
        first = table.loc[table["gate_warnings"].ne("") | table["error"].ne(""), ["error", "gate_warnings"]].head(1)
        example = "" if first.empty else f" The first: {first.iloc[0]['error'] or first.iloc[0]['gate_warnings']}"
        raise SiteError(f"None of the {len(table)} films can count in the figures: "
                        + ", ".join(f"{n} {why}" for why, n in reasons.items()) + "." + example)
    report.update(figures(table, n_boot=n_boot, seed=seed))
    if out is not None:
        from xray_core import site_report

        report["report_folder"] = str(site_report.write_report(out, report, table))
    return report


# ------------------------------------------------------------------------------ recalibrate


def fit_site(y, u, *, sensitivity: float = 0.95, policy: str = "sensitivity", alpha: float = 0.1) -> dict:
    """Platt scaling of the networks' mean `u`, the threshold and the conformal rule, fitted on films."""
    from xray_core import stress, uncertainty
    from xray_core.model import calibrate

    y = np.asarray(y, int)
    # Platt's (1999) targets, (N+ + 1) / (N+ + 2) and 1 / (N- + 2) instead of 1 and 0: on films the
    # networks separate perfectly (a small site) plain log loss has no minimum and the bias runs off.
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    targets = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    temperature, bias = stress.fit_platt(targets, u)
    p = calibrate(u, temperature, bias)
    threshold = metrics.choose_threshold(y, p, min_sensitivity=sensitivity, method=policy)
    conformal = uncertainty.fit_conformal(y, p, alpha=alpha, source=f"{len(y)} site films")
    return {"temperature": temperature, "bias": bias, "threshold": float(threshold), "conformal": conformal}


def check_enough(counts: dict) -> None:
    """Refuse a recalibration with fewer than MIN_PER_CLASS films of a class, saying how many more."""
    short = {name: c for name, c in counts.items() if c < MIN_PER_CLASS}
    if short:
        have = " and ".join(f"{c} {name}" for name, c in counts.items())
        need = " and ".join(f"{MIN_PER_CLASS - c} more {name}" for name, c in short.items())
        raise SiteError(f"Recalibration needs at least {MIN_PER_CLASS} films of each class that the input check "
                        f"accepts, to fit a threshold and a calibration that are more than noise; these labels give "
                        f"{have}. Add at least {need} film(s) ({WIDE_BELOW} or more of each give usable intervals).")


def cross_fit(table: pd.DataFrame, *, folds: int = DEFAULT_FOLDS, seed: int = 0, sensitivity: float = 0.95,
              policy: str = "sensitivity", alpha: float = 0.1) -> pd.DataFrame:
    """The included films with `fold`, `cross_probability`, `cross_threshold` and `cross_set`:
    each fold (by patient, both classes spread over the folds) measured with the calibration,
    threshold and conformal rule fitted on the other folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    rows = table[table["included"]].copy()
    y = rows["label"].to_numpy(int)
    u = rows["uncalibrated"].to_numpy(np.float64)
    groups = _clusters(rows)
    fewest = min(len(set(groups[y == c])) for c in (0, 1))
    k = min(int(folds), fewest)
    if k < 2:
        raise SiteError("Every film of one class comes from a single patient, so the films cannot be split by "
                        "patient to measure the recalibration honestly. Add films from other patients.")
    from xray_core.model import calibrate

    rows["fold"] = -1
    rows["cross_probability"] = np.nan
    rows["cross_threshold"] = np.nan
    rows["cross_set"] = ""
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (fit_idx, held_idx) in enumerate(splitter.split(u, y, groups)):
        fit = fit_site(y[fit_idx], u[fit_idx], sensitivity=sensitivity, policy=policy, alpha=alpha)
        p = calibrate(u[held_idx], fit["temperature"], fit["bias"])
        at = rows.index[held_idx]
        rows.loc[at, "fold"] = fold
        rows.loc[at, "cross_probability"] = p
        rows.loc[at, "cross_threshold"] = fit["threshold"]
        rows.loc[at, "cross_set"] = ["|".join(fit["conformal"].prediction_set(v, fit["threshold"])) for v in p]
    return rows


def site_fit(model, table: pd.DataFrame, *, labels: str = "a validation's films", sensitivity: float = 0.95,
             policy: str = "sensitivity", folds: int = DEFAULT_FOLDS, seed: int = 0, alpha: float = 0.1,
             n_boot: int = 1000) -> tuple[dict, dict, pd.DataFrame]:
    """Fit `model`'s networks to a site's films, and measure the fit honestly. Writes nothing.

    Parameters
    ----------
    model : model.Model
    table : pandas.DataFrame
        The films' rows, as `assess_label_list` makes them (or a validation's films.csv).
    sensitivity, policy : float, {"sensitivity", "youden"}
        How the threshold is chosen on the site's films.
    folds : int
        Folds by patient for the cross-fitted figures.

    Returns
    -------
    fit : dict
        temperature, bias, threshold and the conformal rule, fitted on every counted film.
    site : dict
        Counts, warnings, and the figures "before" (the run as it is) and "cross_fitted".
    rows : pandas.DataFrame
        The films the fit used.

    Raises
    ------
    SiteError
        With fewer than MIN_PER_CLASS films of a class, or settings it cannot use.
    """
    if policy not in ("sensitivity", "youden"):
        raise SiteError(f"The threshold policy is 'sensitivity' or 'youden', not {policy!r}.")
    if not 0.5 <= float(sensitivity) < 1:
        raise SiteError(f"The target sensitivity is a fraction between 0.5 and 1 (0.95 for 95 %); got {sensitivity}.")
    # Films the networks were trained on would teach the calibration their overconfidence.
    table = mark_included(table, exclude_seen=("training",))
    counts = counts_of(table)
    check_enough({name: c["included"] for name, c in counts.items()})
    crossed = cross_fit(table, folds=folds, seed=seed, sensitivity=sensitivity, policy=policy, alpha=alpha)
    rows = table[table["included"]]
    fit = fit_site(rows["label"].to_numpy(int), rows["uncalibrated"].to_numpy(np.float64),
                   sensitivity=sensitivity, policy=policy, alpha=alpha)
    site = {"labels": labels, "labels_sha256": labels_digest(table), "counts": counts,
            "folds": int(crossed["fold"].max()) + 1, "sensitivity_target": float(sensitivity), "policy": policy,
            "left_out_training_films": int(table["seen_in"].eq("training").sum()),
            "before": figures(table, n_boot=n_boot, seed=seed),
            "cross_fitted": figures(crossed, probability="cross_probability",
                                    threshold=crossed["cross_threshold"].to_numpy(), sets="cross_set",
                                    n_boot=n_boot, seed=seed),
            "warnings": _warnings(table, counts, run_id=model.run_id, fitting=True)}
    return fit, site, rows


def recalibrate(run, labels: str | os.PathLike | None = None, *, out: str | os.PathLike,
                root: str | os.PathLike | None = None, table: pd.DataFrame | None = None,
                sensitivity: float = 0.95, policy: str = "sensitivity", folds: int = DEFAULT_FOLDS, seed: int = 0,
                alpha: float = 0.1, n_boot: int = 1000, workers: int = 0, progress: Progress | None = None) -> dict:
    """Fit `run` to a site's films without retraining and write the derived run `out`.

    Parameters
    ----------
    run : str, os.PathLike, runs.Run or model.Model
    labels : str or os.PathLike, optional
        The site's label list (as `validate` reads it); or give `table`.
    out : str or os.PathLike
        A new run id in the models folder `root`, or a folder path; never overwritten.
    table : pandas.DataFrame, optional
        The films' rows from a validation (films.csv) instead of scoring `labels` again.

    Returns
    -------
    dict
        The new run's id and path, its calibration and threshold, and the site figures
        (cross-fitted) as `site_fit` gives them.

    Raises
    ------
    SiteError
        As `site_fit`, or when `out` exists; settings.ViewerModeError in viewer mode.
    """
    from xray_core import site_run
    from xray_core.model import load_model

    settings.refuse_writes("recalibrate")
    target = site_run.resolve_out(out, root=root)  # refused before any film is scored
    model = load_model(run, root=root)
    if table is None:
        if labels is None:
            raise SiteError("Give the site's label list (a folder, zip or CSV) or a validation's films table.")
        table = assess_label_list(model, read_labels(labels), workers=workers, progress=progress)
    fit, site, rows = site_fit(model, table, labels=Path(labels).name if labels is not None else "a validation's films",
                               sensitivity=sensitivity, policy=policy, folds=folds, seed=seed, alpha=alpha,
                               n_boot=n_boot)
    path = site_run.write_derived_run(target, model, fit=fit, site=site, fitting_hashes=rows["sha256"].tolist())
    return {"kind": "recalibration", "run": path.name, "path": str(path), "parent": model.run_id,
            "temperature": fit["temperature"], "bias": fit["bias"], "threshold": fit["threshold"], **site}


# ------------------------------------------------------------------------------ the commands


@contextlib.contextmanager
def _progress(quiet: bool):
    """A progress callback drawing a tqdm bar of the films assessed on stderr (None when `quiet`);
    the bar is closed on leaving, also on an error."""
    if quiet:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(unit="film", file=sys.stderr, dynamic_ncols=True, desc="assessing films")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    try:
        yield update
    finally:
        bar.close()


def _workers(args) -> int:
    from xray_core.scoring.decoding import default_workers

    return default_workers() if args.workers is None else args.workers


def _cmd_validate(args) -> int:
    """`xray validate RUN LABELS` (its options: cli.py)."""
    from xray_core import site_report
    from xray_core.console import json_line, run_ref

    with _progress(args.quiet or args.json) as update:
        report = validate(run_ref(args.run), args.labels, root=args.runs_dir, out=args.out_dir,
                          exclude_seen=args.exclude_seen, workers=_workers(args), progress=update)
    if args.json:
        json_line(report)
    else:
        print("\n".join(site_report.summary_lines(report)))
    return 0


def _cmd_recalibrate(args) -> int:
    """`xray recalibrate RUN LABELS --out NEW_RUN` (its options: cli.py)."""
    from xray_core import site_report
    from xray_core.console import json_line, run_ref

    with _progress(args.quiet or args.json) as update:
        result = recalibrate(run_ref(args.run), args.labels, out=args.out, root=args.runs_dir,
                             sensitivity=args.sensitivity, policy=args.policy, folds=args.folds,
                             workers=_workers(args), progress=update)
    if args.json:
        json_line(result)
    else:
        print("\n".join(site_report.recalibration_lines(result)))
    return 0
