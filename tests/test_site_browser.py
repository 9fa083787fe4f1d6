"""End to end in Chromium: the Validate page validates a labelled folder in the background, shows
the figures and the reliability diagram, and saves a site-calibrated run that Diagnose offers."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.browser_helpers import (CHROMIUM_MISSING, chromium, have_chromium, new_page, no_exception, shot,
                                   streamlit_server, wait_idle)
from tests.synthetic import make_synthetic_dataset

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason=CHROMIUM_MISSING)]


@pytest.fixture(scope="module")
def validate_app(tiny_run, tmp_path_factory):
    runs_root, run_id = tiny_run
    models = tmp_path_factory.mktemp("validate_models")
    shutil.copytree(runs_root / run_id, models / run_id)
    data = tmp_path_factory.mktemp("validate_data")
    make_synthetic_dataset(data / "site", n_train=(24, 24), n_val=(0, 0), n_test=(0, 0), size=128, seed=13)
    env = dict(os.environ, XRAY_DATA_DIR=str(data), XRAY_MODELS_DIR=str(models),
               XRAY_CACHE_DIR=str(tmp_path_factory.mktemp("validate_cache")),
               XRAY_MAX_EXPLAIN_WORKERS="0")  # no explanation is looked at here
    env.pop("XRAY_MODE", None)
    with streamlit_server(env=env, log_path=tmp_path_factory.getbasetemp() / "streamlit_validate.log") as base:
        yield base, models, data, run_id


def test_validate_and_save_a_site_calibrated_run_in_a_real_browser(validate_app):
    base, models, data, run_id = validate_app
    with chromium() as browser:
        context, page = new_page(browser)
        page.goto(base)  # the entry script registers the pages (st.navigation) on its first run
        page.get_by_text("Research software, not a medical device").first.wait_for()
        wait_idle(page)
        page.get_by_role("link", name="Validate").click()
        page.get_by_role("button", name="Validate").wait_for()
        wait_idle(page)
        no_exception(page)
        folder = page.get_by_role("textbox", name="Folder with NORMAL/ and PNEUMONIA/ folders inside (at any depth)")
        folder.fill(str(data / "site"))
        folder.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Validate", exact=True).click()
        # seconds on a quiet machine; minutes when the shared machine is loaded
        page.get_by_text("48 films counted (24 NORMAL, 24 PNEUMONIA)").wait_for(timeout=600_000)
        wait_idle(page)
        no_exception(page)
        page.get_by_text("Reliability diagram").first.wait_for()
        page.get_by_text("ROC curve").first.wait_for()
        page.get_by_role("button", name="Save as a site-calibrated run").wait_for()
        # once on the page: the sidebar's line, not repeated in the page itself
        assert page.get_by_text("Research software, not a medical device").count() == 1
        shot(page, "validate")
        name = page.get_by_role("textbox", name="Name of the new run")
        name.fill("site-from-browser")
        name.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Save as a site-calibrated run").click()
        page.get_by_text("Saved as site-from-browser").wait_for(timeout=120_000)
        no_exception(page)
        spec = json.loads((models / "site-from-browser" / "model.json").read_text())
        assert spec["parent"] == f"../{run_id}"
        assert not any(p.suffix in (".keras", ".tflite") for p in (models / "site-from-browser").iterdir())
        # Diagnose offers it
        page.get_by_role("link", name="Diagnose").click()
        wait_idle(page)
        page.locator('[data-testid="stSelectbox"]').first.click()
        page.get_by_role("option", name="site-from-browser").first.wait_for()
        context.close()
