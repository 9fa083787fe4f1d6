"""End to end: a real `streamlit run` on 127.0.0.1 driven by Debian's headless Chromium.

Visits every page, explains an uploaded image on Diagnose, runs two Diagnose sessions at once on
different images, trains a one-epoch baseline from the Train page until it shows completed, and
saves a screenshot of each page to test-artifacts/ (not committed).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.browser_helpers import (CHROMIUM_MISSING, chromium, have_chromium, metric_value, new_page,
                                   no_exception, probability_text, shot, streamlit_server, wait_idle)
from xray_core import imaging, runs

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason=CHROMIUM_MISSING)]


@pytest.fixture(scope="module")
def app(synthetic_dataset, tiny_run, tmp_path_factory):
    """The dashboard served by a real `streamlit run` subprocess; yields (base URL, models folder)."""
    runs_root, run_id = tiny_run
    models = tmp_path_factory.mktemp("browser_models")
    shutil.copytree(runs_root / run_id, models / run_id)
    env = dict(os.environ, XRAY_DATA_DIR=str(synthetic_dataset), XRAY_MODELS_DIR=str(models),
               XRAY_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "xray_cache"))
    with streamlit_server(env=env, log_path=tmp_path_factory.getbasetemp() / "streamlit.log") as base:
        yield base, models


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def upload_and_wait(page, path: Path) -> None:
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
    page.get_by_text(path.name, exact=False).last.wait_for()
    page.get_by_text("Grad-CAM", exact=True).wait_for(timeout=180_000)


def enlarged(path: Path, folder: Path) -> Path:
    """The synthetic 48 px film at 160 px, a size the input gate accepts."""
    from PIL import Image

    out = folder / f"{path.stem}.png"
    Image.fromarray(imaging.decode(path)).resize((160, 160), Image.BILINEAR).save(out)
    return out


def test_every_page_in_a_real_browser(app, browser, synthetic_dataset, tiny_run, tmp_path):
    base, models = app
    _, run_id = tiny_run
    pneumonia = enlarged(sorted((synthetic_dataset / "test" / "PNEUMONIA").iterdir())[0], tmp_path)
    normal = enlarged(sorted((synthetic_dataset / "test" / "NORMAL").iterdir())[0], tmp_path)

    # Diagnose (the default page): upload, prediction, four LIME panels and Grad-CAM.
    context, page = new_page(browser)
    page.goto(base)
    page.get_by_text("Research software, not a medical device").wait_for()
    upload_and_wait(page, pneumonia)
    no_exception(page)
    assert metric_value(page, "Probability of pneumonia") == probability_text(models, run_id, pneumonia)
    assert page.locator('[data-testid="stImage"]').count() == 5
    for title in ("1 · Top superpixels", "2 · Only those superpixels", "3 · Pros and cons", "4 · Weight heatmap"):
        assert page.get_by_text(title).count() == 1
    shot(page, "diagnose")

    # Two sessions explain different images at the same time; each gets its own answer.
    other_context, other = new_page(browser)
    other.goto(base)
    page.reload()
    for p in (page, other):
        p.locator('[data-testid="stFileUploaderDropzoneInput"]').wait_for(state="attached")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(normal))
    other.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(pneumonia))
    for p, path in ((page, normal), (other, pneumonia)):
        p.get_by_text("Grad-CAM", exact=True).wait_for(timeout=180_000)
        no_exception(p)
        caption = p.locator('[data-testid="stCaptionContainer"]', has_text=" · run ").first.inner_text()
        assert caption.startswith(path.name)
        assert metric_value(p, "Probability of pneumonia") == probability_text(models, run_id, path)
    other_context.close()

    # Dataset: counts of the synthetic dataset, the sample grid.
    page.goto(base + "/dataset")
    page.get_by_text("Sample images").wait_for()
    wait_idle(page)
    no_exception(page)
    assert page.get_by_text("84 images", exact=False).count() >= 1
    # The thumbnails are decoded after the heading is drawn: wait for the twelfth, then check none more.
    page.locator('[data-testid="stImage"]').nth(11).wait_for(timeout=60_000)
    wait_idle(page)
    assert page.locator('[data-testid="stImage"]').count() == 12
    shot(page, "dataset")

    # Train: a one-epoch baseline at 16 px, started in the background, followed to completion.
    page.goto(base + "/train")
    page.get_by_text("Start training").wait_for()
    wait_idle(page)
    for label, value in (("Epochs", "1"), ("Batch size", "16"), ("Image size (px)", "16")):
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Enter")
        wait_idle(page)
    page.get_by_role("button", name="Start training").click()
    queued = page.get_by_text(re.compile(r"Queued \S+; it starts"))
    queued.wait_for()
    new_run = queued.inner_text().split()[1].rstrip(";")
    row = page.locator("tr", has_text=new_run).filter(has_text="completed")
    row.wait_for(timeout=240_000)
    no_exception(page)
    assert runs.load_run(new_run, root=models).status["state"] == "completed"
    assert runs.load_run(new_run, root=models).config["epochs"] == 1
    shot(page, "train")

    # Compare: both runs, curves and the metrics tables.
    page.goto(base + "/compare")
    page.get_by_text("Metrics at each run's operating threshold").wait_for()
    page.get_by_text("Confusion matrices").wait_for()
    wait_idle(page)
    no_exception(page)
    # One figure of learning curves (one legend), calibration, ROC, and a confusion matrix per run (two).
    assert page.locator('[data-testid="stPlotlyChart"]').count() == 5
    shot(page, "compare")
    context.close()
