"""Benchmark: xray_core.explain against a seed-style LIME call, plus trust figures on a real image.

Run by hand (it takes a few minutes on 2 cores):

    python benchmarks/bench_explain.py [--samples 1024] [--repeats 3]

Seed-style means what the seed notebook did: `LimeImageExplainer()` with its defaults (no
random_state, quickshift, batch_size=10, top_labels=5), `model.predict` as the classifier,
`hide_color=0`, on the same image and with the same number of samples, timed in the same
process. Writes benchmarks/reports/explain.md and explain.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xray_core import explain as ex  # noqa: E402
from xray_core import fileio, imaging, runs  # noqa: E402

VAL_DIR = ROOT.parent / "shared" / "data" / "chest_xray" / "val"
REAL_RUN_DIRS = (runs.DEFAULT_RUNS_DIR,)  # the registry: trained_models/, or $XRAY_MODELS_DIR


def other_processes() -> list[str]:
    """The busiest other processes, to say what shared the 2 cores during the run."""
    out = subprocess.run(["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True,
                         text=True, check=False).stdout.splitlines()[1:]
    lines = []
    for line in out:
        parts = line.split(None, 3)
        if len(parts) < 4 or int(parts[0]) == os.getpid() or parts[3].startswith("ps "):
            continue
        if float(parts[1]) < 5.0:
            break
        lines.append(f"{parts[1]}% {parts[3][:110]}")
    return lines[:8]


def busy_processes(seconds: float = 1.0) -> list[str]:
    """Other processes using >= 5 % of a core over the next `seconds` (ps's %CPU is a lifetime
    average, which hides a job that has just started or was paused)."""
    def ticks() -> dict[int, int]:
        out = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                out[int(stat.parent.name)] = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, ValueError, IndexError):
                continue
        return out

    before = ticks()
    time.sleep(seconds)
    after = ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, t in after.items():
        share = (t - before.get(pid, t)) / hz / seconds
        if pid != os.getpid() and share >= 0.05:
            try:
                cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            busy.append(f"{share:.0%} {cmd.strip()[:110]}")
    return sorted(busy, key=lambda line: -float(line.split("%")[0]))


def pick_image(path: str | None) -> tuple[np.ndarray, str]:
    if path:
        return imaging.decode(Path(path)), path
    files = sorted((VAL_DIR / "PNEUMONIA").glob("*.jpeg")) if VAL_DIR.is_dir() else []
    if files:
        return imaging.decode(files[0]), str(files[0])
    sys.path.insert(0, str(ROOT / "tests"))
    from test_explain import blob_image

    return blob_image(256), "synthetic blob image (real data absent)"


def seed_style(model, x: np.ndarray, channels: int, num_samples: int) -> dict:
    """The seed's call: LimeImageExplainer() defaults and model.predict in lime's batches of 10."""
    from lime import lime_image

    model_seconds = [0.0]

    def classifier(batch):  # the seed segmented 0..1 images; our models take 0..255 inside
        t = time.perf_counter()
        batch = batch * 255.0 if channels == 3 else batch[..., :1] * 255.0
        out = model.predict(batch, verbose=0)
        model_seconds[0] += time.perf_counter() - t
        return out if out.shape[1] > 1 else np.concatenate([1 - out, out], axis=1)

    image01 = (x / 255.0).astype(np.float64)
    image01 = image01 if channels == 3 else image01[..., 0]
    model.predict(np.zeros((10, *x.shape), np.float32), verbose=0)  # predict's first-call setup
    explainer = lime_image.LimeImageExplainer()
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # lime's tqdm bar
        exp = explainer.explain_instance(image01, classifier, top_labels=5, hide_color=0,
                                         num_samples=num_samples)
    total = time.perf_counter() - t
    return {"seconds": total, "model_seconds": model_seconds[0],
            "lime_own_seconds": total - model_seconds[0],
            "n_superpixels": int(len(np.unique(exp.segments)))}


def lime_wrapped(model, exp: ex.LimeExplanation) -> dict:
    """lime_image's own explain_instance with our classifier (Model.predict_proba in large
    batches) and our segments: how much is lime's own per-sample work, and whether our weights
    equal lime's."""
    from lime import lime_image

    from xray_core.explain.lime import class_scores

    model_seconds = [0.0]

    def classifier(batch):
        t = time.perf_counter()
        out = class_scores(model, batch)
        model_seconds[0] += time.perf_counter() - t
        return out

    explainer = lime_image.LimeImageExplainer(random_state=exp.seed)
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        ref = explainer.explain_instance(
            exp.model_input[..., 0].astype(np.float64), classifier, labels=(exp.label,),
            hide_color=0, top_labels=None, num_samples=exp.num_samples, batch_size=256,
            segmentation_fn=lambda _img: exp.segments, random_seed=exp.seed)
    total = time.perf_counter() - t
    weights = np.zeros(exp.n_superpixels)
    for k, w in ref.local_exp[exp.label]:
        weights[k] = w
    return {"seconds": total, "model_seconds": model_seconds[0],
            "lime_own_seconds": total - model_seconds[0],
            "max_abs_weight_difference": float(np.max(np.abs(weights - exp.weights)))}


def ours(model, gray: np.ndarray, num_samples: int, repeats: int) -> dict:
    """explain_lime with the seed study's settings (the seed-style call's), then Grad-CAM."""
    settings = ex.lime_settings("seed", num_samples=num_samples)
    cold = ex.explain_lime(model, gray, seed=0, **settings)
    warm = [ex.explain_lime(model, gray, seed=0, **settings) for _ in range(repeats)]
    best = min(warm, key=lambda e: e.seconds)
    cam_cold = ex.grad_cam(model, gray, label=best.label)
    cam = min((ex.grad_cam(model, gray, label=best.label) for _ in range(repeats)),
              key=lambda g: g.seconds)
    t = time.perf_counter()
    ex.make_overlay(gray, cam.heatmap)
    overlay_s = time.perf_counter() - t
    return {
        "cold_seconds": cold.seconds,
        "seconds_median": statistics.median(e.seconds for e in warm),
        "seconds_min": best.seconds,
        "timings_of_fastest": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in best.timings.items()},
        "n_superpixels": best.n_superpixels,
        "score_r2": best.score,
        "label": best.label,
        "probability_pneumonia": best.probability,
        "gradcam_cold_seconds": cam_cold.seconds,
        "gradcam_seconds": cam.seconds,
        "gradcam_layer": cam.layer,
        "overlay_seconds": overlay_s,
        "explanation": best,
    }


def untrained_model(network, folder: Path):
    """An untrained network saved as a run folder and loaded as the product's Model."""
    from xray_core.model import load_model

    folder.mkdir(parents=True)
    network.save(folder / runs.MODEL_FILE)
    shape = network.inputs[0].shape
    fileio.atomic_write_json(folder / runs.CONFIG_FILE, {"image_size": [int(shape[1]), int(shape[2])],
                                                         "channels": int(shape[3])})
    return load_model(folder)


def find_trained_runs() -> list:
    found = []
    for folder in REAL_RUN_DIRS:
        if not folder.is_dir():
            continue
        for info in runs.list_runs(folder):
            if info.state == "completed" and (Path(info.path) / runs.MODEL_FILE).is_file():
                found.append(runs.load_run(Path(info.path)))
    return found


def validation_films(model, n: int) -> list[Path]:
    """n films of the run's validation split, its stored list (random_state 0; the first 10 are the
    stability films)."""
    import pandas as pd

    from xray_core import data, evaluation

    root = data.find_dataset(ROOT.parent / "shared" / "data" / "chest_xray")
    paths, _ = evaluation.validation_rows(runs.Run(model.path), str(root))
    val = pd.DataFrame({"path": paths})
    return [Path(p) for p in val.sample(n=min(max(n, 50), len(val)), random_state=0)["path"][:n]]


def versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("tensorflow", "keras", "ai-edge-litert", "numpy", "scikit-image", "scikit-learn", "lime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine(load_before) -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
            "versions": versions()}


def stability_row(st: ex.Stability) -> dict:
    """A report's row of `explain.stability`'s figures: Stability.to_dict() (near_tie included)
    with the fewest superpixels over the seeds, without the seed list."""
    row = dict(st.to_dict(), n_superpixels=min(st.n_superpixels))
    del row["seeds"]
    return row


def fill_name(hide_color) -> str:
    return "each superpixel's mean" if hide_color is None else f"gray level {hide_color:g}" + (
        " (black)" if hide_color == 0 else "")


def lime_settings(samples: int | None) -> dict:
    settings = dict(ex.DEFAULT_LIME)
    if samples:
        settings["num_samples"] = int(samples)
    return settings


def faithfulness(run: str, n_images: int, samples: int | None, steps: int, stability_images: int, out: Path) -> int:
    """Deletion areas of LIME, Grad-CAM and a random order of P(pneumonia) on validation films of
    the trained run, like for like (same superpixels, same film, same probability, same fill), with
    hidden superpixels filled as LIME filled them and, for comparison, black; and LIME's top-5
    stability over seeds 0-4 per film. Writes explain_faithfulness.md and .json."""
    from xray_core.model import load_model

    model = load_model(run)
    settings = lime_settings(samples)
    fills = {"lime_fill": settings["hide_color"], "black": 0.0}
    films = validation_films(model, n_images)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = os.getloadavg()
    per_image, stab = [], []
    for i, path in enumerate(films):
        gray = imaging.decode(path)
        exp = ex.explain_lime(model, gray, seed=0, **settings)
        cam = ex.grad_cam(model, gray)
        orders = {"lime": ex.lime_order(exp.weights), "gradcam": ex.gradcam_order(cam.heatmap, exp.segments),
                  "random": ex.random_order(exp.n_superpixels, i)}
        row = {"film": path.name, "n_superpixels": exp.n_superpixels, "probability": exp.probability}
        for fill_key, fill in fills.items():
            row[fill_key] = {name: ex.deletion_curve(model, gray, exp.segments, order, ex.PNEUMONIA, steps=steps, hide_color=fill).area
                             for name, order in orders.items()}
        per_image.append(row)
        if i < stability_images:
            st = ex.stability(model, gray, seeds=5, first=exp, **settings)
            stab.append({"film": path.name, **stability_row(st),
                         "meets": bool(st.jaccard_min >= 0.8 and min(st.n_superpixels) >= 30)})
        print(f"{i + 1}/{len(films)} {path.name}: {row}", flush=True)
    areas = {fill_key: {k: float(np.mean([r[fill_key][k] for r in per_image])) for k in ("lime", "gradcam", "random")}
             for fill_key in fills}
    beats = {fill_key: {k: float(np.mean([r[fill_key]["lime"] < r[fill_key][k] for r in per_image]))
                        for k in ("gradcam", "random")} for fill_key in fills}
    n_sp = [r["n_superpixels"] for r in per_image]
    command = f"python benchmarks/bench_explain.py --faithfulness {n_images}" + (f" --samples {samples}" if samples else "")
    result = {
        "run": model.run_id, "n_images": len(per_image), "lime_settings": settings, "deletion_steps": steps,
        "segmentation": settings["segmentation"], "segmentation_params": settings["segmentation_params"],
        "samples": settings["num_samples"],
        "deletion_fill": fill_name(settings["hide_color"]),
        "mean_deletion_area": areas["lime_fill"],  # with the fill LIME used (what the dashboard's help shows)
        "mean_deletion_area_black": areas["black"],
        "lime_beats_share": beats,
        "superpixels": {"min": int(min(n_sp)), "median": float(np.median(n_sp))},
        "stability": {"films": stab, "share_meeting": float(np.mean([s["meets"] for s in stab])) if stab else None,
                      "median_jaccard_min": float(np.median([s["jaccard_min"] for s in stab])) if stab else None},
        "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(load_before), "command": command, "per_image": per_image,
    }
    out.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(out / "explain_faithfulness.json", result)
    fileio.atomic_write_text(out / "explain_faithfulness.md", render_faithfulness(result))
    print(render_faithfulness(result))
    return 0


def render_faithfulness(r: dict) -> str:
    s = r["lime_settings"]
    m = r["machine"]
    fill = r["deletion_fill"]
    lines = [
        "# Explanation faithfulness and stability on the trained default model", "",
        f"Run `{r['run']}`, {r['n_images']} films drawn (random_state 0) from its validation split. LIME with the "
        f"dashboard's settings (`DEFAULT_LIME`): {s['segmentation']} {s['segmentation_params']}, {s['num_samples']} "
        f"samples, sampling `{s['sampling']}`, kernel width {s['kernel_width'] if s['kernel_width'] is not None else 'uniform'}, "
        f"hidden superpixels filled with {fill}. Every explanation is of P(pneumonia), fitted on its "
        f"{'log-odds' if s.get('scale') == 'logit' else 'probability'}.", "",
        f"Deletion: superpixels hidden in each order, most important first, in {r['deletion_steps']} steps; the "
        "area under P(pneumonia) over the share hidden (lower = the order found what the model relies on). "
        "Like for like: same film, same superpixels, same model and same fill for all three orders. The first "
        f"column hides with the fill LIME was fitted with ({fill}); the second hides with black, as the "
        "previous reports did, for comparison only.", "",
        f"| order | mean deletion area, fill = LIME's ({fill}) | mean deletion area, black fill |", "|---|---|---|",
        *[f"| {k} | {r['mean_deletion_area'][k]:.3f} | {r['mean_deletion_area_black'][k]:.3f} |"
          for k in ("lime", "gradcam", "random")], "",
        f"LIME's order has the lower area than random on {r['lime_beats_share']['lime_fill']['random']:.0%} of the films "
        f"and than Grad-CAM on {r['lime_beats_share']['lime_fill']['gradcam']:.0%} (LIME's fill); with black: "
        f"{r['lime_beats_share']['black']['random']:.0%} and {r['lime_beats_share']['black']['gradcam']:.0%}. "
        f"Superpixels per film: min {r['superpixels']['min']}, median {r['superpixels']['median']:.0f}.", "",
        "Read the first column with care: LIME was fitted to the model's answers on images hidden with that very "
        "fill, so hiding with it favours LIME's order, while Grad-CAM never hides anything; the black column is a "
        "fill neither method saw.", "",
    ]
    st = r["stability"]
    if st["films"]:
        lines += [f"## Top-5 stability, seeds 0-4 (first {len(st['films'])} films)", "",
                  "Smallest and mean pairwise pixel Jaccard of the top-5 superpixels (by |weight|) over the five "
                  "seeds, everything else fixed. Goal: smallest >= 0.8 with >= 30 superpixels. Where the top 5 "
                  "end: the gap between the 5th and 6th |weight| (averaged over the seeds) and the larger "
                  "seed-to-seed standard deviation of the two; a gap within two deviations is a near-tie.", "",
                  "| film | superpixels | smallest Jaccard | mean Jaccard | 5th-6th gap / spread | meets |",
                  "|---|---|---|---|---|---|",
                  *[f"| {f['film']} | {f['n_superpixels']} | {f['jaccard_min']:.2f} | {f['jaccard_mean']:.2f} | "
                    + (f"{f['cut_margin']:.3f} / {f['cut_spread']:.3f}{' (near-tie)' if f['near_tie'] else ''}"
                       if f.get("cut_margin") is not None else "") + f" | {'yes' if f['meets'] else 'no'} |"
                    for f in st["films"]], "",
                  f"Films meeting the goal: {sum(f['meets'] for f in st['films'])} of {len(st['films'])}; median smallest "
                  f"Jaccard {st['median_jaccard_min']:.2f}; of the {sum(not f['meets'] for f in st['films'])} others, "
                  f"{sum(bool(f.get('near_tie')) for f in st['films'] if not f['meets'])} end their top 5 at a near-tie.", ""]
    lines += [f"Command: `{r['command']}`; {r['started']} to {r['finished']}, on {m['cpus']} shared cores "
              f"(load average {m['load_average_before'][0]:.1f} before, {m['load_average_after'][0]:.1f} after; "
              f"{m['platform']}, Python {m['python']}; {m['versions']}). Speed is reported in explain_timing.md "
              "(measured on a quiet machine), not here.", "",
              "Images: Kermany, Zhang, Goldbaum (2018), CC BY 4.0. Research software, not a medical device."]
    return "\n".join(lines) + "\n"


def timing(run: str, n_images: int, samples: int | None, repeats: int, out: Path) -> int:
    """Wall time of one dashboard explanation call (explain_lime with DEFAULT_LIME, panels drawn) on a
    warm model, per film. Run it on a quiet machine (nothing else busy). Writes explain_timing.md/.json."""
    from xray_core.model import load_model

    model = load_model(run)
    settings = lime_settings(samples)
    films = validation_films(model, n_images)
    grays = [imaging.decode(p) for p in films]
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = os.getloadavg()
    procs_before = busy_processes()
    def call(gray):  # as Diagnose: explain, then draw the four panels
        t = time.perf_counter()
        exp = ex.explain_lime(model, gray, seed=0, **settings)
        ex.lime_panels(gray, exp)
        return exp, time.perf_counter() - t

    cold_seconds = call(grays[0])[1]  # loads the model and warms caches
    rows = []
    for path, gray in zip(films, grays):
        timed = [call(gray) for _ in range(repeats)]
        calls, secs = [c for c, _ in timed], [t for _, t in timed]
        rows.append({"film": path.name, "seconds": secs, "median": float(np.median(secs)),
                     "n_superpixels": calls[0].n_superpixels,
                     "timings": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in calls[0].timings.items()}})
        print(f"{path.name}: {rows[-1]['median']:.2f} s {rows[-1]['timings']}", flush=True)
    medians = [r["median"] for r in rows]
    every = [v for r in rows for v in r["seconds"]]
    command = f"python benchmarks/bench_explain.py --timing {n_images} --repeats {repeats}" + (
        f" --samples {samples}" if samples else "")
    result = {"run": model.run_id, "lime_settings": settings, "films": rows, "repeats": repeats,
              "cold_seconds": cold_seconds, "median_seconds": float(np.median(every)),
              "p90_seconds": float(np.quantile(every, 0.9)), "max_seconds": float(max(every)),
              "films_median_within_2s": float(np.mean(np.array(medians) <= 2.0)),
              "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "machine": machine(load_before), "other_processes_before": procs_before,
              "other_processes_after": busy_processes(), "command": command}
    out.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(out / "explain_timing.json", result)
    m = result["machine"]
    md = ["# LIME time per explanation with the dashboard's settings", "",
          f"Run `{model.run_id}` ({model.n_members} members, {model.input_size[0]} px, {model.channels} channel), "
          f"`explain_lime(model, film, seed=0, **DEFAULT_LIME)` = {settings}, four panels drawn, as Diagnose calls it. "
          f"Warm model (one untimed call first, {result['cold_seconds']:.2f} s); {repeats} calls per film on "
          f"{len(rows)} validation films (the stability films of explain_faithfulness.md).", "",
          "| film | superpixels | median (s) | calls (s) | stages of the first call (s) |", "|---|---|---|---|---|",
          *[f"| {r['film']} | {r['n_superpixels']} | {r['median']:.2f} | {', '.join(f'{v:.2f}' for v in r['seconds'])} | "
            f"{r['timings']} |" for r in rows], "",
          f"All {len(every)} calls: median {result['median_seconds']:.2f} s, 90th percentile {result['p90_seconds']:.2f} s, "
          f"max {result['max_seconds']:.2f} s; films with a median within 2 s: {result['films_median_within_2s']:.0%}.", "",
          f"Command: `{command}`; "
          f"{started} to {result['finished']} on {m['cpus']} cores, load average {m['load_average_before'][0]:.1f} "
          f"before, {m['load_average_after'][0]:.1f} after; {m['platform']}, Python {m['python']}; {m['versions']}.", "",
          ("The machine was NOT quiet: other processes used CPU during the run (below), so these times are "
           "upper bounds." if procs_before or result["other_processes_after"] else
           "No other process used >= 5 % of a core at the start or the end."), "",
          "Other processes using >= 5 % of a core (sampled over 1 s) at the start: "
          + ("; ".join(f"`{p}`" for p in procs_before) or "none") + "; at the end: "
          + ("; ".join(f"`{p}`" for p in result["other_processes_after"]) or "none") + ".", "",
          "Images: Kermany, Zhang, Goldbaum (2018), CC BY 4.0. Research software, not a medical device."]
    fileio.atomic_write_text(out / "explain_timing.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faithfulness", type=int, metavar="N", default=0,
                        help="only the faithfulness figures on N validation films of --run")
    parser.add_argument("--render-faithfulness", type=Path, default=None, metavar="JSON",
                        help="only redraw explain_faithfulness.md from its .json")
    parser.add_argument("--timing", type=int, metavar="N", default=0,
                        help="only the time of the dashboard's LIME call on N validation films (run it on a quiet machine)")
    parser.add_argument("--run", default="default")
    parser.add_argument("--stability-images", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=None,
                        help="LIME samples (default 1000; with --faithfulness/--timing the dashboard's DEFAULT_LIME)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", default=None, help="image file (default: first val/PNEUMONIA image)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reports")
    parser.add_argument("--skip-seed-style", action="store_true", help="only time our path")
    args = parser.parse_args(argv)
    if args.render_faithfulness:
        fileio.atomic_write_text(args.out / "explain_faithfulness.md",
                               render_faithfulness(json.loads(args.render_faithfulness.read_text())))
        return 0
    if args.faithfulness:
        return faithfulness(args.run, args.faithfulness, args.samples, args.steps, args.stability_images, args.out)
    if args.timing:
        return timing(args.run, args.timing, args.samples, args.repeats, args.out)
    args.samples = args.samples or 1000

    import keras

    from xray_core import architectures

    gray, image_name = pick_image(args.image)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = os.getloadavg()
    procs_before = other_processes()
    results = []

    from xray_core.model import load_model

    trained = find_trained_runs()
    subjects = []
    scratch = tempfile.TemporaryDirectory()  # untrained networks saved as run folders, for Model
    for arch in ("baseline", "model3"):
        keras.utils.set_random_seed(0)
        model = untrained_model(architectures.build(arch, input_shape=(100, 100, 3)), Path(scratch.name) / arch)
        subjects.append((f"{arch} 100x100x3 (untrained, seed 0: speed only)", model, True))
    default = next((r for r in trained if r.config.get("arch") == "pneumonet"), None)
    if default is not None:
        subjects.append((f"pneumonet run {default.run_id} (trained)", load_model(default), True))
    elif "pneumonet" in architectures.ARCHITECTURES:
        keras.utils.set_random_seed(0)
        model = untrained_model(architectures.build("pneumonet", input_shape=(128, 128, 1)), Path(scratch.name) / "p")
        subjects.append(("pneumonet 128x128x1 (untrained, seed 0: speed only)", model, True))
    for run in trained:
        if run is not default:
            subjects.append((f"run {run.run_id} ({run.config.get('arch')}, trained)", load_model(run), False))

    for name, model, compare in subjects:
        print(f"== {name}", flush=True)
        row = {"subject": name, "input_shape": [*model.input_size, model.channels], "samples": args.samples}
        mine = ours(model, gray, args.samples, args.repeats)
        exp = mine.pop("explanation")
        row["ours"] = mine
        print(f"   ours: {mine['seconds_median']:.2f} s median (cold {mine['cold_seconds']:.2f} s), "
              f"{mine['timings_of_fastest']}", flush=True)
        if compare and not args.skip_seed_style:
            seed = seed_style(model.members[0], exp.model_input, model.channels, args.samples)
            row["seed_style"] = seed
            row["speedup"] = seed["seconds"] / mine["seconds_median"]
            print(f"   seed-style: {seed['seconds']:.2f} s (model {seed['model_seconds']:.2f} s) "
                  f"-> {row['speedup']:.1f}x", flush=True)
            row["lime_wrapped"] = lime_wrapped(model, exp)  # same model path: isolates lime's own work
            print(f"   lime + our classifier: {row['lime_wrapped']}", flush=True)
        results.append(row)

    trust = []
    for run, segmentation in [(r, m) for r in trained for m in ("quickshift", "slic")]:
        model = load_model(run)
        exp = ex.explain_lime(model, gray, seed=0, **ex.lime_settings("seed", num_samples=args.samples,
                                                                      segmentation=segmentation))
        cam = ex.grad_cam(model, gray, label=exp.label)
        figures = ex.trust_figures(model, gray, exp, gradcam=cam, seeds=5)
        figures.pop("deletion_curves")
        trust.append({"run": run.run_id, "arch": run.config.get("arch"), "segmentation": segmentation,
                      "epochs_run": (run.metrics or {}).get("epochs_run"),
                      "probability_pneumonia": exp.probability, "threshold": model.threshold,
                      "n_superpixels": exp.n_superpixels, "score_r2": exp.score, **figures})
        print(f"== trust {run.run_id} {segmentation}: {figures['deletion_area']} stability "
              f"{figures['stability']['jaccard_mean']:.3f}", flush=True)

    report = {
        "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "other_processes_before": procs_before, "other_processes_after": other_processes(),
        "image": image_name, "image_shape": list(gray.shape), "results": results, "trust": trust,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(args.out / "explain.json", report)
    fileio.atomic_write_text(args.out / "explain.md", render(report))
    print(f"wrote {args.out / 'explain.md'}")
    return 0


def render(report: dict) -> str:
    lines = [
        "# Explanation benchmark (`python benchmarks/bench_explain.py`)",
        "",
        f"Run {report['started']} to {report['finished']} on {report['machine']['cpus']} CPU cores, shared: "
        f"load average {report['load_average_before'][0]:.1f} before, {report['load_average_after'][0]:.1f} after.",
        "",
        f"Image: `{report['image']}` ({report['image_shape'][1]}x{report['image_shape'][0]} px).",
        "Seed-style = `LimeImageExplainer()` defaults (quickshift, batch_size=10, top_labels=5), "
        "`model.predict(verbose=0)`, hide_color=0, same image and sample count, same process. "
        "Ours = `explain_lime` with the seed's recipe (`lime_settings(\"seed\")`, seed 0); median of warm calls.",
        "",
        "| subject | input | ours (s) | cold (s) | model (s) | seed-style (s) | its model (s) | its LIME own (s) | speed-up | superpixels ours/seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        o = r["ours"]
        s = r.get("seed_style")
        lines.append(
            f"| {r['subject']} | {'x'.join(map(str, r['input_shape']))} | {o['seconds_median']:.2f} | "
            f"{o['cold_seconds']:.2f} | {o['timings_of_fastest'].get('model', 0):.2f} | "
            + (f"{s['seconds']:.2f} | {s['model_seconds']:.2f} | {s['lime_own_seconds']:.2f} | "
               f"**{r['speedup']:.1f}x** | {o['n_superpixels']}/{s['n_superpixels']} |" if s else
               f"- | - | - | - | {o['n_superpixels']}/- |"))
    lines += ["", "Stage times of our fastest call (s):", ""]
    for r in report["results"]:
        o = r["ours"]
        lines.append(f"- {r['subject']}: {o['timings_of_fastest']}; Grad-CAM {o['gradcam_seconds']:.3f} s "
                     f"(cold {o['gradcam_cold_seconds']:.2f} s, layer `{o['gradcam_layer']}`), overlay "
                     f"{o['overlay_seconds']:.3f} s")
        if "lime_wrapped" in r:
            w = r["lime_wrapped"]
            lines.append(f"  - lime_image itself with our classifier and segments: {w['seconds']:.2f} s, "
                         f"of which lime's own work {w['lime_own_seconds']:.2f} s; max |weight difference| "
                         f"to ours {w['max_abs_weight_difference']:.2e}")
    if report["trust"]:
        lines += ["", "## Trust figures (same image, 1,000 samples, seed 0)", "",
                  "| run | segmentation | P(pneumonia) | explained | superpixels | R^2 | deletion area LIME | Grad-CAM | random | stability (Jaccard, 5 seeds) mean / min |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for t in report["trust"]:
            a = t["deletion_area"]
            st = t["stability"]
            lines.append(f"| {t['run']} ({t['arch']}) | {t['segmentation']} | {t['probability_pneumonia']:.3f} | {t['label_name']} | "
                         f"{t['n_superpixels']} | {t['score_r2']:.2f} | {a['lime']:.3f} | {a['gradcam']:.3f} | "
                         f"{a['random']:.3f} | {st['jaccard_mean']:.2f} / {st['jaccard_min']:.2f} |")
        lines += ["", "Deletion area: mean of the explained label's probability as superpixels are "
                  "blacked out from most to least important (x from 0 to 1); lower = more faithful. "
                  "Stability: pixel Jaccard overlap of the top-5 superpixels (by |weight|) between "
                  "seeds 0-4, mean and worst pair; with quickshift's few superpixels the top 5 cover "
                  "most of the image, so the slic rows are the more telling ones."]
    lines += ["", "Other processes on the machine when the run started:", ""]
    lines += [f"- `{p}`" for p in report["other_processes_before"]] or ["- none above 5% CPU"]
    lines += ["", "and when it ended:", ""]
    lines += [f"- `{p}`" for p in report["other_processes_after"]] or ["- none above 5% CPU"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
