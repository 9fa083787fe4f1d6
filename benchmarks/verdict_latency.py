"""Verdict first: upload-to-verdict and upload-to-all-panels on Diagnose, in a real browser.

Starts `streamlit run` on 127.0.0.1 with the bundled models folder, drives Debian's headless
Chromium with Playwright, uploads N different chest films one after another (validation films
of the dataset, 224 px JPEGs) and times, from the moment the file is handed to the uploader:
the verdict (the "Probability of pneumonia" metric of that file on screen) and all panels
(the Grad-CAM panel title on screen, after the four LIME panels).

    python benchmarks/verdict_latency.py [--uploads 9] [--run default]

writes benchmarks/reports/verdict_latency.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "benchmarks" / "reports"
CHROMIUM = "/usr/bin/chromium"
DATA = ROOT.parent / "shared" / "data" / "chest_xray"
SETTLE_MS = 4000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uploads", type=int, default=9)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    files = sorted((DATA / "val" / "PNEUMONIA").glob("*.jpeg"))[:5] + sorted((DATA / "val" / "NORMAL").glob("*.jpeg"))[:5]
    files = (files * 3)[: args.uploads + 1]  # the first upload warms the model and is not counted
    port = free_port()
    log = tempfile.TemporaryFile()
    env = dict(os.environ, XRAY_MODELS_DIR=str(ROOT / "trained_models"), XRAY_DATA_DIR=str(DATA))
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                               "--server.address", "127.0.0.1", "--server.port", str(port),
                               "--browser.gatherUsageStats", "false"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    rows = []
    load_before = os.getloadavg()
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit("streamlit did not start: " + log.read().decode()[-2000:])
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(180_000)
            page.goto(base)
            page.get_by_text("Research software, not a medical device").first.wait_for()
            uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
            for i, path in enumerate(files):
                uploader.wait_for(state="attached")
                t0 = time.perf_counter()
                uploader.set_input_files(str(path))
                page.locator('[data-testid="stCaptionContainer"]', has_text=f"{path.name} · run ").first.wait_for()
                page.locator('[data-testid="stMetric"]', has_text="Probability of pneumonia").first.wait_for()
                t_verdict = time.perf_counter() - t0
                # the notes under the panels name the film and are drawn after all five panels
                page.locator('[data-testid="stCaptionContainer"]', has_text=f"{path.name} · LIME:").first.wait_for()
                t_all = time.perf_counter() - t0
                page.wait_for_timeout(SETTLE_MS)  # let the run finish (downloads) before the next upload
                if i:
                    rows.append({"file": path.name, "verdict_seconds": t_verdict, "all_panels_seconds": t_all})
                print(f"{path.name}: verdict {t_verdict:.2f} s, all panels {t_all:.2f} s{' (warm-up)' if not i else ''}",
                      flush=True)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    v = [r["verdict_seconds"] for r in rows]
    a = [r["all_panels_seconds"] for r in rows]
    import streamlit

    result = {"uploads": len(rows), "verdict_p50": statistics.median(v), "verdict_max": max(v),
              "all_panels_p50": statistics.median(a), "all_panels_max": max(a), "rows": rows,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
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
          "| | p50 | max |", "|---|---|---|",
          f"| upload -> verdict | {result['verdict_p50']:.2f} s | {result['verdict_max']:.2f} s |",
          f"| upload -> all panels | {result['all_panels_p50']:.2f} s | {result['all_panels_max']:.2f} s |", "",
          f"Machine: {os.cpu_count()} cores shared with other work (load average {load_before[0]:.1f} before, "
          f"{result['load_average_after'][0]:.1f} after); Python {platform.python_version()}, Streamlit "
          f"{streamlit.__version__}, Debian Chromium. Command: `{result['command']}`.", "",
          "Images: Kermany, Zhang, Goldbaum (2018), CC BY 4.0. Research software, not a medical device."]
    (REPORTS / "verdict_latency.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
