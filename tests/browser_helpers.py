"""One copy of how the browser tests and benchmarks serve the app and drive Debian's Chromium.

A real `streamlit run ... --server.headless true --server.address 127.0.0.1` on a free port,
waited for on /_stcore/health, and Chromium launched with the flags a headless CI container
needs. Importable without pytest (as `tests.browser_helpers` with the project root on sys.path),
so a benchmark can use it too:

    from tests.browser_helpers import chromium, streamlit_server

    with streamlit_server(env=dict(os.environ, XRAY_MODELS_DIR=...)) as base, chromium() as browser:
        page = browser.new_page()
        page.goto(base)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PROJECT = Path(__file__).resolve().parents[1]
ARTIFACTS = PROJECT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync")
CHROMIUM_MISSING = f"{CHROMIUM} is not installed (apt-get install chromium)"


class ServerDidNotStart(RuntimeError):
    """`streamlit run` exited or did not answer /_stcore/health in time; the message ends with its log."""


def have_chromium() -> bool:
    return Path(CHROMIUM).exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False  # not listening yet


@contextmanager
def streamlit_server(script: str | os.PathLike = "streamlit_app.py", *, env: dict | None = None,
                     log_path: str | os.PathLike | None = None, start_timeout: float = 90,
                     cwd: str | os.PathLike = PROJECT, address: str | None = "127.0.0.1",
                     launcher: str = "streamlit") -> Iterator[str]:
    """Serve `script` (relative to `cwd`, the project by default, so its .streamlit/config.toml
    applies) with `streamlit run` on `address` (None: whatever the config says) and a free port,
    reached through 127.0.0.1; yield the base URL once
    /_stcore/health answers 200; stop the server on exit.

    env: the server's whole environment (default: this process's). log_path: where its output
    goes (default: a temporary file); raises ServerDidNotStart with the log's tail when it exits
    or does not answer within start_timeout seconds. launcher: the module run as
    `python -m LAUNCHER run ...` (tests.server_probe wraps streamlit's).
    """
    port = free_port()
    log = open(log_path, "w+b") if log_path is not None else tempfile.TemporaryFile()
    server = subprocess.Popen(
        [sys.executable, "-m", launcher, "run", str(script), "--server.headless", "true",
         *(["--server.address", address] if address is not None else []),
         "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=cwd, env=dict(os.environ) if env is None else env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while not _healthy(base):
            if server.poll() is not None:
                raise ServerDidNotStart(f"streamlit exited with code {server.returncode}: " + _tail(log))
            if time.monotonic() > deadline:
                raise ServerDidNotStart(f"streamlit did not answer on {base} within {start_timeout:g} s: "
                                        + _tail(log))
            time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@contextmanager
def chromium() -> Iterator:
    """Debian's headless Chromium under Playwright; yields the Browser, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


# ------------------------------------------------------------------- reading a Streamlit page

# Diagnose's verdicts and explanations on screen that are not greyed out as stale (Streamlit marks
# the elements of a finished run stale as soon as a new run is asked for): the page keys their
# containers by the film's hash, `verdict-<16 hex>` and `explained-<16 hex>`. Each with its
# film's hash, and for an explanation how many of its panels have loaded.
SHOWN_FILMS = """() => [...document.querySelectorAll('[class*="st-key-explained-"], [class*="st-key-verdict-"]')]
  .filter(box => box.querySelector('[data-testid="stElementContainer"]:not([data-stale="true"])'))
  .map(box => {
    const name = [...box.classList].find(c => /^st-key-(explained|verdict)-/.test(c));
    return {kind: name.split('-')[2], film: name.split('-')[3],
            loaded: [...box.querySelectorAll('[data-testid="stImage"] img')]
                    .filter(img => img.complete && img.naturalWidth > 0).length};
  })"""


def new_page(browser, timeout_ms: int = 90_000):
    """(context, page): a fresh browser context, so each has its own Streamlit session."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    return context, page


def wait_idle(page) -> None:
    """Until Streamlit has finished the current script run: the app's script state (an attribute
    Streamlit's frontend sets the moment a run is asked for) reads notRunning and the status widget
    (which appears only some hundred milliseconds into a run) is absent, both for half a second, so
    that a run an action has just asked for is not missed."""
    page.wait_for_selector('[data-testid="stApp"]')
    idle = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"]') && "
            "document.querySelector('[data-testid=\"stApp\"]')?.getAttribute('data-test-script-state') "
            "=== 'notRunning'")
    for _ in range(240):
        page.wait_for_function(idle, timeout=120_000)
        page.wait_for_timeout(500)
        if page.evaluate(idle):
            return
    raise AssertionError("Streamlit did not finish its script run")


def shot(page, name: str) -> None:
    """A screenshot in test-artifacts/ (not committed). Streamlit scrolls inside its own
    container, so a tall viewport shows the whole page."""
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


def metric_value(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has_text=label)
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def probability_text(models: Path, run_id: str, path: Path) -> str:
    """What Diagnose shows for `path` (3 decimals), computed here through the library."""
    from xray_core import imaging
    from xray_core.model import load_model

    return f"{float(load_model(run_id, root=models).predict_proba([imaging.decode(path)])[0]):.3f}"
