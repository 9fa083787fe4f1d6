"""Regenerate every benchmark report: `python benchmarks/run_all.py`.

Runs each benchmark script below, one after the other, in a process of its own, with the same
dataset folder, and checks that it rewrote its reports. A failing script does not stop the
others; the exit code says whether all of them succeeded. Expect hours on 2 cores (the
generalization ablation trains models); `--only` and `--skip` pick a subset,
`--list` shows the plan. Research software, not a medical device.

    python benchmarks/run_all.py [--data ../shared/data/chest_xray] [--only load,score] [--skip seed_models]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
REPORTS = Path("benchmarks") / "reports"


class Benchmark(NamedTuple):
    name: str
    script: str
    args: tuple[str, ...]  # "{data}" is replaced by the dataset folder, "{data_parent}" by its parent
    writes: tuple[str, ...]  # paths relative to the repository


# In dependency order: the default model's card reads the generalization report.
BENCHMARKS = (
    Benchmark("load", "bench_load.py", ("--data", "{data}"), (f"{REPORTS}/load.md", f"{REPORTS}/load.json")),
    Benchmark("epochs", "bench_epochs.py", ("--data", "{data}"), (f"{REPORTS}/epochs.md", f"{REPORTS}/epochs.json")),
    # The seed models' report and cards from the shipped runs (retraining them: the script's --launch).
    Benchmark("seed_models", "bench_seed_models.py", ("--ship",),
              (f"{REPORTS}/seed_models.md", f"{REPORTS}/seed_models.json")),
    Benchmark("explain", "bench_explain.py", (), (f"{REPORTS}/explain.md", f"{REPORTS}/explain.json")),
    Benchmark("explain_settings", "bench_lime_settings.py", (),
              (f"{REPORTS}/explain_settings.md", f"{REPORTS}/explain_settings.json")),
    Benchmark("explain_design", "bench_lime_design.py", (),
              (f"{REPORTS}/explain_design.md", f"{REPORTS}/explain_design.json")),
    Benchmark("explain_samples", "bench_lime_samples.py", (),
              (f"{REPORTS}/explain_samples.md", f"{REPORTS}/explain_samples.json")),
    Benchmark("explain_faithfulness", "bench_explain.py", ("--faithfulness", "50"),
              (f"{REPORTS}/explain_faithfulness.md", f"{REPORTS}/explain_faithfulness.json")),
    Benchmark("explain_timing", "bench_explain.py", ("--timing", "10", "--repeats", "3"),
              (f"{REPORTS}/explain_timing.md", f"{REPORTS}/explain_timing.json")),
    Benchmark("shortcut_check", "shortcut_check.py", ("--data", "{data}"),
              (f"{REPORTS}/shortcut_check.md", f"{REPORTS}/shortcut_check.json")),
    Benchmark("generalization", "generalization.py", ("--data", "{data}"),
              (f"{REPORTS}/generalization.md", f"{REPORTS}/generalization.json")),
    Benchmark("default_card", "default_card.py", (), ("trained_models/default/MODEL_CARD.md",)),
    Benchmark("gate", "gate.py", ("--data", "{data_parent}"), (f"{REPORTS}/gate.md", f"{REPORTS}/gate.json")),
    Benchmark("forward", "forward.py", (), (f"{REPORTS}/forward.md", f"{REPORTS}/forward.json")),
    Benchmark("score", "score.py", ("--data", "{data_parent}"), (f"{REPORTS}/score.md", f"{REPORTS}/score.json")),
    Benchmark("load_clients", "load_clients.py", (),
              (f"{REPORTS}/load_clients.md", f"{REPORTS}/load_clients.json")),
    Benchmark("mutation", "mutation.py", (), (f"{REPORTS}/mutation.md", f"{REPORTS}/mutation.json")),
)

# Reports in benchmarks/reports/ that the plan does not rewrite, and why they are kept.
# Modules the benchmarks share or run, not benchmarks themselves.
SUPPORT = ("__init__.py", "harness.py", "peer_tfdata.py")

KEPT = {
    f"{REPORTS}/epochs-ablation.md": "the epoch ablation measured under load, kept beside epochs.md for the record",
    f"{REPORTS}/epochs-ablation.json": "its figures",
    f"{REPORTS}/seed_model3_probe.json": "model3's learning-rate probe (bench_seed_models.py --probe-model3, hours "
                                         "of training), an input of seed_models.md",
}


def default_data() -> Path:
    env = os.environ.get("XRAY_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "chest_xray"


def command(bench: Benchmark, data: Path) -> list[str]:
    args = [a.format(data=data, data_parent=data.parent) for a in bench.args]
    return [sys.executable, str(ROOT / "benchmarks" / bench.script), *args]


def run(bench: Benchmark, data: Path) -> tuple[bool, float, str]:
    """Run one benchmark; (ok, seconds, what went wrong)."""
    started = time.time()
    proc = subprocess.run(command(bench, data), cwd=ROOT)
    seconds = time.time() - started
    if proc.returncode != 0:
        return False, seconds, f"exit code {proc.returncode}"
    stale = [w for w in bench.writes if not (ROOT / w).is_file() or (ROOT / w).stat().st_mtime < started]
    if stale:
        return False, seconds, f"did not rewrite {', '.join(stale)}"
    return True, seconds, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data(),
                        help="dataset folder in the Kermany layout (default: $XRAY_DATA_DIR or ../shared/data/chest_xray)")
    parser.add_argument("--only", help="comma-separated names to run (see --list)")
    parser.add_argument("--skip", help="comma-separated names not to run")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    args = parser.parse_args(argv)

    names = [b.name for b in BENCHMARKS]
    chosen = set(args.only.split(",")) if args.only else set(names)
    chosen -= set(args.skip.split(",")) if args.skip else set()
    unknown = chosen - set(names)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(names)}")
    plan = [b for b in BENCHMARKS if b.name in chosen]
    if args.list:
        for b in plan:
            print(f"{b.name:16s} {' '.join(command(b, args.data)[1:])}  ->  {', '.join(b.writes)}")
        for path, why in KEPT.items():
            print(f"kept, not rerun: {path} ({why})")
        return 0
    if not args.data.is_dir():
        parser.error(f"{args.data} is not a folder: give the dataset with --data (see README, Get the data)")

    results = []
    for b in plan:
        print(f"== {b.name}: {' '.join(command(b, args.data)[1:])}", flush=True)
        ok, seconds, problem = run(b, args.data)
        results.append((b.name, ok, seconds, problem))
        print(f"== {b.name}: {'ok' if ok else 'FAILED (' + problem + ')'} in {seconds / 60:.1f} min", flush=True)
    print("\nsummary:")
    for name, ok, seconds, problem in results:
        print(f"  {name:16s} {'ok' if ok else 'FAILED'}  {seconds / 60:6.1f} min  {problem}")
    return 0 if all(ok for _, ok, _, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
