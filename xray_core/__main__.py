import sys

from xray_core.cli import main

sys.exit(main())
