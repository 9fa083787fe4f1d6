"""Several clinicians at once: does a verdict wait behind someone else's explanation?

`python -m benchmarks.load_clients [--clients 1,2,4] [--uploads 6] [--pause 1] [--wait panels]`

For each N: a fresh `streamlit run streamlit_app.py` on 127.0.0.1 (the bundled models, the
dashboard's default settings, so one explanation worker). First one client alone uploads one
film: the cold verdict (the page loads the model on it) and the cold panels (the worker started
with the page and loads lime and TensorFlow at its low priority). Then N real Chromium clients,
one browser process each, started together, each upload films one after another: the run's own
validation films (`harness.validation_films`), a different series per client so that no two
clients share an explanation. Timed from handing the file to the uploader until the verdict of
that film is on screen (the container keyed by the file's hash shows its probability, or the
input gate's refusal: such a film has no panels and is counted apart) and until its five panels
are drawn and loaded (the explanation's container keyed by the same hash); then `--pause`
seconds before the next upload. With `--wait verdict` a client uploads its next film as soon as
the verdict is on screen, moving past its explanations as a hurried user would (the server drops
them; panels are not timed).

Counted as wrong-film: an upload during which a verdict and the explanation of another film were
on screen together (neither greyed out as stale). A failure: no verdict within 60 s, no panels
within 180 s, or an exception on the page. Memory: the resident set of the server process and
of each explanation worker, sampled every 0.2 s, and their kernel-reported peaks (VmHWM). Unless
`--no-floor`, when N = 1 is measured, one client first times a page that does no work (it
echoes the file's size in the same keyed container): what Streamlit's upload round trip and the
browser take on this machine before any model runs.

The clients, the server and its workers share this machine's cores: under load the clients'
own rendering competes with the server for them, as it would not across a hospital network.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.harness import ROOT, SHARED_DATA, Bench, validation_films

VERDICT_TIMEOUT_S, PANELS_TIMEOUT_S = 60, 180
# Upload to verdict and to all panels with one client before explanations moved to workers
# (benchmarks/reports/verdict_latency.md at commit 781809f: 9 uploads, p50 and max).
BEFORE = {"verdict_p50": 0.31, "verdict_max": 0.41, "panels_p50": 2.60, "panels_max": 2.69}

FLOOR_PAGE = """
import hashlib
import streamlit as st

uploaded = st.file_uploader("Chest X-ray", key="diagnose_upload")
if uploaded is not None:
    raw = uploaded.getvalue()
    with st.container(key="verdict-" + hashlib.sha256(raw).hexdigest()[:16]):
        st.metric("Probability of pneumonia", f"{len(raw)} bytes")
"""

# True once the film's five panels are loaded; counts in window.__xrayMixed the moments a verdict
# and an explanation of different films were on screen together.
PANELS_DRAWN = """(sha) => {
  const shown = (%s)();
  if (new Set(shown.map(s => s.film)).size > 1) window.__xrayMixed = (window.__xrayMixed || 0) + 1;
  return shown.some(s => s.kind === 'explained' && s.film === sha && s.loaded >= 5);
}"""


def film_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def server_pid(port: int) -> int:
    """The `streamlit run` process listening on `port` (found by its command line)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"streamlit" in b" ".join(args) and b"--server.port" in args and str(port).encode() in args:
            return int(cmdline.parent.name)
    raise RuntimeError(f"no streamlit process on port {port}")


def worker_pids(parent: int) -> list[int]:
    """The explanation workers the server started."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"xray_core.serving.worker" in (stat.parent / "cmdline").read_bytes():
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def memory_mb(pid: int, field: str = "VmRSS") -> float | None:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class MemoryWatch(threading.Thread):
    """Resident memory of the server and its workers, sampled until stopped; peaks kept."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stopping = pid, threading.Event()
        self.server_peak, self.workers_peak, self.workers = 0.0, 0.0, {}

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            self.server_peak = max(self.server_peak, memory_mb(self.pid) or 0.0)
            total = 0.0
            for pid in worker_pids(self.pid):
                rss = memory_mb(pid) or 0.0
                self.workers[pid] = max(self.workers.get(pid, 0.0), rss)
                total += rss
            self.workers_peak = max(self.workers_peak, total)

    def peaks(self) -> dict:
        """Kernel peaks (VmHWM) of the server and of each worker alive now, and the sampled peaks."""
        return {"server_hwm_mb": memory_mb(self.pid, "VmHWM"), "server_rss_peak_mb": self.server_peak,
                "workers_hwm_mb": {str(p): memory_mb(p, "VmHWM") for p in worker_pids(self.pid)},
                "workers_rss_peak_mb": self.workers_peak, "workers_seen": len(self.workers)}


def upload(page, path: Path, *, wait: str, pause: float) -> dict:
    """One upload in one client: its timings, or its failure."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from tests.browser_helpers import SHOWN_FILMS

    sha = film_hash(path)
    row: dict = {"file": path.name}
    page.evaluate("() => { window.__xrayMixed = 0; }")
    t0 = time.perf_counter()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
    try:
        box = page.locator(f'.st-key-verdict-{sha}')
        verdict = box.locator('[data-testid="stMetric"]').or_(
            box.locator('[data-testid="stAlert"]', has_text="Not a chest X-ray this model can read"))
        verdict.first.wait_for(timeout=VERDICT_TIMEOUT_S * 1000)
        row["verdict_at"] = time.perf_counter()
        row["verdict_s"] = row["verdict_at"] - t0
        row["refused"] = page.locator(f'.st-key-verdict-{sha} [data-testid="stMetric"]').count() == 0
        if wait == "panels" and not row["refused"]:
            page.wait_for_function(PANELS_DRAWN % SHOWN_FILMS, arg=sha, polling=50, timeout=PANELS_TIMEOUT_S * 1000)
            row["panels_s"] = time.perf_counter() - t0
    except PlaywrightTimeout:
        row["failure"] = "no verdict in 60 s" if "verdict_s" not in row else "no panels in 180 s"
    row["wrong_film"] = page.evaluate("() => window.__xrayMixed")
    if page.locator('[data-testid="stException"]').count():
        row["failure"] = "exception: " + page.locator('[data-testid="stException"]').first.inner_text()[:200]
    page.wait_for_timeout(pause * 1000)
    return row


def client(base: str, films: list[Path], *, wait: str, pause: float, start: threading.Barrier | None,
           rows: list) -> None:
    """One clinician: its own Chromium, the Diagnose page, its films one after another."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(PANELS_TIMEOUT_S * 1000)
            page.goto(base)
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').wait_for(state="attached")
            if start is not None:
                start.wait(timeout=300)
            for path in films:
                rows.append(upload(page, path, wait=wait, pause=pause))
        except (PlaywrightError, threading.BrokenBarrierError) as exc:  # its remaining films count as failures
            done = {r["file"] for r in rows}
            rows.extend({"file": f.name, "failure": f"client stopped: {type(exc).__name__}: {exc}"[:300],
                         "wrong_film": 0} for f in films if f.name not in done)
        finally:
            browser.close()


def serve(script: Path, *, clients: list[list[Path]], cold: Path | None, wait: str, pause: float) -> dict:
    """One server, an optional cold upload, then the clients together; rows and memory."""
    from tests.browser_helpers import streamlit_server

    env = dict(os.environ, XRAY_MODELS_DIR=str(ROOT / "trained_models"),
               XRAY_DATA_DIR=str(SHARED_DATA / "chest_xray"))
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        launched = time.perf_counter()
        with streamlit_server(script, env=env, log_path=Path(tmp) / "server.log") as base:
            out["server_start_s"] = time.perf_counter() - launched
            watch = MemoryWatch(server_pid(int(base.rsplit(":", 1)[1])))
            watch.start()
            if cold is not None:
                rows: list = []
                client(base, [cold], wait="panels" if script.name == "streamlit_app.py" else "verdict", pause=0,
                       start=None, rows=rows)
                out["cold"] = {**rows[0], "since_launch_s": rows[0].get("verdict_at", launched) - launched}
            per_client: list[list] = [[] for _ in clients]
            start = threading.Barrier(len(clients))
            threads = [threading.Thread(target=client, args=(base, films),
                                        kwargs=dict(wait=wait, pause=pause, start=start, rows=rows))
                       for films, rows in zip(clients, per_client)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out["memory"] = watch.peaks()
            watch.stopping.set()
        out["rows"] = [dict(r, client=i) for i, rows in enumerate(per_client) for r in rows]
    return out


def quantiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "max": None}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "max": ordered[-1]}


def summary(result: dict) -> dict:
    rows = result["rows"]
    firsts: dict = {}  # each client's first upload: all N at the same moment, each session's first verdict
    for r in rows:
        firsts.setdefault(r["client"], r)
    return {"uploads": len(rows), "refused": sum(bool(r.get("refused")) for r in rows),
            "verdict": quantiles([r["verdict_s"] for r in rows if "verdict_s" in r]),
            "panels": quantiles([r["panels_s"] for r in rows if "panels_s" in r]),
            "failures": sum("failure" in r for r in rows), "wrong_film": sum(bool(r["wrong_film"]) for r in rows),
            "first_verdicts": [r["verdict_s"] for r in firsts.values() if "verdict_s" in r]}


def fmt(v, unit=" s") -> str:
    return "–" if v is None else f"{v:.2f}{unit}"


def report(results: dict, floor: dict | None, args) -> str:
    lines = ["Each row is one `streamlit run` with N Chromium clients uploading films one after another "
             f"({args.uploads} each, {args.pause:g} s pause, waiting for the "
             f"{'panels' if args.wait == 'panels' else 'verdict only'} before the next). "
             "**The clients share this machine's cores with the server and its explanation worker**: "
             "a client's own rendering competes with the server, as it would not across a network.", "",
             "| clients | uploads (refused by the gate) | verdict p50 | p90 | max | panels p50 | p90 | max | failures |"
             " wrong film | server peak RSS | worker peak RSS | cold verdict | cold panels |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        s, mem, cold = r["summary"], r["memory"], r.get("cold", {})
        workers = [v for v in mem["workers_hwm_mb"].values() if v]
        lines.append(
            f"| {n} | {s['uploads']} ({s['refused']}) | {fmt(s['verdict']['p50'])} | {fmt(s['verdict']['p90'])} | "
            f"{fmt(s['verdict']['max'])} | {fmt(s['panels']['p50'])} | {fmt(s['panels']['p90'])} | "
            f"{fmt(s['panels']['max'])} | {s['failures']} | {s['wrong_film']} | {fmt(mem['server_hwm_mb'], ' MB')} | "
            f"{fmt(max(workers) if workers else None, ' MB')} | {fmt(cold.get('verdict_s'))} | "
            f"{fmt(cold.get('panels_s'))} |")
    lines += ["", "Cold: the first upload after `streamlit run` started, by one client alone, before the N "
              "clients start (the page loads the model on it; the explanation worker started when the page "
              "opened) " + "; ".join(f"N = {n}: verdict {fmt(r['cold'].get('verdict_s'))} after the upload, "
                                     f"{fmt(r['cold'].get('since_launch_s'))} after the server was launched"
                                     for n, r in results.items() if r.get("cold")) + ".",
              "The N clients start together, so their first uploads come at the same moment, each the first "
              "film of its browser session; those verdicts took at most "
              + "; ".join(f"{fmt(max(r['summary']['first_verdicts']))} (N = {n})" for n, r in results.items()
                          if r["summary"]["first_verdicts"]) + ".",
              "Peak RSS is the kernel's VmHWM of the server process and of the explanation worker (one "
              "copy of each model per process: LiteRT's in the server, LiteRT's and Keras' in the worker).", ""]
    four = results.get(4)
    if four:
        s = four["summary"]
        ok = (s["verdict"]["p90"] or 99) <= 1.0 and (s["verdict"]["max"] or 99) <= 3.0 and not s["failures"] \
            and not s["wrong_film"]
        lines.append(f"Goal with 4 clients: verdict p90 at most 1.0 s and max at most 3 s, no failures, no "
                     f"explanation of another film: {'met' if ok else 'not met'}.")
    one = results.get(1)
    if one and args.wait == "panels":
        s = one["summary"]
        lines.append(f"One client against the figures before explanations moved to worker processes "
                     f"(verdict_latency.md at 781809f): verdict p50 {fmt(s['verdict']['p50'])} (was "
                     f"{BEFORE['verdict_p50']:.2f} s), max {fmt(s['verdict']['max'])} "
                     f"(was {BEFORE['verdict_max']:.2f} s); "
                     f"panels p50 {fmt(s['panels']['p50'])} (was {BEFORE['panels_p50']:.2f} s), max "
                     f"{fmt(s['panels']['max'])} (was {BEFORE['panels_max']:.2f} s).")
    if floor:
        q = floor["summary"]["verdict"]
        lines.append(f"Floor (one client, a page that does no work): upload to metric p50 {fmt(q['p50'])}, "
                     f"p90 {fmt(q['p90'])}, max {fmt(q['max'])}.")
    lines += ["", "The server process imports neither TensorFlow nor Keras nor lime (tests/test_serve_browser.py "
              "checks it after a Diagnose session), so Streamlit's after-run clean-up, which clears the Keras "
              "session when Keras is imported, has nothing to clear and runs as Streamlit ships it."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,2,4", help="comma-separated client counts (default 1,2,4)")
    ap.add_argument("--uploads", type=int, default=6, help="films each client uploads (default 6)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between a client's uploads (default 1)")
    ap.add_argument("--wait", choices=("panels", "verdict"), default="panels",
                    help="what a client waits for before its next upload (default: the panels)")
    ap.add_argument("--no-floor", dest="floor", action="store_false", help="skip the page that does no work")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    films = [p for p, _ in validation_films("default")]
    if len(films) < 1 + max(counts) * args.uploads:
        ap.error(f"the default's validation list has {len(films)} films; fewer clients or uploads")
    cold, films = films[0], films[1:]
    series = [films[i * args.uploads:(i + 1) * args.uploads] for i in range(max(counts))]
    with Bench("load_clients", question="Several clinicians at once: does a verdict wait behind someone "
                                        "else's explanation?") as bench:
        floor = None
        if args.floor and 1 in counts:
            with tempfile.TemporaryDirectory() as tmp:
                page = Path(tmp) / "floor.py"
                page.write_text(FLOOR_PAGE)
                floor = serve(page, clients=series[:1], cold=None, wait="verdict", pause=args.pause)
            floor["summary"] = summary(floor)
        results = {}
        for n in counts:
            results[n] = serve(ROOT / "streamlit_app.py", clients=series[:n], cold=cold, wait=args.wait,
                               pause=args.pause)
            results[n]["summary"] = summary(results[n])
            s = results[n]["summary"]
            print(f"N={n}: verdict {s['verdict']}, panels {s['panels']}, failures {s['failures']}, "
                  f"wrong film {s['wrong_film']}", flush=True)
        body = report(results, floor, args)
        path = bench.write(body, {"clients": {str(n): r for n, r in results.items()}, "floor": floor,
                                  "before": BEFORE, "settings": vars(args)})
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
