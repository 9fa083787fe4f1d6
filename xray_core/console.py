"""What the commands share when they print: one JSON object per line for `--json`, a plain table,
a number, and how a run argument is read. A leaf: it imports nothing of the library's rooms, so
any module with a command handler may use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def run_ref(text: str):
    """A run argument: a path when it points at an existing folder through a separator, else an id."""
    if (os.sep in text or "/" in text) and Path(text).is_dir():
        return Path(text)
    return text


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def json_line(obj) -> None:
    """A command's `--json` output: one JSON object on one line of stdout."""
    from xray_core import fileio

    print(json.dumps(fileio.to_jsonable(obj)))


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
