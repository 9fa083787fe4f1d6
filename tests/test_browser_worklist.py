"""End to end in Chromium: the Worklist page scores 120 films (and 3 bad files) in the
background, shows them urgent first; a click on a row opens that film in Diagnose with its
verdict, and the page's button opens the most urgent one."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.browser_helpers import (CHROMIUM_MISSING, chromium, have_chromium, metric_value, new_page, no_exception,
                                   probability_text, shot, streamlit_server, wait_idle)
from tests.test_scoring import add_bad_files, make_films
from xray_core import scoring

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason=CHROMIUM_MISSING)]

N_FILMS = 120


@pytest.fixture(scope="module")
def worklist_app(tmp_path_factory):
    """A real `streamlit run` whose data folder holds 120 films and 3 bad files, over a copy of the
    shipped seed-baseline run: a trained network, so a row's probability and Diagnose's agree
    within the test's 1e-3 (an untrained one magnifies the decoders' 1e-4); without its fitted
    input gate, which would refuse these synthetic films in Diagnose."""
    models = tmp_path_factory.mktemp("worklist_models")
    shutil.copytree(Path(__file__).resolve().parents[1] / "trained_models" / "seed-baseline", models / "seed-baseline",
                    ignore=shutil.ignore_patterns("gate.*"))
    films = tmp_path_factory.mktemp("worklist_data") / "night"
    make_films(films, N_FILMS, size=128)  # large enough for the input gate's size check
    add_bad_files(films)
    env = dict(os.environ, XRAY_DATA_DIR=str(films), XRAY_MODELS_DIR=str(models),
               XRAY_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "xray_cache"),
               XRAY_MAX_EXPLAIN_WORKERS="0")  # verdicts only: no explanation worker loading TensorFlow meanwhile
    with streamlit_server(env=env, log_path=tmp_path_factory.getbasetemp() / "streamlit_worklist.log") as base:
        yield base, models, films


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


HEADER_PX, ROW_PX = 36, 64  # Streamlit's table header, and the row height the page asks for
VISIBLE_ROWS = 5  # rows the 400 px table shows without scrolling


def urgent_first(table: pd.DataFrame) -> pd.DataFrame:
    """The order the page promises (issue 12): PNEUMONIA, uncertain or gate-flagged films first,
    then unreadable files, then the rest; by probability, highest first, within each."""
    flagged = ((table["verdict"] == "PNEUMONIA") | table["prediction_set"].str.contains(r"\||,")
               | (table["in_distribution"] == "False"))
    priority = np.where(table["error"] != "", 1, np.where(flagged, 0, 2))
    return (table.assign(priority=priority)
            .sort_values(["priority", "probability"], ascending=[True, False], kind="stable", na_position="last")
            .reset_index(drop=True))


def distinct(order: pd.DataFrame, k: int) -> bool:
    """Whether row k's place is unambiguous (no tie with its neighbours) and its film readable."""
    keys = list(zip(order["priority"], order["probability"]))
    return order["error"].iloc[k] == "" and keys[k] != keys[k - 1] and keys[k] != keys[k + 1]


def click_row(page, k: int) -> None:
    """Click row k's box (the grid's leftmost column: a click on another cell selects that cell,
    not the row) in the Worklist table, which the browser draws on a canvas."""
    box = page.locator('[data-testid="stDataFrame"] [data-testid="data-grid-canvas"]').bounding_box()
    page.mouse.click(box["x"] + 15, box["y"] + HEADER_PX + k * ROW_PX + ROW_PX / 2)


def exact_metric(page, label: str) -> str:
    labelled = page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(f"^{re.escape(label)}$"))
    return page.locator('[data-testid="stMetric"]', has=labelled).locator(
        '[data-testid="stMetricValue"]').inner_text().strip()


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

    # a click on a row of the table opens that film in Diagnose, with its verdict
    order = urgent_first(table)
    k = next(i for i in range(2, VISIBLE_ROWS) if distinct(order, i))
    row = order.iloc[k]
    name = row["path"].rsplit("/", 1)[-1]
    click_row(page, k)
    page.get_by_text(f"From the worklist: {name}").wait_for(timeout=120_000)
    page.locator('[data-testid="stMetric"]', has_text="Probability of pneumonia").wait_for(timeout=180_000)
    no_exception(page)
    shown = metric_value(page, "Probability of pneumonia")
    assert shown == probability_text(models, job["run_id"], Path(row["path"]))  # Diagnose's own reading
    assert abs(float(shown) - row["probability"]) < 1e-3  # the row's (batch decoding agrees within 1e-4)
    assert exact_metric(page, "Prediction") == row["verdict"]
    shot(page, "worklist_row_diagnose")
    # back on the Worklist in the same session, it stays there (the row's selection does not reopen it)
    page.get_by_role("link", name="Worklist").click()
    page.get_by_role("button", name="Open in Diagnose").wait_for()
    wait_idle(page)
    page.wait_for_timeout(1000)
    wait_idle(page)
    assert page.url.endswith("/worklist") and page.get_by_text("From the worklist").count() == 0

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
