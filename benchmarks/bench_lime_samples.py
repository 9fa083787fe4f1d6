"""Benchmark: how many samples LIME gets on the dashboard, from stability and time together.

Run by hand, on a quiet machine (about 25 minutes on 2 cores):

    python benchmarks/bench_lime_samples.py [--samples 256,512,1024,2048] [--films 30] [--timing-films 10]

For each sample count (a power of two: the orthogonal fold-over design's sizes), with every other
setting of the dashboard's (`DEFAULT_LIME`: SLIC, superpixel-mean fill, low-aberration columns,
log-odds fitted), on validation films of the trained default (bench_explain's draw):

- stability: seeds 0-4 on the first --films films; per film the mean and the smallest pairwise
  pixel Jaccard of the top-5 superpixels (xray_core.explain.stability), and where the top 5 end,
  the gap between the 5th and 6th |weight| (averaged over the seeds) against the seed-to-seed
  standard deviation of those two weights: a gap within two deviations is a near-tie, where the
  seed decides which of the two is shown 5th;
- time: the dashboard's call (explain_lime, four panels drawn) on the first --timing-films films,
  --repeats calls per film and count, the counts taking turns film by film so that any change in
  the machine's speed hits them alike.

The chosen count is the largest whose median call is within the 2 s budget (issue 11, item 6).
Writes benchmarks/reports/explain_samples.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explain import busy_processes, machine, stability_row, validation_films  # noqa: E402

from xray_core import explain as ex  # noqa: E402
from xray_core import fileio, imaging  # noqa: E402
from xray_core.explain.faithfulness import NEAR_TIE  # noqa: E402

BUDGET = 2.0  # seconds per dashboard explanation (issue 11, item 6)


def sample_counts(text: str) -> list[int]:
    counts = sorted({int(v) for v in text.split(",") if v.strip()})
    bad = [c for c in counts if c not in ex.LIME_SAMPLE_CHOICES]
    if not counts or bad:
        raise argparse.ArgumentTypeError(
            f"sample counts must be among {', '.join(map(str, ex.LIME_SAMPLE_CHOICES))}; got {text!r}.")
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=sample_counts, default=sample_counts("256,512,1024,2048"))
    ap.add_argument("--films", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--timing-films", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reports")
    ap.add_argument("--render", type=Path, metavar="JSON", help="only redraw explain_samples.md from its .json")
    args = ap.parse_args(argv)
    if args.render:
        fileio.atomic_write_text(args.out / "explain_samples.md", render(json.loads(args.render.read_text())))
        return 0

    from xray_core.model import load_model

    model = load_model("default")
    settings = {k: v for k, v in ex.DEFAULT_LIME.items() if k != "num_samples"}
    films = validation_films(model, max(args.films, args.timing_films))
    grays = {p.name: imaging.decode(p) for p in films}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before, busy_before = os.getloadavg(), busy_processes()

    # Time first, while the machine is as quiet as it will be; the counts take turns.
    for n in args.samples:  # warm-up: the model's programs, each count's design
        ex.explain_lime(model, grays[films[0].name], seed=0, num_samples=n, **settings)
    seconds: dict[int, list[float]] = {n: [] for n in args.samples}
    for i, path in enumerate(films[: args.timing_films]):
        order = args.samples[i % len(args.samples):] + args.samples[: i % len(args.samples)]
        for _ in range(args.repeats):
            for n in order:
                seconds[n].append(ex.explain_lime(model, grays[path.name], seed=0, num_samples=n, **settings).seconds)
        print(path.name, {n: round(float(np.median(v[-args.repeats:])), 2) for n, v in seconds.items()}, flush=True)
    busy_after_timing = busy_processes()

    rows = []
    for path in films[: args.films]:
        row = {"film": path.name}
        for n in args.samples:
            st = ex.stability(model, grays[path.name], seeds=args.seeds, num_samples=n, **settings)
            row[str(n)] = stability_row(st)
        rows.append(row)
        print(row, flush=True)

    summary = {}
    for n in args.samples:
        per = [r[str(n)] for r in rows]
        failing = [p for p in per if p["jaccard_min"] < 0.8]
        summary[str(n)] = {
            "median_seconds": float(np.median(seconds[n])), "p90_seconds": float(np.quantile(seconds[n], 0.9)),
            "films_min_ge_0.8": sum(p["jaccard_min"] >= 0.8 for p in per),
            "films_mean_ge_0.8": sum(p["jaccard_mean"] >= 0.8 for p in per),
            "mean_jaccard": float(np.mean([p["jaccard_mean"] for p in per])),
            "mean_smallest_jaccard": float(np.mean([p["jaccard_min"] for p in per])),
            "failing_at_a_near_tie": sum(p["near_tie"] for p in failing),
            "min_superpixels": min(p["n_superpixels"] for p in per)}
    within = [n for n in args.samples if summary[str(n)]["median_seconds"] <= BUDGET]
    chosen = max(within) if within else None
    command = "python benchmarks/bench_lime_samples.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"run": model.run_id, "settings": settings, "samples": args.samples, "seeds": args.seeds,
              "budget_seconds": BUDGET, "tie_deviations": NEAR_TIE, "chosen": chosen,
              "dashboard_default": ex.DEFAULT_LIME["num_samples"], "summary": summary, "films": rows,
              "seconds": {str(n): v for n, v in seconds.items()}, "command": command.strip(), "started": started,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": machine(load_before),
              "busy_before": busy_before, "busy_after_timing": busy_after_timing}
    args.out.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(args.out / "explain_samples.json", result)
    fileio.atomic_write_text(args.out / "explain_samples.md", render(result))
    print(render(result))
    return 0


def render(r: dict) -> str:
    m = r["machine"]
    counts = [str(n) for n in r["samples"]]
    n_films = len(r["films"])
    md = ["# How many samples LIME gets: stability and time per sample count", "",
          f"Run `{r['run']}`; every other setting the dashboard's ({r['settings']}); seeds 0-{r['seeds'] - 1}. "
          "Stability: per film the pixel Jaccard of the top-5 superpixels (by |weight|) between every two seeds, "
          f"on {n_films} validation films. Time: the dashboard's call with its four panels, warm model, "
          f"{len(r['seconds'][counts[0]])} calls per count (the counts taking turns film by film).", "",
          "| samples | median s | 90th pct s | films: every pair >= 0.8 | films: mean pair >= 0.8 | mean Jaccard "
          "| mean smallest | films below 0.8 at a near-tie | median 5th-6th spread | fewest superpixels |",
          "|---|---|---|---|---|---|---|---|---|---|",
          *[f"| {n} | {s['median_seconds']:.2f} | {s['p90_seconds']:.2f} | {s['films_min_ge_0.8']} of {n_films} | "
            f"{s['films_mean_ge_0.8']} of {n_films} | {s['mean_jaccard']:.3f} | {s['mean_smallest_jaccard']:.3f} | "
            f"{s['failing_at_a_near_tie']} of {n_films - s['films_min_ge_0.8']} | "
            f"{np.median([f[n]['cut_spread'] for f in r['films']]):.3f} | {s['min_superpixels']} |"
            for n, s in r["summary"].items()], "",
          (f"Chosen: **{r['chosen']} samples**, the largest count whose median call is within "
           f"{r['budget_seconds']:g} s on this machine" if r["chosen"] else
           f"No count is within {r['budget_seconds']:g} s on this machine") + ".", "",
          f"A near-tie: the 5th and 6th superpixels' |weights| (averaged over the seeds) are no further apart than "
          f"{r['tie_deviations']:g} seed-to-seed standard deviations of those weights, so the seed decides which "
          "of the two is shown 5th; the panel's other four agree. More samples shrink that spread (the column "
          "above) and so settle most such ties, at a cost in time that grows with them.", "",
          "Per film, smallest / mean pairwise Jaccard, and the 5th-6th gap / spread (log-odds):", "",
          "| film | " + " | ".join(f"{n} samples" for n in counts) + " |", "|---|" + "---|" * len(counts),
          *[f"| {row['film']} | " + " | ".join(
              f"{row[n]['jaccard_min']:.2f} / {row[n]['jaccard_mean']:.2f}"
              + (f" ({row[n]['cut_margin']:.3f} / {row[n]['cut_spread']:.3f})" if row[n]["cut_margin"] is not None else "")
              for n in counts) + " |" for row in r["films"]], "",
          f"Command: `{r['command']}`; {r['started']} to {r['finished']} on {m['cpus']} cores, load average "
          f"{m['load_average_before'][0]:.1f} before, {m['load_average_after'][0]:.1f} after; {m['platform']}, "
          f"Python {m['python']}; {m['versions']}.", "",
          "Other processes using >= 5 % of a core at the start: " + ("; ".join(r["busy_before"]) or "none")
          + "; after the timing: " + ("; ".join(r["busy_after_timing"]) or "none") + ".", "",
          "Images: Kermany, Zhang, Goldbaum (2018), CC BY 4.0. Research software, not a medical device.", ""]
    return "\n".join(md)


if __name__ == "__main__":
    raise SystemExit(main())
