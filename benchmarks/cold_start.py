"""How long does a cold `xray predict default one.jpeg` take, and what does it import?

`python -m benchmarks.cold_start [--runs 5] [--baseline COMMIT]`, on a quiet machine.

Each run is a new interpreter, as a user starts the command: `python -m xray_core predict default
FILM --json`, wall clock from start to exit, the median of `--runs` (after one untimed run, so the
operating system's file cache holds the files, as it does for a user's second command). Then one
more run with `-X importtime` says what the command imported and what that cost (top-level
packages), and whether TensorFlow or Keras were among them. With `--baseline COMMIT` the same is
measured, in the same session and taking turns, on a checkout of that commit (for example the
commit before the inference engine), with its converted program already cached as it would be.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import ROOT, Bench, validation_films

HEAVY = ("tensorflow", "keras", "pandas", "scipy", "sklearn", "lime", "pydicom", "skimage", "matplotlib")


def _predict(checkout: Path, film: Path, *, importtime: bool = False) -> tuple[float, str, str]:
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "xray_core", "predict", "default",
           str(film), "--json", "--runs-dir", str(checkout / "trained_models")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"predict failed in {checkout}: {proc.stderr[-1500:]}")
    return wall, proc.stdout, proc.stderr


def imports(stderr: str) -> dict:
    """Cumulative import seconds of each package (its root module's line, wherever it was first
    imported), from -X importtime's lines `import time: self | cumulative | name`."""
    top: dict[str, float] = {}
    for line in stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        if "." not in name:
            top[name] = max(top.get(name, 0.0), int(parts[1]) / 1e6)
    return dict(sorted(top.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", help="a commit to measure beside the current checkout")
    args = parser.parse_args(argv)
    film = validation_films("default", n=1, seed=0)[0][0]
    with Bench("cold_start", question="How long does a cold `xray predict default one.jpeg` take?") as bench, \
            tempfile.TemporaryDirectory() as tmp:
        checkouts = {"this checkout": ROOT}
        if args.baseline:
            base = Path(tmp) / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=ROOT, check=True,
                           capture_output=True)
            checkouts[f"baseline {args.baseline[:10]}"] = base
        try:
            for checkout in checkouts.values():
                _predict(checkout, film)  # untimed: file cache warm, a converted program cached
            walls: dict[str, list[float]] = {name: [] for name in checkouts}
            for _ in range(args.runs):
                for name, checkout in checkouts.items():
                    walls[name].append(_predict(checkout, film)[0])
            results = {}
            for name, checkout in checkouts.items():
                _, out, err = _predict(checkout, film, importtime=True)
                top = imports(err)
                results[name] = {"walls": walls[name], "median_s": statistics.median(walls[name]),
                                 "imports_s": top, "heavy_imported": [p for p in HEAVY if p in top],
                                 "verdict": {**json.loads(out.splitlines()[0]), "image": film.name}}
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp) / "baseline")], cwd=ROOT,
                               capture_output=True)
        lines = [f"`xray predict default {film.name} --json`, a new interpreter each time (median of {args.runs}, "
                 "taking turns; the file cache warm):", "", "| checkout | median s | runs (s) | heavy packages imported |",
                 "|---|---:|---|---|"]
        for name, r in results.items():
            lines.append(f"| {name} | **{r['median_s']:.2f}** | {', '.join(f'{w:.2f}' for w in r['walls'])} | "
                         f"{', '.join(r['heavy_imported']) or 'none'} |")
        for name, r in results.items():
            costly = ", ".join(f"{k} {v:.2f}" for k, v in list(r["imports_s"].items())[:8])
            lines += ["", f"{name}: the costliest imports (seconds, cumulative): {costly}."]
        bench.write("\n".join(lines), {"film": film.name, "runs": args.runs, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
