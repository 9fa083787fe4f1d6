"""Verdict first: upload-to-verdict and upload-to-all-panels on Diagnose, in a real browser.

Starts `streamlit run` on 127.0.0.1 with the bundled models folder, drives Debian's headless
Chromium with Playwright, uploads N different chest films one after another (validation films
of the dataset, 224 px JPEGs) and times, from the moment the file is handed to the uploader:
the verdict (the "Probability of pneumonia" metric of that file on screen) and all panels
(the notes under the five panels on screen). The same harness first times a floor: a page that
does no work, so the report separates what Streamlit's upload round trip and the browser cost
on this machine from what Diagnose adds.

    python benchmarks/verdict_latency.py [--uploads 9]

writes benchmarks/reports/verdict_latency.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser_helpers import chromium, streamlit_server  # noqa: E402  (after the path fix)

REPORTS = ROOT / "benchmarks" / "reports"
DATA = ROOT.parent / "shared" / "data" / "chest_xray"
SETTLE_MS = 4000


# The floor: the same uploader and the same two locators on a page that does no work at all
# (it echoes the file's size), served with the same config. What Streamlit and the browser
# take on this machine before any model runs; Diagnose cannot be faster than this.
FLOOR_PAGE = """
import streamlit as st

uploaded = st.file_uploader("Chest X-ray", key="diagnose_upload")
if uploaded is not None:
    st.metric("Probability of pneumonia", f"{len(uploaded.getvalue())} bytes")
    st.caption(f"{uploaded.name} · run floor")
"""


def time_uploads(script: Path, files: list[Path], *, all_panels: bool) -> list[dict]:
    """Serve `script` with the project's config, upload `files` one after another in Chromium
    and time each (the first is a warm-up and is not returned)."""
    env = dict(os.environ, XRAY_MODELS_DIR=str(ROOT / "trained_models"), XRAY_DATA_DIR=str(DATA))
    rows = []
    with streamlit_server(script, env=env) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(180_000)
        page.goto(base)
        uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
        for i, path in enumerate(files):
            uploader.wait_for(state="attached")
            t0 = time.perf_counter()
            uploader.set_input_files(str(path))
            page.locator('[data-testid="stCaptionContainer"]', has_text=f"{path.name} · run ").first.wait_for()
            page.locator('[data-testid="stMetric"]', has_text="Probability of pneumonia").first.wait_for()
            t_verdict = time.perf_counter() - t0
            row = {"file": path.name, "verdict_seconds": t_verdict}
            if all_panels:
                # the notes under the panels name the film and are drawn after all five panels
                page.locator('[data-testid="stCaptionContainer"]', has_text=f"{path.name} · LIME:").first.wait_for()
                row["all_panels_seconds"] = time.perf_counter() - t0
            page.wait_for_timeout(SETTLE_MS)  # let the run finish (downloads) before the next upload
            if i:
                rows.append(row)
            print(f"{script.name}: {path.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "file")
                  + (" (warm-up)" if not i else ""), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uploads", type=int, default=9)
    args = ap.parse_args(argv)

    files = sorted((DATA / "val" / "PNEUMONIA").glob("*.jpeg"))[:5] + sorted((DATA / "val" / "NORMAL").glob("*.jpeg"))[:5]
    files = (files * 3)[: args.uploads + 1]  # the first upload warms the model and is not counted
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        floor_script = Path(tmp) / "floor.py"
        floor_script.write_text(FLOOR_PAGE)
        floor = time_uploads(floor_script, files, all_panels=False)
    rows = time_uploads(ROOT / "streamlit_app.py", files, all_panels=True)
    v = [r["verdict_seconds"] for r in rows]
    a = [r["all_panels_seconds"] for r in rows]
    fl = [r["verdict_seconds"] for r in floor]
    import streamlit

    load_after = os.getloadavg()
    result = {"uploads": len(rows), "verdict_p50": statistics.median(v), "verdict_max": max(v),
              "all_panels_p50": statistics.median(a), "all_panels_max": max(a),
              "floor_p50": statistics.median(fl), "floor_max": max(fl), "rows": rows, "floor_rows": floor,
              "load_average_before": load_before, "load_average_after": load_after,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "streamlit": streamlit.__version__},
              "command": f"python benchmarks/verdict_latency.py --uploads {args.uploads}"}
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "verdict_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Diagnose: upload to verdict, upload to all panels (real Chromium)", "",
          f"Default model, {len(rows)} uploads of different validation films (224 px JPEG) after one warm-up upload, "
          "timed in Playwright from handing the file to the uploader until the film's verdict (probability "
          "metric and its caption naming the file) and then the notes drawn under all five panels (naming "
          "the file) are on screen, then 4 s of rest before the next upload. LIME uses the dashboard's "
          "defaults (explain.DEFAULT_LIME).", "",
          "The floor is the same harness (same files, same uploader, same locators, same server config) on a "
          "page that does no work: it shows the file's size as the metric. It is what Streamlit's upload "
          "round trip and the browser take on this machine before any model runs.", "",
          "| | p50 | max |", "|---|---|---|",
          f"| floor: upload -> metric on a page that does nothing | {result['floor_p50']:.2f} s | {result['floor_max']:.2f} s |",
          f"| Diagnose: upload -> verdict | {result['verdict_p50']:.2f} s | {result['verdict_max']:.2f} s |",
          f"| Diagnose: upload -> all panels | {result['all_panels_p50']:.2f} s | {result['all_panels_max']:.2f} s |", "",
          f"Diagnose's own share of the verdict time (p50 minus the floor's p50): "
          f"{result['verdict_p50'] - result['floor_p50']:.2f} s.", "",
          f"Machine: {os.cpu_count()} cores (load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          "the server and Chromium share them); Python "
          f"{platform.python_version()}, Streamlit {streamlit.__version__}, Debian Chromium. "
          f"Command: `{result['command']}`.", "",
          "Images: Kermany, Zhang, Goldbaum (2018), CC BY 4.0. Research software, not a medical device."]
    (REPORTS / "verdict_latency.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
