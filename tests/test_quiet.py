"""Quiet by default: no TensorFlow/absl/CUDA start-up lines on stderr unless --verbose."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser_helpers import CHROMIUM_MISSING, chromium, have_chromium, streamlit_server
from xray_core import quiet

PROJECT = Path(__file__).resolve().parents[1]

# What TensorFlow (and LiteRT, at its first interpreter) prints on a CPU-only machine (any of
# these is a failure).
NOISE_MARKERS = ("absl::InitializeLog", "oneDNN custom operations", "cuda drivers", "cuInit",
                 "cpu_feature_guard", "This TensorFlow binary is optimized", "XNNPACK delegate")
GLOG_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] ", re.M)

REAL_LINES = [
    "I1202 04:00:00.123456   4242 port.cc:153] oneDNN custom operations are on. You may see slightly different",
    "I0000 00:00:1796184078.820642    8787 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    "E0000 00:00:1796184086.586265    8787 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: (303)",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(PROJECT)
    env.update(extra)
    return env


def test_drop_noise_removes_startup_lines_and_keeps_real_errors():
    error = "E0000 00:00:1796184086.5 8787 op_kernel.cc:1818] OP_REQUIRES failed: out of memory\n"
    text = "\n".join(REAL_LINES) + "\n" + error + "Traceback (most recent call last):\n"
    assert quiet.drop_noise(text) == error + "Traceback (most recent call last):\n"


def test_filtered_stderr_replays_what_is_not_noise(capfd):
    with quiet.filtered_stderr():
        os.write(2, (REAL_LINES[0] + "\nsomething the user must see\n").encode())
        print("python-level message", file=sys.stderr)
    err = capfd.readouterr().err
    # (under pytest, sys.stderr is not file descriptor 2, so the two lines may come in either order)
    assert sorted(err.splitlines()) == ["python-level message", "something the user must see"]


def test_the_variable_is_set_before_tensorflow_is_imported():
    code = ("import os, sys\nimport xray_core\n"
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["3", "False"]
    user = subprocess.run([sys.executable, "-c", code], env=_env(TF_CPP_MIN_LOG_LEVEL="1"),
                          capture_output=True, text=True, timeout=60)
    assert user.stdout.split() == ["1", "False"]  # the user's own setting wins


@pytest.mark.slow
def test_predict_is_quiet_and_verbose_lets_the_lines_through(synthetic_dataset, tmp_path):
    """The shipped default answers on LiteRT: quiet by default; --verbose lets LiteRT's own line
    through (TensorFlow is not imported, so it has none to print)."""
    image = sorted((synthetic_dataset / "test" / "PNEUMONIA").iterdir())[0]
    argv = [sys.executable, "-m", "xray_core", "predict", "default", str(image), "--runs-dir",
            str(Path(__file__).resolve().parents[1] / "trained_models")]
    env = _env(XRAY_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert image.name in proc.stdout
    assert not GLOG_LINE.search(proc.stderr), proc.stderr[-3000:]
    assert not [m for m in NOISE_MARKERS if m in proc.stderr], proc.stderr[-3000:]
    assert "XNNPACK" not in proc.stderr

    loud = subprocess.run(argv + ["--verbose"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert loud.stdout == proc.stdout
    assert "Created TensorFlow Lite XNNPACK delegate" in loud.stderr


def test_a_command_that_fails_says_only_its_sentence(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xray_core", "predict", "ghost", str(tmp_path / "x.png"),
                           "--runs-dir", str(tmp_path)], env=_env(), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]


def _server_log(tmp_path, env: dict, name: str, *, film: Path | None = None, until: re.Pattern | None = None,
                timeout: float = 240) -> str:
    """Start `streamlit run` and open Diagnose in Chromium (the page warms the explanation worker,
    whose output goes to the server's log). With `film`: explain it (the worker imports TensorFlow
    for Grad-CAM) and open the Train page (its layer table is built by a child process). With
    `until`: wait until the log matches it (or `timeout` seconds pass). Stop the server; return its log."""
    log_path = tmp_path / f"streamlit-{name}.log"
    with streamlit_server(env=env, log_path=log_path) as base, chromium() as browser:
        page = browser.new_page()
        page.goto(base, timeout=120_000)
        if film is not None:
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(film))
            page.get_by_text("Grad-CAM", exact=True).wait_for(timeout=240_000)
            page.goto(base + "/train", timeout=120_000)
            page.get_by_text("parameters").first.wait_for(timeout=240_000)
        deadline = time.monotonic() + timeout
        while until is not None and not until.search(log_path.read_text(errors="replace")) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
    return log_path.read_text(errors="replace")


@pytest.mark.browser
@pytest.mark.skipif(not have_chromium(), reason=CHROMIUM_MISSING)
def test_the_app_log_is_quiet_unless_asked(synthetic_dataset, tiny_run, tmp_path):
    runs_root, _ = tiny_run
    env = _env(XRAY_DATA_DIR=str(synthetic_dataset), XRAY_MODELS_DIR=str(runs_root),
               XRAY_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("PYTHONPATH")
    from PIL import Image

    from xray_core import imaging

    film = tmp_path / "film.png"  # a synthetic 48 px film at a size the input gate accepts
    source = sorted((synthetic_dataset / "test" / "PNEUMONIA").iterdir())[0]
    Image.fromarray(imaging.decode(source)).resize((160, 160), Image.BILINEAR).save(film)
    quiet_log = _server_log(tmp_path, env, "quiet", film=film)
    assert not GLOG_LINE.search(quiet_log) and not [m for m in NOISE_MARKERS if m in quiet_log], quiet_log[-3000:]
    # With TensorFlow's logging left on, the worker's lines reach the same log: the quiet visit was
    # quiet because they were silenced, not because nothing loaded TensorFlow. Opening Diagnose is
    # enough: the page warms the worker with a small explanation, Grad-CAM and TensorFlow included.
    loud_log = _server_log(tmp_path, dict(env, TF_CPP_MIN_LOG_LEVEL="0"), "loud", until=GLOG_LINE)
    assert GLOG_LINE.search(loud_log), loud_log[-3000:]
