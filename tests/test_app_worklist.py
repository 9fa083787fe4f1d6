"""AppTest of the Worklist page: a real background scoring job, the sorted table, Diagnose, resume."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.apptest_helpers import open_page, wait_for
from tests.test_scoring import add_bad_files, make_films, read_rows
from xray_core import fileio, scoring


@pytest.fixture
def worklist(monkeypatch, tiny_run, tmp_path):
    """The Worklist page with a writable models folder (a copy of the tiny run) and 30 films
    (plus 3 bad files) under the data folder, which is an allowed root."""
    runs_root, run_id = tiny_run
    models = tmp_path / "models"
    shutil.copytree(runs_root / run_id, models / run_id)
    data = tmp_path / "data"
    films = data / "night"
    make_films(films, 30)
    add_bad_files(films)
    at = open_page(monkeypatch, data, models, "pages/worklist.py", timeout=120)
    return at, models, films


def only_job(models):
    jobs = scoring.list_jobs(models)
    assert len(jobs) == 1
    return jobs[0]


@pytest.mark.slow
def test_folder_job_runs_in_background_and_table_puts_urgent_films_first(worklist):
    at, models, films = worklist
    at.text_input(key="worklist_folder").set_value(str(films))
    started = time.monotonic()
    at.button(key="worklist_start").click().run()
    assert time.monotonic() - started < 20, "starting a job must not wait for the scoring"
    assert not at.exception and not at.error
    job = only_job(models)
    assert job["state"] in ("queued", "starting", "running", "completed")
    wait_for(lambda: scoring.job_info(job["path"])["state"] == "completed")
    at.run()
    assert not at.exception
    assert any("Completed: 33 films (3 unreadable)" in s.value for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Scored"] == "33" and metrics["Unreadable"] == "3"
    table = at.dataframe[0].value
    assert len(table) == 33
    priority = ["flag" if v == "PNEUMONIA" or u or g == "check the film" else ("error" if e else "rest")
                for v, u, g, e in zip(table["verdict"], table["uncertain"], table["gate"], table["error"])]
    order = {"flag": 0, "error": 1, "rest": 2}
    assert [order[p] for p in priority] == sorted(order[p] for p in priority)
    assert int(metrics["PNEUMONIA"]) == int((table["verdict"] == "PNEUMONIA").sum()) > 0
    flagged = table[[p == "flag" for p in priority]]["probability"].tolist()
    assert flagged == sorted(flagged, reverse=True)
    assert table["thumbnail"].iloc[0].startswith("data:image/png;base64,")
    assert at.get("download_button")  # the CSV download is offered
    # one row per file in the job's own CSV, as the command line writes it
    rows = read_rows(models / scoring.WORKLISTS_DIR / job["job_id"] / scoring.JOB_SCORES)
    assert len({r["path"] for r in rows}) == len(rows) == 33

    # open the first readable film in Diagnose
    first = at.selectbox(key="worklist_open_choice")
    name = table.loc[first.value, "file"]
    at.button(key="worklist_open").click().run()
    assert not at.exception
    assert at.session_state["diagnose_open"]["name"] == name
    assert any(f"From the worklist: {name}" in i.value for i in at.info)


def test_folder_outside_the_allowed_roots_is_refused(worklist, tmp_path_factory):
    at, models, _ = worklist
    outside = tmp_path_factory.mktemp("elsewhere")
    at.text_input(key="worklist_folder").set_value(str(outside))
    at.button(key="worklist_start").click().run()
    assert at.error and "outside the allowed folders" in at.error[0].value
    assert scoring.list_jobs(models) == []


@pytest.mark.slow
def test_interrupted_job_resumes_from_its_scores(worklist, tiny_run):
    at, models, films = worklist
    run_id = tiny_run[1]
    job_dir = scoring.new_job_dir(models)
    job_id = scoring.submit_job(models, run_id, films, job_dir=job_dir, start=False)
    # what a killed job leaves: part of its scores and a status naming a dead process
    half = sorted(p for p in films.rglob("*.jpeg"))[:10]
    listing = job_dir / "half.txt"
    listing.write_text("".join(f"{p}\n" for p in half))
    scoring.score(run_id, listing, job_dir / scoring.JOB_SCORES, root=models, workers=0, progress=False)
    fileio.atomic_write_json(job_dir / scoring.JOB_STATUS, {"state": "running", "pid": 999999999, "done": 10,
                                                         "total": 33})
    at.run()
    assert any("interrupted" in w.value for w in at.warning)
    at.button(key=f"worklist_resume_{job_id}").click().run()
    wait_for(lambda: scoring.job_info(job_dir)["state"] == "completed")
    summary = scoring.job_info(job_dir)["summary"]
    assert summary["already_scored"] == 10 and summary["scored"] == 23
    rows = read_rows(job_dir / scoring.JOB_SCORES)
    assert len(rows) == len({r["path"] for r in rows}) == 33


def test_uploads_are_saved_under_safe_names(tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    png = (make_films(tmp_path / "src", 1)[0]).read_bytes()
    target = scoring.save_uploads(job_dir, [("../../etc/a.png", png), ("a.png", png), (".hidden.png", png)])
    assert target == job_dir / "input"
    assert sorted(p.name for p in target.iterdir()) == ["a-2.png", "a.png", "hidden.png"]
    with pytest.raises(scoring.ScoreError, match="one zip"):
        scoring.save_uploads(job_dir, [("x.zip", b"PK\x03\x04rest"), ("a.png", png)])
