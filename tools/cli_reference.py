"""Write docs/cli.md, the command line's reference, from the parser itself.

    python -m tools.cli_reference           # rewrite docs/cli.md
    python -m tools.cli_reference --check   # exit 1 if docs/cli.md is not what it would write

Every command, its purpose, its arguments and their help come from `xray_core.cli.build_parser`,
so the page cannot drift from the code; only the examples are written here, and a test parses each
with the same parser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xray_core import cli

PROJECT = Path(__file__).resolve().parents[1]
TARGET = PROJECT / "docs" / "cli.md"

#: One example per command, run from a clone with the dataset in data/chest_xray.
EXAMPLES = {
    "dataset": "xray dataset --data data/chest_xray",
    "train": "xray train --arch pneumonet --epochs 20 --data data/chest_xray --run-id my-run",
    "runs": "xray runs",
    "evaluate": "xray evaluate default --split test --data data/chest_xray",
    "predict": "xray predict default film.jpeg scan.dcm",
    "explain": "xray explain default film.jpeg --out-dir explained/",
    "download": "xray download --dest data",
    "score": "xray score default /archive/2026-12-01 --out night.csv",
    "fit-gate": "xray fit-gate my-run --data data/chest_xray",
    "report": "xray report default film.jpeg --out case.pdf",
    "export": "xray export default --format onnx --out-dir exported/",
    "validate": "xray validate default site/ --out-dir report/",
    "recalibrate": "xray recalibrate default site/ --out default-site",
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise ValueError("the parser has no subcommands")


def _summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: _text(a.help) for a in action._choices_actions}
    return {}


def _text(help_text: str | None) -> str:
    """argparse's text as Markdown: `%%` is argparse's escape; `|` and `<` would break a table or a page."""
    return (help_text or "").replace("%%", "%").replace("|", "\\|").replace("<", "&lt;")


def _usage(action: argparse.Action) -> str:
    """How an argument is written: `--out-dir OUT_DIR`, `--policy {sensitivity,youden}`, `RUN`."""
    if not action.option_strings:
        name = action.metavar or action.dest.upper()
        return f"{name} ..." if action.nargs in ("+", "*") else name
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        return flag
    if action.choices is not None and action.metavar is None:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        value = action.metavar or action.dest.upper()
    if isinstance(action.nargs, int) and action.nargs > 1:
        value = " ".join([value] * action.nargs)
    return f"{flag} [{value}]" if action.nargs == "?" else f"{flag} {value}"


def _arguments(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS or action.dest == "verbose":
            continue  # --verbose is every command's: said once at the top
        note = " (required)" if action.required and action.option_strings else ""
        rows.append((_usage(action), _text(action.help) + note))
    return rows


def render() -> str:
    """docs/cli.md as the parser says it."""
    parser = cli.build_parser()
    commands = _subparsers(parser)
    summaries = _summaries(parser)
    missing = sorted(set(commands) ^ set(EXAMPLES))
    if missing:
        raise ValueError(f"tools/cli_reference.py has no example for, or an example of an unknown command: {missing}")
    lines = [
        "# Command line reference",
        "",
        "<!-- Written by `python -m tools.cli_reference` from xray_core/cli.py; do not edit by hand. -->",
        "",
        "`pip install .` (or `pip install -e .` in a clone) gives the `xray` command; in a clone without",
        "installing, `python -m xray_core` is the same command. `xray COMMAND --help` prints what is below.",
        "`xray --version` says which release is installed; `--verbose`, on any command, lets TensorFlow's",
        "log lines through. A run is named by its id in the models folder (`default` is the bundled model;",
        "`xray runs` lists them) or by a path to its folder. `pyproject.toml` declares the package's",
        "compatible version ranges and its extras (`train`, `app`, `export`, `ray`, `all`);",
        "`requirements.txt` pins the versions the project is tested with. Research software, not a",
        "medical device.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`{name}`](#xray-{name}) | {summaries.get(name, '')} |" for name in commands]
    for name, sub in commands.items():
        lines += ["", f"## xray {name}", "", _text(sub.description), "", "| argument | |", "|---|---|"]
        lines += [f"| `{usage}` | {text} |" for usage, text in _arguments(sub)]
        lines += ["", "```bash", EXAMPLES[name], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md differs from what it would write")
    check = args.parse_args(argv).check
    text = render()
    if check:
        same = TARGET.is_file() and TARGET.read_text(encoding="utf-8") == text
        if not same:
            print(f"{TARGET.relative_to(PROJECT)} is out of date: run `python -m tools.cli_reference`.",
                  file=sys.stderr)
        return 0 if same else 1
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
