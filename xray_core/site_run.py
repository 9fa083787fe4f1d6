"""A derived run: a parent's networks with a site's calibration, threshold and prediction sets.

What `site.recalibrate` writes. The folder holds no network: model.json names the parent folder
(`"parent": "../default"`, relative, so the models folder can move) and `Model` reads the
members, input size and LiteRT program from there, and the input gate too. Beside it: config.json
(the parent's, with `derived_from`), status.json (completed), metrics.json (the site's figures,
cross-fitted, beside the parent's), conformal.json (fitted on the site's films), seen_hashes.txt
(the fitting films as `HASH site-calibration`, so Diagnose and `validate` recognise them) and
MODEL_CARD.md. A few tens of KB; the folder appears complete or not at all (written under a
hidden name, then renamed).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from xray_core import fileio, runs
from xray_core.site_labels import SiteError

SITE_TOKEN = "site-calibration"  # seen_hashes.txt's word for a derived run's fitting films (no space)
CARD_FILE = "MODEL_CARD.md"
RESEARCH_LINE = ("**Research software, not a medical device.** Not validated for clinical use; it must not be "
                 "used to diagnose, triage or treat anyone.")
ROWS = (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"), ("npv", "NPV"),
        ("accuracy", "accuracy"), ("roc_auc", "ROC AUC"), ("ece", "calibration error (ECE, 15 bins)"),
        ("brier", "Brier score"))


def resolve_out(out: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """The folder of a new derived run: a run id in the models folder `root`, or a folder path
    (a PathLike, or text with a separator); refused when it already holds something."""
    text = os.fspath(out)
    if isinstance(out, os.PathLike) or "/" in text or os.sep in text:
        path = Path(text).expanduser().absolute()
        runs.validate_run_id(path.name)
    else:
        path = (runs.writable_root(root) / runs.validate_run_id(text)).absolute()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SiteError(f"{path} already exists; a recalibration never overwrites a run. Choose another name "
                        "for --out.")
    return path


def _policy_text(policy: str, sensitivity: float) -> str:
    rule = ("highest specificity with sensitivity >= " + f"{sensitivity:g}" if policy == "sensitivity"
            else "Youden's J (sensitivity + specificity - 1) at its highest")
    return f"{rule} on the site's films"


def _block(cross: dict, threshold: float) -> tuple[dict, dict]:
    """metrics.json's `validation` and `validation_ci95` from the cross-fitted figures."""
    f, c = cross["figures"], cross["confusion"]
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    validation = {"sensitivity": f["sensitivity"]["estimate"], "specificity": f["specificity"]["estimate"],
                  "precision": f["ppv"]["estimate"], "npv": f["npv"]["estimate"],
                  "accuracy": f["accuracy"]["estimate"],
                  "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else None,
                  "roc_auc": f["roc_auc"]["estimate"], **c, "threshold": threshold, "n": cross["n"],
                  "films": "the site's films, cross-fitted by patient"}
    ci = {k: f[k] for k in ("sensitivity", "specificity", "accuracy", "roc_auc")}
    return validation, ci


def _without_curves(figs: dict) -> dict:
    return {k: v for k, v in figs.items() if k != "roc"}


def _parent_block(model) -> dict:
    m = model.metrics
    stress = m.get("stress") if isinstance(m.get("stress"), dict) else {}
    return {"run_id": model.run_id, "validation": m.get("validation"), "validation_ci95": m.get("validation_ci95"),
            "stress": {k: stress[k] for k in ("pooled", "pooled_ci95", "summary") if k in stress} or None,
            "calibration": {"temperature": model.temperature, "bias": model.bias,
                            "ece": (m.get("calibration") or {}).get("ece"),
                            "fitted_on": (m.get("calibration") or {}).get("fitted_on")},
            "threshold": model.threshold, "threshold_policy": model.threshold_policy}


def write_derived_run(target: str | os.PathLike, model, *, fit: dict, site: dict, fitting_hashes) -> Path:
    """Write the derived run folder `target` of `model` (its networks) with a site fit."""
    from xray_core import __version__
    from xray_core.model import SPEC_FILE
    from xray_core.uncertainty import CONFORMAL_FILE

    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise SiteError(f"{target} appeared while the recalibration ran; choose another name for --out.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        now = runs.now_iso()
        policy = _policy_text(site["policy"], site["sensitivity_target"])
        counts = {name: c["included"] for name, c in site["counts"].items()}
        provenance = {"parent_run": model.run_id, "networks": model.networks_dir.name,
                      "labels": site["labels"], "labels_sha256": site["labels_sha256"], "films": counts,
                      "patients": site["cross_fitted"]["n_clusters"], "clusters": site["cross_fitted"]["clusters"],
                      "date": now, "policy": policy, "sensitivity_target": site["sensitivity_target"],
                      "folds": site["folds"], "xray_core": __version__}
        spec = {"parent": os.path.relpath(model.networks_dir, target), "temperature": fit["temperature"],
                "bias": fit["bias"], "threshold": fit["threshold"], "threshold_policy": policy,
                "provenance": provenance}
        fileio.atomic_write_json(tmp / SPEC_FILE, spec)
        config = dict(model.config)
        config.update(run_id=target.name, created=now,
                      derived_from={"run": model.run_id, "kind": "site recalibration", "date": now})
        fileio.atomic_write_json(tmp / runs.CONFIG_FILE, config)
        fileio.atomic_write_json(tmp / runs.STATUS_FILE, {"state": "completed", "updated": now})
        validation, ci = _block(site["cross_fitted"], fit["threshold"])
        cross = site["cross_fitted"]
        metrics = {
            "threshold": fit["threshold"], "threshold_method": site["policy"], "threshold_policy": policy,
            "validation": validation, "validation_ci95": ci,
            "calibration": {"method": "Platt scaling", "temperature": fit["temperature"], "bias": fit["bias"],
                            "fitted_on": f"{sum(counts.values())} site films",
                            "ece": cross["figures"]["ece"]["estimate"],
                            "ece_before": site["before"]["figures"]["ece"]["estimate"],
                            "bins": cross["reliability"], "cross_fitted": True},
            "site": {**{k: v for k, v in site.items() if k not in ("before", "cross_fitted")},
                     "before": _without_curves(site["before"]), "cross_fitted": _without_curves(cross)},
            "parent": _parent_block(model),
        }
        fileio.atomic_write_json(tmp / runs.METRICS_FILE, metrics)
        conformal = fit["conformal"].to_dict()
        fileio.atomic_write_json(tmp / CONFORMAL_FILE, conformal)
        hashes = sorted({h[:32] for h in fitting_hashes if isinstance(h, str) and h})
        fileio.atomic_write_text(tmp / "seen_hashes.txt", "".join(f"{h} {SITE_TOKEN}\n" for h in hashes))
        fileio.atomic_write_text(tmp / CARD_FILE, card(target.name, metrics, spec))
        if target.exists():
            _replace_empty(tmp, target)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace_empty(tmp: Path, target: Path) -> None:
    """An empty folder given as --out: put the run's files in it."""
    for f in tmp.iterdir():
        os.replace(f, target / f.name)
    tmp.rmdir()


def _fmt(figure: dict | None) -> str:
    if not isinstance(figure, dict) or figure.get("estimate") is None or not np.isfinite(figure["estimate"]):
        return "-"
    e, lo, hi = figure["estimate"], figure.get("low"), figure.get("high")
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{e:.3f}"
    return f"{e:.3f} ({lo:.3f}-{hi:.3f})"


def _parent_cell(parent: dict, key: str) -> str:
    validation = parent.get("validation") or {}
    ci = parent.get("validation_ci95") or {}
    value = validation.get({"ppv": "precision"}.get(key, key))
    if key == "ece":
        value = (parent.get("calibration") or {}).get("ece")
    if value is None:
        return "-"
    c = ci.get(key) or {}
    return _fmt({"estimate": value, "low": c.get("low"), "high": c.get("high")})


def card(name: str, metrics: dict, spec: dict) -> str:
    """MODEL_CARD.md of a derived run: the parent's figures and the site's, side by side."""
    site, parent, calib = metrics["site"], metrics["parent"], metrics["calibration"]
    prov = spec["provenance"]
    before, after = site["before"], site["cross_fitted"]
    n = sum(prov["films"].values())
    parent_id = parent["run_id"]
    lines = [
        f"# Model card: `{name}` (a site calibration of `{parent_id}`)", "", f"> {RESEARCH_LINE}", "",
        f"`{name}` runs the networks of `{parent_id}` (referenced, not copied: `{spec['parent']}`) with a "
        f"calibration, an operating threshold and prediction sets fitted on {n} films of one site "
        f"({prov['films']['NORMAL']} NORMAL, {prov['films']['PNEUMONIA']} PNEUMONIA; {prov['patients']} "
        f"{prov['clusters']}), without retraining. Label list `{prov['labels']}`, sha256 "
        f"`{prov['labels_sha256'][:16]}...`; fitted {prov['date'][:10]} with xray_core {prov['xray_core']}.", "",
        "## Figures side by side", "",
        f"| figure | `{parent_id}` on its validation (training hospital) | `{parent_id}` on this site, as shipped "
        f"| `{name}` on this site, cross-fitted |", "|---|---|---|---|"]
    for key, label in ROWS:
        lines.append(f"| {label} | {_parent_cell(parent, key)} | {_fmt(before['figures'][key])} | "
                     f"{_fmt(after['figures'][key])} |")
    sets_before, sets_after = before.get("prediction_sets") or {}, after.get("prediction_sets") or {}
    if sets_after:
        lines.append(f"| 90 % prediction sets: coverage | - | {sets_before.get('coverage', float('nan')):.3f} | "
                     f"{sets_after['coverage']:.3f} |")
        lines.append(f"| 90 % prediction sets: share needing review | - | "
                     f"{sets_before.get('needs_review', float('nan')):.3f} | {sets_after['needs_review']:.3f} |")
    lines.append(f"| operating threshold | {parent['threshold']:.3f} | {parent['threshold']:.3f} | "
                 f"{metrics['threshold']:.3f} (each fold its own) |")
    lines += [
        "", f"In brackets: 95 % bootstrap intervals over {after['clusters']}. The training hospital's column is "
        f"`{parent_id}`'s own validation (its calibration error on its pooled stress validation).",
        "", f"**The site's figures are cross-fitted.** The films were split by patient into {site['folds']} folds; "
        f"each fold was measured with a calibration, threshold and prediction sets fitted on the other "
        f"{site['folds'] - 1}, never on itself. The saved run is fitted on all {n} films, so these figures "
        "estimate how it does on new patients of this site; figures measured on the fitting films themselves "
        "would flatter it.", "",
        "## What was fitted", "",
        f"- Platt scaling of the networks' mean probability, sigmoid(logit(p) / T + b): T = {calib['temperature']:.3f}, "
        f"b = {calib['bias']:.3f} (`{parent_id}`: T = {parent['calibration'].get('temperature') or 1:.3f}, "
        f"b = {parent['calibration'].get('bias') or 0:.3f}).",
        f"- Operating threshold {metrics['threshold']:.3f}: {prov['policy']}.",
        "- 90 % split-conformal prediction sets, on the same films.",
        f"- Left out of the fit: {sum(c['gate_refused'] for c in site['counts'].values())} films the input check "
        f"refused, {sum(c['unreadable'] for c in site['counts'].values())} unreadable, "
        f"{site['left_out_training_films']} that the networks were trained on.",
    ]
    if site.get("warnings"):
        lines += ["", "## Read before use", ""] + [f"- {w}" for w in site["warnings"]]
    lines += ["", "## Limitations", "",
              f"- The networks are `{parent_id}`'s: recalibration moves the probabilities and the threshold but never "
              "reorders films, so the ROC AUC is the networks' own.",
              "- The fit holds for films like these (the same site, machines, period and population); check it "
              "again with `xray validate` when any of them changes.", ""]
    return "\n".join(lines)
