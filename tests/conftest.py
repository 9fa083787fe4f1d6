from __future__ import annotations

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


@pytest.fixture(scope="session")
def tiny_run(synthetic_dataset, tmp_path_factory) -> tuple[Path, str]:
    """A completed 1-epoch baseline run at 16x16 px on the synthetic dataset: (runs_root, run_id).

    Shared by the session (explanations, dashboard and CLI tests read it; do not modify it).
    """
    from xray_core import training

    runs_root = tmp_path_factory.mktemp("tiny_runs")
    with pytest.MonkeyPatch.context() as mp:
        # Session fixtures run outside the per-test cache isolation: isolate here too.
        mp.setenv("XRAY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xray_cache"))
        run_dir = training.train(training.TrainConfig(
            arch="baseline", data_root=synthetic_dataset, epochs=1, batch_size=16, image_size=16,
            channels=1, seed=0, runs_root=runs_root, run_id="tiny-baseline",
        ))
    return runs_root, run_dir.name
