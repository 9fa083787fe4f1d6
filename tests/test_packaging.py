"""The installed package: its dependencies, the `xray` command, and the bundled runs it finds.

The install tests (slow) build from a copy of the tracked files, so the build's own folders
(build/, *.egg-info) never land in the work tree, and install into a fresh virtual environment
that sees this environment's packages through a .pth file (installed with --no-deps: no network).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from PIL import Image

from xray_core import cli, runs

PROJECT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((PROJECT / "pyproject.toml").read_text())
BUNDLED = ("default", "seed-baseline", "seed-model2", "seed-model3", "seed-model4")


def _requirements(path: Path) -> list[Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def _name(requirement: Requirement) -> str:
    return requirement.name.lower().replace("_", "-")


def test_the_package_declares_ranges_and_requirements_txt_pins_inside_them():
    project = PYPROJECT["project"]
    assert "dependencies" not in project.get("dynamic", [])  # not read from requirements.txt's pins
    extras = project["optional-dependencies"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for name, reqs in extras.items() if name != "all" for r in reqs]
    assert all(str(r.specifier) and "==" not in str(r.specifier) for r in declared), declared
    assert extras["all"] == [f"xray-core[{','.join(n for n in extras if n != 'all')}]"]
    assert {_name(Requirement(r)) for r in extras["train"]} == {"tensorflow", "keras"}
    assert not {"tensorflow", "keras", "streamlit", "ray"} & {_name(Requirement(r)) for r in project["dependencies"]}
    pins = {_name(r): r for r in _requirements(PROJECT / "requirements.txt")}
    assert all(str(r.specifier).startswith("==") for r in pins.values())
    # requirements.txt installs exactly the package with every extra, at versions inside its ranges.
    assert {_name(r) for r in declared} == set(pins)
    for r in declared:
        pinned = str(pins[_name(r)].specifier)[2:]
        assert r.specifier.contains(pinned), f"requirements.txt pins {r.name}=={pinned}, outside {r}"
        assert (r.marker is None) == (pins[_name(r)].marker is None) and r.extras == pins[_name(r)].extras


def test_the_build_and_the_test_environment_ask_for_a_setuptools_that_builds_wheels():
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=70.1"]
    dev = {_name(r): r for r in _requirements(PROJECT / "requirements-dev.txt")}
    assert str(dev["setuptools"].specifier) == ">=70.1"
    assert "-r requirements.txt" in (PROJECT / "requirements-dev.txt").read_text().splitlines()


def test_every_subpackage_is_installed_with_the_bundled_runs():
    setup = PYPROJECT["tool"]["setuptools"]
    on_disk = sorted(".".join(p.parent.relative_to(PROJECT).parts)
                     for p in (PROJECT / "xray_core").rglob("__init__.py"))
    assert sorted(setup["packages"]) == sorted(on_disk + ["xray_core.bundled_runs"])
    assert setup["package-dir"] == {"xray_core.bundled_runs": "trained_models"}
    assert runs.PACKAGED_RUNS_DIR == PROJECT / "xray_core" / "bundled_runs"


def test_xray_version_prints_the_package_version(capsys):
    import xray_core

    assert PYPROJECT["project"]["scripts"]["xray"] == "xray_core.cli:main"
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"xray {xray_core.__version__}\n"


def test_a_command_that_needs_a_missing_extra_says_which_to_install(monkeypatch, capsys, tmp_path):
    film = tmp_path / "film.png"
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(film)
    monkeypatch.setitem(sys.modules, "keras", None)  # as in an install without the train extra
    assert cli.main(["explain", "default", str(film), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == ("error: `xray explain` needs keras, which is not installed: pip install "
                                       "'xray-core[train]' (or pip install -r requirements.txt).\n")


def test_the_registry_lookup_order_and_the_read_only_packaged_copy(monkeypatch, tmp_path):
    checkout, packaged = tmp_path / "checkout" / "trained_models", (tmp_path / "site" / "bundled_runs").resolve()
    monkeypatch.setattr(runs, "CHECKOUT_RUNS_DIR", checkout)
    monkeypatch.setattr(runs, "PACKAGED_RUNS_DIR", packaged)
    monkeypatch.delenv("XRAY_MODELS_DIR", raising=False)
    assert runs.runs_root() == packaged  # an installed package: no checkout beside it
    checkout.mkdir(parents=True)
    assert runs.runs_root() == checkout  # a clone or an editable install
    monkeypatch.setenv("XRAY_MODELS_DIR", str(tmp_path / "env"))
    assert runs.runs_root() == tmp_path / "env"
    assert runs.runs_root(tmp_path / "given") == tmp_path / "given"
    # Nothing is written into the packaged copy: new runs and deletions are refused with a sentence.
    monkeypatch.delenv("XRAY_MODELS_DIR")
    checkout.rmdir()
    (packaged / "seed-baseline").mkdir(parents=True)
    (packaged / "seed-baseline" / runs.STATUS_FILE).write_text('{"state": "completed"}')
    for attempt in (lambda: runs.new_run_id("baseline"), lambda: runs.create_run_dir("mine"),
                    lambda: runs.delete_run("seed-baseline")):
        with pytest.raises(runs.RegistryReadOnly, match="--runs-dir DIR, or set XRAY_MODELS_DIR=DIR"):
            attempt()
    assert sorted(p.name for p in packaged.iterdir()) == ["seed-baseline"]
    assert [r.run_id for r in runs.list_runs()] == ["seed-baseline"]  # reading works
    assert runs.new_run_id("baseline", tmp_path / "mine").endswith(tuple("0123456789abcdef"))


# --------------------------------------------------------------------------- real installs


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT), "ls-files", "-z"], capture_output=True, check=True,
                             timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the files to install are the tracked ones")
    return [name for name in out.decode().split("\0") if name]


def _source_copy(dest: Path) -> Path:
    for name in _tracked_files():
        if (PROJECT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, dest / name)
    return dest


def _fresh_venv(path: Path) -> Path:
    """A new virtual environment whose own site-packages is empty and which sees this
    environment's packages (pip, setuptools, numpy, ...) after it, through a .pth file."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    own = Path(subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (own / "_this_test_environment.pth").write_text("".join(f"{p}\n" for p in sorted(outer)))
    return path


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XRAY_MODELS_DIR")}
    return dict(env, **extra)


def _pip_install(venv: Path, *args: str, cwd: Path) -> None:
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                         env=_clean_env())
    assert pip.returncode == 0, pip.stderr[-3000:]


@pytest.mark.slow
def test_pip_install_editable_gives_the_xray_command(tmp_path):
    source = _source_copy(tmp_path / "source")
    venv = _fresh_venv(tmp_path / "venv")
    _pip_install(venv, "-e", str(source), cwd=tmp_path)
    proc = subprocess.run([str(venv / "bin" / "xray"), "runs", "--runs-dir", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_clean_env())
    assert proc.returncode == 0 and proc.stdout.startswith("no runs in"), proc.stderr[-2000:]


@pytest.mark.slow
def test_pip_install_gives_an_xray_that_finds_the_bundled_runs_from_any_folder(tmp_path):
    source = _source_copy(tmp_path / "source")
    venv = _fresh_venv(tmp_path / "venv")
    _pip_install(venv, str(source), cwd=tmp_path)
    anywhere = tmp_path / "anywhere"
    anywhere.mkdir()
    env = _clean_env(XRAY_CACHE_DIR=str(tmp_path / "cache"))

    def xray(*argv):
        return subprocess.run([str(venv / "bin" / "xray"), *argv], capture_output=True, text=True, timeout=300,
                              cwd=anywhere, env=env)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import xray_core.runs as r; print(r.runs_root())"],
                           capture_output=True, text=True, timeout=120, cwd=anywhere, env=env)
    installed = Path(where.stdout.strip())
    assert installed.is_relative_to(venv) and installed.name == "bundled_runs", where.stderr[-2000:]
    # Exactly the tracked files of the bundled runs are installed.
    tracked = {n.removeprefix("trained_models/") for n in _tracked_files()
               if n.startswith(tuple(f"trained_models/{r}/" for r in BUNDLED))}
    assert {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()} == tracked

    import xray_core

    assert xray("--version").stdout == f"xray {xray_core.__version__}\n"
    listed = xray("runs")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert [line.split()[0] for line in listed.stdout.splitlines()[2:]] == list(BUNDLED)

    film = anywhere / "film.png"
    Image.fromarray((np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)).save(film)
    predicted = xray("predict", "default", str(film), "--json")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    here = subprocess.run([sys.executable, "-m", "xray_core", "predict", "default", str(film), "--json",
                           "--runs-dir", str(PROJECT / "trained_models")], capture_output=True, text=True,
                          timeout=300, cwd=PROJECT, env=env)
    assert json.loads(predicted.stdout) == json.loads(here.stdout)  # the same model, the same answer

    refused = xray("train", "--data", str(anywhere), "--epochs", "1")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: The runs folder is the copy of the bundled runs inside the installed")
    assert sorted(p.name for p in anywhere.iterdir()) == ["film.png"]
