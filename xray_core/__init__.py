"""xray_core: the library behind the pneumonia chest X-ray dashboard.

Plain Python, no Streamlit. TensorFlow is imported only by the functions that need it, so
importing this package (and the dashboard's first page) stays fast.
"""

import logging
import os

# TensorFlow enables its oneDNN CPU kernels by default only on some Intel CPUs; elsewhere, turning
# them on trains faster with deterministic results (benchmarks/reports/epochs.md). TensorFlow reads
# this variable when it is imported, so it is set here, before any xray_core module imports it; an
# explicit setting by the user wins. GPUs are unaffected.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# Quiet by default: no TensorFlow, absl or CUDA lines on stderr (oneDNN and CPU-instruction
# notes, "could not find cuda drivers", "failed call to cuInit" on a machine without a GPU).
# TF_CPP_MIN_LOG_LEVEL=3, set before TensorFlow is imported, silences what TensorFlow logs once
# loaded; quiet.py filters what its libraries print while loading; the Python loggers of absl
# and TensorFlow keep their warnings to themselves. An explicit TF_CPP_MIN_LOG_LEVEL wins; the
# CLI's --verbose sets it to 0, which lets everything through.
if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    for _name in ("absl", "tensorflow"):
        logging.getLogger(_name).setLevel(logging.ERROR)

from xray_core import quiet as _quiet  # noqa: E402  (after the variable it reads)

_quiet.install()

__version__ = "0.1.0"
