"""Running the app's pages and the CLI against the repository's own trained_models/ writes no
file into the work tree, tracked or not (ignored files included): caches and derived figures go
to the cache folder ($XRAY_CACHE_DIR) or to folders the user names.

The check runs on a copy of the work tree made into a fresh git repository, in subprocesses
started there, so that it is exact (`git status --porcelain --ignored` empty afterwards) even
while other work goes on in the original tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REAL_DATA

PROJECT = Path(__file__).resolve().parents[1]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=test", "-c", "user.email=test@invalid",
                           *args], check=True, capture_output=True, text=True, timeout=120).stdout


def _in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    try:
        return Path(_git(PROJECT, "rev-parse", "--show-toplevel").strip()) == PROJECT
    except subprocess.CalledProcessError:
        return False


pytestmark = pytest.mark.skipif(not _in_git_checkout(),
                                reason="not in a git checkout of the project (there is no git status to compare)")

PAGES_SCRIPT = """
import sys
from pathlib import Path
from streamlit.testing.v1 import AppTest

real = Path(sys.argv[1])
for page in sorted(p.name for p in Path("pages").glob("*.py")):
    at = AppTest.from_file("streamlit_app.py", default_timeout=300)
    at.run()
    at.switch_page(f"pages/{page}").run()
    assert not at.exception, (page, at.exception)
    if page == "diagnose.py" and real.is_dir():
        # A real film (the input gate rightly refuses the synthetic ones): a full explanation.
        raw = sorted((real / "val" / "PNEUMONIA").iterdir())[0].read_bytes()
        at.select_slider(key="diagnose_samples").set_value(100)
        at.file_uploader(key="diagnose_upload").set_value(("film.jpeg", raw, "image/jpeg")).run()
        assert not at.exception, at.exception
        assert "Probability of pneumonia" in [m.label for m in at.metric], [e.value for e in at.error]
    print("page", page, "ok")
"""

COMMANDS_SCRIPT = """
import sys
from xray_core import cli

data, image, out = sys.argv[1:4]
for argv in (["runs"],
             ["predict", "default", image],
             ["evaluate", "default", "--split", "test", "--data", data],
             ["evaluate", "default", "--split", "test", "--data", data, "--refresh"],
             ["explain", "default", image, "--out-dir", out + "/explained", "--samples", "128", "--stability-seeds", "2"],
             ["score", "default", data + "/test", "--out", out + "/scores.csv", "--workers", "0", "--quiet"],
             ["dataset", "--data", data]):
    code = cli.main(argv)
    assert code == 0, (argv, code)
    print("command", argv[0], "ok")
"""


def _copy_work_tree(dest: Path) -> None:
    listing = _git(PROJECT, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    for name in filter(None, listing.split("\0")):
        source = PROJECT / name
        if source.is_file():  # a tracked file deleted in the work tree is simply absent
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "snapshot")


@pytest.mark.slow
@pytest.mark.timeout(2700)  # every page and seven commands on the shipped model, on a shared 2-core machine
def test_pages_and_commands_write_nothing_into_the_work_tree(synthetic_dataset, tmp_path):
    repo = tmp_path / "repo"
    _copy_work_tree(repo)
    assert (repo / "trained_models" / "default" / "model.keras").is_file()
    assert _git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""

    env = {k: v for k, v in os.environ.items() if k not in ("XRAY_MODELS_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(repo), PYTHONDONTWRITEBYTECODE="1", XRAY_DATA_DIR=str(synthetic_dataset),
               XRAY_CACHE_DIR=str(tmp_path / "cache"))
    image = sorted((synthetic_dataset / "test" / "PNEUMONIA").iterdir())[0]
    out = tmp_path / "out"
    out.mkdir()
    for script, args in ((PAGES_SCRIPT, [str(REAL_DATA)]),
                         (COMMANDS_SCRIPT, [str(synthetic_dataset), str(image), str(out)])):
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    assert _git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
    assert (out / "scores.csv").is_file() and (out / "explained").is_dir()  # the commands did write, elsewhere
