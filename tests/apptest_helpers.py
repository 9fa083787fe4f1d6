"""AppTest set-up shared by the page tests: the app pointed at test folders, one page opened."""

from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def open_page(monkeypatch, data_dir: Path, models_dir: Path, page: str | None = None,
              timeout: float = 60) -> AppTest:
    """Run the app with the sidebar folders set through the environment, then switch to `page`
    (None stays on the default page, Diagnose); fails when the page raised."""
    monkeypatch.setenv("XRAY_DATA_DIR", str(data_dir))
    monkeypatch.setenv("XRAY_MODELS_DIR", str(models_dir))
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def wait_for(predicate, timeout: float = 240):
    """predicate()'s first truthy value, asked every half second; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out waiting")
