"""`python -m tests.server_probe run APP [options]`: `streamlit run`, plus a thread that tells a
test which modules the server process has imported.

A test sets XRAY_PROBE_DIR to a folder; when a file named `ask` appears there, the thread removes
it and writes `modules.json` ({"pid": ..., "modules": [...]}, sys.modules of this process at that
moment). The page has nothing to expose, and the answer comes from the server process itself.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path


def answer(folder: Path) -> None:
    ask, out = folder / "ask", folder / "modules.json"
    while True:
        if ask.exists():
            ask.unlink()
            tmp = folder / "modules.tmp"
            tmp.write_text(json.dumps({"pid": os.getpid(), "modules": sorted(sys.modules)}))
            os.replace(tmp, out)
        time.sleep(0.1)


def ask(folder: Path, timeout: float = 30) -> dict:
    """The server's answer: its pid and the names of the modules it has imported."""
    out = folder / "modules.json"
    out.unlink(missing_ok=True)
    (folder / "ask").touch()
    deadline = time.monotonic() + timeout
    while not out.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server's probe did not answer within {timeout:g} s")
        time.sleep(0.1)
    return json.loads(out.read_text())


if __name__ == "__main__":
    threading.Thread(target=answer, args=(Path(os.environ["XRAY_PROBE_DIR"]),), daemon=True).start()
    from streamlit.web.cli import main

    sys.argv[0] = "streamlit"
    main(prog_name="streamlit")
