"""End to end in Chromium: the Worklist page scores 120 films in the background, shows them
urgent first, and opens the most urgent one in Diagnose."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_browser import (CHROMIUM, PROJECT, browser, free_port, metric_value, new_page,  # noqa: F401
                                no_exception, probability_text, shot, wait_idle)
from tests.test_scoring import add_bad_files, make_films
from xray_core import scoring

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
]

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
    port = free_port()
    log_path = tmp_path_factory.getbasetemp() / "streamlit_worklist.log"
    env = dict(os.environ, XRAY_DATA_DIR=str(films), XRAY_MODELS_DIR=str(models),
               XRAY_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "xray_cache"))
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
            cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("streamlit did not start: " + log_path.read_text()[-2000:])
                time.sleep(0.5)
        yield base, models, films
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_worklist_in_a_real_browser(worklist_app, browser):  # noqa: F811
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
