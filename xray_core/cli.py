"""The command line: `python -m xray_core <command>`.

Each command lives beside the code it drives; a module that owns one exposes
`add_parser(subparsers)` and sets `func` on its parser. This file only assembles them.
"""

from __future__ import annotations

import argparse
import sys

from xray_core import commands, download, explain

# Modules that contribute subcommands, in the order `--help` lists them. None of them imports
# TensorFlow at import time, so `--help` stays fast.
_COMMAND_MODULES = (commands, explain, download)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xray_core",
        description="Pediatric chest X-ray pneumonia models: data, training, evaluation, explanations.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        # Library errors are sentences meant for the user; show them without a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
