import sys

from xray_core.cli import main

sys.exit(main(prog="python -m xray_core"))
