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
