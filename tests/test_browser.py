"""End to end: a real `streamlit run` on 127.0.0.1 driven by Debian's headless Chromium.

Visits every page, explains an uploaded image on Diagnose, runs two Diagnose sessions at once on
different images, trains a one-epoch baseline from the Train page until it shows completed, and
saves a screenshot of each page to test-artifacts/ (not committed).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from xray_core import imaging, runs

PROJECT = Path(__file__).resolve().parents[1]
ARTIFACTS = PROJECT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(synthetic_dataset, tiny_run, tmp_path_factory):
    """The dashboard served by a real `streamlit run` subprocess; yields (base URL, models folder)."""
    runs_root, run_id = tiny_run
    models = tmp_path_factory.mktemp("browser_models")
    shutil.copytree(runs_root / run_id, models / run_id)
    port = free_port()
    env = dict(os.environ, XRAY_DATA_DIR=str(synthetic_dataset), XRAY_MODELS_DIR=str(models),
               XRAY_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "xray_cache"))
    log = open(tmp_path_factory.getbasetemp() / "streamlit.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false"],
        cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
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
                    raise AssertionError("streamlit did not start: "
                                         + (tmp_path_factory.getbasetemp() / "streamlit.log").read_text()[-2000:])
                time.sleep(0.5)
        yield base, models
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


def new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(90_000)
    return context, page


def wait_idle(page) -> None:
    """Until Streamlit has finished the current script run."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)


def shot(page, name: str) -> None:
    """Streamlit scrolls inside its own container, so a tall viewport shows the whole page."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], section.main')]"
        ".map(e => e.scrollHeight), 1000)")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 50, 6000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size(size)


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()


def probability_text(models: Path, run_id: str, path: Path) -> str:
    from xray_core.model import load_model

    return f"{float(load_model(run_id, root=models).predict_proba([imaging.decode(path)])[0]):.3f}"


def upload_and_wait(page, path: Path) -> None:
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
    page.get_by_text(path.name, exact=False).last.wait_for()
    page.get_by_text("Grad-CAM", exact=True).wait_for(timeout=180_000)


def metric_value(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has_text=label)
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


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
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 6
    shot(page, "compare")
    context.close()
