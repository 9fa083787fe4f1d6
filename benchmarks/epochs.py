"""Does one training epoch of each seed architecture run at least 1.8x faster with the library's
defaults than with the seed's setup?

    python -m benchmarks.epochs [--data DIR] [--archs baseline model2 model3 model4]

Two setups, the same layers and seeded initial weights: `seed_3ch`, the gray film copied into 3
channels and compiled as the seed did (Adam, binary cross-entropy, Keras Precision and Recall),
with TensorFlow's own oneDNN choice on this CPU (TF_ENABLE_ONEDNN_OPTS=0); and `default`, what
`architectures.build(name)` gives after `import xray_core` (1 channel, oneDNN on). TensorFlow reads
TF_ENABLE_ONEDNN_OPTS when it is imported, so each setup trains in a worker process of its own
(this module with --worker), the two taking turns (--workers per setup; one for model3 and
model4). In a worker: one warm-up batch, then --rounds rounds of timed batches inside
`model.fit` on real train images at 100 px, the seed's batch size. Time-boxed, not full epochs:
images/s is the median round, extrapolated to an epoch of the patient split's train side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.harness import Bench, data_root

SEED_ARCHS = ("baseline", "model2", "model3", "model4")
HEAVY = ("model3", "model4")
SETUPS = {"seed_3ch": (3, "0"), "default": (1, None)}  # setup -> (channels, TF_ENABLE_ONEDNN_OPTS)
GOAL = 1.8


def train_images(root, n: int):
    """n train-side images of the patient split (seed 0) at 100 px, 1 and 3 channels, and labels."""
    from xray_core import data

    train_df, _ = data.split_train(data.index_dataset(root), method="patient", seed=0)
    rows = train_df.iloc[np.sort(np.random.default_rng(0).choice(len(train_df), size=min(n, len(train_df)),
                                                                 replace=False))]
    one = data.load_images(rows["path"].tolist(), size=(100, 100), channels=1)
    three = data.load_images(rows["path"].tolist(), size=(100, 100), channels=3)
    if not (one.ok.all() and three.ok.all()):
        raise SystemExit(f"some train images could not be read: {one.failed[:3]}")
    return {1: one.images, 3: three.images}, rows["label"].to_numpy()


def build(arch: str, setup: str):
    import keras

    from xray_core import architectures

    channels = SETUPS[setup][0]
    keras.utils.set_random_seed(0)
    if setup == "default":
        return architectures.build(arch, input_shape=(100, 100, channels))
    model = architectures.ARCHITECTURES[arch].builder(input_shape=(100, 100, channels))
    model.compile(optimizer="adam", loss="binary_crossentropy",
                  metrics=[keras.metrics.Precision(), keras.metrics.Recall()])
    return model


def fit_batches(model, x, targets, batch: int, n_batches: int, offset: int) -> list[float]:
    """Train n_batches batches in one fit call; the wall clock at the end of each."""
    import keras

    stamps: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            stamps.append(time.perf_counter())

    idx = (offset + np.arange(n_batches * batch)) % len(x)
    model.fit(x[idx], targets[idx], batch_size=batch, epochs=1, shuffle=True, verbose=0, callbacks=[Clock()])
    return stamps


def worker(arch: str, setup: str, root: str, steps: int, rounds: int) -> dict:
    """Time one setup of one architecture in this process: rounds of `steps` timed batches each."""
    from xray_core import architectures

    spec = architectures.ARCHITECTURES[arch]
    batch = spec.batch_size
    images, labels = train_images(root, (1 + rounds * (steps + 1)) * batch)
    x, targets = images[SETUPS[setup][0]], architectures.encode_targets(labels, spec.output_units)
    model = build(arch, setup)
    fit_batches(model, x, targets, batch, 1, 0)  # tracing, not counted
    per_round, cpu = [], 0.0
    for r in range(rounds):
        cpu0 = time.process_time()
        stamps = fit_batches(model, x, targets, batch, steps + 1, (1 + r * (steps + 1)) * batch)
        cpu += time.process_time() - cpu0
        per_round.append(steps * batch / (stamps[-1] - stamps[0]))  # the first batch's start-up left out
    return {"arch": arch, "setup": setup, "batch_size": batch, "images_per_second_rounds": per_round,
            "cpu_ms_per_image": 1000 * cpu / ((steps + 1) * batch * rounds)}


def run_worker(args, arch: str, setup: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if SETUPS[setup][1] is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = SETUPS[setup][1]
    steps = args.heavy_steps if arch in HEAVY else args.steps
    proc = subprocess.run([sys.executable, "-m", "benchmarks.epochs", "--worker", arch, setup, "--data", str(args.data),
                           "--steps", str(steps), "--rounds", str(args.rounds)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the worker for {arch} {setup} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(row, flush=True)
    return row


def render(results: dict, epoch_images: int) -> str:
    lines = [f"Images/s: the median round of timed batches inside `model.fit`; epoch seconds extrapolated to the "
             f"patient split's train side ({epoch_images} images), without the validation pass. CPU ms/image: "
             "this process's CPU time (all threads), less sensitive to other load than wall time.", "",
             "| arch | batch | setup | img/s (median) | img/s per round | CPU ms/image | epoch s | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for arch, rows in results.items():
        for setup, r in rows.items():
            lines.append(f"| {arch} | {r['batch_size']} | {setup} | {r['images_per_second']:.1f} | "
                         f"{', '.join(f'{v:.1f}' for v in r['images_per_second_rounds'])} | "
                         f"{r['cpu_ms_per_image']:.0f} | {epoch_images / r['images_per_second']:.0f} | "
                         f"{r['images_per_second'] / rows['seed_3ch']['images_per_second']:.2f}x |")
    lines += ["", f"Goal: the default's epoch at least {GOAL}x faster than the seed's setup.", ""]
    for arch, rows in results.items():
        s = rows["default"]["images_per_second"] / rows["seed_3ch"]["images_per_second"]
        c = rows["seed_3ch"]["cpu_ms_per_image"] / rows["default"]["cpu_ms_per_image"]
        lines.append(f"- {arch}: {s:.2f}x wall, {c:.2f}x in CPU time ({'met' if s >= GOAL else 'NOT met'})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="dataset folder (default: ../shared/data/chest_xray)")
    ap.add_argument("--archs", nargs="+", default=list(SEED_ARCHS), choices=SEED_ARCHS)
    ap.add_argument("--steps", type=int, default=10, help="timed batches per round for baseline and model2")
    ap.add_argument("--heavy-steps", type=int, default=2, help="timed batches per round for model3 and model4")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per worker")
    ap.add_argument("--workers", type=int, default=2, help="worker processes per setup for baseline and model2")
    ap.add_argument("--worker", nargs=2, metavar=("ARCH", "SETUP"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.data = data_root(args.data)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.data, args.steps, args.rounds)))
        return 0

    from xray_core import data

    epoch_images = len(data.split_train(data.index_dataset(args.data), method="patient", seed=0)[0])
    with Bench("epochs", question=f"Is a training epoch at least {GOAL}x faster with the library's defaults than "
                                  "with the seed's setup?") as bench:
        results: dict = {}
        for arch in args.archs:
            rows: dict = {setup: [] for setup in SETUPS}
            for _ in range(1 if arch in HEAVY else args.workers):
                for setup in SETUPS:
                    rows[setup].append(run_worker(args, arch, setup))
            results[arch] = {}
            for setup, workers in rows.items():
                rounds = [v for w in workers for v in w["images_per_second_rounds"]]
                results[arch][setup] = dict(workers[0], images_per_second_rounds=rounds,
                                            images_per_second=float(np.median(rounds)),
                                            cpu_ms_per_image=float(np.mean([w["cpu_ms_per_image"] for w in workers])))
        print(bench.write(render(results, epoch_images), {"epoch_images": epoch_images, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
