"""Validate on your own films and recalibrate for a site (issue 26): the figures, the label lists,
the refusals, the derived run and its provenance, viewer mode, and the pages that list the run.

The tiny run (16 px, one epoch) scores a synthetic site of 128 px films (large enough for the
input check); the real films' check of the calibration is in test_site_real.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from tests.synthetic import make_synthetic_dataset
from xray_core import metrics, site, stress

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xray_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="module")
def site_films(tmp_path_factory) -> Path:
    """A synthetic site: 30 NORMAL and 30 PNEUMONIA films of 128 px (two films per patient)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("site") / "site", n_train=(30, 30), n_val=(0, 0),
                                  n_test=(0, 0), size=128, seed=5)


@pytest.fixture(scope="module")
def models(tiny_run, tmp_path_factory) -> Path:
    """A models folder of this module's own: a copy of the tiny run, beside which runs are written."""
    runs_root, run_id = tiny_run
    folder = tmp_path_factory.mktemp("site_models")
    shutil.copytree(runs_root / run_id, folder / run_id)
    return folder


@pytest.fixture(scope="module")
def derived(models, site_films, tiny_run) -> Path:
    """A site-calibrated run of the tiny run, fitted on the synthetic site."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("XRAY_MODE", raising=False)
        result = site.recalibrate(models / tiny_run[1], site_films, out="tiny-site", root=models)
    return Path(result["path"])


# ------------------------------------------------------------------------------ metrics.site_figures


def scores(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)


def test_site_figures_estimates_are_sklearns_and_the_stress_modules():
    y, s = scores()
    found = metrics.site_figures(y, s, threshold=0.5, n_boot=200)
    pred = s >= 0.5
    expected = {"accuracy": skm.accuracy_score(y, pred), "sensitivity": skm.recall_score(y, pred),
                "specificity": skm.recall_score(1 - y, ~pred), "ppv": skm.precision_score(y, pred),
                "npv": skm.precision_score(1 - y, ~pred), "roc_auc": skm.roc_auc_score(y, s),
                "brier": skm.brier_score_loss(y, s),
                "ece": stress.expected_calibration_error(y, s, n_bins=15)[0]}
    for name, value in expected.items():
        assert found[name]["estimate"] == pytest.approx(value, abs=1e-12), name
        assert found[name]["low"] <= value <= found[name]["high"], name
    assert (found["n"], found["clusters"], found["n_clusters"]) == (300, "films", 300)
    # one threshold per film (cross-fitted verdicts): each film judged at its own
    t = np.where(np.arange(300) % 2 == 0, 0.3, 0.7)
    per_film = metrics.site_figures(y, s, threshold=t, n_boot=50)
    assert per_film["sensitivity"]["estimate"] == pytest.approx(skm.recall_score(y, s >= t))
    with pytest.raises(metrics.MetricsInputError, match="one per film"):
        metrics.site_figures(y, s, threshold=t[:10])
    with pytest.raises(metrics.MetricsInputError, match="one patient id per film"):
        metrics.site_figures(y, s, threshold=0.5, groups=["a"] * 10)


def test_site_figures_resample_patients_with_all_their_films():
    """Two identical films per patient: resampling patients gives the intervals of one film per
    patient (the same draws), where resampling films pretends twice the evidence."""
    y, s = scores(200, seed=1)
    one = metrics.site_figures(y, s, threshold=0.5, n_boot=400, seed=3)
    twice = metrics.site_figures(np.repeat(y, 2), np.repeat(s, 2), threshold=0.5, n_boot=400, seed=3,
                                 groups=np.repeat([f"p{i:03d}" for i in range(200)], 2))
    assert (twice["clusters"], twice["n_clusters"], twice["n"]) == ("patients", 200, 400)
    for name in metrics.SITE_FIGURES:
        assert twice[name]["low"] == pytest.approx(one[name]["low"]), name
        assert twice[name]["high"] == pytest.approx(one[name]["high"]), name
    naive = metrics.site_figures(np.repeat(y, 2), np.repeat(s, 2), threshold=0.5, n_boot=400, seed=3)
    width = lambda f: f["sensitivity"]["high"] - f["sensitivity"]["low"]  # noqa: E731
    assert width(naive) < 0.85 * width(twice)


# ------------------------------------------------------------------------------ label lists


def test_label_lists_from_a_folder_a_zip_and_a_csv(tmp_path):
    films = {"site/2024/NORMAL/IM-0001-0001.jpeg": 0, "site/2024/NORMAL/IM-0001-0002.jpeg": 0,
             "site/2024/pneumonia/deeper/person7_bacteria_1.jpeg": 1, "site/NORMAL/scan.dcm": 0}
    for name in list(films) + ["site/notes.png", "site/2024/other/x.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"not decoded here")
    found = site.read_labels(tmp_path / "site")
    got = {Path(i.path).relative_to(tmp_path).as_posix(): y for i, y in zip(found.items, found.labels)}
    assert got == films  # the nearest NORMAL/PNEUMONIA folder, any case, any depth; the rest left out
    assert dict(zip(got, found.patients)) == {"site/2024/NORMAL/IM-0001-0001.jpeg": "0001",
                                              "site/2024/NORMAL/IM-0001-0002.jpeg": "0001",
                                              "site/2024/pneumonia/deeper/person7_bacteria_1.jpeg": "person7",
                                              "site/NORMAL/scan.dcm": None}
    assert "1 films without one" in found.patients_from

    archive = tmp_path / "site.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in films:
            zf.write(tmp_path / name, name)
    zipped = site.read_labels(archive)
    assert sorted(zipped.labels) == sorted(films.values()) and all("site.zip!site/" in i.path for i in zipped.items)

    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "site.csv"
    listing.write_text("Path,Label,Patient\n../site/2024/NORMAL/IM-0001-0001.jpeg,normal,A\n"
                       f"{tmp_path / 'site/NORMAL/scan.dcm'},0,\n\n"
                       "../site/2024/pneumonia/deeper/person7_bacteria_1.jpeg,PNEUMONIA,B\n"
                       "../site/missing.png,1,C\n")
    from_csv = site.read_labels(listing)
    assert from_csv.labels == [0, 0, 1, 1]
    assert from_csv.patients == ["A", None, "B", "C"]
    assert from_csv.items[0].path == str(tmp_path / "lists" / "../site/2024/NORMAL/IM-0001-0001.jpeg")
    assert from_csv.items[3].missing and "cannot be read" in from_csv.items[3].missing
    assert from_csv.patients_from.startswith("the CSV's patient column")

    for text, match in (("path,label\na.png,maybe\n", "line 2: the label 'maybe'"),
                        ("file,class\na.png,NORMAL\n", "needs a header line with the columns path and label"),
                        ("path,label\na.png,NORMAL\na.png,PNEUMONIA\n", "listed twice with different labels"),
                        ("path,label\n", "lists no films")):
        listing.write_text(text)
        with pytest.raises(site.SiteError, match=match):
            site.read_labels(listing)
    with pytest.raises(site.SiteError, match="holds no films in NORMAL or PNEUMONIA folders"):
        site.read_labels(tmp_path / "site" / "2024" / "other")
    with pytest.raises(site.SiteError, match="does not exist"):
        site.read_labels(tmp_path / "nowhere")


# ------------------------------------------------------------------------------ refusals


def films_table(n_normal: int, n_pneumonia: int, seed: int = 0) -> pd.DataFrame:
    """Rows as site.assess_label_list makes them, for films the networks rank with some overlap."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_normal, int), np.ones(n_pneumonia, int)]
    u = 1 / (1 + np.exp(-rng.normal(-1.5 + 3 * y, 1.0)))
    n = len(y)
    return pd.DataFrame({
        "path": [f"f{i}.png" for i in range(n)], "sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)],
        "label": y, "patient": [f"p{i // 2}" for i in range(n)], "error": "", "probability": u, "uncalibrated": u,
        "verdict": np.where(u >= 0.5, "PNEUMONIA", "NORMAL"), "threshold": 0.5, "in_distribution": True,
        "gate_warnings": "", "prediction_set": "", "seen_in": ""})


def test_recalibration_is_refused_under_20_films_of_a_class_and_intervals_called_wide_under_50(models, tiny_run):
    from xray_core.model import load_model

    model = load_model(models / tiny_run[1])
    with pytest.raises(site.SiteError) as refused:
        site.site_fit(model, films_table(19, 80))
    assert "at least 20 films of each class" in str(refused.value)
    assert "19 NORMAL and 80 PNEUMONIA" in str(refused.value) and "at least 1 more NORMAL" in str(refused.value)
    with pytest.raises(site.SiteError, match="0 NORMAL and 5 PNEUMONIA.*20 more NORMAL and 15 more PNEUMONIA"):
        site.site_fit(model, films_table(0, 5))
    table = films_table(20, 80)
    table.loc[0, "seen_in"] = "training"  # a film the networks trained on: left out, so 19 remain
    with pytest.raises(site.SiteError, match="19 NORMAL"):
        site.site_fit(model, table)
    fit, found, rows = site.site_fit(model, films_table(20, 80))
    assert len(rows) == 100 and 0 < fit["threshold"] < 1 and fit["temperature"] > 0
    assert any("Only 20 NORMAL films" in w and "wide" in w for w in found["warnings"])
    _, found, _ = site.site_fit(model, films_table(50, 80))
    assert not any("wide" in w for w in found["warnings"])
    # the cross-fitted rows: every film measured once, by a fold fitted without it
    crossed = site.cross_fit(site.mark_included(films_table(50, 80)), folds=5)
    assert sorted(crossed["fold"].unique()) == [0, 1, 2, 3, 4]
    by_patient = crossed.groupby("patient")["fold"].nunique()
    assert (by_patient == 1).all()  # a patient's films in one fold only
    assert crossed["cross_threshold"].nunique() == 5


def test_recalibrate_command_refuses_a_site_with_too_few_films(models, tiny_run, tmp_path):
    small = make_synthetic_dataset(tmp_path / "small", n_train=(10, 30), n_val=(0, 0), n_test=(0, 0), size=128,
                                   seed=9)
    proc = cli("recalibrate", tiny_run[1], str(small), "--out", "too-few", "--runs-dir", str(models),
               "--workers", "0", "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert "error: Recalibration needs at least 20 films of each class" in proc.stderr
    assert "10 NORMAL and 30 PNEUMONIA" in proc.stderr and "at least 10 more NORMAL" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (models / "too-few").exists()


# ------------------------------------------------------------------------------ validate


def recomputed(films: pd.DataFrame) -> dict:
    """The figures of a films.csv, recomputed here with scikit-learn and numpy (not xray_core)."""
    rows = films[films["included"] == True]  # noqa: E712 - the CSV's flag column
    y, p, t = rows["label"].to_numpy(int), rows["probability"].to_numpy(float), rows["threshold"].to_numpy(float)
    pred = p >= t
    bins = np.clip(np.ceil(p * 15).astype(int) - 1, 0, 14)  # (k/15, (k+1)/15], 0 in the first
    ece = sum(abs((p[bins == b] - y[bins == b]).sum()) for b in range(15)) / len(y)
    return {"accuracy": skm.accuracy_score(y, pred), "sensitivity": skm.recall_score(y, pred),
            "specificity": skm.recall_score(1 - y, ~pred), "ppv": skm.precision_score(y, pred, zero_division=np.nan),
            "npv": skm.precision_score(1 - y, ~pred, zero_division=np.nan), "roc_auc": skm.roc_auc_score(y, p),
            "ece": ece, "brier": skm.brier_score_loss(y, p),
            "confusion": dict(zip(("tn", "fp", "fn", "tp"), skm.confusion_matrix(y, pred, labels=[0, 1]).ravel().tolist()))}


def check_printed_figures(report: dict, films: pd.DataFrame) -> None:
    expected = recomputed(films)
    assert report["confusion"] == expected.pop("confusion")
    for name, value in expected.items():
        shown = report["figures"][name]["estimate"]
        assert (shown is None and np.isnan(value)) or shown == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_validate_prints_the_figures_its_per_film_csv_gives(models, site_films, tiny_run, tmp_path):
    out = tmp_path / "report"
    proc = cli("validate", tiny_run[1], str(site_films), "--runs-dir", str(models), "--out-dir", str(out), "--json",
               "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON line
    report = json.loads(lines[0])
    films = pd.read_csv(out / "films.csv", keep_default_na=False, na_values=[""])
    assert len(films) == 60 and films["included"].all() and films["sha256"].str.len().eq(64).all()
    check_printed_figures(report, films)
    assert report["counts"]["NORMAL"] == {"listed": 30, "unreadable": 0, "gate_refused": 0, "seen": 0, "included": 30}
    assert (report["clusters"], report["n_clusters"]) == ("patients", 30)  # two films per patient
    assert any("wide" in w for w in report["warnings"])  # 30 of a class
    saved = json.loads((out / "validation.json").read_text())
    assert saved["figures"] == report["figures"]
    assert {p.name for p in out.iterdir()} == {"validation.json", "films.csv", "roc.png", "reliability.png",
                                               "confusion.png", "report.pdf"}
    from pypdf import PdfReader

    text = "".join(page.extract_text() for page in PdfReader(out / "report.pdf").pages)
    assert text.count("Research software, not a medical device") == 1
    assert f"sensitivity {report['figures']['sensitivity']['estimate']:.3f}" in " ".join(text.split())

    printed = cli("validate", tiny_run[1], str(site_films), "--runs-dir", str(models), "--workers", "0", "--quiet")
    assert printed.returncode == 0, printed.stderr
    for name, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("roc_auc", "ROC AUC"),
                        ("ece", "calibration error (ECE, 15 bins)"), ("brier", "Brier score")):
        figure = report["figures"][name]
        assert f"{label.ljust(32)}  {figure['estimate']:.3f} ({figure['low']:.3f}-{figure['high']:.3f})" in printed.stdout
    assert printed.stdout.count("Research software, not a medical device") == 1


def test_validate_says_why_no_film_counts(models, tiny_run, synthetic_dataset):
    """The session's synthetic films are 48 px: the input check refuses every one, and says so."""
    proc = cli("validate", tiny_run[1], str(synthetic_dataset / "test"), "--runs-dir", str(models), "--workers", "0",
               "--quiet")
    assert proc.returncode == 1
    assert "error: None of the 16 films can count in the figures: 16 refused by the input check." in proc.stderr
    assert "at least 96 pixels" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ the derived run


def test_a_recalibrated_run_references_its_parent_and_records_its_provenance(derived, models, site_films, tiny_run):
    from xray_core import case, runs
    from xray_core.model import load_model

    files = {p.name: p.stat().st_size for p in derived.iterdir()}
    assert set(files) == {"model.json", "config.json", "status.json", "metrics.json", "conformal.json",
                          "seen_hashes.txt", "MODEL_CARD.md"}
    assert not any(name.endswith((".keras", ".tflite", ".npz")) for name in files)  # no weight copied
    assert sum(files.values()) < 100_000
    spec = json.loads((derived / "model.json").read_text())
    assert spec["parent"] == f"../{tiny_run[1]}"
    prov = spec["provenance"]
    validation = site.validate(models / tiny_run[1], site_films, n_boot=50)
    assert prov["parent_run"] == tiny_run[1] and prov["labels"] == site_films.name
    assert prov["labels_sha256"] == validation["labels_sha256"] and len(prov["labels_sha256"]) == 64
    assert prov["films"] == {"NORMAL": 30, "PNEUMONIA": 30} and prov["folds"] == 5
    assert prov["policy"].startswith("highest specificity with sensitivity >= 0.95")
    assert prov["date"][:4].isdigit() and prov["xray_core"]
    config = json.loads((derived / "config.json").read_text())
    assert config["derived_from"]["run"] == tiny_run[1] and config["run_id"] == "tiny-site"
    assert json.loads((derived / "status.json").read_text())["state"] == "completed"

    parent, model = load_model(models / tiny_run[1]), load_model(derived)
    assert model.networks_dir == parent.path and model.n_members == parent.n_members
    assert (model.threshold, model.temperature, model.bias) == (spec["threshold"], spec["temperature"], spec["bias"])
    film = next(site_films.rglob("*.jpeg"))
    a, b = case.assess(parent, film), case.assess(model, film)
    assert b.uncalibrated == pytest.approx(a.uncalibrated, abs=1e-9)  # the same networks
    from xray_core.model import calibrate

    assert b.probability == pytest.approx(float(calibrate(a.uncalibrated, spec["temperature"], spec["bias"])))
    assert b.seen_in == site.SITE_TOKEN and a.seen_in is None
    from app import diagnose_view

    assert "site calibration was fitted on" in diagnose_view.seen_caption(b)
    lines = (derived / "seen_hashes.txt").read_text().splitlines()
    assert len(lines) == 60 and all(len(h) == 32 and t == site.SITE_TOKEN for h, t in (ln.split(" ") for ln in lines))

    listed = {r.run_id: r for r in runs.list_runs(models)}
    assert listed["tiny-site"].state == "completed"
    from app import common

    assert "tiny-site" in [r.run_id for r in common.usable_runs(listed.values())]
    proc = cli("runs", "--runs-dir", str(models))
    assert proc.returncode == 0 and any(line.startswith("tiny-site ") for line in proc.stdout.splitlines())

    metrics_json = json.loads((derived / "metrics.json").read_text())
    assert metrics_json["validation"]["n"] == 60 and metrics_json["calibration"]["cross_fitted"] is True
    assert metrics_json["parent"]["run_id"] == tiny_run[1]
    card = (derived / "MODEL_CARD.md").read_text()
    assert card.count("Research software, not a medical device") == 1
    assert "cross-fitted" in card and f"`{tiny_run[1]}` on its validation" in card

    # validate on the fitting films says so plainly, and leaving them out leaves nothing to measure
    again = site.validate(derived, site_films, n_boot=50)
    assert any("60 of these films were used to fit this run's site calibration" in w for w in again["warnings"])
    with pytest.raises(site.SiteError, match="60 seen by the run"):
        site.validate(derived, site_films, exclude_seen=True, n_boot=50)
    # a run is never overwritten
    with pytest.raises(site.SiteError, match="already exists"):
        site.recalibrate(models / tiny_run[1], site_films, out="tiny-site", root=models)


def test_viewer_mode_refuses_recalibrate_and_a_validation_report_but_prints_figures(models, site_films, tiny_run,
                                                                                   tmp_path, monkeypatch):
    viewer = {"XRAY_MODE": "viewer"}
    proc = cli("recalibrate", tiny_run[1], str(site_films), "--out", "viewer-site", "--runs-dir", str(models),
               env=viewer)
    assert proc.returncode == 1 and "`recalibrate` writes a site-calibrated run" in proc.stderr
    assert "viewer mode" in proc.stderr and not (models / "viewer-site").exists()
    proc = cli("validate", tiny_run[1], str(site_films), "--out-dir", str(tmp_path / "r"), "--runs-dir", str(models),
               env=viewer)
    assert proc.returncode == 1 and "Leave --out-dir out to print the figures only" in proc.stderr
    assert not (tmp_path / "r").exists()
    proc = cli("validate", tiny_run[1], str(site_films), "--runs-dir", str(models), "--workers", "0", "--quiet",
               env=viewer)
    assert proc.returncode == 0, proc.stderr
    assert "60 films counted" in proc.stdout
    monkeypatch.setenv("XRAY_MODE", "viewer")
    from xray_core import settings

    with pytest.raises(settings.ViewerModeError):
        site.recalibrate(models / tiny_run[1], site_films, out="viewer-site", root=models)


def test_a_recalibrated_runs_figures_are_read_as_the_sites_cross_fitted_ones(derived, models, tiny_run):
    """The report's and Diagnose's context lines, and the model pickers, say what a derived run is."""
    from app import common
    from xray_core import report, runs
    from xray_core.model import load_model

    model = load_model(derived)
    lines = report.context_lines(model.metrics)
    site_line = next(line for line in lines if "cross-fitted" in line)
    assert site_line.startswith("The site's films, cross-fitted (60 films, 5 folds by patient")
    assert f"{model.metrics['validation']['sensitivity']:.3f}" in site_line and f"{tiny_run[1]}'s" in site_line
    assert not any("same hospital" in line for line in lines)
    assert any("same hospital" in line for line in report.context_lines(load_model(models / tiny_run[1]).metrics))
    listed = {r.run_id: r for r in runs.list_runs(models)}
    assert common.run_label(listed["tiny-site"]) == f"tiny-site — {tiny_run[1]} recalibrated on 60 films of a site"
