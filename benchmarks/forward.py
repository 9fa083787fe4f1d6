"""Benchmark: the network alone, TensorFlow against LiteRT, same model, same inputs, same run.

Run by hand on a quiet machine (about two minutes on 2 cores):

    python benchmarks/forward.py [--run default] [--seconds 6]

Both backends load the same run folder and score the same prepared films (the validation films of
the run, or film-like synthetic images if the dataset is absent) through
`Model.raw_member_proba_and_features`, the one forward path, at several batch sizes; each rate is
the best of three timed windows. Also: the largest difference between the two backends'
probabilities, the conversion time, and the time of a single film (Diagnose's case). Writes
benchmarks/reports/forward.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "chest_xray"
OUT = ROOT / "benchmarks" / "reports"
BATCHES = (1, 16, 32, 64, 256)


def films(model, n: int) -> tuple[np.ndarray, str]:
    from xray_core import imaging

    paths = sorted((DATA / "train").glob("*/*.jpeg"))[:: 37][:n] if DATA.is_dir() else []
    if paths:
        return model.prepare_batch([imaging.decode(p) for p in paths]), f"{len(paths)} training films (every 37th)"
    rng = np.random.default_rng(0)
    yy = np.mgrid[0:256, 0:256][0]
    images = [np.clip(80 + 0.5 * yy + rng.normal(0, 15, yy.shape), 0, 255).astype(np.uint8) for _ in range(n)]
    return model.prepare_batch(images), f"{n} synthetic film-like images (dataset absent)"


def rate(model, x: np.ndarray, batch: int, seconds: float) -> float:
    """Best of three windows of images/s, calling the forward path with `batch` images at a time."""
    chunk = x[:batch] if batch <= len(x) else np.concatenate([x] * (batch // len(x) + 1))[:batch]
    model.raw_member_proba_and_features(chunk, batch_size=batch)  # warm: interpreters, traces
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            model.raw_member_proba_and_features(chunk, batch_size=batch)
            n += batch
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="default")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per backend and batch size")
    args = ap.parse_args(argv)

    import tensorflow as tf
    from importlib.metadata import version

    from xray_core import litert
    from xray_core.model import Model

    load_before = os.getloadavg()
    run_dir = ROOT / "trained_models" / args.run
    rows, probs, extra = {}, {}, {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XRAY_CACHE_DIR"] = cache  # conversion timed from nothing
        for backend in ("tensorflow", "litert"):
            os.environ[litert.ENV] = backend
            model = Model(run_dir)
            x, what = films(model, 64)
            t0 = time.perf_counter()
            model.raw_member_proba_and_features(x[:1])
            extra[f"{backend} first call s (load, trace or convert)"] = round(time.perf_counter() - t0, 2)
            probs[backend] = model.raw_member_proba_and_features(x)[0]
            single = []
            for i in range(20):
                t0 = time.perf_counter()
                model.raw_member_proba_and_features(x[i % len(x) : i % len(x) + 1])
                single.append(time.perf_counter() - t0)
            extra[f"{backend} one film ms (median of 20)"] = round(1000 * float(np.median(single)), 2)
            rows[backend] = {b: round(rate(model, x, b, args.seconds), 1) for b in BATCHES}
            print(backend, rows[backend], flush=True)
    diff = float(np.abs(probs["tensorflow"] - probs["litert"]).max())
    best = {k: max(v.values()) for k, v in rows.items()}
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/forward.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                                 if ln.startswith("model name")), "?"),
                    "cpus": len(os.sched_getaffinity(0)), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "ai-edge-litert": version("ai-edge-litert"), "numpy": np.__version__},
        "load_before": load_before, "load_after": os.getloadavg(), "run": args.run,
        "input": f"{model.input_size[0]}x{model.input_size[1]}x{model.channels}, {model.n_members} member(s)",
        "films": what, "images_per_s": rows, "max_abs_prob_diff": diff,
        "speedup_best_batch": round(best["litert"] / best["tensorflow"], 2), **extra,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "forward.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# The network alone: TensorFlow against LiteRT", "",
        "> Research software, not a medical device. Images: Kermany et al. 2018 (CC BY 4.0).", "",
        f"Date {report['date']}; {report['machine']['cpu']}, {report['machine']['cpus']} CPUs, "
        f"{report['machine']['platform']}; " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        f"Command: `{report['command'].strip()}`. Load average before {tuple(round(v, 2) for v in load_before)}, "
        f"after {tuple(round(v, 2) for v in report['load_after'])}.", "",
        f"Model `{args.run}` ({report['input']}); inputs: {what}, prepared once, the same for both. "
        "Each figure is the best of three timed windows through `Model.raw_member_proba_and_features` "
        "(the probabilities and the gate's features, as `score` and Diagnose use them).", "",
        "| backend | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
        "|---|" + "---:|" * len(BATCHES),
        *[f"| {k} | " + " | ".join(f"{v[b]:.1f}" for b in BATCHES) + " |" for k, v in rows.items()], "",
        f"Images/s. Best batch: LiteRT {best['litert']:.1f}, TensorFlow {best['tensorflow']:.1f}: "
        f"**{report['speedup_best_batch']}x**. Largest difference between the two backends' probabilities "
        f"on these films: {diff:.2e}.", "",
        *[f"- {k}: {v}" for k, v in extra.items()], "",
        "`XRAY_BACKEND=auto` (the default) runs LiteRT on a machine without a GPU, TensorFlow with one.", "",
    ]
    (OUT / "forward.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
