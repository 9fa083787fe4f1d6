"""Mutation testing: what share of the changes mutmut makes to metrics.py, gate.py and model.py do their tests notice?

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

    python -m tools.mutation [--modules metrics,gate,model] [--workdir DIR] [--max-children 2]
    python -m tools.mutation --report-only --workdir DIR    # report an earlier run again

With --modules a subset, the other modules keep their results from the report being replaced,
marked with that report's date.

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
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "benchmarks" / "reports"
NOTICED = ("killed", "timeout")  # the tests did not pass with the mutant in place
NOT_RUN = ("not checked", "skipped", "check was interrupted by user")  # "no tests" counts as not killed
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
    "metrics": {
        "xray_core.metrics.x__ratio__mutmut_3": {
            "reason": "_ratio gets integer counts or float arrays; true division gives the same float64 either way",
            "diff": "- num = np.asarray(num, dtype=np.float64) / + num = np.asarray(num, dtype=None)"},
        "xray_core.metrics.x__ratio__mutmut_5": {
            "reason": "same as x__ratio__mutmut_3 (dtype left out)",
            "diff": "- num = np.asarray(num, dtype=np.float64) / + num = np.asarray(num, )"},
        "xray_core.metrics.x__ratio__mutmut_8": {
            "reason": "same as x__ratio__mutmut_3, for the denominator",
            "diff": "- den = np.asarray(den, dtype=np.float64) / + den = np.asarray(den, dtype=None)"},
        "xray_core.metrics.x__ratio__mutmut_10": {
            "reason": "same as x__ratio__mutmut_3, for the denominator",
            "diff": "- den = np.asarray(den, dtype=np.float64) / + den = np.asarray(den, )"},
        "xray_core.metrics.x__ratio__mutmut_11": {
            "reason": "nothing is ever divided by zero (zero denominators are replaced by 1 first), so there is no warning to silence",
            "diff": "- with np.errstate(divide=\"ignore\", invalid=\"ignore\"): / + with np.errstate(divide=None, invalid=\"ignore\"):"},
        "xray_core.metrics.x__ratio__mutmut_12": {
            "reason": "as x__ratio__mutmut_11: no 0/0 is ever computed",
            "diff": "- with np.errstate(divide=\"ignore\", invalid=\"ignore\"): / + with np.errstate(divide=\"ignore\", invalid=None):"},
        "xray_core.metrics.x__ratio__mutmut_13": {
            "reason": "as x__ratio__mutmut_11",
            "diff": "- with np.errstate(divide=\"ignore\", invalid=\"ignore\"): / + with np.errstate(invalid=\"ignore\"):"},
        "xray_core.metrics.x__ratio__mutmut_14": {
            "reason": "as x__ratio__mutmut_11",
            "diff": "- with np.errstate(divide=\"ignore\", invalid=\"ignore\"): / + with np.errstate(divide=\"ignore\", ):"},
        "xray_core.metrics.x__ratio__mutmut_35": {
            "reason": "the inner np.where only sets what masked-out entries (den <= 0) are divided by; the outer np.where replaces them by nan",
            "diff": "- out = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan) / + out = np.where(den > 0, num / np.where(den >= 0, den, 1), np.nan)"},
        "xray_core.metrics.x__ratio__mutmut_36": {
            "reason": "a denominator of 1 is replaced by 1: the same division",
            "diff": "- out = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan) / + out = np.where(den > 0, num / np.where(den > 1, den, 1), np.nan)"},
        "xray_core.metrics.x__ratio__mutmut_37": {
            "reason": "as x__ratio__mutmut_35: the masked-out entries become nan whatever they were divided by",
            "diff": "- out = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan) / + out = np.where(den > 0, num / np.where(den > 0, den, 2), np.nan)"},
        "xray_core.metrics.x_confusion_matrix__mutmut_17": {
            "reason": "predictions 0.0/1.0 instead of 0/1: scikit-learn counts the same cells for labels [0, 1]",
            "diff": "- return sk_confusion_matrix(y, (s >= t).astype(np.int64), labels=[0, 1]) / + return sk_confusion_matrix(y, (s >= t).astype(None), labels=[0, 1])"},
        "xray_core.metrics.x_binary_metrics__mutmut_80": {
            "reason": "float('NAN') is nan",
            "diff": "- \"roc_auc\": float(roc_auc_score(y, s)) if both else float(\"nan\"), / + \"roc_auc\": float(roc_auc_score(y, s)) if both else float(\"NAN\"),"},
        "xray_core.metrics.x_binary_metrics__mutmut_92": {
            "reason": "float('NAN') is nan",
            "diff": "- \"pr_auc\": float(average_precision_score(y, s)) if both else float(\"nan\"), / + \"pr_auc\": float(average_precision_score(y, s)) if both else float(\"NAN\"),"},
        "xray_core.metrics.x_choose_threshold__mutmut_15": {
            "reason": "float('NAN') is nan",
            "diff": "- target = float(\"nan\") / + target = float(\"NAN\")"},
        "xray_core.metrics.x_bootstrap_ci__mutmut_164": {
            "reason": "float('NAN') is nan",
            "diff": "- low = high = float(\"nan\") / + low = high = float(\"NAN\")"},
        "xray_core.metrics.x_choose_threshold__mutmut_47": {
            "reason": "the chosen point (lowest false-positive rate, then highest sensitivity; or highest J, then highest sensitivity) is always the end of a straight run of the ROC curve, which drop_intermediate keeps; the returned value is computed from the scores themselves",
            "diff": "- fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False) / + fpr, tpr, thresholds = roc_curve(y, s, )"},
        "xray_core.metrics.x_choose_threshold__mutmut_48": {
            "reason": "as x_choose_threshold__mutmut_47 (True is roc_curve's default)",
            "diff": "- fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False) / + fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=True)"},
        "xray_core.metrics.x_choose_threshold__mutmut_57": {
            "reason": "differs only when a sensitivity k/n equals target - 1e-12 to the last bit",
            "diff": "- ok = tpr >= target - 1e-12 / + ok = tpr > target - 1e-12"},
        "xray_core.metrics.x_choose_threshold__mutmut_71": {
            "reason": "differs only when a Youden J equals max(J) - 1e-12 to the last bit",
            "diff": "- candidates = np.flatnonzero(j >= j.max() - 1e-12) / + candidates = np.flatnonzero(j > j.max() - 1e-12)"},
        "xray_core.metrics.x_choose_threshold__mutmut_88": {
            "reason": "for chosen == 0 both branches return 0",
            "diff": "- return chosen / 2 if chosen > 0 else chosen / + return chosen / 2 if chosen >= 0 else chosen"},
        "xray_core.metrics.x_seed_micro_recall__mutmut_6": {
            "reason": "outputs are only compared with > threshold: an integer or float array gives the same booleans",
            "diff": "- scores = np.asarray(scores_2col, dtype=np.float64) / + scores = np.asarray(scores_2col, dtype=None)"},
        "xray_core.metrics.x_seed_micro_recall__mutmut_8": {
            "reason": "as x_seed_micro_recall__mutmut_6",
            "diff": "- scores = np.asarray(scores_2col, dtype=np.float64) / + scores = np.asarray(scores_2col, )"},
        "xray_core.metrics.x_bootstrap_ci__mutmut_33": {
            "reason": "Generator.integers(n) is integers(0, n): the same draws from the same stream (checked)",
            "diff": "- draws = rng.integers(0, n, size=(int(n_boot), n)) / + draws = rng.integers(n, size=(int(n_boot), n))"},
        "xray_core.metrics.x_bootstrap_ci__mutmut_89": {
            "reason": "NumPy reads any negative size in reshape as 'the rest' (checked: reshape(3, -2) of 12 items is 3 x 4)",
            "diff": "- w_pos = np.bincount(flat, weights=yd.ravel(), minlength=size).reshape(int(n_boot), -1) / + w_pos = np.bincount(flat, weights=yd.ravel(), minlength=size).reshape(int(n_boot), -2)"},
        "xray_core.metrics.x_bootstrap_ci__mutmut_105": {
            "reason": "as x_bootstrap_ci__mutmut_89",
            "diff": "- w_neg = np.bincount(flat, weights=1.0 - yd.ravel(), minlength=size).reshape(int(n_boot), -1) / + w_neg = np.bincount(flat, weights=1.0 - yd.ravel(), minlength=size).reshape(int(n_boot), -2)"},
        "xray_core.metrics.x_bootstrap_ci__mutmut_149": {
            "reason": "every resampled figure is already a float64 array",
            "diff": "- values = np.asarray(values, dtype=np.float64) / + values = np.asarray(values, dtype=None)"},
        "xray_core.metrics.x_bootstrap_ci__mutmut_151": {
            "reason": "as x_bootstrap_ci__mutmut_149",
            "diff": "- values = np.asarray(values, dtype=np.float64) / + values = np.asarray(values, )"},
    },
    "gate": {
        "xray_core.gate.x__feature_distance__mutmut_4": {
            "reason": "the features minus the float64 mean are float64 whatever the features' dtype",
            "diff": "- centred = np.asarray(features, np.float64) - g.feat_mean / + centred = np.asarray(features, None) - g.feat_mean"},
        "xray_core.gate.x__feature_distance__mutmut_6": {
            "reason": "as x__feature_distance__mutmut_4",
            "diff": "- centred = np.asarray(features, np.float64) - g.feat_mean / + centred = np.asarray(features, ) - g.feat_mean"},
        "xray_core.gate.x_check_batch__mutmut_20": {
            "reason": "every consumer of x (thumbnails, intensity_stats, Model.features) converts it to float32 itself",
            "diff": "- x = np.asarray(x, np.float32) / + x = np.asarray(x, None)"},
        "xray_core.gate.x_check_batch__mutmut_22": {
            "reason": "as x_check_batch__mutmut_20",
            "diff": "- x = np.asarray(x, np.float32) / + x = np.asarray(x, )"},
        "xray_core.gate.x_check_batch__mutmut_82": {
            "reason": "hard starts falsy either way: it is only set to True and read with `not`",
            "diff": "- hard = False # a simple check that alone makes the image unreadable / + hard = None # a simple check that alone makes the image unreadable"},
        "xray_core.gate.x_check_batch__mutmut_256": {
            "reason": "differs only if o[0] is above every turned correlation while o[4] = -o[0] exceeds the margin, i.e. o[0] < 0 < margin: then both forms are positive (the fitted margin is at least 0.1)",
            "diff": "- if o[4] - max(o[0], o[1:4].max()) > 0 and o[4] > margin: / + if o[4] - max(o[1], o[1:4].max()) > 0 and o[4] > margin:"},
        "xray_core.gate.x_check_batch__mutmut_259": {
            "reason": "differs only when o[4] equals max(o[0..3]) to the last bit",
            "diff": "- if o[4] - max(o[0], o[1:4].max()) > 0 and o[4] > margin: / + if o[4] - max(o[0], o[1:4].max()) >= 0 and o[4] > margin:"},
        "xray_core.gate.x_intensity_stats__mutmut_3": {
            "reason": "changes only the floating-point precision (float32 instead of float64) of intermediate arithmetic, far below the 4-decimal rounding of every reported figure",
            "diff": "- x = np.asarray(x, np.float32) / + x = np.asarray(x, None)"},
        "xray_core.gate.x_intensity_stats__mutmut_5": {
            "reason": "changes only the floating-point precision (float32 instead of float64) of intermediate arithmetic, far below the 4-decimal rounding of every reported figure",
            "diff": "- x = np.asarray(x, np.float32) / + x = np.asarray(x, )"},
        "xray_core.gate.x_intensity_stats__mutmut_16": {
            "reason": "NumPy reads any negative size in reshape as 'the rest'",
            "diff": "- flat = x[..., 0].reshape(len(x), -1) / + flat = x[..., 0].reshape(len(x), -2)"},
        "xray_core.gate.x__gate_arrays__mutmut_4": {
            "reason": "astype(None) is astype(float64)",
            "diff": "- arrays = {k: z[k].astype(np.float64) for k in z.files} / + arrays = {k: z[k].astype(None) for k in z.files}"},
        "xray_core.gate.x__by_content__mutmut_5": {
            "reason": "the hash only names a parsed file in the cache; blake2b's default 64-byte digest names it as uniquely",
            "diff": "- key = (parse.__name__, hashlib.blake2b(raw, digest_size=16).digest()) / + key = (parse.__name__, hashlib.blake2b(raw, ).digest())"},
        "xray_core.gate.x__by_content__mutmut_6": {
            "reason": "as x__by_content__mutmut_5: a 17-byte digest names the content as uniquely",
            "diff": "- key = (parse.__name__, hashlib.blake2b(raw, digest_size=16).digest()) / + key = (parse.__name__, hashlib.blake2b(raw, digest_size=17).digest())"},
        "xray_core.gate.x__by_content__mutmut_13": {
            "reason": "popitem reads last for its truth: None is False, the oldest entry goes as before",
            "diff": "- _PARSED.popitem(last=False) / + _PARSED.popitem(last=None)"},
        "xray_core.gate.x__seen_table__mutmut_4": {
            "reason": "Python's codec names are case-insensitive: 'ASCII' is 'ascii'",
            "diff": "- for line in raw.decode(\"ascii\").splitlines(): / + for line in raw.decode(\"ASCII\").splitlines():"},
        "xray_core.gate.x_orientation_scores__mutmut_24": {
            "reason": "column 4 written by a fifth turn is overwritten by -out[i, 0] right after",
            "diff": "- for k in range(4): / + for k in range(5):"},
        "xray_core.gate.xǁFittedGateǁsave__mutmut_29": {
            "reason": "gate.npz keeps float64 instead of float32; load_gate converts to float64 either way (answers equal to 1e-4, as the round-trip test checks)",
            "diff": "- np.savez_compressed(buf, **{k: np.asarray(v, np.float32) for k, v in arrays.items()}) / + np.savez_compressed(buf, **{k: np.asarray(v, None) for k, v in arrays.items()})"},
        "xray_core.gate.xǁFittedGateǁsave__mutmut_31": {
            "reason": "as xǁFittedGateǁsave__mutmut_29",
            "diff": "- np.savez_compressed(buf, **{k: np.asarray(v, np.float32) for k, v in arrays.items()}) / + np.savez_compressed(buf, **{k: np.asarray(v, ) for k, v in arrays.items()})"},
    },
    "model": {
        "xray_core.model.xǁModelǁ_compiled_forward__mutmut_22": {
            "reason": "tf.TensorSpec's default dtype is float32",
            "diff": "- spec = tf.TensorSpec((None, h, w, self.channels), tf.float32) / + spec = tf.TensorSpec((None, h, w, self.channels), )"},
        "xray_core.model.xǁModelǁ_compiled_forward__mutmut_7": {
            "reason": "a head's output is (batch, units): shape[1] is shape[-1]",
            "diff": "- columns = [pneumonia_column(int(m.outputs[0].shape[-1])) for m in members] / + columns = [pneumonia_column(int(m.outputs[0].shape[+1])) for m in members]"},
        "xray_core.model.xǁModelǁpredict__mutmut_6": {
            "reason": "the batch size is not passed on, so the default is used: it only splits the forward pass; outputs are the same",
            "diff": "- return (self.predict_proba(x, batch_size=batch_size) >= self.threshold).astype(int) / + return (self.predict_proba(x, ) >= self.threshold).astype(int)"},
    },
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


def refresh_tests(dest: Path, *, worktree: bool) -> str:
    """tests/ of the last commit (or of the work tree) into dest; returns a label."""
    fresh = Path(tempfile.mkdtemp(prefix="xray-mutation-tests-"))
    label = copy_source(fresh, worktree=worktree)
    shutil.rmtree(dest / "tests")
    shutil.copytree(fresh / "tests", dest / "tests")
    shutil.rmtree(fresh)
    return label


def read_record(mod_dir: Path) -> dict:
    path = mod_dir / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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


def keep_earlier(per_module: dict, sources: dict) -> tuple[dict, dict]:
    """With --modules a subset, the other modules' results of the report being replaced, each with
    the source it measured and the date of that report (kept_from), in MODULES order."""
    earlier_path = REPORTS / "mutation.json"
    earlier = json.loads(earlier_path.read_text()) if earlier_path.is_file() else {"modules": {}, "meta": {}}
    merged, merged_sources = {}, {}
    for module in MODULES:
        if module in per_module:
            merged[module], merged_sources[module] = per_module[module], sources[module]
        elif module in earlier["modules"]:
            merged[module] = earlier["modules"][module]
            merged_sources[module] = dict(earlier["meta"]["sources"][module],
                                          kept_from=earlier["meta"]["sources"][module].get("kept_from")
                                          or earlier["meta"]["created"])
    return merged, merged_sources


def write_report(per_module: dict, meta: dict) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "mutation.json").write_text(json.dumps({"meta": meta, "modules": per_module}, indent=2) + "\n")
    lines = [
        "# Mutation testing",
        "",
        "Research software, not a medical device.",
        "",
        f"{meta['created']}: mutmut {meta['mutmut']} (process_isolation "
        f"{meta['process_isolation']}, {meta['max_children']} test processes at a time), pytest {meta['pytest']}, "
        f"TensorFlow {meta['tensorflow']}, Python {meta['python']}, {meta['machine']}, {meta['cores']} cores "
        f"(shared with other work; load average {meta['load_average']} at the end).",
        "",
    ] + [f"- xray_core/{m}.py: the {r.get('source', '?')}"
         + (f"; {r['rechecked']}" if r.get("rechecked") else "")
         + f"; wall time {r.get('seconds', 0) / 60:.1f} min"
         + (f" (not run this time: kept from the report of {r['kept_from']})." if r.get("kept_from") else ".")
         for m, r in meta["sources"].items()] + [
        "",
        f"Command: `{meta['command']}` (mutmut itself, per module in its own copy: `{meta['mutmut_command']}`; "
        "settings in pyproject.toml, [tool.mutmut], with only_mutate and the test selection set per module).",
        "",
        "Score: killed / checked, where checked is every mutant but the equivalent ones listed below (a mutant "
        "no selected test reaches counts as not killed). Goal: at least 80 % per module. Timed-out mutants are "
        "not counted as killed; the last column counts them too.",
        "",
        "| module | tests | mutants | equivalent | checked | killed | timeout | survived | no tests | score (killed) "
        "| killed or timed out |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for module, m in per_module.items():
        c = m["counts"]
        score = "-" if m["score"] is None else f"{100 * m['score']:.1f} %"
        lenient = "-" if m["noticed_score"] is None else f"{100 * m['noticed_score']:.1f} %"
        tests = ", ".join(t.removeprefix("tests/") for t in m["tests"])
        lines.append(f"| xray_core/{module}.py | {tests} | {m['mutants']} | {m['equivalent']} | {m['checked']} | "
                     f"{c.get('killed', 0)} | {c.get('timeout', 0)} | {c.get('survived', 0)} | {c.get('no tests', 0)} | {score} | {lenient} |")
    lines += [f"\nNote: {note}" for note in meta.get("notes", [])]
    unchecked = [f"xray_core/{mod}.py: {m['mutants'] - m['equivalent'] - m['checked']} of {m['mutants']}"
                 for mod, m in per_module.items() if m["mutants"] - m["equivalent"] > m["checked"]]
    if unchecked:
        lines += ["", "Not checked (the run was cut short): "
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
    parser.add_argument("--recheck", action="store_true",
                        help="in an earlier --workdir: take the tests from the source again and check the mutants "
                             "they did not kill")
    parser.add_argument("--note", action="append", default=[], help="a sentence for the report (repeatable)")
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown modules {unknown}; choose from {', '.join(MODULES)}")
    try:
        version("mutmut")
    except PackageNotFoundError:
        parser.error("mutmut is not installed here: `python -m pip install mutmut==3.8.1` (the version of the "
                     "report), then run this again.")
    mutmut_command = f"nice -n 10 mutmut run --max-children {args.max_children}"

    if args.report_only:
        if args.workdir is None or not all((args.workdir / m / "mutants").is_dir() for m in modules):
            parser.error("--report-only needs the --workdir of an earlier run (it holds MODULE/mutants/)")
        workdir = args.workdir
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="xray-mutation-"))
        for module in modules:
            mod_dir = workdir / module
            record = read_record(mod_dir)
            names: list[str] = []
            if not (mod_dir / "pyproject.toml").is_file():
                record = {"source": copy_source(mod_dir, worktree=args.worktree), "seconds": 0.0}
            elif args.recheck:
                # New tests since the first run: refresh tests/ from the source, collect mutmut's
                # test-to-function map again, and check every mutant the old tests did not kill.
                label = refresh_tests(mod_dir, worktree=args.worktree)
                (mod_dir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
                names = sorted(n for n, s in statuses(mod_dir, module).items() if s != "killed")
                record["rechecked"] = f"{len(names)} mutants not killed re-checked with the tests of the {label}"
            configure(mod_dir, module)
            print(f"mutmut in {mod_dir}: {mutmut_command}" + (f" ({len(names)} named mutants)" if names else ""),
                  flush=True)
            t0 = time.perf_counter()
            # Without names mutmut checks every mutant of only_mutate not checked yet, so an interrupted
            # run resumes where it stopped; named mutants are all checked again.
            if not args.recheck or names:
                subprocess.run(["nice", "-n", "10", mutmut_executable(), "run", "--max-children",
                                str(args.max_children), *names], cwd=mod_dir, check=False, env=child_env())
            record["seconds"] = round(record.get("seconds", 0.0) + time.perf_counter() - t0, 1)
            (mod_dir / "run.json").write_text(json.dumps(record))

    per_module = summarise(workdir, modules)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    meta = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": {m: read_record(workdir / m) for m in modules},
        "command": "python -m tools.mutation" + (f" --modules {args.modules}" if modules != list(MODULES)
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
        "notes": args.note,
    }
    per_module, meta["sources"] = keep_earlier(per_module, meta["sources"])
    write_report(per_module, meta)
    for module, m in per_module.items():
        score = "-" if m["score"] is None else f"{100 * m['score']:.1f} %"
        print(f"{module}: {m['checked']} of {m['mutants']} checked ({m['equivalent']} equivalent), score {score}")
    print(f"wrote {REPORTS / 'mutation.md'} and mutation.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
