"""Benchmark: which LIME settings give >= 30 superpixels and a top 5 that does not move with the seed.

Run by hand (about half an hour on 2 shared cores):

    python benchmarks/bench_lime_settings.py [--films 10] [--samples 768] [--seeds 5]

On the first --films films of the validation split of the trained default (the same draw,
random_state 0, as bench_explain.py --faithfulness), every segmentation x sampling design below is
scored with seeds 0..4 at --samples samples; then the local fit is redone on prefixes of those
samples (fewer samples) and with several kernel widths, so that each setting differs from its
neighbour in one thing only. Per film: the top 5 superpixels by |weight| for each seed, and the
smallest and mean pairwise pixel Jaccard over the seeds (the criterion: smallest >= 0.8).
Everything but the seed is fixed. Speed is not measured here (bench_explain.py --timing is).
Writes benchmarks/reports/explain_settings.md and .json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xray_core import explain as ex  # noqa: E402
from xray_core import imaging  # noqa: E402
from xray_core.explain.lime import class_scores, hidden_fill, sample_masks, segment  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the same film draw (the first n of bench_explain's) and version list as bench_explain
from bench_explain import validation_films, versions  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "chest_xray"
SEGMENTATIONS = {
    "slic n40 c20 (previous default)": ("slic", {"n_segments": 40, "compactness": 20.0, "sigma": 1.0}),
    "slic n40 c40": ("slic", {"n_segments": 40, "compactness": 40.0, "sigma": 1.0}),
    "grid 6x6": ("grid", {"rows": 6, "cols": 6}),
}
SAMPLINGS = ("lime", "paired")
KERNEL_WIDTHS = (0.25, 1.0, None)
TOP_K = ex.TOP_PROS_CONS


def scored(model, x, segments, sampling, seed, samples, hide_color, cache: Path):
    key = f"{cache.name}-{sampling}-{seed}-{samples}-{hide_color}.npz"
    path = cache.parent / key
    if path.is_file():
        with np.load(path) as z:
            return z["data"], z["p"]
    data = sample_masks(int(segments.max()) + 1, samples, np.random.RandomState(seed), sampling)
    fill = hidden_fill(x, segments, hide_color).astype(np.float32)
    p = np.concatenate([class_scores(model, np.where(rows[:, segments].astype(bool)[..., None], x[None], fill[None]))
                        [:, ex.PNEUMONIA] for rows in np.array_split(data, -(-len(data) // 128))])
    np.savez(path, data=data, p=p)
    return data, p


def fit(data, targets, kernel_width):
    """lime's own local fit (lime_base.LimeBase: Ridge(alpha=1), every superpixel) -> (weights, R^2)."""
    from lime.lime_base import LimeBase
    from sklearn.metrics import pairwise_distances

    if kernel_width is None:
        kernel = np.ones_like
    else:
        def kernel(d):
            return np.sqrt(np.exp(-d**2 / kernel_width**2))
    distances = pairwise_distances(data, data[:1], metric="cosine").ravel()
    _, local_exp, score, _ = LimeBase(kernel).explain_instance_with_data(
        data, targets[:, None], distances, 0, data.shape[1], feature_selection="none")
    weights = np.zeros(data.shape[1])
    for k, w in local_exp:
        weights[k] = w
    return weights, score


def top_mask(segments, weights) -> np.ndarray:
    top = sorted(range(len(weights)), key=lambda k: (-abs(weights[k]), k))[:TOP_K]
    return np.isin(segments, top)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=10)
    parser.add_argument("--samples", type=int, default=768, help="samples scored per seed (prefixes are refitted)")
    parser.add_argument("--prefixes", default="256,384,512,640,768")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--hide-color", default="mean", help="'mean' (each superpixel's mean) or a gray level")
    parser.add_argument("--segmentations", default=",".join(SEGMENTATIONS))
    parser.add_argument("--samplings", default=",".join(SAMPLINGS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reports")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "xray_lime_sweep",
                        help="scored samples are kept here (outside the project) so reruns refit only")
    parser.add_argument("--render", type=Path, default=None, help="only redraw the .md from this .json")
    args = parser.parse_args(argv)
    if args.render:
        (args.out / "explain_settings.md").write_text(render(json.loads(args.render.read_text())))
        return 0
    if not DATA.is_dir():
        print(f"The dataset is not at {DATA.relative_to(ROOT.parent)}; nothing to measure.")
        return 1
    from xray_core.model import load_model

    model = load_model("default")
    hide_color = None if args.hide_color == "mean" else float(args.hide_color)
    prefixes = [int(v) for v in args.prefixes.split(",") if int(v) <= args.samples]
    seg_names = [s for s in args.segmentations.split(",") if s]
    samplings = [s for s in args.samplings.split(",") if s]
    films = validation_films(model, args.films)
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    t0 = time.perf_counter()
    rows = []  # one per (segmentation, sampling, samples, kernel width, film)
    for seg_name in seg_names:
        method, params = SEGMENTATIONS[seg_name]
        for sampling in samplings:
            for fi, film in enumerate(films):
                gray = imaging.decode(film)
                x = model.preprocess(gray)
                segments = segment(x, method, params=params)
                n = int(segments.max()) + 1
                tag = f"{seg_name.split(' (')[0].replace(' ', '_')}-{film.stem}"
                runs = [scored(model, x, segments, sampling, s, args.samples, hide_color,
                               args.cache / tag) for s in range(args.seeds)]
                for m, width in itertools.product(prefixes, KERNEL_WIDTHS):
                    masks, r2 = [], []
                    for data, p in runs:
                        w, score = fit(data[:m], p[:m], width)
                        masks.append(top_mask(segments, w))
                        r2.append(score)
                    pairs = [ex.jaccard(a, b) for a, b in itertools.combinations(masks, 2)]
                    rows.append({"segmentation": seg_name, "sampling": sampling, "samples": m,
                                 "kernel_width": width, "film": film.name, "n_superpixels": n,
                                 "jaccard_min": float(min(pairs)), "jaccard_mean": float(np.mean(pairs)),
                                 "r2_median": float(np.median(r2)), "p": float(runs[0][1][0])})
                print(f"{seg_name} {sampling} film {fi + 1}/{len(films)}: n={n}, at {args.samples} samples, "
                      f"width None: min Jaccard {rows[-1]['jaccard_min']:.2f} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
    summary = []
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["segmentation"], r["sampling"], r["samples"], r["kernel_width"]), []).append(r)
    for (seg_name, sampling, m, width), g in groups.items():
        jmin = np.array([r["jaccard_min"] for r in g])
        summary.append({"segmentation": seg_name, "sampling": sampling, "samples": m, "kernel_width": width,
                        "films": len(g), "superpixels_min": int(min(r["n_superpixels"] for r in g)),
                        "share_meeting": float(np.mean(jmin >= 0.8)),
                        "share_meeting_and_30": float(np.mean([(r["jaccard_min"] >= 0.8) and r["n_superpixels"] >= 30
                                                               for r in g])),
                        "jaccard_min_median": float(np.median(jmin)), "jaccard_min_worst": float(jmin.min()),
                        "jaccard_mean_median": float(np.median([r["jaccard_mean"] for r in g])),
                        "r2_median": float(np.median([r["r2_median"] for r in g]))})
    result = {
        "run": model.run_id, "films": [f.name for f in films], "seeds": list(range(args.seeds)),
        "samples_scored": args.samples, "hide_color": args.hide_color, "top_k": TOP_K,
        "segmentations": {k: SEGMENTATIONS[k] for k in seg_names}, "summary": summary, "per_film": rows,
        "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": versions(),
        "command": "python benchmarks/bench_lime_settings.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain_settings.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "explain_settings.md").write_text(render(result))
    print(render(result))
    return 0


def render(result: dict) -> str:
    width = lambda w: "uniform" if w is None else f"{w:g}"  # noqa: E731
    lines = [
        "# LIME settings: superpixels and top-5 stability across seeds", "",
        f"Run `{result['run']}` (the trained default), {len(result['films'])} films of its validation split "
        f"(the first {len(result['films'])} of bench_explain.py's draw), P(pneumonia) explained, hidden superpixels "
        f"filled with {'each superpixel' + chr(39) + 's mean' if result['hide_color'] == 'mean' else result['hide_color']}. "
        f"Seeds {result['seeds'][0]}-{result['seeds'][-1]}, everything else fixed. Stability per film = the smallest "
        f"pairwise pixel Jaccard of the top-{result['top_k']} superpixels (by |weight|) over the seeds; a film meets "
        "the goal when it is >= 0.8 and it has >= 30 superpixels. Fewer samples = a prefix of the same draws, "
        "refitted; kernel width = lime's cosine kernel (0.25 is lime's), 'uniform' = every sample weighs alike.", "",
        "| segmentation | sampling | samples | kernel width | min superpixels | films meeting | median of per-film min Jaccard | worst film | median R^2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        lines.append(f"| {s['segmentation']} | {s['sampling']} | {s['samples']} | {width(s['kernel_width'])} | "
                     f"{s['superpixels_min']} | {s['share_meeting_and_30']:.0%} ({round(s['share_meeting_and_30'] * s['films'])}/{s['films']}) | "
                     f"{s['jaccard_min_median']:.2f} | {s['jaccard_min_worst']:.2f} | {s['r2_median']:.2f} |")
    best = max(result["summary"], key=lambda s: (s["share_meeting_and_30"], s["jaccard_min_median"], -s["samples"]))
    key = ("segmentation", "sampling", "samples", "kernel_width")
    lines += ["", f"Most films meeting the goal: {best['share_meeting_and_30']:.0%}, first reached by {best['segmentation']}, "
              f"{best['sampling']}, {best['samples']} samples, kernel width {width(best['kernel_width'])} (ties broken by "
              "the median, then by fewer samples)."]
    chosen = result.get("chosen") or best
    films = [r for r in result["per_film"] if all(r[k] == chosen[k] for k in key)]
    lines += ["", f"Per film for {'the dashboard' + chr(39) + 's setting' if result.get('chosen') else 'that row'} "
              f"({chosen['segmentation']}, {chosen['sampling']}, {chosen['samples']} samples, kernel width "
              f"{width(chosen['kernel_width'])}):", "",
              "| film | P(pneumonia) | superpixels | smallest Jaccard | mean Jaccard |", "|---|---|---|---|---|",
              *[f"| {r['film']} | {r['p']:.4f} | {r['n_superpixels']} | {r['jaccard_min']:.2f} | {r['jaccard_mean']:.2f} |"
                for r in films]]
    m = result["machine"]
    if result.get("note"):
        lines += ["", result["note"]]
    lines += ["", f"Command: `{result['command']}`; {result['started']} to {result['finished']} on {m['cpus']} shared "
              f"cores ({m['platform']}, Python {m['python']}); versions {result['versions']}.", "",
              "Images: Kermany, Zhang, Goldbaum (2018), CC BY 4.0. Research software, not a medical device."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
