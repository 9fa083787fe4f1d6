"""The docs that are generated or run: docs/cli.md is what the parser says, its examples parse, and
the pages the README links exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tools import cli_reference
from xray_core import cli

PROJECT = Path(__file__).resolve().parents[1]


def test_docs_cli_md_is_what_the_parser_says():
    written = (PROJECT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert written == cli_reference.render(), "docs/cli.md is out of date: run `python -m tools.cli_reference`"


def test_the_check_command_fails_on_a_stale_page(tmp_path, monkeypatch):
    stale = tmp_path / "cli.md"
    stale.write_text(cli_reference.render().replace("## xray score", "## xray scour"), encoding="utf-8")
    monkeypatch.setattr(cli_reference, "TARGET", stale)
    monkeypatch.setattr(cli_reference, "PROJECT", tmp_path)
    assert cli_reference.main(["--check"]) == 1
    assert cli_reference.main([]) == 0 and cli_reference.main(["--check"]) == 0


@pytest.mark.parametrize("command", sorted(cli_reference.EXAMPLES))
def test_every_commands_example_parses_as_that_command(command):
    words = shlex.split(cli_reference.EXAMPLES[command])
    assert words[0] == "xray"
    args = cli.build_parser().parse_args(words[1:])
    assert args.command == command and args.handler


def test_a_command_without_an_example_is_refused(monkeypatch):
    monkeypatch.delitem(cli_reference.EXAMPLES, "score")
    with pytest.raises(ValueError, match="score"):
        cli_reference.render()


def test_the_reference_is_written_by_running_the_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.cli_reference", "--check"], cwd=PROJECT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_local_link_of_the_readme_and_docs_resolves():
    pages = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(PROJECT)} -> {target}")
    assert len(pages) > 5 and not broken, broken


@pytest.mark.browser
def test_the_readme_screenshot_is_retaken_by_its_script(tmp_path):
    """`python -m tools.screenshot` serves the app, uploads a val/ film in Chromium and writes a light PNG."""
    from PIL import Image

    from tests.browser_helpers import CHROMIUM_MISSING, have_chromium

    if not have_chromium():
        pytest.skip(CHROMIUM_MISSING)
    films = sorted((PROJECT.parent / "shared" / "data" / "chest_xray" / "val" / "PNEUMONIA").glob("*.jpeg"))
    if not films:
        pytest.skip("the real dataset is not at ../shared/data")
    out = tmp_path / "diagnose.png"
    proc = subprocess.run([sys.executable, "-m", "tools.screenshot", "--film", str(films[0]), "--out", str(out),
                           "--width", "1024"], cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(out) as image:
        assert image.width == 1024 and image.height > 1200  # the verdict and the panels below it
        assert out.stat().st_size < 400_000 and image.mode == "P"
    assert f"from {films[0].name}" in proc.stdout
