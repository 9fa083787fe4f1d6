"""A page's address opened first on a freshly started server goes through the entry script.

While no session of a new `streamlit run` has called `st.navigation`, Streamlit runs the page a URL
names straight from the `pages/` folder; before app.entry's guard that skipped sign-in, viewer
mode and the sidebar's settings (SECURITY.md). Once any session has been through the entry
script, the server stays safe until it restarts, so each case here starts its own server and sends
it the page's address as its very first request, from a fresh browser context: with sign-in
configured, in viewer mode, and in full mode with the folders set by environment.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser_helpers import (CHROMIUM_MISSING, PROJECT, chromium, have_chromium, new_page, no_exception,
                                   streamlit_server, wait_idle)
from tests.synthetic import make_synthetic_dataset

PAGES = ["diagnose", "worklist", "dataset", "train", "compare", "validate"]
TITLES = {"diagnose": "Diagnose", "worklist": "Worklist", "dataset": "Dataset", "train": "Train",
          "validate": "Validate on your films",
          "compare": "Compare runs"}
WRITE_BUTTONS = ("Start training", "Score the worklist", "Download the dataset", "Resume", "Remove", "Cancel",
                 "Save as a site-calibrated run")
RUN_ID = "entry-check"  # the models folder's one run: its name on a page shows that folder is the one used
AUTO_LIST = "streamlit app"  # the first entry of Streamlit's automatic list of pages/ (streamlit_app.py)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason=CHROMIUM_MISSING)]


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A dataset without a test split (so Compare scores nothing), a models folder holding a copy
    of the bundled model under another name, an empty home and a secrets file with [auth]."""
    base = tmp_path_factory.mktemp("entry")
    dataset = make_synthetic_dataset(base / "chest_xray")
    shutil.rmtree(dataset / "test")
    models = base / "models"
    shutil.copytree(PROJECT / "trained_models" / "default", models / RUN_ID)
    home = base / "home"  # no user-level .streamlit/ of whoever runs the tests
    home.mkdir()
    secrets = base / "auth-secrets.toml"
    secrets.write_text(
        "[auth]\n"
        'redirect_uri = "http://127.0.0.1:9/oauth2callback"\n'
        'cookie_secret = "a-test-only-cookie-secret-of-enough-length-0123456789"\n'
        'client_id = "xray-dashboard"\nclient_secret = "test-only"\n'
        # never fetched: nobody presses Sign in here
        'server_metadata_url = "http://127.0.0.1:9/.well-known/openid-configuration"\n')
    return {"base": base, "dataset": dataset, "models": models, "home": home, "secrets": secrets}


@contextmanager
def fresh_server(folders: dict[str, Path], mode: str):
    """A new `streamlit run` that has served nobody yet: "auth" (an [auth] table in its secrets),
    "viewer" (XRAY_MODE=viewer) or "full" (training and worklists switched off by their limits,
    so a button pressed here reaches the library and starts nothing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XRAY_", "STREAMLIT_"))}
    env.update(HOME=str(folders["home"]), XRAY_DATA_DIR=str(folders["dataset"]),
               XRAY_MODELS_DIR=str(folders["models"]), XRAY_CACHE_DIR=str(folders["base"] / "cache"),
               XRAY_SECRETS_FILE=str(folders["base"] / "no-admin-settings.toml"),
               # Streamlit's secrets: the [auth] file, or none (never a secrets.toml of the project)
               STREAMLIT_SECRETS_FILES=str(folders["secrets"] if mode == "auth"
                                           else folders["base"] / "no-secrets.toml"),
               XRAY_MODE="viewer" if mode == "viewer" else "full",
               XRAY_MAX_EXPLAIN_WORKERS="0")  # what a page shows first needs no explanation worker
    if mode == "full":
        env.update(XRAY_MAX_RUNNING_TRAININGS="0", XRAY_MAX_RUNNING_WORKLISTS="0")
    log = folders["base"] / f"streamlit-{mode}.log"
    with streamlit_server(env=env, log_path=log) as base:
        yield base


def first_screen(page, expected, what: str) -> None:
    """Until `expected`, which only the entry script draws, has shown, and the run has finished;
    a sentence saying what the page shows instead when it does not."""
    try:
        expected.first.wait_for()
    except PlaywrightTimeout:
        raise AssertionError(f"{what} never showed: the entry script did not run. Headings: "
                             f"{page.locator('h1').all_inner_texts()}; sidebar: {sidebar_nav(page)!r}") from None
    wait_idle(page)
    no_exception(page)


def buttons_named(page, names) -> list[str]:
    return [name for name in names if page.get_by_role("button", name=name, exact=True).count()]


def sidebar_nav(page) -> str:
    nav = page.locator('[data-testid="stSidebarNav"]')
    return nav.inner_text() if nav.count() else ""


@pytest.mark.parametrize("name", PAGES)
def test_with_sign_in_configured_a_page_opened_first_shows_only_the_sign_in(browser, folders, name):
    with fresh_server(folders, "auth") as base:
        context, page = new_page(browser)
        page.goto(f"{base}/{name}")
        sign_in = page.get_by_role("button", name="Sign in")
        first_screen(page, sign_in, "The Sign in button")
        assert AUTO_LIST not in sidebar_nav(page)
        assert [h.strip() for h in page.locator("h1").all_inner_texts()] == ["Chest X-ray pneumonia"]
        assert [b.strip() for b in page.locator('[data-testid="stMain"] button').all_inner_texts()] == ["Sign in"]
        for testid in ("stSidebar", "stSidebarNav", "stFileUploader", "stDataFrame", "stTextInput",
                       "stSelectbox", "stMetric", "stImage"):
            assert page.locator(f'[data-testid="{testid}"]').count() == 0, testid
        assert RUN_ID not in page.content() and str(folders["dataset"]) not in page.content()
        context.close()


@pytest.mark.parametrize("name", PAGES)
def test_in_viewer_mode_a_page_opened_first_offers_nothing_that_writes(browser, folders, name):
    with fresh_server(folders, "viewer") as base:
        context, page = new_page(browser)
        page.goto(f"{base}/{name}")
        viewer_note = page.get_by_text("Viewer mode: training, downloads and other writes are switched off")
        first_screen(page, viewer_note, "The sidebar's viewer-mode note")
        # Train and Worklist are not pages of viewer mode: Streamlit says so and opens the default page.
        landed = "diagnose" if name in ("train", "worklist") else name
        page.get_by_role("heading", name=TITLES[landed], exact=True).wait_for()
        if landed != name:
            assert "Page not found" in page.get_by_role("dialog").inner_text()
        wait_idle(page)
        assert buttons_named(page, WRITE_BUTTONS) == []
        assert [h.strip() for h in page.locator("h1").all_inner_texts()] == [TITLES[landed]]
        nav = sidebar_nav(page)
        assert "Diagnose" in nav and "Train" not in nav and "Worklist" not in nav and AUTO_LIST not in nav
        context.close()


@pytest.mark.parametrize("name", PAGES)
def test_in_full_mode_a_page_opened_first_works_with_the_sidebar_settings(browser, folders, name):
    with fresh_server(folders, "full") as base:
        context, page = new_page(browser)
        page.goto(f"{base}/{name}")
        dataset_input = page.get_by_label("Dataset folder", exact=True)
        first_screen(page, dataset_input, "The sidebar's Dataset folder")
        assert dataset_input.input_value() == str(folders["dataset"])
        assert page.get_by_label("Models folder", exact=True).input_value() == str(folders["models"])
        page.get_by_role("heading", name=TITLES[name], exact=True).wait_for()
        nav = sidebar_nav(page)
        assert "Train" in nav and "Worklist" in nav and AUTO_LIST not in nav
        if name == "diagnose":  # the models folder's run, and the uploader
            assert page.get_by_label("Model (run)", exact=True).input_value().startswith(RUN_ID)
            page.locator('[data-testid="stFileUploader"]').wait_for()
        elif name == "compare":
            page.get_by_text(RUN_ID).first.wait_for()
        elif name == "dataset":
            page.get_by_text(f"{folders['dataset']} · 68 images").wait_for()
        elif name == "validate":  # the models folder's run, and the sidebar's dataset folder offered
            assert page.get_by_label("Model (run)", exact=True).input_value().startswith(RUN_ID)
            folder = page.get_by_label("Folder with NORMAL/ and PNEUMONIA/ folders inside (at any depth)", exact=True)
            assert folder.input_value() == str(folders["dataset"])
        else:  # the button reaches the library with the sidebar's dataset folder; its limit of 0 refuses
            button = "Start training" if name == "train" else "Score the worklist"
            kind = "training" if name == "train" else "worklist"
            page.get_by_role("button", name=button).click()
            page.get_by_text(f"Starting a {kind} is switched off on this server").wait_for()
        wait_idle(page)
        no_exception(page)
        context.close()
