"""Epoch speed of the four seed architectures: the seed's 3-channel setup vs ours (run by hand).

    python benchmarks/bench_epochs.py [--data ../shared/data/chest_xray]

Writes benchmarks/reports/epochs.md and epochs.json. Time-boxed: a fixed number of batches per
setup after warm-up, at the seed's batch size, on real train images at 100x100, extrapolated
to one epoch of the patient split's train side. The report explains the setups and the method.
TF_ENABLE_ONEDNN_OPTS is read when TensorFlow is imported, so each oneDNN setting is timed in
its own worker process (this script re-run with --worker).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from xray_core import data  # noqa: E402
from xray_core.runs import atomic_write_json, atomic_write_text  # noqa: E402

SEED_ARCHS = ("baseline", "model2", "model3", "model4")
# setup -> (channels, compile style, jit_compile, TF_ENABLE_ONEDNN_OPTS). None: whatever
# `import xray_core` sets (the library default); "0": TensorFlow's own default on this CPU.
SETUP_SPECS = {
    "seed_3ch": (3, "seed", "auto", "0"),
    "1ch_no_onednn": (1, "xray_core", False, "0"),
    "3ch_onednn": (3, "seed", "auto", None),
    "1ch_xla": (1, "xray_core", True, None),
    "default": (1, "xray_core", None, None),
}
SETUPS = tuple(SETUP_SPECS)


def load_train_images(data_root: Path, n_needed: int, seed: int = 0):
    """Train-side images of the patient split at 100x100, 1 and 3 channels, and labels."""
    df = data.index_dataset(data_root)
    train_df, _ = data.split_train(df, method="patient", seed=seed)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(train_df), size=min(n_needed, len(train_df)), replace=False))
    rows = train_df.iloc[pick]
    one = data.load_images(rows["path"].tolist(), size=(100, 100), channels=1)
    three = data.load_images(rows["path"].tolist(), size=(100, 100), channels=3)
    if not (one.ok.all() and three.ok.all()):
        raise SystemExit(f"some train images could not be read: {one.failed[:3]}")
    return one.images, three.images, rows["label"].to_numpy(), len(train_df)


def make_model(arch: str, setup: str):
    """The model for one setup; every setup starts from the same seeded initial weights."""
    import keras

    from xray_core import architectures as A

    channels, style, jit, _ = SETUP_SPECS[setup]
    spec = A.ARCHITECTURES[arch]
    keras.utils.set_random_seed(0)
    if style == "seed":
        model = spec.builder(input_shape=(100, 100, channels))
        model.compile(optimizer="adam", loss="binary_crossentropy",
                      metrics=[keras.metrics.Precision(), keras.metrics.Recall()],
                      jit_compile=jit)
    else:
        model = A.build(arch, input_shape=(100, 100, channels), jit_compile=jit)
    return model


def fit_batches(model, x, targets, batch: int, n_batches: int, offset: int) -> list[float]:
    """Train n_batches batches (one fit call); return the wall clock at each batch end."""
    import keras

    stamps: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            stamps.append(time.perf_counter())

    idx = (offset + np.arange(n_batches * batch)) % len(x)
    model.fit(x[idx], targets[idx], batch_size=batch, epochs=1, shuffle=True, verbose=0,
              callbacks=[Clock()])
    return stamps


def time_arch(arch: str, setups, x1, x3, labels, *, steps: int, rounds: int,
              warmup: int) -> list[dict]:
    """Warm every setup up, then time them in alternating rounds so that changes in the load
    of the shared machine hit all setups alike; report the median round per setup."""
    from xray_core import architectures as A

    spec = A.ARCHITECTURES[arch]
    batch = spec.batch_size
    targets = A.encode_targets(labels, spec.output_units)
    models, warm = {}, {}
    per_round = {s: [] for s in setups}
    cpu = {s: 0.0 for s in setups}
    for setup in setups:
        models[setup] = make_model(arch, setup)
        t0 = time.perf_counter()
        x = x1 if models[setup].input_shape[-1] == 1 else x3
        fit_batches(models[setup], x, targets, batch, warmup, 0)
        warm[setup] = time.perf_counter() - t0
    k = max(1, steps // rounds)
    for r in range(rounds):
        for setup in setups:
            x = x1 if models[setup].input_shape[-1] == 1 else x3
            # One extra batch first: the fit call's own start-up is not counted.
            cpu0 = time.process_time()
            stamps = fit_batches(models[setup], x, targets, batch, k + 1, (warmup + r * (k + 1)) * batch)
            cpu[setup] += time.process_time() - cpu0
            per_round[setup].append((stamps[-1] - stamps[0]) / (k * batch))
    out = []
    for setup in setups:
        sec_per_image = float(np.median(per_round[setup]))
        model = models[setup]
        out.append({
            "arch": arch, "setup": setup, "channels": int(model.input_shape[-1]),
            "batch_size": batch, "jit_compile": str(model.jit_compile),
            "steps_timed": k * rounds, "rounds": rounds, "warmup_steps": warmup,
            "images_per_second": round(1 / sec_per_image, 2),
            "images_per_second_rounds": [round(1 / v, 2) for v in per_round[setup]],
            # CPU seconds of this process per image (all threads, incl. the uncounted first batch
            # of each round): much less sensitive to other work on the machine than wall time.
            "cpu_ms_per_image": round(1000 * cpu[setup] / ((k + 1) * batch * rounds), 1),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
            "warmup_seconds": round(warm[setup], 2), "params": int(model.count_params()),
        })
        print("RESULT " + json.dumps(out[-1]), flush=True)
    return out


def render(results: list[dict], meta: dict) -> str:
    n_epoch = meta["epoch_images"]
    lines = [
        "# One training epoch per architecture: the seed's 3-channel setup vs xray_core",
        "",
        f"Measured {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs shared with other "
        f"work; load average {meta['load']} at the end), TensorFlow {meta['tensorflow']}, Keras "
        f"{meta['keras']}, no GPU. Command: `{meta['command']}`",
        "",
        f"Method: real train images ({meta['image_source']}) at 100x100, the seed's batch size. "
        f"Each oneDNN setting runs in its own worker process, in turn (A B A B: "
        f"{meta['workers_per_setting']} workers per setting for baseline and model2, "
        f"{meta['heavy_workers_per_setting']} for model3 and model4). In a worker every setup first trains "
        f"{meta['warmup']} warm-up batch(es) (tracing / XLA compilation, not counted); then the "
        f"setups take turns in {meta['rounds']} rounds of timed batches inside `model.fit` "
        f"({meta['steps']} timed batches per setup and worker for baseline and model2, "
        f"{meta['heavy_steps']} for model3 and model4), so load from other work on the shared "
        f"machine hits all setups alike. img/s is the median over all rounds; CPU ms/image is "
        f"the process CPU time (all threads), a cross-check that depends less on other load. "
        f"Epoch seconds are extrapolated to one epoch of the patient split's train side "
        f"({n_epoch} images), without the validation pass: time-boxed, not full epochs.",
        "",
        "Setups: `seed_3ch` = 3 duplicated gray channels, compiled like the seed (Adam, binary "
        "cross-entropy, Keras Precision()/Recall()), TensorFlow's defaults on this CPU "
        "(TF_ENABLE_ONEDNN_OPTS=0 is what TF picks on this AMD CPU; no XLA on CPU). "
        "`1ch_no_onednn` = 1 channel, xray_core's compile, oneDNN off (the channel effect "
        "alone). `3ch_onednn` = the seed setup with oneDNN on (the oneDNN effect alone). "
        "`1ch_xla` = 1 channel, oneDNN on, jit_compile=True. `default` = exactly what "
        "`architectures.build(name)` gives after `import xray_core`, 1 channel. Same layers, "
        "same seeded initial weights everywhere.",
        "",
        "| arch | batch | setup | ch | oneDNN | jit | img/s (median) | img/s per round | CPU ms/image | epoch s (extrap.) | speed-up vs seed_3ch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_arch: dict[str, dict] = {}
    for r in results:
        by_arch.setdefault(r["arch"], {})[r["setup"]] = r
    for arch, rows in by_arch.items():
        base = rows.get("seed_3ch")
        for setup in SETUPS:
            if setup not in rows:
                continue
            r = rows[setup]
            speed = f"{r['images_per_second'] / base['images_per_second']:.2f}x" if base else "-"
            lines.append(
                f"| {arch} | {r['batch_size']} | {setup} | {r['channels']} | {r['onednn']} | "
                f"{r['jit_compile']} | {r['images_per_second']:.1f} | "
                f"{', '.join(f'{v:.1f}' for v in r['images_per_second_rounds'])} | "
                f"{r['cpu_ms_per_image']:.0f} | "
                f"{n_epoch / r['images_per_second']:.0f} | {speed} |"
            )
    lines += ["", "## Verdict (goal: each architecture's default 1-channel epoch >= 1.8x faster "
              "than the seed's 3-channel setup)", ""]
    for arch, rows in by_arch.items():
        if "seed_3ch" in rows and "default" in rows:
            s = rows["default"]["images_per_second"] / rows["seed_3ch"]["images_per_second"]
            c = rows["seed_3ch"]["cpu_ms_per_image"] / rows["default"]["cpu_ms_per_image"]
            lines.append(f"- {arch}: {s:.2f}x wall ({c:.2f}x in CPU time) "
                         f"{'(met)' if s >= 1.8 else '(NOT met)'}")
    if meta.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in meta["notes"]]]
    return "\n".join(lines) + "\n"


def worker(args) -> int:
    """Time some setups of one architecture in this process (one oneDNN setting)."""
    n_needed = (args.warmup + max(args.steps, args.heavy_steps) + args.rounds) * 64
    x1, x3, labels, _ = load_train_images(Path(args.data), n_needed)
    steps = args.heavy_steps if args.archs[0] in ("model3", "model4") else args.steps
    time_arch(args.archs[0], args.setups, x1, x3, labels, steps=steps, rounds=args.rounds,
              warmup=args.warmup)
    return 0


def run_worker(args, arch: str, setups: list[str], onednn: str | None) -> list[dict]:
    env = dict(os.environ)
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    cmd = [sys.executable, __file__, "--worker", "--archs", arch, "--setups", *setups,
           "--data", args.data, "--steps", str(args.steps), "--heavy-steps",
           str(args.heavy_steps), "--rounds", str(args.rounds), "--warmup", str(args.warmup)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker failed for {arch} {setups}:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def _without_notes(argv: list[str]) -> list[str]:
    """The command line minus the --note texts (they are printed in the report's notes)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def merge(rows: list[dict]) -> dict:
    """One setup measured in several worker processes: pool their rounds, keep the median."""
    first = dict(rows[0])
    rounds = [v for r in rows for v in r["images_per_second_rounds"]]
    first["images_per_second_rounds"] = rounds
    first["images_per_second"] = round(float(np.median(rounds)), 2)
    first["cpu_ms_per_image"] = round(float(np.mean([r["cpu_ms_per_image"] for r in rows])), 1)
    first["steps_timed"] = sum(r["steps_timed"] for r in rows)
    first["rounds"] = len(rounds)
    return first


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "chest_xray"))
    parser.add_argument("--steps", type=int, default=20,
                        help="timed batches per setup and worker for baseline and model2")
    parser.add_argument("--heavy-steps", type=int, default=4,
                        help="timed batches per setup and worker for model3 and model4")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating timing rounds inside each worker")
    parser.add_argument("--workers-per-setting", type=int, default=2,
                        help="worker processes per oneDNN setting, run in turn (A B A B)")
    parser.add_argument("--heavy-workers-per-setting", type=int, default=1)
    parser.add_argument("--heavy-setups", nargs="+", choices=SETUPS,
                        default=["seed_3ch", "1ch_no_onednn", "3ch_onednn", "default"],
                        help="setups for model3 and model4 (XLA left out: slower on CPU and "
                             "minutes to compile)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--archs", nargs="+", default=list(SEED_ARCHS), choices=SEED_ARCHS)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "reports"))
    parser.add_argument("--note", action="append", default=[],
                        help="a line of interpretation appended to the report")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    import keras
    import tensorflow as tf

    df = data.index_dataset(Path(args.data))
    n_train = len(data.split_train(df, method="patient", seed=0)[0])
    results = []
    for arch in args.archs:
        heavy = arch in ("model3", "model4")
        setups = [s for s in (args.heavy_setups if heavy else args.setups)]
        groups: dict[str | None, list[str]] = {}
        for setup in setups:
            groups.setdefault(SETUP_SPECS[setup][3], []).append(setup)
        rows: dict[str, list[dict]] = {}
        for _ in range(args.heavy_workers_per_setting if heavy else args.workers_per_setting):
            for onednn, setups in groups.items():
                for row in run_worker(args, arch, setups, onednn):
                    rows.setdefault(row["setup"], []).append(row)
        results += [merge(rows[s]) for s in SETUPS if s in rows]
    meta = {
        "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "command": " ".join(["python benchmarks/bench_epochs.py", *_without_notes(argv or sys.argv[1:])])
        + (f" --note ... ({len(args.note)} notes, listed below)" if args.note else ""),
        "image_source": f"{args.data}, patient split seed 0, via xray_core.data.load_images",
        "steps": args.steps, "heavy_steps": args.heavy_steps, "rounds": args.rounds,
        "workers_per_setting": args.workers_per_setting,
        "heavy_workers_per_setting": args.heavy_workers_per_setting,
        "warmup": args.warmup, "epoch_images": n_train,
        "notes": args.note,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "epochs.json", {"meta": meta, "results": results})
    atomic_write_text(out / "epochs.md", render(results, meta))
    print(f"wrote {out / 'epochs.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
