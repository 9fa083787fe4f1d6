"""xray_core: the library behind the pneumonia chest X-ray dashboard.

Plain Python, no Streamlit. TensorFlow is imported only by the functions that need it, so
importing this package (and the dashboard's first page) stays fast.
"""

import os

# TensorFlow enables its oneDNN CPU kernels by default only on some Intel CPUs. Elsewhere (the
# AMD EPYC development machine) turning them on trained the seed models several times faster
# with deterministic results (benchmarks/reports/epochs.md). TensorFlow reads this variable
# when it is imported, so it is set here, before any xray_core module imports it; an explicit
# setting by the user wins. GPUs are unaffected.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
