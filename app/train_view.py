"""The Train page's figures from this machine's runs (no Streamlit here)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from xray_core.runs import Run


def seconds_per_epoch(infos: Iterable[Any], arch: str, image_size: int, channels: int) -> float | None:
    """Median seconds per epoch of this machine's completed runs with the same architecture and
    input, from their history.csv; None when there is none."""
    seconds = []
    for info in infos:
        cfg = info.config or {}
        if (info.state != "completed" or cfg.get("arch") != arch
                or int(cfg.get("image_size") or 0) != int(image_size)
                or int(cfg.get("channels") or 0) != int(channels)):
            continue
        hist = Run(info.path).history
        if "seconds" in hist:
            seconds += hist["seconds"].dropna().tolist()
    return float(np.median(seconds)) if seconds else None


_LAYER_TABLE_CODE = """
import json, sys
from xray_core import architectures
try:
    table = architectures.layer_table(sys.argv[1], (int(sys.argv[2]),) * 2 + (int(sys.argv[3]),))
except ValueError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
print(json.dumps({"columns": list(table.columns), "rows": table.to_dict(orient="records")}))
"""


def layer_table_in_child(arch: str, size: int, channels: int):
    """`architectures.layer_table(arch, (size, size, channels))` as a DataFrame, computed by a child
    Python process, which imports Keras so that this one need not. ValueError with the library's
    sentence for a size the architecture cannot take."""
    import json
    import subprocess
    import sys

    import pandas as pd

    from xray_core.jobs import PROJECT_ROOT, child_env

    env = child_env(PROJECT_ROOT)
    env.pop("XRAY_MODELS_DIR", None)  # the child reads no run
    proc = subprocess.run([sys.executable, "-c", _LAYER_TABLE_CODE, arch, str(int(size)), str(int(channels))],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    if proc.returncode == 2:
        raise ValueError(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"Building {arch} to list its layers failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-800:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return pd.DataFrame(found["rows"], columns=found["columns"])
