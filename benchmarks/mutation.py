"""Mutation testing of the modules whose every line a wrong answer would pass through.

mutmut changes one thing at a time in xray_core/metrics.py, gate.py and model.py (an operator, a
constant, a comparison...) and runs the tests that cover the changed function; a mutant the tests
do not notice "survives". The score is the share of checked mutants the tests kill, leaving out
the mutants listed in EQUIVALENT below (changes that cannot alter behaviour, each with its reason);
a mutant whose test run timed out is not counted as killed.

Each module is mutated on its own, in its own copy of the last commit (or of the work tree with
--worktree), with only its own tests (MODULE_TESTS): the copy's [tool.mutmut] is the repository's
with only_mutate and the test selection set for that module. mutmut runs with
process_isolation = "forkserver" (see pyproject.toml): its main process never imports TensorFlow,
and each mutant's test run is forked from a server that imported the tests but ran nothing.

Run by hand (CPU-heavy: it runs under `nice -n 10`, at most --max-children test processes):

    python benchmarks/mutation.py [--modules metrics,gate,model] [--workdir DIR] [--max-children 2]
    python benchmarks/mutation.py --report-only --workdir DIR    # report an earlier run again

The work happens in DIR/<module> (DIR default: a new temporary folder), never in the repository.
Writes benchmarks/reports/mutation.md and mutation.json. Research software, not a medical device.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections import Counter
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "benchmarks" / "reports"
NOTICED = ("killed", "timeout")  # the tests did not pass with the mutant in place
NOT_RUN = ("not checked", "skipped", "no tests", "check was interrupted by user")
MODULES = ("metrics", "gate", "model")

# The tests that cover each module (mutmut runs, for each mutant, those of them that call the mutated
# function). Tests of other modules that happen to pass through it are left out: they are slower and
# would credit the module with kills its own tests do not make.
MODULE_TESTS = {
    "metrics": ["tests/test_metrics.py"],
    "gate": ["tests/test_gate.py"],
    "model": ["tests/test_model.py", "tests/test_model_behaviour.py"],
}

# Mutants that cannot change behaviour, with the reason; left out of the score (and listed in the
# report with their diff, so that a reader can disagree). Names are mutmut's, valid for the source
# of the commit the report names; a name whose diff no longer matches `diff` is not excluded.
EQUIVALENT: dict[str, dict[str, dict[str, str]]] = {
    "metrics": {},
    "gate": {},
    "model": {},
}


def copy_source(dest: Path, *, worktree: bool) -> str:
    """The last commit (or the work tree: tracked plus new not-ignored files) into dest; returns a label."""
    dest.mkdir(parents=True, exist_ok=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    if not worktree:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"], check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
        return f"commit {head}"
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard",
                              "-z"], check=True, capture_output=True, text=True).stdout
    for name in filter(None, listing.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return f"work tree on {head} (uncommitted changes included)"


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # strings, numbers and lists of them are written alike in TOML and JSON


def configure(workdir: Path, module: str) -> dict:
    """Rewrite the copy's [tool.mutmut] so that only `module` is mutated, with only its tests."""
    path = workdir / "pyproject.toml"
    text = path.read_text()
    settings = dict(tomllib.loads(text)["tool"]["mutmut"])
    settings["only_mutate"] = [f"xray_core/{module}.py"]
    settings["pytest_add_cli_args_test_selection"] = MODULE_TESTS[module]
    start = text.index("[tool.mutmut]")
    nxt = re.search(r"^\[", text[start + 1:], flags=re.M)
    end = len(text) if nxt is None else start + 1 + nxt.start()
    section = "[tool.mutmut]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()) + "\n"
    path.write_text(text[:start] + section + text[end:])
    return settings


def statuses(workdir: Path, module: str) -> dict[str, str]:
    """{mutant name: status} from mutmut's record of one module (empty if it was not run)."""
    from mutmut.stats import status_by_exit_code

    meta = workdir / "mutants" / "xray_core" / f"{module}.py.meta"
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def mutant_diff(workdir: Path, name: str) -> str:
    """The changed lines of one mutant (`mutmut show NAME`), '-old / +new' without the file header."""
    out = subprocess.run([mutmut_executable(), "show", name], cwd=workdir, capture_output=True, text=True).stdout
    lines = [ln.rstrip() for ln in out.splitlines()
             if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return " / ".join(re.sub(r"\s+", " ", ln) for ln in lines)


def summarise(workdir: Path, modules: list[str]) -> dict:
    per_module = {}
    for module in modules:
        mod_dir = workdir / module
        found = statuses(mod_dir, module)
        equivalent = {}
        for name, why in EQUIVALENT.get(module, {}).items():
            if name in found and mutant_diff(mod_dir, name) == why["diff"]:
                equivalent[name] = why
        counts = Counter(s for n, s in found.items() if n not in equivalent)
        checked = sum(n for s, n in counts.items() if s not in NOT_RUN)
        noticed = sum(counts[s] for s in NOTICED)
        survivors = sorted(n for n, s in found.items() if s == "survived" and n not in equivalent)
        per_module[module] = {
            "mutants": len(found), "equivalent": len(equivalent), "checked": checked,
            "counts": dict(sorted(counts.items())),
            "score": round(counts["killed"] / checked, 4) if checked else None,
            "noticed_score": round(noticed / checked, 4) if checked else None,
            "tests": MODULE_TESTS[module],
            "equivalent_mutants": equivalent,
            "survivors": {n: mutant_diff(mod_dir, n) for n in survivors} if found else {},
            "timeouts": sorted(n for n, s in found.items() if s == "timeout"),
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
        f"{meta['created']}: {meta['source']}; mutmut {meta['mutmut']} (process_isolation "
        f"{meta['process_isolation']}, {meta['max_children']} test processes at a time), pytest {meta['pytest']}, "
        f"TensorFlow {meta['tensorflow']}, Python {meta['python']}, {meta['machine']}, {meta['cores']} cores "
        f"(shared with other work; load average {meta['load_average']} at the end). Wall time: "
        + ", ".join(f"{m} {s / 60:.1f} min" for m, s in meta["seconds"].items()) + ".",
        "",
        f"Command: `{meta['command']}` (mutmut itself, per module in its own copy: `{meta['mutmut_command']}`; "
        "settings in pyproject.toml, [tool.mutmut], with only_mutate and the test selection set per module).",
        "",
        "Score: killed / checked, where checked leaves out mutants no selected test reaches and the equivalent "
        "mutants listed below. Goal: at least 80 % per module. Timed-out mutants are not counted as killed; "
        "the last column counts them too.",
        "",
        "| module | tests | mutants | equivalent | checked | killed | timeout | survived | score (killed) "
        "| killed or timed out |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for module, m in per_module.items():
        c = m["counts"]
        score = "-" if m["score"] is None else f"{100 * m['score']:.1f} %"
        lenient = "-" if m["noticed_score"] is None else f"{100 * m['noticed_score']:.1f} %"
        tests = ", ".join(t.removeprefix("tests/") for t in m["tests"])
        lines.append(f"| xray_core/{module}.py | {tests} | {m['mutants']} | {m['equivalent']} | {m['checked']} | "
                     f"{c.get('killed', 0)} | {c.get('timeout', 0)} | {c.get('survived', 0)} | {score} | {lenient} |")
    lines += [f"\nNote: {note}" for note in meta.get("notes", [])]
    unchecked = [f"xray_core/{mod}.py: {m['mutants'] - m['equivalent'] - m['checked']} of {m['mutants']}"
                 for mod, m in per_module.items() if m["mutants"] - m["equivalent"] > m["checked"]]
    if unchecked:
        lines += ["", "Not checked (no selected test calls the mutated function, or the run was cut short): "
                  + "; ".join(unchecked) + "."]
    for module, m in per_module.items():
        if m["equivalent_mutants"]:
            lines += ["", f"Equivalent mutants of {module}.py (left out of the score):", ""]
            lines += [f"- `{n}`: {w['reason']} (`{w['diff']}`)" for n, w in m["equivalent_mutants"].items()]
        if m["survivors"]:
            lines += ["", f"Surviving mutants of {module}.py (`mutmut show NAME` in the module's work folder):", ""]
            lines += [f"- `{n}`: `{d}`" for n, d in m["survivors"].items()]
        if m["timeouts"]:
            lines += ["", f"Timed-out mutants of {module}.py: " + ", ".join(f"`{n}`" for n in m["timeouts"]) + "."]
    lines.append("")
    (REPORTS / "mutation.md").write_text("\n".join(lines))


def child_env() -> dict:
    """One BLAS/OpenMP thread per test process: with several at a time on a shared machine, threaded
    linear algebra spins instead of working (an SVD the gate fit needs took 3 s instead of 0.05 s)."""
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def mutmut_executable() -> str:
    beside = Path(sys.executable).parent / "mutmut"
    return str(beside) if beside.is_file() else (shutil.which("mutmut") or "mutmut")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(MODULES), help="xray_core modules (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temporary folder)")
    parser.add_argument("--worktree", action="store_true",
                        help="mutate the work tree with its uncommitted changes instead of the last commit")
    parser.add_argument("--max-children", type=int, default=2, help="test processes at a time (default: 2)")
    parser.add_argument("--report-only", action="store_true", help="write the report from --workdir's last run")
    parser.add_argument("--note", action="append", default=[], help="a sentence for the report (repeatable)")
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown modules {unknown}; choose from {', '.join(MODULES)}")
    mutmut_command = f"nice -n 10 mutmut run --max-children {args.max_children}"

    seconds: dict[str, float] = {}
    if args.report_only:
        if args.workdir is None or not any((args.workdir / m / "mutants").is_dir() for m in modules):
            parser.error("--report-only needs the --workdir of an earlier run (it holds MODULE/mutants/)")
        workdir = args.workdir
        source = json.loads((workdir / "source.json").read_text())["source"]
        seconds = json.loads((workdir / "source.json").read_text()).get("seconds", {})
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="xray-mutation-"))
        source = ""
        for module in modules:
            mod_dir = workdir / module
            if not (mod_dir / "pyproject.toml").is_file():
                source = copy_source(mod_dir, worktree=args.worktree)
            configure(mod_dir, module)
            print(f"mutmut in {mod_dir}: {mutmut_command}", flush=True)
            t0 = time.perf_counter()
            # No mutant names: mutmut then checks every mutant of only_mutate not checked yet (named mutants are
            # all checked again), so an interrupted run resumes where it stopped.
            subprocess.run(["nice", "-n", "10", mutmut_executable(), "run", "--max-children", str(args.max_children)],
                           cwd=mod_dir, check=False, env=child_env())
            seconds[module] = round(time.perf_counter() - t0, 1)
        if not source and (workdir / "source.json").is_file():
            source = json.loads((workdir / "source.json").read_text())["source"]
        (workdir / "source.json").write_text(json.dumps({"source": source, "seconds": seconds}))

    per_module = summarise(workdir, modules)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]

    def installed(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "absent"

    meta = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "command": "python benchmarks/mutation.py" + (f" --modules {args.modules}" if modules != list(MODULES)
                                                     else ""),
        "mutmut_command": mutmut_command,
        "mutmut": installed("mutmut"),
        "pytest": installed("pytest"),
        "tensorflow": installed("tensorflow"),
        "process_isolation": pyproject.get("process_isolation", "fork"),
        "max_children": args.max_children,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "seconds": seconds,
        "notes": args.note,
    }
    write_report(per_module, meta)
    for module, m in per_module.items():
        score = "-" if m["score"] is None else f"{100 * m['score']:.1f} %"
        print(f"{module}: {m['checked']} of {m['mutants']} checked ({m['equivalent']} equivalent), score {score}")
    print(f"wrote {REPORTS / 'mutation.md'} and mutation.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
