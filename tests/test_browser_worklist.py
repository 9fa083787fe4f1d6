"""End to end in Chromium: the Worklist page scores 120 films in the background, shows them
urgent first, and opens the most urgent one in Diagnose."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.browser_helpers import (CHROMIUM_MISSING, chromium, have_chromium, metric_value, new_page, no_exception,
                                   probability_text, shot, streamlit_server, wait_idle)
from tests.test_scoring import add_bad_files, make_films
from xray_core import scoring

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason=CHROMIUM_MISSING)]

N_FILMS = 120


@pytest.fixture(scope="module")
def worklist_app(tiny_run, tmp_path_factory):
    """A real `streamlit run` whose data folder holds 120 films and 3 bad files."""
    runs_root, run_id = tiny_run
    models = tmp_path_factory.mktemp("worklist_models")
    shutil.copytree(runs_root / run_id, models / run_id)
    films = tmp_path_factory.mktemp("worklist_data") / "night"
    make_films(films, N_FILMS, size=128)  # large enough for the input gate's size check
    add_bad_files(films)
    env = dict(os.environ, XRAY_DATA_DIR=str(films), XRAY_MODELS_DIR=str(models),
               XRAY_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "xray_cache"))
    with streamlit_server(env=env, log_path=tmp_path_factory.getbasetemp() / "streamlit_worklist.log") as base:
        yield base, models, films


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def test_worklist_in_a_real_browser(worklist_app, browser):
    base, models, films = worklist_app
    context, page = new_page(browser)
    page.goto(base)  # the entry script registers the pages (st.navigation) on its first run
    page.get_by_text("Research software, not a medical device").first.wait_for()
    wait_idle(page)
    page.goto(base + "/worklist")
    page.get_by_role("button", name="Score the worklist").wait_for()
    wait_idle(page)
    no_exception(page)
    page.get_by_role("button", name="Score the worklist").click()
    # a few seconds on a quiet machine; minutes when the shared machine is loaded
    page.get_by_text(f"Completed: {N_FILMS + 3} films (3 unreadable)").wait_for(timeout=900_000)
    wait_idle(page)
    no_exception(page)
    assert metric_value(page, "Scored") == str(N_FILMS + 3)
    assert metric_value(page, "Unreadable") == "3"
    job = scoring.list_jobs(models)[0]
    table = scoring.read_scores(models / scoring.WORKLISTS_DIR / job["job_id"] / scoring.JOB_SCORES)
    assert len(table) == N_FILMS + 3 and table["path"].is_unique
    shot(page, "worklist")

    # the most urgent film is the first offered: open it in Diagnose
    urgent = table[table["verdict"] == "PNEUMONIA"].sort_values("probability", ascending=False).iloc[0]
    name = urgent["path"].rsplit("/", 1)[-1]
    page.get_by_role("button", name="Open in Diagnose").click()
    page.get_by_text(f"From the worklist: {name}").wait_for(timeout=120_000)
    page.locator('[data-testid="stMetric"]', has_text="Probability of pneumonia").wait_for(timeout=180_000)
    no_exception(page)
    run_id = job["run_id"]
    assert metric_value(page, "Probability of pneumonia") == probability_text(models, run_id, Path(urgent["path"]))
    shot(page, "worklist_diagnose")
    context.close()
