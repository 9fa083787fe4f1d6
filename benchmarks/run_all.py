"""Regenerate every benchmark report that is not frozen: `python -m benchmarks.run_all`.

Runs each benchmark below as `python -m benchmarks.NAME`, one after the other, each in a process
of its own with the same dataset folder, and checks that it rewrote its report. A failing one
does not stop the others; the exit code says whether all succeeded. Expect a few hours on 2
cores. `--only` and `--skip` pick reports by name, `--list` shows the plan and the frozen reports.

    python -m benchmarks.run_all [--data ../shared/data/chest_xray] [--only load,score] [--skip epochs]
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
    module: str  # benchmarks/<module>.py
    args: tuple[str, ...]  # "{data}" is replaced by the dataset folder, "{data_parent}" by its parent
    report: str  # it writes benchmarks/reports/<report>.md and .json

    @property
    def writes(self) -> tuple[str, str]:
        return f"{REPORTS}/{self.report}.md", f"{REPORTS}/{self.report}.json"


BENCHMARKS = (
    Benchmark("load", ("--data", "{data}"), "load"),
    Benchmark("epochs", ("--data", "{data}"), "epochs"),
    Benchmark("explain", ("--timing", "10", "--repeats", "3"), "explain_timing"),
    Benchmark("explain", ("--faithfulness", "50"), "explain_faithfulness"),
    Benchmark("explain", ("--samples", "256,512,1024,2048"), "explain_samples"),
    Benchmark("gate", ("--data", "{data_parent}"), "gate"),
    Benchmark("forward", (), "forward"),
    Benchmark("score", ("--data", "{data_parent}", "--int8"), "score"),
    Benchmark("cold_start", ("--baseline", "dca2f7d"), "cold_start"),
    Benchmark("load_clients", (), "load_clients"),
    Benchmark("site_check", ("--data", "{data}"), "site_check"),
)

# Modules the benchmarks share or run, not benchmarks themselves.
SUPPORT = ("__init__.py", "harness.py", "peer_tfdata.py")

# Reports no benchmark rewrites: report name -> (the commit that measured it, why it stays as it is).
KEPT = {
    "explain": ("7ef38d7", "LIME against the seed's own lime_image call, and trust figures per shipped run; "
                           "measured before LIME went through the lime package, its question is settled"),
    "explain_settings": ("83f623b", "the sweep of segmentation, fill, design, sample count and kernel width "
                                    "that chose the dashboard's recipe; frozen with its conclusion"),
    "explain_design": ("d41754c", "log-odds against the probability fitted on the orthogonal design; frozen "
                                  "with its conclusion (the log-odds)"),
    "shortcut_check": ("91937f8", "where Grad-CAM and LIME weight falls (lung field or borders) on the first "
                                  "default, pneumonet at 128 px; a one-off check"),
    "generalization": ("1f15a70", "the default's recipe one change at a time (needs the ablation runs trained); "
                                  "the default's model card quotes it"),
    "epochs-ablation": ("b8b7794", "which change bought the epoch speed-up (1 channel, oneDNN, XLA), measured "
                                   "under load; epochs.md compares the two setups that matter"),
    "seed_model3_probe": ("585ec47", "model 3's collapse probe (class weights, learning rate; hours of training); "
                                    "seed_models.md quotes it"),
    "seed_models": ("df0e946", "written by `python -m tools.seed_runs --ship` when the seed runs are shipped"),
    "mutation": ("d098865", "written by `python -m tools.mutation` (test tooling, hours of CPU)"),
}


def default_data() -> Path:
    env = os.environ.get("XRAY_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "chest_xray"


def command(bench: Benchmark, data: Path) -> list[str]:
    args = [a.format(data=data, data_parent=data.parent) for a in bench.args]
    return [sys.executable, "-m", f"benchmarks.{bench.module}", *args]


def run(bench: Benchmark, data: Path) -> tuple[bool, float, str]:
    """Run one benchmark; (ok, seconds, what went wrong)."""
    started = time.time()
    # Benchmarks without a --data option find the films through XRAY_DATA_DIR (benchmarks.harness).
    proc = subprocess.run(command(bench, data), cwd=ROOT, env=dict(os.environ, XRAY_DATA_DIR=str(data.resolve())))
    seconds = time.time() - started
    if proc.returncode != 0:
        return False, seconds, f"exit code {proc.returncode}"
    stale = [w for w in bench.writes if not (ROOT / w).is_file() or (ROOT / w).stat().st_mtime < started]
    return not stale, seconds, f"did not rewrite {', '.join(stale)}" if stale else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data(),
                        help="dataset folder in the Kermany layout "
                             "(default: $XRAY_DATA_DIR or ../shared/data/chest_xray)")
    parser.add_argument("--only", help="comma-separated report names to regenerate (see --list)")
    parser.add_argument("--skip", help="comma-separated report names not to regenerate")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    args = parser.parse_args(argv)

    names = [b.report for b in BENCHMARKS]
    chosen = set(args.only.split(",")) if args.only else set(names)
    chosen -= set(args.skip.split(",")) if args.skip else set()
    if chosen - set(names):
        parser.error(f"unknown report(s) {', '.join(sorted(chosen - set(names)))}; choose from {', '.join(names)}")
    plan = [b for b in BENCHMARKS if b.report in chosen]
    if args.list:
        for b in plan:
            print(f"{b.report:22s} python -m benchmarks.{b.module} {' '.join(command(b, args.data)[3:])}")
        for name, (commit, why) in KEPT.items():
            print(f"{name:22s} kept as measured at {commit}: {why}")
        return 0
    if not args.data.is_dir():
        parser.error(f"{args.data} is not a folder: give the dataset with --data (see README, Get the data)")

    results = []
    for b in plan:
        print(f"== {b.report}: {' '.join(command(b, args.data)[1:])}", flush=True)
        ok, seconds, problem = run(b, args.data)
        results.append((b.report, ok, seconds, problem))
        print(f"== {b.report}: {'ok' if ok else 'FAILED (' + problem + ')'} in {seconds / 60:.1f} min", flush=True)
    print("\nsummary:")
    for name, ok, seconds, problem in results:
        print(f"  {name:22s} {'ok' if ok else 'FAILED'}  {seconds / 60:6.1f} min  {problem}")
    return 0 if all(ok for _, ok, _, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
