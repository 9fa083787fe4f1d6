from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.synthetic import make_synthetic_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_DATA = SHARED_DATA / "chest_xray"

requires_real_data = pytest.mark.skipif(
    not REAL_DATA.is_dir(),
    reason=f"real data folder {REAL_DATA} is absent (it is only present on development machines)",
)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A read-only-by-convention synthetic dataset shared by the session."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "chest_xray")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never let tests write to the user's cache folder."""
    monkeypatch.setenv("XRAY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xray_cache"))
