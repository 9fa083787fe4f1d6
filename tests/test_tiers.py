"""The two test tiers: the guard in conftest.py fails an unmarked test that trains or starts a
browser, a server, Ray, a job's worker process or a pip install, so the fast tier stays fast."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import heavy_command, refuse_unless_marked

FAILED = pytest.fail.Exception  # what the guard raises: not an Exception, so no `except` hides it


def test_fit_in_an_unmarked_test_fails_before_it_trains():
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(FAILED, match=r"test_tiers.py::test_fit_in_an_unmarked.* trains a network .*"
                                     r"mark it @pytest.mark.slow"):
        model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_a_server_started_from_an_unmarked_test_fails_before_it_starts(tmp_path):
    with pytest.raises(FAILED, match=r"serves the app with `streamlit run`.*mark it @pytest.mark.browser"):
        subprocess.run([sys.executable, "-m", "streamlit", "run", str(tmp_path / "app.py")], timeout=5)
    with pytest.raises(FAILED, match="starts a training process"):
        subprocess.Popen(args=[sys.executable, "-m", "xray_core", "train", "--data", str(tmp_path)])


def test_light_subprocesses_run_in_the_fast_tier():
    done = subprocess.run([sys.executable, "-c", "print('ran')"], capture_output=True, text=True, timeout=60)
    assert done.stdout == "ran\n"


@pytest.mark.slow
def test_a_marked_test_may_do_what_its_marker_says():
    refuse_unless_marked("trains a network", "slow")  # returns: the test is marked


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "xray_core", "train", "--data", "d"], "slow"),
    (["/venv/bin/xray", "--quiet", "train", "--epochs", "1"], "slow"),
    (["python", "-m", "xray_core", "train", "--help"], None),
    (["python", "-m", "xray_core", "predict", "default", "x.png"], None),
    (["python", "-m", "xray_core", "score", "r", "f", "--out", "o", "--ray"], "slow"),
    (["python", "-m", "xray_core.jobs", "work", "/models"], "slow"),
    (["python", "-c", "from xray_core.scoring.worklist import _job_main; _job_main()"], "slow"),
    (["python", "-m", "xray_core.scoring.uploads", "/models/.worklist/job"], "slow"),
    (["python", "-c", "import xray_core.scoring; print('light')"], None),
    (["python", "-c", "from xray_core.serving.worker import main_cli; main_cli()", "5", "10"], "slow"),
    (["python", "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true"], "browser"),
    (["python", "-m", "streamlit", "--version"], None),
    (["python", "-m", "tests.server_probe", "run", "streamlit_app.py"], "browser"),
    (["/usr/bin/chromium", "--headless"], "browser"),
    (["/pw/node", "/pw/package/cli.js", "run-driver"], "browser"),
    (["/ray/core/src/ray/gcs/gcs_server", "--redis_address=x"], "slow"),
    (["/v/bin/python", "-m", "pip", "install", "-e", "."], "slow"),
    (["/v/bin/python", "-m", "pip", "list"], None),
    ("python -m pip install .", "slow"),
    (["git", "status"], None),
])
def test_heavy_commands_are_recognised_by_their_command_line(argv, expected):
    found = heavy_command(argv)
    assert (found and found[1]) == expected, found
