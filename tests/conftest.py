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


# Two made-up epochs, so the pages that draw learning curves have lines to draw.
TINY_HISTORY = [
    {"epoch": 1, "loss": 0.70, "accuracy": 0.55, "auc": 0.55, "val_loss": 0.69, "val_accuracy": 0.5,
     "val_auc": 0.6, "seconds": 0.5, "images_per_second": 100.0},
    {"epoch": 2, "loss": 0.60, "accuracy": 0.70, "auc": 0.75, "val_loss": 0.62, "val_accuracy": 0.75,
     "val_auc": 0.8, "seconds": 0.5, "images_per_second": 100.0},
]


@pytest.fixture(scope="session")
def tiny_run(synthetic_dataset, tmp_path_factory) -> tuple[Path, str]:
    """A completed run of an untrained baseline at 16x16 px on the synthetic dataset:
    (runs_root, run_id). Built and saved, never fitted (`training.save_run`): calibrated,
    thresholded and gated on its validation films like any run, but its verdicts are noise.
    Tests that need a model that has learned use the shipped runs in trained_models/.

    Shared by the session (explanations, dashboard and CLI tests read it; do not modify it).
    """
    import keras

    from xray_core import architectures, training

    runs_root = tmp_path_factory.mktemp("tiny_runs")
    keras.utils.set_random_seed(0)
    network = architectures.build("baseline", input_shape=(16, 16, 1))
    with pytest.MonkeyPatch.context() as mp:
        # Session fixtures run outside the per-test cache isolation: isolate here too.
        mp.setenv("XRAY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xray_cache"))
        run_dir = training.save_run(network, training.TrainConfig(
            arch="baseline", data_root=synthetic_dataset, image_size=16, channels=1, seed=0,
            runs_root=runs_root, run_id="tiny-baseline"), history=TINY_HISTORY)
    return runs_root, run_dir.name
