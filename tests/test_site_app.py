"""AppTest of the Validate page (a real background validation, the figures, saving a
site-calibrated run; viewer mode) and of Compare and Diagnose listing a site-calibrated run."""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from tests.apptest_helpers import open_page, wait_for
from tests.synthetic import make_synthetic_dataset
from xray_core import runs, site, site_job


@pytest.fixture
def folders(tiny_run, tmp_path):
    """(data folder holding a labelled site, models folder with a copy of the tiny run)."""
    runs_root, run_id = tiny_run
    models = tmp_path / "models"
    shutil.copytree(runs_root / run_id, models / run_id)
    data = tmp_path / "data"
    make_synthetic_dataset(data / "site", n_train=(24, 24), n_val=(0, 0), n_test=(0, 0), size=128, seed=11)
    return data, models, run_id


def text_of(at) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "warning", "info", "success", "error")
                     for e in getattr(at, kind))


def run_validation(at, folder: Path) -> dict:
    at.text_input(key="validate_folder").set_value(str(folder))
    started = time.monotonic()
    at.button(key="validate_start").click().run()
    assert time.monotonic() - started < 20, "starting a validation must not wait for it"
    assert not at.exception and not at.error, text_of(at)
    job = site_job.list_jobs()[0]
    wait_for(lambda: site_job.job_info(job["path"])["state"] == "completed")
    at.run()
    assert not at.exception, at.exception
    return job


@pytest.mark.slow  # starts a validation job's process
def test_validate_page_runs_in_the_background_and_saves_a_site_calibrated_run(monkeypatch, folders):
    data, models, run_id = folders
    at = open_page(monkeypatch, data, models, "pages/validate.py", timeout=120)
    assert "Research software, not a medical device" in text_of(at)
    job = run_validation(at, data / "site")
    report = json.loads((Path(job["path"]) / "report" / "validation.json").read_text())
    assert report["n"] == 48
    figures = at.dataframe[0].value.set_index("figure")
    shown = figures.loc["sensitivity", "estimate (95 % interval)"]
    assert shown.startswith(f"{report['figures']['sensitivity']['estimate']:.3f} (")
    assert any("48 films counted" in m.value for m in at.markdown)
    assert any("wide" in w.value for w in at.warning)  # 24 of a class
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Reliability diagram" in spec for spec in charts) and any("ROC curve" in spec for spec in charts)
    side = at.dataframe[1].value.set_index("figure")
    assert list(side.columns) == [f"{run_id} as it is", "site-calibrated (cross-fitted)"]
    at.text_input(key="validate_name").set_value("site-from-page")
    at.button(key="validate_save").click().run()
    assert not at.exception, at.exception
    assert any("Saved as site-from-page" in s.value for s in at.success), text_of(at)
    spec = json.loads((models / "site-from-page" / "model.json").read_text())
    assert spec["parent"] == f"../{run_id}" and spec["provenance"]["films"] == {"NORMAL": 24, "PNEUMONIA": 24}
    saved = json.loads((models / "site-from-page" / "metrics.json").read_text())
    # the figures beside the button are the saved run's
    assert side.loc["specificity", "site-calibrated (cross-fitted)"].startswith(
        f"{saved['validation']['specificity']:.3f}")


@pytest.mark.slow  # starts a validation job's process
def test_validate_page_in_viewer_mode_shows_results_but_saves_no_run(monkeypatch, folders):
    data, models, run_id = folders
    monkeypatch.setenv("XRAY_MODE", "viewer")
    at = open_page(monkeypatch, data, models, "pages/validate.py", timeout=120)
    assert at.radio(key="validate_source").options == ["A labelled folder on the server"]  # no upload
    run_validation(at, data / "site")
    assert at.dataframe[0].value.shape[0] == 8
    assert any("switched off on this server (viewer mode)" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "validate_save"]
    assert [p.name for p in models.iterdir()] == [run_id]
    with pytest.raises(site.SiteError, match="viewer mode"):
        site_job.submit(run_id, models, upload=b"PK\x03\x04 a zip")


@pytest.mark.slow  # starts a validation job's process
def test_a_zip_upload_is_removed_when_its_validation_ends(monkeypatch, folders):
    data, models, run_id = folders
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted((data / "site").rglob("*.jpeg")):
            zf.write(path, path.relative_to(data).as_posix())
    job_id = site_job.submit(run_id, models, upload=buf.getvalue(), upload_name="site.zip")
    job = site_job.job_info(site_job.jobs_root() / job_id)
    upload = Path(job["upload_folder"])
    assert (upload.stat().st_mode & 0o777) == 0o700
    wait_for(lambda: site_job.job_info(job["path"])["state"] in ("completed", "failed"))
    job = site_job.job_info(job["path"])
    assert job["state"] == "completed", job.get("error")
    assert not upload.exists()
    report = json.loads((Path(job["path"]) / "report" / "validation.json").read_text())
    assert report["n"] == 48 and report["labels"] == "site.zip"  # provenance names the user's file
    with pytest.raises(site.SiteError, match="not a zip file"):
        site_job.submit(run_id, models, upload=b"GIF89a", upload_name="x.gif")
    with pytest.raises(site.SiteError, match="holds no films in NORMAL or PNEUMONIA folders"):
        site_job.submit(run_id, models, models)


def test_compare_and_diagnose_list_a_site_calibrated_run(monkeypatch, folders):
    data, models, run_id = folders
    site.recalibrate(models / run_id, data / "site", out="tiny-site", root=models)
    at = open_page(monkeypatch, data, models, "pages/compare.py", timeout=180)
    assert sorted(at.multiselect(key="compare_runs").value) == sorted([run_id, "tiny-site"])
    table = [f.value for f in at.dataframe if "sensitivity" in getattr(f.value, "columns", [])][0].set_index("run")
    saved = json.loads((models / "tiny-site" / "metrics.json").read_text())
    assert table.loc["tiny-site", "sensitivity"] == pytest.approx(saved["validation"]["sensitivity"])
    assert table.loc["tiny-site", "operating threshold"] == pytest.approx(saved["threshold"])
    at = open_page(monkeypatch, data, models, None, timeout=120)
    labels = [o for o in at.selectbox(key="diagnose_run").options if o.startswith("tiny-site — ")]
    assert labels == [f"tiny-site — {run_id} recalibrated on 48 films of a site"], at.selectbox(key="diagnose_run").options
    assert [r.run_id for r in runs.list_runs(models)] == [run_id, "tiny-site"]
