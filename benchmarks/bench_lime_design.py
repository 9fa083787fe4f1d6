"""Benchmark: what LIME fits on its orthogonal fold-over design, the probability or its log-odds.

Run by hand (about 13 minutes on 2 cores):

    python benchmarks/bench_lime_design.py [--films 30] [--seeds 5]

On the first --films validation films of the trained default (bench_explain's draw), with the
dashboard's segmentation, fill and design (an orthogonal fold-over design, see
xray_core.explain.lime._orthogonal_masks, here with 1,024 rows; how many rows the dashboard uses
is chosen in bench_lime_samples.py), LIME is fitted with seeds 0..4 to P(pneumonia) and to its
log-odds, at the same cost (the same model calls). Per film: the smallest and mean pairwise
pixel Jaccard of the top-5 superpixels over the seeds (issue 11's criterion: smallest >= 0.8).
Earlier versions of this report (in git history) compared random antithetic pairs with the
orthogonal design (both fitted to the probability: orthogonal 13 of 30 films, random pairs 10),
then the two scales on an orthogonal design whose columns were drawn at random (log-odds 21 of
30, probability 13); the design now uses low-aberration columns (lime._low_aberration_columns).
Speed is measured by bench_explain.py --timing, not here.
Writes benchmarks/reports/explain_design.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explain import validation_films, versions  # noqa: E402

from xray_core import explain as ex  # noqa: E402
from xray_core import imaging  # noqa: E402

DESIGNS = {"orthogonal, 1,024 samples, probability fitted": ("orthogonal", 1024, "probability"),
           "orthogonal, 1,024 samples, log-odds fitted": ("orthogonal", 1024, "logit")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--films", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reports")
    args = ap.parse_args(argv)

    from xray_core.model import load_model

    model = load_model("default")
    settings = ex.DEFAULT_LIME
    started, load_before = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), os.getloadavg()
    rows = []
    for path in validation_films(model, args.films):
        gray = imaging.decode(path)
        row = {"film": path.name}
        for name, (sampling, samples, scale) in DESIGNS.items():
            st = ex.stability(model, gray, seeds=args.seeds,
                              **dict(settings, sampling=sampling, num_samples=samples, scale=scale))
            row["n_superpixels"] = min(st.n_superpixels)
            row[name] = {"jaccard_min": st.jaccard_min, "jaccard_mean": st.jaccard_mean}
        rows.append(row)
        print(row, flush=True)
    summary = {name: {"films_min_ge_0.8": int(sum(r[name]["jaccard_min"] >= 0.8 for r in rows)),
                      "films_mean_ge_0.8": int(sum(r[name]["jaccard_mean"] >= 0.8 for r in rows)),
                      "median_min": float(np.median([r[name]["jaccard_min"] for r in rows])),
                      "median_mean": float(np.median([r[name]["jaccard_mean"] for r in rows]))} for name in DESIGNS}
    command = "python benchmarks/bench_lime_design.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"run": model.run_id,
              "settings": {k: v for k, v in settings.items() if k not in ("sampling", "num_samples", "scale")},
              "designs": {k: {"sampling": s, "num_samples": m, "scale": sc} for k, (s, m, sc) in DESIGNS.items()},
              "films": rows, "summary": summary, "seeds": args.seeds, "command": command.strip(),
              "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "load_before": load_before, "load_after": os.getloadavg(), "platform": platform.platform(),
              "versions": versions()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain_design.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    names = list(DESIGNS)
    md = ["# What LIME fits: P(pneumonia) or its log-odds, on the orthogonal fold-over design", "",
          f"Run `{model.run_id}`; segmentation, fill, design and weights as the dashboard's (`DEFAULT_LIME`: "
          f"{result['settings']}); seeds 0-{args.seeds - 1}; the first {len(rows)} validation films of "
          "bench_explain's draw. Per film, the smallest and mean pairwise pixel Jaccard of the top-5 "
          "superpixels (by |weight|) over the seeds. Goal (issue 11): smallest >= 0.8.", "",
          "| film | superpixels | " + " | ".join(f"{n}: smallest / mean" for n in names) + " |",
          "|---|---|" + "---|" * len(names),
          *[f"| {r['film']} | {r['n_superpixels']} | " + " | ".join(
              f"{r[n]['jaccard_min']:.2f} / {r[n]['jaccard_mean']:.2f}" for n in names) + " |" for r in rows], "",
          "| design | films with smallest >= 0.8 | films with mean >= 0.8 | median smallest | median mean |",
          "|---|---|---|---|---|",
          *[f"| {n} | {s['films_min_ge_0.8']} of {len(rows)} | {s['films_mean_ge_0.8']} of {len(rows)} | "
            f"{s['median_min']:.2f} | {s['median_mean']:.2f} |" for n, s in summary.items()], "",
          f"Command: `{result['command']}`; {started} to {result['finished']}; load average "
          f"{load_before[0]:.1f} before, {result['load_after'][0]:.1f} after; {result['platform']}; {result['versions']}.", "",
          "Images: Kermany, Zhang, Goldbaum (2018), CC BY 4.0. Research software, not a medical device.", ""]
    (args.out / "explain_design.md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
