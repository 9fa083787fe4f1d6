"""Mutation testing of the modules whose every line a wrong answer would pass through.

mutmut changes one thing at a time in xray_core/metrics.py, model.py and gate.py (an operator, a
constant, a comparison...) and runs the tests that cover the changed function; a mutant the tests
do not notice "survives". The score is the share of checked mutants the tests kill; a mutant whose
test run timed out is not counted as killed (a timeout may be the mutant's endless loop, or the
test process hanging for another reason). Configuration: [tool.mutmut] in pyproject.toml.

Run by hand (CPU-heavy: it runs under `nice -n 10`):

    python benchmarks/mutation.py [--modules metrics,model,gate] [--workdir DIR]
    python benchmarks/mutation.py --report-only --workdir DIR    # report an earlier run again

The work happens in a copy of the work tree (DIR, default a new temporary folder), never in the
repository. Writes benchmarks/reports/mutation.md and mutation.json. Research software, not a
medical device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "benchmarks" / "reports"
NOTICED = ("killed", "timeout")  # the tests did not pass with the mutant in place
NOT_RUN = ("not checked", "skipped", "no tests", "check was interrupted by user")


def copy_work_tree(dest: Path) -> None:
    """Tracked files and new files that git does not ignore (what a commit of the tree would hold)."""
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard",
                              "-z"], check=True, capture_output=True, text=True).stdout
    for name in filter(None, listing.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def statuses(workdir: Path, module: str) -> dict[str, str]:
    """{mutant name: status} from mutmut's record of one module (empty if it was not run)."""
    from mutmut.stats import status_by_exit_code

    meta = workdir / "mutants" / "xray_core" / f"{module}.py.meta"
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def summarise(workdir: Path, modules: list[str]) -> dict:
    per_module = {}
    for module in modules:
        found = statuses(workdir, module)
        counts = Counter(found.values())
        checked = sum(n for s, n in counts.items() if s not in NOT_RUN)
        noticed = sum(counts[s] for s in NOTICED)
        per_module[module] = {
            "mutants": len(found), "checked": checked, "counts": dict(sorted(counts.items())),
            "score": round(counts["killed"] / checked, 4) if checked else None,
            "noticed_score": round(noticed / checked, 4) if checked else None,
            "survivors": sorted(n for n, s in found.items() if s == "survived"),
        }
    return per_module


def write_report(per_module: dict, meta: dict) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "mutation.json").write_text(json.dumps({"meta": meta, "modules": per_module}, indent=2) + "\n")
    lines = [
        "# Mutation testing",
        "",
        "Research software, not a medical device.",
        "",
        f"{meta['created']}: mutmut {meta['mutmut']}, Python {meta['python']}, {meta['cores']} cores "
        f"(shared; load average {meta['load_average']}).",
        "",
        f"Command: `{meta['command']}` (mutmut itself: `{meta['mutmut_command']}` in a copy of the work tree; "
        "settings in pyproject.toml, [tool.mutmut]).",
        "",
        "Score: the share of checked mutants the tests kill. Goal: at least 80 %. Timed-out mutants are "
        "not counted as killed; the last column counts them too.",
        "",
        "| module | mutants | checked | killed | timeout | survived | score (killed) | killed or timed out |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for module, m in per_module.items():
        c = m["counts"]
        score = "-" if m["score"] is None else f"{100 * m['score']:.1f} %"
        lenient = "-" if m["noticed_score"] is None else f"{100 * m['noticed_score']:.1f} %"
        lines.append(f"| xray_core/{module}.py | {m['mutants']} | {m['checked']} | {c.get('killed', 0)} | "
                     f"{c.get('timeout', 0)} | {c.get('survived', 0)} | {score} | {lenient} |")
    lines += [f"\nNote: {note}" for note in meta.get("notes", [])]
    unchecked = [f"xray_core/{mod}.py: {m['mutants'] - m['checked']} of {m['mutants']}"
                 for mod, m in per_module.items() if m["mutants"] > m["checked"]]
    if unchecked:
        lines += ["", "Not checked in this run (time ran out, or no test covers the mutated function): "
                  + "; ".join(unchecked) + "."]
    for module, m in per_module.items():
        if m["survivors"]:
            lines += ["", f"Surviving mutants of {module}.py (`mutmut show NAME` in the work folder shows each):", ""]
            lines += [f"- `{name}`" for name in m["survivors"]]
    lines.append("")
    (REPORTS / "mutation.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default="metrics,model,gate", help="xray_core modules (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temporary folder)")
    parser.add_argument("--report-only", action="store_true", help="write the report from --workdir's last run")
    parser.add_argument("--note", action="append", default=[], help="a sentence for the report (repeatable)")
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    names = [f"xray_core.{m}.*" for m in modules]
    mutmut_command = "nice -n 10 mutmut run " + " ".join(f'"{n}"' for n in names)

    if args.report_only:
        if args.workdir is None or not (args.workdir / "mutants").is_dir():
            parser.error("--report-only needs the --workdir of an earlier run (it holds mutants/)")
        workdir = args.workdir
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="xray-mutation-"))
        if not (workdir / "pyproject.toml").is_file():
            copy_work_tree(workdir)
        print(f"mutmut in {workdir}: {mutmut_command}", flush=True)
        subprocess.run(["nice", "-n", "10", sys.executable, "-m", "mutmut", "run", *names], cwd=workdir, check=False)

    per_module = summarise(workdir, modules)
    meta = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/mutation.py" + (f" --modules {args.modules}" if args.modules != "metrics,model,gate"
                                                     else ""),
        "mutmut_command": mutmut_command,
        "mutmut": version("mutmut"),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "notes": args.note,
    }
    write_report(per_module, meta)
    for module, m in per_module.items():
        score = "-" if m["score"] is None else f"{100 * m['score']:.1f} %"
        print(f"{module}: {m['checked']} of {m['mutants']} checked, score {score}")
    print(f"wrote {REPORTS / 'mutation.md'} and mutation.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
