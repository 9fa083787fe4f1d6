"""How much faster do the networks run through LiteRT than through TensorFlow on this CPU, and do
the two give the same probabilities?

    python -m benchmarks.forward [--run default] [--seconds 6]

Both backends (`XRAY_BACKEND`) load the same run folder and score the same 64 validation films of
the run, prepared once, through `Model.forward` (the probabilities and the gate's features, as
`score` and Diagnose use them) at several batch sizes; each rate is the best of three timed
windows. Also: the first call (loading the program or tracing the networks; a run without its
LiteRT program converts it here, into an empty cache), one film at a time (Diagnose's case),
and the largest difference between the two backends' probabilities.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.harness import Bench, validation_films

BATCHES = (1, 16, 32, 64, 256)
BACKENDS = ("tensorflow", "litert")


def rate(model, x: np.ndarray, batch: int, seconds: float) -> float:
    """Best of three windows of images/s, `batch` images per call."""
    chunk = np.resize(x, (batch, *x.shape[1:]))
    model.forward(chunk, batch_size=batch)  # warm: interpreters, traces
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            model.forward(chunk, batch_size=batch)
            n += batch
        best = max(best, n / (time.perf_counter() - t0))
    return best


def measure(run: str, seconds: float) -> dict:
    from xray_core import imaging, litert, runs
    from xray_core.model import Model

    out: dict = {"images_per_s": {}, "first_call_s": {}, "one_film_ms": {}}
    probs = {}
    folder = runs.load_run(run).path
    films = [imaging.decode(p) for p, _ in validation_films(run, n=64)]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XRAY_CACHE_DIR"] = cache  # conversion timed from nothing
        for backend in BACKENDS:
            os.environ[litert.ENV] = backend
            model = Model(folder)
            x = model.prepare_batch(films)
            t0 = time.perf_counter()
            model.forward(x[:1])
            out["first_call_s"][backend] = time.perf_counter() - t0
            probs[backend] = model.forward(x).raw
            single = []
            for i in range(20):
                t0 = time.perf_counter()
                model.forward(x[i : i + 1])
                single.append(time.perf_counter() - t0)
            out["one_film_ms"][backend] = 1000 * float(np.median(single))
            out["images_per_s"][backend] = {b: rate(model, x, b, seconds) for b in BATCHES}
            print(backend, out["images_per_s"][backend], flush=True)
    out["input"] = f"{model.input_size[0]}x{model.input_size[1]}x{model.channels}, {model.n_members} member(s)"
    out["max_abs_prob_diff"] = float(np.abs(probs["tensorflow"] - probs["litert"]).max())
    best = {k: max(v.values()) for k, v in out["images_per_s"].items()}
    out["speedup_best_batch"] = best["litert"] / best["tensorflow"]
    return out


def render(r: dict, run: str) -> str:
    rates = r["images_per_s"]
    return "\n".join([
        f"Run `{run}` ({r['input']}); 64 of its validation films, prepared once, the same for both backends. "
        "Images/s through `Model.forward`, best of three timed windows:", "",
        "| backend | " + " | ".join(f"batch {b}" for b in BATCHES) + " | first call s | one film ms |",
        "|---|" + "---:|" * (len(BATCHES) + 2),
        *[f"| {k} | " + " | ".join(f"{rates[k][b]:.1f}" for b in BATCHES)
          + f" | {r['first_call_s'][k]:.2f} | {r['one_film_ms'][k]:.2f} |" for k in BACKENDS], "",
        f"LiteRT at its best batch against TensorFlow at its own: **{r['speedup_best_batch']:.2f}x**. Largest "
        f"difference between the two backends' probabilities: {r['max_abs_prob_diff']:.2e}. `XRAY_BACKEND=auto` "
        "(the default) runs LiteRT on a machine without a GPU."])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="default")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per backend and batch size")
    args = ap.parse_args(argv)
    with Bench("forward", question="How much faster are the networks through LiteRT than through TensorFlow?") as bench:
        result = measure(args.run, args.seconds)
        print(bench.write(render(result, args.run), {"run": args.run, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
