from __future__ import annotations

import os
import shlex
import subprocess
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


# --------------------------------------------------------------------------- the two tiers
#
# `python -m pytest` runs the fast tier (pytest.ini deselects `slow` and `browser`). A test that
# trains, serves the app, drives Chromium, starts Ray, a job's worker process or a package install
# must carry one of those markers; the guard below makes an unmarked test that does so fail, in
# the fast tier and in the slow one alike. Subprocesses are recognised by their command line.

TIER_MARKERS = ("slow", "browser")
_current: dict = {"item": None}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Remember the test being set up, run and torn down (its fixtures included)."""
    _current["item"] = item
    try:
        return (yield)
    finally:
        _current["item"] = None


@pytest.fixture(autouse=True)
def _no_explanation_workers_in_the_fast_tier(request, monkeypatch):
    """A page opened in the fast tier starts no explanation worker process (Diagnose warms one as
    soon as a model is picked): the verdict alone, as on a server with explanations switched off.
    Tests of the panels are marked slow and get the server's default."""
    if not any(request.node.get_closest_marker(m) for m in TIER_MARKERS):
        monkeypatch.setenv("XRAY_MAX_EXPLAIN_WORKERS", "0")


def refuse_unless_marked(what: str, marker: str) -> None:
    """Fail the current test unless it carries a tier marker: it `what`s."""
    item = _current["item"]
    if item is None or any(item.get_closest_marker(m) for m in TIER_MARKERS):
        return
    pytest.fail(f"{item.nodeid} {what}, which the fast tier never does: mark it "
                f"@pytest.mark.{marker} (or make it cheaper).", pytrace=False)


def _after_module(argv: list[str], module: str) -> list[str] | None:
    """The arguments after `-m module` (or after an executable named like the module's script)."""
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] == module:
            return argv[i + 2:]
    script = {"xray_core": "xray"}.get(module, module)
    if argv and os.path.basename(argv[0]) == script:
        return argv[1:]
    return None


def heavy_command(args) -> tuple[str, str] | None:
    """(what it does, the marker it needs) for a command line the fast tier never runs, else None."""
    if isinstance(args, (str, bytes)):
        argv = shlex.split(os.fsdecode(args))
    else:
        argv = [os.fsdecode(a) for a in ([args] if isinstance(args, os.PathLike) else args)]
    names = [os.path.basename(a) for a in argv]
    xray = _after_module(argv, "xray_core")
    xray_words = [a for a in xray or [] if not a.startswith("-")]
    helping = "--help" in argv or "-h" in argv
    if xray_words[:1] == ["train"] and not helping:
        return "starts a training process (`xray train`)", "slow"
    if xray is not None and "--ray" in xray:
        return "starts Ray (`--ray`)", "slow"
    if (_after_module(argv, "xray_core.jobs") or [None])[0] == "work":
        return "starts the training queue's worker process", "slow"
    if any("xray_core.serving.worker" in a for a in argv):
        return "starts an explanation worker process", "slow"
    if any("_job_main" in a for a in argv) or _after_module(argv, "xray_core.scoring.uploads") is not None:
        return "starts a Worklist job's process", "slow"
    if (_after_module(argv, "streamlit") or [None])[0] == "run" or \
            (_after_module(argv, "tests.server_probe") or [None])[0] == "run":
        return "serves the app with `streamlit run`", "browser"
    if "run-driver" in argv or any(n.startswith(("chromium", "chrome")) for n in names):
        return "starts Chromium", "browser"
    if any(n in ("gcs_server", "raylet") for n in names):
        return "starts Ray", "slow"
    if (_after_module(argv, "pip") or [None])[0] == "install":
        return "installs a package with pip", "slow"
    return None


@pytest.fixture(scope="session", autouse=True)
def _tier_guard():
    """For the whole session: Keras' fit and every subprocess go through refuse_unless_marked."""
    patch = pytest.MonkeyPatch()
    popen_init = subprocess.Popen.__init__

    def guarded_popen_init(self, *args, **kwargs):
        heavy = heavy_command(args[0] if args else kwargs["args"])
        if heavy is not None:
            refuse_unless_marked(*heavy)
        popen_init(self, *args, **kwargs)

    patch.setattr(subprocess.Popen, "__init__", guarded_popen_init)
    try:
        import keras
    except ImportError:
        keras = None
    if keras is not None:
        fit = keras.Model.fit

        def guarded_fit(self, *args, **kwargs):
            refuse_unless_marked("trains a network (keras.Model.fit)", "slow")
            return fit(self, *args, **kwargs)

        patch.setattr(keras.Model, "fit", guarded_fit)
    yield
    patch.undo()
