"""Lint steps run as tests: no dead code (vulture) in the library, the pages and the app."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xray_core import cli

PROJECT = Path(__file__).resolve().parents[1]
SCANNED = ["xray_core", "pages", "app", "streamlit_app.py"]

# Names used where vulture cannot see: called by frameworks (Keras' metric protocol, urllib's
# handler protocol, lime's sampling step), option attributes set on TensorFlow's and Ray's objects, a
# function a subprocess imports by name (scoring's job), a dataclass field written out by dataclasses.asdict.
NOT_SEEN_BY_VULTURE = ["reset_state", "http_open", "https_open", "auto_shard_policy", "enable_progress_bars",
                       "_job_main", "probabilities", "data_labels"]


def _names_used_in(folder: Path) -> set[str]:
    """Every identifier the files of `folder` read (names, attributes, keyword arguments)."""
    names: set[str] = set()
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add(node.name.rsplit(".", 1)[-1])
    return names


def _handler_names() -> set[str]:
    """The CLI's handlers are named by "module:function" strings, which vulture cannot follow."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {p.get_default("handler").partition(":")[2] for p in sub.choices.values()}


@pytest.mark.skipif(importlib.util.find_spec("vulture") is None, reason="vulture is not installed "
                    "(pip install -r requirements-dev.txt)")
def test_no_dead_code(tmp_path):
    # What the tests, benchmarks and tools use is the library's public surface, not dead code.
    used = (_names_used_in(PROJECT / "tests") | _names_used_in(PROJECT / "benchmarks")
            | _names_used_in(PROJECT / "tools") | _handler_names() | set(NOT_SEEN_BY_VULTURE))
    whitelist = tmp_path / "whitelist.py"
    whitelist.write_text("".join(f"{name}\n" for name in sorted(used) if name.isidentifier()))
    proc = subprocess.run([sys.executable, "-m", "vulture", *SCANNED, str(whitelist), "--min-confidence", "60"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 3), proc.stderr  # 3: dead code found
    assert proc.stdout == "", "dead code (remove it, or say what uses it in NOT_SEEN_BY_VULTURE):\n" + proc.stdout



@pytest.mark.skipif(importlib.util.find_spec("flake8") is None, reason="flake8 is not installed "
                    "(pip install -r requirements-dev.txt)")
def test_no_unused_imports_or_undefined_names():
    """pyflakes' checks (flake8's F codes) over everything the project holds: no unused import or
    variable, no undefined name, no shadowed import. A `# noqa: F401` says why an import is kept."""
    proc = subprocess.run([sys.executable, "-m", "flake8", "--select=F", *SCANNED, "tests", "benchmarks", "tools"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr  # 1: findings
    assert proc.stdout == "", proc.stdout

def test_run_all_runs_every_benchmark():
    """benchmarks/run_all.py regenerates every report that is not frozen: each module of benchmarks/ is
    in its plan, run as `python -m benchmarks.NAME`; every report in benchmarks/reports/ is one the plan
    rewrites or one it keeps, with the commit that measured it and why it is not re-run."""
    import re

    spec = importlib.util.spec_from_file_location("run_all", PROJECT / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    planned = {f"{b.module}.py" for b in run_all.BENCHMARKS}
    scripts = {p.name for p in (PROJECT / "benchmarks").glob("*.py")} - {"run_all.py", *run_all.SUPPORT}
    assert planned == scripts, f"not planned: {sorted(scripts - planned)}; missing: {sorted(planned - scripts)}"
    assert all(run_all.command(b, PROJECT)[1:3] == ["-m", f"benchmarks.{b.module}"] for b in run_all.BENCHMARKS)
    assert len({b.report for b in run_all.BENCHMARKS}) == len(run_all.BENCHMARKS)  # one report per entry
    files = sorted((PROJECT / "benchmarks" / "reports").iterdir())
    assert [p.name for p in files if p.suffix not in (".md", ".json")] == []
    written = {b.report for b in run_all.BENCHMARKS}
    reports = {p.stem for p in files}
    kept = set(run_all.KEPT)
    assert reports - written == kept, (f"neither rewritten nor kept: {sorted(reports - written - kept)}; "
                                       f"kept but absent or rewritten: {sorted(kept - (reports - written))}")
    for name, (commit, why) in run_all.KEPT.items():
        assert re.fullmatch(r"[0-9a-f]{7,40}", commit) and len(why.split()) >= 5, (name, commit, why)
    # and nothing in benchmarks/ or tools/ patches sys.path: they run as modules from the project root
    patched = {p.name for d in ("benchmarks", "tools") for p in (PROJECT / d).glob("*.py")
               if "sys.path" in p.read_text(encoding="utf-8")}
    assert patched == set(STILL_PATCHING_SYS_PATH), f"run it as `python -m benchmarks.NAME`: {sorted(patched)}"


# Benchmarks not yet ported to benchmarks/harness.py that still patch sys.path, and why they may.
STILL_PATCHING_SYS_PATH: dict[str, str] = {}


# Rooms with one job: a module over MODULE_LINES lines is split, unless it is named here with the
# one job its length serves, and even then it stays under MODULE_LINES_MOST.
MODULE_LINES = 500
MODULE_LINES_MOST = 600
LONG_BUT_ONE_JOB = {
    "xray_core/runs.py": "the run folder: ids, status, liveness of its process, its files",
    "xray_core/data.py": "the dataset on disk: layout, index, patient split, cached loading",
    "xray_core/cli.py": "the command line: every command's arguments, in one place",
    "xray_core/model.py": "the model of a run: what its folder says, its one forward pass, its networks",
}


def _module_lengths() -> dict[str, int]:
    files = [PROJECT / "streamlit_app.py"] + [p for d in SCANNED[:-1] for p in sorted((PROJECT / d).rglob("*.py"))]
    return {p.relative_to(PROJECT).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in files}


def test_every_module_is_a_room_of_about_500_lines_at_most():
    lengths = _module_lengths()
    assert len(lengths) > 40  # the scan found the package
    too_long = {name: n for name, n in lengths.items()
                if n > (MODULE_LINES_MOST if name in LONG_BUT_ONE_JOB else MODULE_LINES)}
    assert not too_long, (f"over {MODULE_LINES} lines (split the module by job, or name its one job in "
                          f"LONG_BUT_ONE_JOB, up to {MODULE_LINES_MOST}): {too_long}")
    stale = [name for name in LONG_BUT_ONE_JOB if lengths.get(name, 0) <= MODULE_LINES]
    assert not stale, f"named in LONG_BUT_ONE_JOB but no longer over {MODULE_LINES} lines: {stale}"


def _public_functions():
    """(file, function node) for every public function and public method of xray_core."""
    for path in sorted((PROJECT / "xray_core").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for fn in node.body:
                    if isinstance(fn, ast.FunctionDef) and not fn.name.startswith("_"):
                        yield path.relative_to(PROJECT).as_posix(), fn
            elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                yield path.relative_to(PROJECT).as_posix(), node


def test_library_apis_take_data_first_options_by_keyword_and_any_path():
    """APIs in the field's shape (scikit-learn's): the data positionally, options keyword-only (at most
    one optional positional parameter), metrics as (y_true, y_score, *, ...), and every parameter that
    takes a path takes a str or any os.PathLike, not only a pathlib.Path."""
    problems, checked = [], 0
    for where, fn in _public_functions():
        checked += 1
        a = fn.args
        positional = [x.arg for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")]
        optional = positional[len(positional) - len(a.defaults):] if a.defaults else []
        if len(optional) > 1:
            problems.append(f"{where}:{fn.lineno} {fn.name}: options {optional} should be keyword-only")
        if "y_true" in positional and where in ("xray_core/metrics.py", "xray_core/comparison.py") \
                and positional[0] != "y_true":
            problems.append(f"{where}:{fn.lineno} {fn.name}: y_true is not its first parameter")
        for x in a.posonlyargs + a.args + a.kwonlyargs:
            annotation = ast.unparse(x.annotation) if x.annotation is not None else ""
            if "Path" in annotation.replace("PathLike", "") and "os.PathLike" not in annotation:
                problems.append(f"{where}:{fn.lineno} {fn.name}({x.arg}: {annotation}): "
                                "take str | os.PathLike")
    assert checked > 200  # the scan found the library's functions
    assert not problems, "\n".join(problems)


def test_architecture_md_maps_every_room_and_the_readme_links_it():
    """ARCHITECTURE.md names every room: each module and package of xray_core, each module of app/
    (in backticks), each page by its title; the README points to it."""
    import re

    doc = (PROJECT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    named = {part for quoted in re.findall(r"`([^`]+)`", doc) for part in re.split(r"[\s/.,:()]+", quoted)}
    rooms = {p.stem if p.is_file() else p.name for p in (PROJECT / "xray_core").iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file()) and not p.name.startswith("__")}
    rooms |= {p.stem for p in (PROJECT / "app").glob("*.py") if not p.name.startswith("__")}
    assert {"model", "gate", "explain", "scoring", "common"} <= rooms  # the scan found the rooms
    assert sorted(rooms - named) == []
    pages = [p.stem for p in (PROJECT / "pages").glob("*.py")]
    assert len(pages) >= 5 and [p for p in pages if p.capitalize() not in doc] == []
    assert "(ARCHITECTURE.md)" in (PROJECT / "README.md").read_text(encoding="utf-8")


def _called(node: ast.stmt) -> str | None:
    """The name a statement calls, for a bare call statement (`f()` or `m.f()`); else None."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return None


def _imported_from(tree: ast.Module, module: str) -> set[str]:
    return {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == module
            for a in n.names}


def test_every_page_calls_the_entry_guard_first():
    """No page runs unless streamlit_app.py ran first (SECURITY.md): each file in pages/ calls
    app.entry's require_entry() as its first statement after the docstring and the imports, and
    the entry script marks the run with entry_ran() right before it runs the page."""
    pages = sorted((PROJECT / "pages").glob("*.py"))
    assert len(pages) >= 5
    unguarded = []
    for path in pages:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        body = list(tree.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        while body and isinstance(body[0], (ast.Import, ast.ImportFrom)):
            body = body[1:]
        if not (body and _called(body[0]) == "require_entry" and "require_entry" in _imported_from(tree, "app.entry")):
            unguarded.append(path.name)
    assert not unguarded, ("put `from app.entry import require_entry` with the imports and `require_entry()` "
                           f"right after them in: {', '.join(unguarded)}")
    entry = ast.parse((PROJECT / "streamlit_app.py").read_text(encoding="utf-8"))
    calls = [_called(n) for n in entry.body]
    assert calls[-2:] == ["entry_ran", "run"] and "entry_ran" in _imported_from(entry, "app.entry")


def test_the_library_never_imports_streamlit():
    """The library returns data; pages and app/ say things. No module of xray_core imports Streamlit
    (at the top or inside a function), so nothing there can word or lay out a page."""
    offenders = []
    for path in sorted((PROJECT / "xray_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(PROJECT)}:{node.lineno}" for n in names if n.split(".")[0] == "streamlit"]
    assert not offenders, f"move page wording and widgets to pages/ or app/: {offenders}"
    # and the pages do import it (the scan reads imports correctly)
    page = ast.parse((PROJECT / "pages" / "diagnose.py").read_text(encoding="utf-8"))
    assert any(isinstance(n, ast.Import) and any(a.name == "streamlit" for a in n.names) for n in ast.walk(page))


class _FsPath(os.PathLike):
    """An os.PathLike that is not a pathlib.Path (as a user's own path type would be)."""

    def __init__(self, path):
        self._path = os.fspath(path)

    def __fspath__(self) -> str:
        return self._path


def test_any_os_pathlike_is_taken_where_a_path_goes(synthetic_dataset, tiny_run, tmp_path):
    """The annotation rule above, at run time: the library's entry points take a PathLike that is
    not a pathlib.Path and give what they give for the same path as a str."""
    from xray_core import data, fileio, imaging, model, runs
    from xray_core.download.layout import layout_root
    from xray_core.scoring.inputs import input_kind

    runs_root, run_id = tiny_run
    film = sorted((synthetic_dataset / "val" / "NORMAL").iterdir())[0]
    assert (imaging.decode(_FsPath(film)) == imaging.decode(str(film))).all()
    assert data.find_dataset(_FsPath(synthetic_dataset)) == data.find_dataset(str(synthetic_dataset))
    assert data.index_dataset(_FsPath(synthetic_dataset)).equals(data.index_dataset(str(synthetic_dataset)))
    assert runs.load_run(_FsPath(runs_root / run_id)).path == runs.load_run(run_id, root=str(runs_root)).path
    x = imaging.to_model_input(imaging.decode(film), (16, 16))[None]
    via_pathlike = model.load_model(_FsPath(runs_root / run_id), cache=False)
    assert np.array_equal(via_pathlike.predict_proba(x), model.load_model(run_id, root=str(runs_root)).predict_proba(x))
    assert input_kind(_FsPath(synthetic_dataset)) == "folder"
    assert layout_root(_FsPath(synthetic_dataset)) == synthetic_dataset
    assert fileio.check_allowed(_FsPath(tmp_path), what="folder", roots=[_FsPath(tmp_path)]) == tmp_path.resolve()


def _library_imports() -> dict[str, set[str]]:
    """{module: the xray_core modules it imports, at the top or inside a function}."""
    graph: dict[str, set[str]] = {}
    for path in sorted((PROJECT / "xray_core").rglob("*.py")):
        rel = path.relative_to(PROJECT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xray_core"):
                for alias in node.names:  # `from xray_core import gate` names a module
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if (PROJECT / (sub.replace(".", "/") + ".py")).is_file() else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("xray_core")}
        graph[name] = {m for m in found if m != name and m != "xray_core"}
    return graph


def test_no_import_cycle_in_the_library_even_through_lazy_imports():
    """A cycle closed by an import inside a function still ties two rooms together: none is left."""
    graph = _library_imports()
    assert {"xray_core.model", "xray_core.case", "xray_core.gate"} <= set(graph)  # the scan found modules
    cycles = set()

    def visit(node, stack):
        for nxt in graph.get(node, ()):
            if nxt in stack:
                cycle = stack[stack.index(nxt):]
                i = cycle.index(min(cycle))
                cycles.add(" -> ".join(cycle[i:] + cycle[:i] + [min(cycle)]))
            elif len(stack) < 12:
                visit(nxt, stack + [nxt])

    for start in graph:
        visit(start, [start])
    assert not cycles, "\n".join(sorted(cycles))


def test_no_private_name_crosses_modules():
    """The library, the app and the pages use each other's public names only, and so do the benchmarks
    and tools the library's."""
    crossings = []
    files = [*sorted((PROJECT / "xray_core").rglob("*.py")), *sorted((PROJECT / "app").glob("*.py")),
             *sorted((PROJECT / "pages").glob("*.py")), PROJECT / "streamlit_app.py",
             *sorted((PROJECT / "benchmarks").glob("*.py")), *sorted((PROJECT / "tools").glob("*.py"))]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("xray_core", "app"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        crossings.append(f"{path.relative_to(PROJECT)}:{node.lineno}: imports {alias.name}")
                    modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("xray_core")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                crossings.append(f"{path.relative_to(PROJECT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not crossings, "\n".join(crossings)
