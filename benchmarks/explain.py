"""How long does Diagnose's explanation take, how faithful and how stable is it, and what does
LIME's sample count trade between the two?

One question per option, each with its own report in benchmarks/reports/:

    python -m benchmarks.explain --timing 10 [--repeats 3]      # explain_timing
    python -m benchmarks.explain --faithfulness 50              # explain_faithfulness
    python -m benchmarks.explain --samples 256,512,1024,2048    # explain_samples

Every option explains P(pneumonia) with the dashboard's recipe (`explain.lime_settings()`) on
films of the run's own validation list taken in one fixed shuffled order, so that the reports
share their first films (the ten timed films are the ten whose stability is measured).

- `--timing N`: the dashboard's call (`explain_lime`, then the four panels drawn) on a warm model,
  `--repeats` times per film: median, 90th percentile, and the films whose median is within 2 s.
- `--faithfulness N`: deletion areas of LIME's order, Grad-CAM's and a random order of the same
  superpixels, hidden with LIME's own fill and with black; and on the first `--stability-films`
  the top-5 stability over seeds 0-4 (goal: every pair's pixel Jaccard >= 0.8, with >= 30
  superpixels), and whether the top 5 end at a near-tie.
- `--samples COUNTS`: per sample count, the same stability on `--films` films and the time on
  `--timing-films` films (the counts take turns film by film, so a change in the machine's speed
  hits them alike); the largest count whose median call is within 2 s is the one to ship.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Bench, validation_films
from xray_core import explain as ex
from xray_core import imaging

BUDGET = 2.0  # seconds per explanation on Diagnose
GOAL_JACCARD, GOAL_SUPERPIXELS = 0.8, 30
ORDERS = ("lime", "gradcam", "random")
QUESTIONS = {"timing": "How long does Diagnose take to explain a film with LIME?",
             "faithfulness": "How faithful and how stable are the dashboard's LIME explanations?",
             "samples": "How many samples should LIME get: stability against time, per count?"}


def films(run: str, n: int) -> list[Path]:
    """The first n films of the run's validation list in a fixed shuffled order (RandomState(0))."""
    pairs = validation_films(run)
    return [pairs[i][0] for i in np.random.RandomState(0).permutation(len(pairs))[:n]]


def dashboard_call(model, gray: np.ndarray, settings: dict) -> tuple[ex.LimeExplanation, float]:
    """What Diagnose does for one film: explain, then draw the four panels; (explanation, seconds)."""
    t = time.perf_counter()
    exp = ex.explain_lime(model, gray, seed=0, **settings)
    ex.lime_panels(gray, exp)
    return exp, time.perf_counter() - t


def stability_row(st: ex.Stability) -> dict:
    """A film's stability figures, the fewest superpixels over the seeds, and whether it meets the goal."""
    row = dict(st.to_dict(), n_superpixels=min(st.n_superpixels))
    del row["seeds"]
    row["meets"] = bool(row["jaccard_min"] >= GOAL_JACCARD and row["n_superpixels"] >= GOAL_SUPERPIXELS)
    return row


def cut(row: dict) -> str:
    if row.get("cut_margin") is None:
        return "-"
    return f"{row['cut_margin']:.3f} / {row['cut_spread']:.3f}" + (" (near-tie)" if row["near_tie"] else "")


def recipe(settings: dict) -> str:
    width = settings["kernel_width"]
    fill = "each superpixel's mean" if settings["hide_color"] is None else f"gray level {settings['hide_color']:g}"
    return (f"{settings['segmentation']} {settings['segmentation_params']}, "
            + (f"{settings['num_samples']} samples, " if "num_samples" in settings else "")
            + f"sampling `{settings['sampling']}`, kernel width {'uniform' if width is None else width}, "
            f"hidden superpixels filled with {fill}, the "
            f"{'log-odds' if settings['scale'] == 'logit' else 'probability'} fitted")


def timing(model, paths: list[Path], repeats: int) -> tuple[str, dict]:
    settings = ex.lime_settings()
    grays = [imaging.decode(p) for p in paths]
    cold = dashboard_call(model, grays[0], settings)[1]  # the model's programs, the design's columns
    rows = []
    for path, gray in zip(paths, grays):
        calls = [dashboard_call(model, gray, settings) for _ in range(repeats)]
        seconds = [s for _, s in calls]
        rows.append({"film": path.name, "seconds": seconds, "median": float(np.median(seconds)),
                     "n_superpixels": calls[0][0].n_superpixels,
                     "timings": {k: round(v, 4) for k, v in calls[0][0].timings.items()}})
        print(path.name, f"{rows[-1]['median']:.2f} s", flush=True)
    every = [s for r in rows for s in r["seconds"]]
    data = {"run": model.run_id, "lime_settings": settings, "repeats": repeats, "cold_seconds": cold,
            "median_seconds": float(np.median(every)), "p90_seconds": float(np.quantile(every, 0.9)),
            "max_seconds": float(max(every)),
            "films_median_within_budget": float(np.mean([r["median"] <= BUDGET for r in rows])), "films": rows}
    body = [f"Run `{model.run_id}` ({model.n_members} members, {model.input_size[0]} px, {model.channels} channel); "
            f"the dashboard's recipe: {recipe(settings)}. One untimed call first ({cold:.2f} s), then {repeats} "
            f"calls per film on {len(rows)} validation films; a call is `explain_lime` and the four panels.", "",
            "| film | superpixels | median s | calls s | stages of the first call s |", "|---|---|---|---|---|",
            *[f"| {r['film']} | {r['n_superpixels']} | {r['median']:.2f} | "
              f"{', '.join(f'{v:.2f}' for v in r['seconds'])} | {r['timings']} |" for r in rows], "",
            f"All {len(every)} calls: median **{data['median_seconds']:.2f} s**, 90th percentile "
            f"{data['p90_seconds']:.2f} s, max {data['max_seconds']:.2f} s; films whose median is within "
            f"{BUDGET:g} s: {data['films_median_within_budget']:.0%}."]
    return "\n".join(body), data


def faithfulness(model, paths: list[Path], steps: int, stability_films: int, seeds: int) -> tuple[str, dict]:
    settings = ex.lime_settings()
    fills = {"lime_fill": settings["hide_color"], "black": 0.0}
    per_image, stab = [], []
    for i, path in enumerate(paths):
        gray = imaging.decode(path)
        exp = ex.explain_lime(model, gray, seed=0, **settings)
        cam = ex.grad_cam(model, gray)
        orders = {"lime": ex.lime_order(exp.weights), "gradcam": ex.gradcam_order(cam.heatmap, exp.segments),
                  "random": ex.random_order(exp.n_superpixels, i)}
        row = {"film": path.name, "n_superpixels": exp.n_superpixels, "probability": exp.probability}
        for key, fill in fills.items():
            row[key] = {name: ex.deletion_curve(model, gray, exp.segments, order, ex.PNEUMONIA, steps=steps,
                                                hide_color=fill).area for name, order in orders.items()}
        per_image.append(row)
        if i < stability_films:
            stab.append({"film": path.name, **stability_row(ex.stability(model, gray, seeds=seeds, first=exp,
                                                                         **settings))})
        print(f"{i + 1}/{len(paths)}", row, flush=True)
    areas = {key: {k: float(np.mean([r[key][k] for r in per_image])) for k in ORDERS} for key in fills}
    beats = {key: {k: float(np.mean([r[key]["lime"] < r[key][k] for r in per_image])) for k in ORDERS[1:]}
             for key in fills}
    n_sp = [r["n_superpixels"] for r in per_image]
    fill = "each superpixel's mean" if settings["hide_color"] is None else f"gray level {settings['hide_color']:g}"
    data = {"run": model.run_id, "n_images": len(per_image), "lime_settings": settings, "deletion_steps": steps,
            "deletion_fill": fill, "mean_deletion_area": areas["lime_fill"], "mean_deletion_area_black": areas["black"],
            "lime_beats_share": beats, "superpixels": {"min": int(min(n_sp)), "median": float(np.median(n_sp))},
            "stability": {"films": stab, "seeds": seeds, "goal_jaccard": GOAL_JACCARD, "share_meeting": float(np.mean([s["meets"] for s in stab])) if stab else None,
                          "median_jaccard_min": float(np.median([s["jaccard_min"] for s in stab])) if stab else None},
            "per_image": per_image}
    body = [f"Run `{model.run_id}`, {len(per_image)} of its validation films; the dashboard's recipe: "
            f"{recipe(settings)}.", "",
            f"Deletion: superpixels hidden in each order, most important first, in {steps} steps; the area under "
            "P(pneumonia) over the share hidden (lower: the order found what the model relies on). Same film, "
            "superpixels, model and fill for the three orders.", "",
            f"| order | mean deletion area, LIME's fill ({fill}) | mean deletion area, black fill |", "|---|---|---|",
            *[f"| {k} | {areas['lime_fill'][k]:.3f} | {areas['black'][k]:.3f} |" for k in ORDERS], "",
            f"LIME's order has the lower area than random on {beats['lime_fill']['random']:.0%} of the films and than "
            f"Grad-CAM on {beats['lime_fill']['gradcam']:.0%} with LIME's fill; with black "
            f"{beats['black']['random']:.0%} and {beats['black']['gradcam']:.0%}. Superpixels per film: min "
            f"{min(n_sp)}, median {np.median(n_sp):.0f}. LIME was fitted on images hidden with its own fill, which "
            "favours its order in the first column; black is a fill neither method saw."]
    if stab:
        body += ["", f"## Top-5 stability over seeds 0-{seeds - 1} (the first {len(stab)} films)", "",
                 "Smallest and mean pairwise pixel Jaccard of the top-5 superpixels (by |weight|), everything but "
                 f"the seed fixed; goal: smallest >= {GOAL_JACCARD} with >= {GOAL_SUPERPIXELS} superpixels. Where the "
                 "top 5 end: the gap between the 5th and 6th |weight| (averaged over the seeds) and the larger "
                 "seed-to-seed deviation of the two; within two deviations is a near-tie.", "",
                 "| film | superpixels | smallest Jaccard | mean Jaccard | 5th-6th gap / spread | meets |",
                 "|---|---|---|---|---|---|",
                 *[f"| {s['film']} | {s['n_superpixels']} | {s['jaccard_min']:.2f} | {s['jaccard_mean']:.2f} | "
                   f"{cut(s)} | {'yes' if s['meets'] else 'no'} |" for s in stab], "",
                 f"Films meeting the goal: **{sum(s['meets'] for s in stab)} of {len(stab)}**; of the others, "
                 f"{sum(s['near_tie'] for s in stab if not s['meets'])} end their top 5 at a near-tie."]
    return "\n".join(body), data


def samples(model, paths: list[Path], counts: list[int], stability_films: int, timing_films: int, repeats: int,
            seeds: int) -> tuple[str, dict]:
    settings = {k: v for k, v in ex.lime_settings().items() if k != "num_samples"}
    grays = {p.name: imaging.decode(p) for p in paths}
    for n in counts:  # the model's programs and each count's design, untimed
        dashboard_call(model, grays[paths[0].name], dict(settings, num_samples=n))
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    for i, path in enumerate(paths[:timing_films]):
        for _ in range(repeats):
            for n in counts[i % len(counts):] + counts[:i % len(counts)]:
                seconds[n].append(dashboard_call(model, grays[path.name], dict(settings, num_samples=n))[1])
        print(path.name, {n: round(float(np.median(v[-repeats:])), 2) for n, v in seconds.items()}, flush=True)
    rows = []
    for path in paths[:stability_films]:
        rows.append({"film": path.name, **{str(n): stability_row(ex.stability(
            model, grays[path.name], seeds=seeds, num_samples=n, **settings)) for n in counts}})
        print(rows[-1]["film"], {n: round(rows[-1][str(n)]["jaccard_min"], 2) for n in counts}, flush=True)
    summary = {}
    for n in counts:
        per = [r[str(n)] for r in rows]
        failing = [p for p in per if p["jaccard_min"] < GOAL_JACCARD]
        spreads = [np.nan if p["cut_spread"] is None else p["cut_spread"] for p in per]
        summary[str(n)] = {
            "median_seconds": float(np.median(seconds[n])), "p90_seconds": float(np.quantile(seconds[n], 0.9)),
            "films_min_ge_goal": sum(p["jaccard_min"] >= GOAL_JACCARD for p in per),
            "films_mean_ge_goal": sum(p["jaccard_mean"] >= GOAL_JACCARD for p in per),
            "mean_jaccard": float(np.mean([p["jaccard_mean"] for p in per])),
            "mean_smallest_jaccard": float(np.mean([p["jaccard_min"] for p in per])),
            "failing_at_a_near_tie": sum(p["near_tie"] for p in failing),
            "median_cut_spread": float(np.median(spreads)),
            "min_superpixels": min(p["n_superpixels"] for p in per)}
    within = [n for n in counts if summary[str(n)]["median_seconds"] <= BUDGET]
    chosen = max(within) if within else None
    data = {"run": model.run_id, "settings": settings, "samples": counts, "seeds": seeds, "budget_seconds": BUDGET,
            "chosen": chosen, "dashboard_default": ex.DEFAULT_LIME["num_samples"], "summary": summary, "films": rows,
            "seconds": {str(n): v for n, v in seconds.items()}}
    n_films = len(rows)
    body = [f"Run `{model.run_id}`; every setting but the sample count the dashboard's: {recipe(settings)}. "
            f"Stability: seeds 0-{seeds - 1} on {n_films} validation films. Time: the dashboard's call (explain, "
            f"four panels), warm model, {len(seconds[counts[0]])} calls per count on {min(timing_films, len(paths))} "
            "films, the counts taking turns.", "",
            "| samples | median s | 90th pct s | films: every pair >= 0.8 | films: mean pair >= 0.8 | mean Jaccard | "
            "mean smallest | films below 0.8 at a near-tie | median 5th-6th spread | fewest superpixels |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *[f"| {n} | {s['median_seconds']:.2f} | {s['p90_seconds']:.2f} | {s['films_min_ge_goal']} of {n_films} | "
              f"{s['films_mean_ge_goal']} of {n_films} | {s['mean_jaccard']:.3f} | {s['mean_smallest_jaccard']:.3f} | "
              f"{s['failing_at_a_near_tie']} of {n_films - s['films_min_ge_goal']} | {s['median_cut_spread']:.3f} | "
              f"{s['min_superpixels']} |" for n, s in summary.items()], "",
            (f"The largest count whose median call is within {BUDGET:g} s here: **{chosen}**" if chosen else
             f"No count's median call is within {BUDGET:g} s here")
            + f"; the dashboard ships {data['dashboard_default']}. More samples shrink the seed-to-seed spread of "
            "the weights and so settle near-ties at rank 5, at a cost in time that grows with them.", "",
            "Per film, smallest / mean pairwise Jaccard and the 5th-6th gap / spread:", "",
            "| film | " + " | ".join(f"{n} samples" for n in counts) + " |", "|---|" + "---|" * len(counts),
            *[f"| {r['film']} | " + " | ".join(f"{r[str(n)]['jaccard_min']:.2f} / {r[str(n)]['jaccard_mean']:.2f} "
                                               f"({cut(r[str(n)])})" for n in counts) + " |" for r in rows]]
    return "\n".join(body), data


def sample_counts(text: str) -> list[int]:
    counts = sorted({int(v) for v in text.split(",") if v.strip()})
    if not counts or not set(counts) <= set(ex.LIME_SAMPLE_CHOICES):
        raise argparse.ArgumentTypeError(f"sample counts must be among {', '.join(map(str, ex.LIME_SAMPLE_CHOICES))} "
                                         f"(the dashboard's design takes a power of two); got {text!r}.")
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--timing", type=int, metavar="N", help="time the dashboard's call on N films")
    mode.add_argument("--faithfulness", type=int, metavar="N", help="deletion areas on N films, stability on the first")
    mode.add_argument("--samples", type=sample_counts, metavar="COUNTS", help="stability and time per sample count")
    ap.add_argument("--run", default="default")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per film (--timing, --samples)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds for the stability figures")
    ap.add_argument("--steps", type=int, default=20, help="deletion steps (--faithfulness)")
    ap.add_argument("--stability-films", type=int, default=10, help="films whose stability is measured "
                                                                    "(--faithfulness)")
    ap.add_argument("--films", type=int, default=30, help="films whose stability is measured (--samples)")
    ap.add_argument("--timing-films", type=int, default=10, help="films timed (--samples)")
    args = ap.parse_args(argv)

    from xray_core.model import load_model

    model = load_model(args.run)
    mode = "timing" if args.timing else "faithfulness" if args.faithfulness else "samples"
    with Bench(f"explain_{mode}", question=QUESTIONS[mode]) as bench:
        if mode == "timing":
            body, data = timing(model, films(args.run, args.timing), args.repeats)
        elif mode == "faithfulness":
            body, data = faithfulness(model, films(args.run, args.faithfulness), args.steps, args.stability_films,
                                      args.seeds)
        else:
            body, data = samples(model, films(args.run, max(args.films, args.timing_films)), args.samples,
                                 args.films, args.timing_films, args.repeats, args.seeds)
        print(bench.write(body, data))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
